// Which parameters train: see freeze.h, Note [Freezing].
#include "train/freeze.h"

#include <algorithm>

#include <torch/torch.h>

#include "common/error.h"
#include "common/log.h"

namespace sy {
namespace {

// Glob match with '*' for any run of characters (iterative, with one backtrack point).
bool glob(const std::string& p, const std::string& s) {
  size_t pi = 0, si = 0, star = std::string::npos, mark = 0;
  while (si < s.size()) {
    if (pi < p.size() && p[pi] == '*') {
      star = pi++;
      mark = si;
    } else if (pi < p.size() && p[pi] == s[si]) {
      ++pi;
      ++si;
    } else if (star != std::string::npos) {
      pi = star + 1;
      si = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

// Global expert ids [first, first + local) of this rank, from the expert tensors' first dim.
int64_t local_experts(const GPTImpl& model) {
  for (const auto& item : model.named_parameters()) {
    if (is_expert_parameter(item.key())) return item.value().size(0);
  }
  return 0;
}

}  // namespace

bool pattern_matches(const std::string& pattern, const std::string& name) {
  if (glob(pattern, name)) return true;
  for (size_t dot = name.find('.'); dot != std::string::npos; dot = name.find('.', dot + 1)) {
    if (glob(pattern, name.substr(0, dot))) return true;
  }
  return false;
}

bool FreezePlan::frozen_whole(const std::string& name) const {
  return std::find(frozen.begin(), frozen.end(), name) != frozen.end();
}

FreezePlan plan_freezing(const Config& cfg, const GPTImpl& model, int ep_rank) {
  const TrainConfig& t = cfg.train;
  const auto params = model.named_parameters();
  // Every pattern must match a parameter of this model.
  for (const auto* list : {&t.trainable, &t.frozen}) {
    const char* key = list == &t.frozen ? "train.frozen" : "train.trainable";
    for (size_t i = 0; i < list->size(); ++i) {
      bool hit = false;
      for (const auto& item : params) hit = hit || pattern_matches((*list)[i], item.key());
      SY_CHECK(hit, key, "[", i, "] '", (*list)[i], "' matches no parameter of this model; ",
               "`switchyard params --config F` lists the names (e.g. lm_head.weight, ",
               "blocks.0.moe.experts.w1)");
    }
  }
  auto any_match = [](const std::vector<std::string>& list, const std::string& name) {
    return std::any_of(list.begin(), list.end(),
                       [&](const std::string& p) { return pattern_matches(p, name); });
  };
  FreezePlan plan;
  const int64_t num_experts = cfg.moe.num_experts;
  const int64_t local = local_experts(model);
  const int64_t first = static_cast<int64_t>(ep_rank) * local;
  int64_t frozen_here = 0;  // frozen experts this rank holds
  for (int64_t id : cfg.moe.frozen_experts) {
    if (id >= first && id < first + local) {
      plan.frozen_local_rows.push_back(id - first);
      ++frozen_here;
    }
  }
  std::sort(plan.frozen_local_rows.begin(), plan.frozen_local_rows.end());
  const auto frozen_ids = static_cast<int64_t>(cfg.moe.frozen_experts.size());
  for (const auto& item : params) {
    const std::string& name = item.key();
    const bool expert = is_expert_parameter(name);
    const bool by_pattern =
        (!t.trainable.empty() && !any_match(t.trainable, name)) || any_match(t.frozen, name);
    const int64_t n = item.value().numel();
    // Expert tensors count all E experts (this rank holds `local` of them).
    const int64_t total = expert && local > 0 ? n / local * num_experts : n;
    plan.total_params += total;
    if (by_pattern || (expert && local > 0 && frozen_here == local)) {
      plan.frozen.push_back(name);
    }
    if (!by_pattern) {
      plan.trainable_params += expert && local > 0 ? n / local * (num_experts - frozen_ids) : n;
    }
  }
  if (frozen_here == local) plan.frozen_local_rows.clear();  // frozen whole instead
  SY_CHECK(plan.trainable_params > 0, "train.trainable ", t.trainable.size(), " pattern(s), ",
           "train.frozen ", t.frozen.size(), " pattern(s) and moe.frozen_experts (",
           cfg.moe.frozen_experts.size(), " ids) leave no parameter to train");
  return plan;
}

int64_t apply_freezing(const FreezePlan& plan, GPTImpl& model, AdamW& optimizer,
                       bool fp32_masters) {
  int64_t saved = 0;
  for (auto& item : model.named_parameters()) {
    at::Tensor p = item.value();
    AdamWSlot* slot = optimizer.find(item.key());
    SY_CHECK(slot != nullptr, "freezing: '", item.key(), "' is not in the optimizer");
    if (plan.frozen_whole(item.key())) {
      p.requires_grad_(false);
      slot->frozen = true;
      // Two fp32 moments (or moments of the parameter's dtype), and an fp32 master with bf16.
      const int64_t moment_bytes = p.scalar_type() == at::kDouble ? 8 : 4;
      saved += p.numel() * (2 * moment_bytes + (fp32_masters ? 4 : 0));
    } else if (is_expert_parameter(item.key()) && !plan.frozen_local_rows.empty()) {
      const at::Tensor rows =
          at::tensor(plan.frozen_local_rows, at::TensorOptions().dtype(at::kLong)).to(p.device());
      slot->frozen_rows = rows;
      p.register_hook([rows](const at::Tensor& grad) { return grad.index_fill(0, rows, 0); });
    }
  }
  return saved;
}

}  // namespace sy
