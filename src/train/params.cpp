// The parameter table of `switchyard params`: see params.h.
#include "train/params.h"

#include <cstdio>

#include <torch/torch.h>

#include "data/corpus.h"
#include "model/gpt.h"
#include "parallel/communicator.h"
#include "train/freeze.h"

namespace sy {
namespace {

std::string shape_text(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
  return s + "]";
}

}  // namespace

std::string describe_parameters(const Config& cfg, int world_size) {
  const int64_t ep_size = cfg.parallel.ep_size > 0 ? cfg.parallel.ep_size : world_size;
  const Corpus corpus = load_corpus(cfg);
  // One process holding every expert: the names and full shapes; the EP slices are arithmetic.
  GPT model(cfg.model, cfg.moe, corpus.vocab_size, make_self_communicator(),
            static_cast<uint64_t>(cfg.train.seed), cfg.data.tasks);
  const int64_t per_rank = cfg.moe.num_experts / ep_size;
  // What trains under train.trainable, train.frozen and moe.frozen_experts (Note [Freezing]).
  const FreezePlan freeze = plan_freezing(cfg, *model, /*ep_rank=*/0);
  std::string frozen_ids;
  for (int64_t id : cfg.moe.frozen_experts) {
    frozen_ids += (frozen_ids.empty() ? "" : ",") + std::to_string(id);
  }
  std::string out;
  char line[1024];
  std::snprintf(line, sizeof(line), "%-44s %-18s %12s  %-16s %s\n", "name", "shape", "elements",
                "trains", "held by");
  out += line;
  int64_t total = 0, experts = 0;
  for (const auto& item : model->named_parameters()) {
    const at::Tensor& p = item.value();
    const bool expert = is_expert_parameter(item.key());
    total += p.numel();
    experts += expert ? p.numel() : 0;
    std::string held = "every rank (replicated)";
    if (expert && ep_size > 1) {
      // "ep0: 0-3, ep1: 4-7": the global expert ids of each EP rank (world rank % ep_size).
      held.clear();
      for (int64_t r = 0; r < ep_size; ++r) {
        held += (r ? ", ep" : "ep") + std::to_string(r) + ": " + std::to_string(r * per_rank) +
                "-" + std::to_string((r + 1) * per_rank - 1);
      }
    } else if (expert) {
      held = "every rank (ep_size 1)";
    }
    std::string trains = freeze.frozen_whole(item.key()) ? "frozen" : "yes";
    if (trains == "yes" && expert && !frozen_ids.empty()) trains = "except " + frozen_ids;
    std::snprintf(line, sizeof(line), "%-44s %-18s %12lld  %-16s %s\n", item.key().c_str(),
                  shape_text(p).c_str(), static_cast<long long>(p.numel()), trains.c_str(),
                  held.c_str());
    out += line;
  }
  for (const auto& item : model->named_buffers()) {
    std::snprintf(line, sizeof(line), "%-44s %-18s %12lld  %-16s %s\n", item.key().c_str(),
                  shape_text(item.value()).c_str(), static_cast<long long>(item.value().numel()),
                  "(buffer)", "every rank");
    out += line;
  }
  std::snprintf(line, sizeof(line),
                "%lld parameters: %lld in routed experts (%lld per EP rank of %lld), %lld "
                "replicated\n",
                static_cast<long long>(total), static_cast<long long>(experts),
                static_cast<long long>(experts / ep_size), static_cast<long long>(ep_size),
                static_cast<long long>(total - experts));
  out += line;
  if (freeze.trainable_params < freeze.total_params) {
    std::snprintf(line, sizeof(line),
                  "%lld of them train (train.trainable, train.frozen, "
                  "moe.frozen_experts)\n",
                  static_cast<long long>(freeze.trainable_params));
    out += line;
  }
  return out;
}

}  // namespace sy
