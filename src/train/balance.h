// Load-balancing steps of the trainer that span the whole global batch.
#pragma once

#include <ATen/core/Tensor.h>

#include "model/gpt.h"
#include "parallel/communicator.h"

namespace sy {

// Note [Global-batch aux loss] (moe.aux_loss_scope global_batch, Qwen's global-batch balancing):
// f_i of the switch aux loss is expert i's share of the choices of the whole global batch, every
// micro-batch of the step on every rank, while P_i stays the mean score over the micro-batch's
// own tokens. A micro-batch's backward runs before the later micro-batches are even routed, so
// the counts come from a pass of their own first: every micro-batch forward without gradients
// (routing is deterministic: validation refuses dropout, routing noise and jitter with this
// scope), the choices per expert of every MoE layer summed over the micro-batches, then over all
// ranks by one all-reduce of integers. Each router then takes f from those counts. The
// micro-batches' losses E * sum_i f_i P_i, averaged over micro-batches and ranks as the gradient
// sync averages them, are E * sum_i f_i P_i of the global batch, whatever the layout (EP size, DP
// size, gradient accumulation). Cost: one forward without gradients per step, about a third of
// a step's compute.
//
// xs: [A, B, T] token ids, the rank's A micro-batches of the step, on the model's device. Runs
// the model in training mode under the caller's autocast, as the step will.
void count_global_choices(GPTImpl& model, const at::Tensor& xs, Communicator& world);

}  // namespace sy
