// Slot assignment by one stable sort (no [S, E] or [S, E, C] one-hot tensors): sorting the
// choices by expert while keeping their processing order makes a choice's slot its index in the
// sorted list minus the first index of its expert.
#include "moe/plan.h"

#include <cmath>

#include <torch/torch.h>

#include "common/error.h"

namespace sy {

int64_t compute_capacity(double capacity_factor, int64_t top_k, int64_t num_tokens,
                         int64_t num_experts, int64_t min_capacity) {
  if (capacity_factor <= 0) return 0;  // dropless
  const double raw = capacity_factor * static_cast<double>(top_k * num_tokens) /
                     static_cast<double>(num_experts);
  // The epsilon keeps exact products (1.25 * 2 * 8 / 4 = 5) from rounding up through fp error.
  const auto cap = static_cast<int64_t>(std::ceil(raw - 1e-9));
  return std::max<int64_t>({cap, min_capacity, 1});
}

DispatchPlan make_plan(const at::Tensor& topk_idx, const at::Tensor& topk_weights,
                       int64_t num_experts, int64_t capacity, bool score_priority) {
  SY_CHECK(topk_idx.dim() == 2, "make_plan: topk_idx must be [S, k]");
  const int64_t num_tokens = topk_idx.size(0);
  const int64_t top_k = topk_idx.size(1);
  const auto long_opts = topk_idx.options().dtype(at::kLong);
  DispatchPlan plan;
  plan.capacity = capacity;

  at::Tensor token_order = at::arange(num_tokens, long_opts);
  if (score_priority && num_tokens > 0) {
    SY_CHECK(topk_weights.defined(), "make_plan: score priority needs the gate weights");
    token_order = std::get<1>(topk_weights.select(/*dim=*/1, /*index=*/0)
                                  .detach()
                                  .sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  }
  // Choice-major order: [k, S] flattened.
  plan.token = token_order.repeat({top_k});
  plan.expert = topk_idx.index_select(0, token_order).t().reshape({-1}).to(at::kLong);
  plan.choice = at::arange(top_k, long_opts).repeat_interleave(num_tokens);

  const int64_t n = plan.expert.numel();
  plan.tokens_per_expert = at::zeros({num_experts}, long_opts);
  if (n == 0) {
    plan.slot = at::zeros({0}, long_opts);
    plan.kept = at::zeros({0}, long_opts.dtype(at::kBool));
    return plan;
  }
  plan.tokens_per_expert.index_add_(0, plan.expert, at::ones({n}, long_opts));
  auto sorted = plan.expert.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor& sorted_expert = std::get<0>(sorted);
  const at::Tensor& order = std::get<1>(sorted);
  at::Tensor first_of_expert = plan.tokens_per_expert.cumsum(0) - plan.tokens_per_expert;
  at::Tensor slot_sorted = at::arange(n, long_opts) - first_of_expert.index_select(0, sorted_expert);
  plan.slot = at::empty_like(slot_sorted).index_copy_(0, order, slot_sorted);
  // plan.slot[i] is now the arrival index of choice i at its expert.
  plan.kept = capacity > 0 ? plan.slot.lt(capacity) : at::ones_like(plan.slot, at::kBool);
  return plan;
}

}  // namespace sy
