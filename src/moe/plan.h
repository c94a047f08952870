// The dispatch plan: where each (token, choice) goes inside its expert's buffer, and which
// choices are dropped. Pure index arithmetic, no data movement; tested against hand tables.
//
// Note [Capacity scope]: capacity is per source rank and per expert,
//   capacity = max(min(max(ceil(capacity_factor * top_k * S / num_experts), min_capacity), S), 1),
// S = tokens of this rank's micro-batch. Each rank decides its drops from its own tokens alone,
// so dispatch buffers have a fixed shape [E, C, H] and no count exchange is needed. A token
// chooses an expert at most once, so no expert receives more than S choices: a factor or a
// min_capacity whose capacity would exceed S is clamped to S (it drops nothing either way, and
// the buffer keeps no empty rows; the run logs it once), and a huge factor cannot overflow the
// integer capacity.
// capacity_factor <= 0 means dropless (capacity 0 below: nothing is dropped).
//
// Note [Slot order]: choices are numbered choice-major, all first choices in token order, then
// all second choices in token order, ... (GShard). With priority "score" (batch-prioritized
// routing, Riquelme et al. 2021) tokens are instead taken in order of decreasing top-1 weight,
// still first choices before second choices. An expert's slots are filled in that order; a
// choice whose slot is >= capacity is dropped and contributes zero (the residual carries it).
// Tokens left out of routing (Note [Padding out of routing] in moe_layer.h) take no slot: the
// slots count the routed tokens' choices alone, and the others' choices are never kept.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace sy {

int64_t compute_capacity(double capacity_factor, int64_t top_k, int64_t num_tokens,
                         int64_t num_experts, int64_t min_capacity);

struct DispatchPlan {
  // All [S * k], in the processing order of Note [Slot order].
  at::Tensor token;   // source token of each choice (choice c of token order[t] is row c*S + t)
  at::Tensor expert;  // its expert
  at::Tensor slot;    // its position in the expert's buffer (arrival order)
  at::Tensor kept;    // bool: routed and slot < capacity (every routed choice when dropless)
  at::Tensor tokens_per_expert;  // [E] int64: routed choices of each expert, before drops
  int64_t capacity = 0;          // 0: dropless
  // True when tokens are processed in their own order (no score priority): token is [0, S)
  // repeated k times, so gathering the rows is a repeat and combining them a sum over k.
  bool tokens_in_order = true;
};

// topk_idx: [S, k] int64. topk_weights: [S, k], read only for priority "score" (may be
// undefined otherwise). capacity 0: dropless. fused_kernel: count the slots with the plan kernel
// when topk_idx is on CUDA and the build has it (Note [Fused MoE kernels]); the same integers.
// routed: [S] bool, the tokens that are routed (undefined: all); the others' choices keep their
// expert ids but take no slot, are not kept and are not counted in tokens_per_expert.
DispatchPlan make_plan(const at::Tensor& topk_idx, const at::Tensor& topk_weights,
                       int64_t num_experts, int64_t capacity, bool score_priority,
                       bool fused_kernel = false, const at::Tensor& routed = {});

// The kept choices of each expert: tokens_per_expert capped at the capacity (all of them when
// dropless). [E] int64; the group sizes when the kept rows are packed by expert.
at::Tensor kept_choices_per_expert(const DispatchPlan& plan);

// Each choice's arrival index at its expert (slot) and the choices per expert, for expert ids
// [n] in processing order. Two ways to the same integers here (a third is the CUDA plan kernel,
// fused::arrival_slots): running counts over a one-hot
// [E, n] (a handful of small kernels; make_plan's way while E * n <= kSlotsByCountLimit), or one
// stable sort by expert (O(n) memory, for larger plans).
struct ArrivalSlots {
  at::Tensor slot;               // [n] int64
  at::Tensor tokens_per_expert;  // [E] int64
};
constexpr int64_t kSlotsByCountLimit = int64_t{1} << 22;  // 32 MiB of int64 counts
ArrivalSlots arrival_slots(const at::Tensor& expert, int64_t num_experts, bool by_sort);

}  // namespace sy
