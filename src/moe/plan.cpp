// Slot assignment (no [S, E, C] one-hot tensors): a choice's slot is the number of earlier
// choices for its expert. Small plans count them with a running sum over an [E, n] one-hot;
// large ones sort the choices by expert, keeping their processing order, so that a choice's slot
// is its index in the sorted list minus the first index of its expert.
#include "moe/plan.h"

#include <algorithm>
#include <cmath>

#include <torch/torch.h>

#include "common/error.h"
#include "moe/fused.h"

namespace sy {

int64_t compute_capacity(double capacity_factor, int64_t top_k, int64_t num_tokens,
                         int64_t num_experts, int64_t min_capacity) {
  if (capacity_factor <= 0) return 0;  // dropless
  const double raw =
      capacity_factor * static_cast<double>(top_k * num_tokens) / static_cast<double>(num_experts);
  // The epsilon keeps exact products (1.25 * 2 * 8 / 4 = 5) from rounding up through fp error.
  // At most S, min_capacity's floor too: no expert receives more choices than there are tokens
  // (Note [Capacity scope]).
  const double wanted = std::max(std::ceil(raw - 1e-9), static_cast<double>(min_capacity));
  const auto cap = static_cast<int64_t>(std::min(wanted, static_cast<double>(num_tokens)));
  return std::max<int64_t>(cap, 1);
}

DispatchPlan make_plan(const at::Tensor& topk_idx, const at::Tensor& topk_weights,
                       int64_t num_experts, int64_t capacity, bool score_priority,
                       bool fused_kernel, const at::Tensor& routed) {
  SY_CHECK(topk_idx.dim() == 2, "make_plan: topk_idx must be [S, k]");
  const int64_t num_tokens = topk_idx.size(0);
  const int64_t top_k = topk_idx.size(1);
  const auto long_opts = topk_idx.options().dtype(at::kLong);
  DispatchPlan plan;
  plan.capacity = capacity;

  at::Tensor token_order = at::arange(num_tokens, long_opts);
  at::Tensor ordered_idx = topk_idx;  // [S, k] in processing order
  if (score_priority && num_tokens > 0) {
    SY_CHECK(topk_weights.defined(), "make_plan: score priority needs the gate weights");
    token_order = std::get<1>(topk_weights.select(/*dim=*/1, /*index=*/0)
                                  .detach()
                                  .sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
    ordered_idx = topk_idx.index_select(0, token_order);
    plan.tokens_in_order = false;
  }
  // Choice-major order: [k, S] flattened.
  plan.token = token_order.repeat({top_k});
  plan.expert = ordered_idx.t().reshape({-1}).to(at::kLong);

  const int64_t n = plan.expert.numel();
  if (n == 0) {
    plan.tokens_per_expert = at::zeros({num_experts}, long_opts);
    plan.slot = at::zeros({0}, long_opts);
    plan.kept = at::zeros({0}, long_opts.dtype(at::kBool));
    return plan;
  }
  // Choices of tokens that are not routed count as an extra expert E, so that they take no slot
  // of a real one.
  const at::Tensor routed_choice =
      routed.defined()
          ? routed.reshape(-1).to(plan.token.device(), at::kBool).index_select(0, plan.token)
          : at::Tensor();
  const at::Tensor counted =
      routed_choice.defined()
          ? at::where(routed_choice, plan.expert, at::full_like(plan.expert, num_experts))
          : plan.expert;
  const int64_t counted_experts = num_experts + (routed_choice.defined() ? 1 : 0);
  ArrivalSlots a =
      fused_kernel && plan.expert.is_cuda() && fused::available()
          ? fused::arrival_slots(counted, counted_experts)
          : arrival_slots(counted, counted_experts, n * counted_experts > kSlotsByCountLimit);
  plan.slot = a.slot;
  plan.tokens_per_expert = routed_choice.defined()
                               ? a.tokens_per_expert.narrow(0, 0, num_experts).contiguous()
                               : a.tokens_per_expert;
  plan.kept = capacity > 0 ? plan.slot.lt(capacity) : at::ones_like(plan.slot, at::kBool);
  if (routed_choice.defined()) {
    plan.kept = plan.kept.logical_and(routed_choice);
  }
  return plan;
}

at::Tensor kept_choices_per_expert(const DispatchPlan& plan) {
  return plan.capacity > 0 ? plan.tokens_per_expert.clamp_max(plan.capacity)
                           : plan.tokens_per_expert;
}

ArrivalSlots arrival_slots(const at::Tensor& expert, int64_t num_experts, bool by_sort) {
  const int64_t n = expert.numel();
  const auto long_opts = expert.options().dtype(at::kLong);
  ArrivalSlots a;
  if (!by_sort) {
    // counts[e, i] = choices for expert e among the first i + 1.
    const at::Tensor counts =
        at::arange(num_experts, long_opts).unsqueeze(1).eq(expert.unsqueeze(0)).cumsum(/*dim=*/1);
    a.slot = counts.gather(0, expert.unsqueeze(0)).squeeze(0) - 1;
    a.tokens_per_expert =
        n > 0 ? counts.select(1, n - 1).contiguous() : at::zeros({num_experts}, long_opts);
    return a;
  }
  a.tokens_per_expert =
      at::zeros({num_experts}, long_opts).index_add_(0, expert, at::ones({n}, long_opts));
  auto sorted = expert.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor& sorted_expert = std::get<0>(sorted);
  const at::Tensor& order = std::get<1>(sorted);
  const at::Tensor first_of_expert = a.tokens_per_expert.cumsum(0) - a.tokens_per_expert;
  const at::Tensor slot_sorted =
      at::arange(n, long_opts) - first_of_expert.index_select(0, sorted_expert);
  a.slot = at::empty_like(slot_sorted).index_copy_(0, order, slot_sorted);
  return a;
}

}  // namespace sy
