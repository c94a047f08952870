// Activation checkpointing: run a piece of the forward without keeping its activations, and run
// it again in the backward.
//
// Note [Activation checkpointing]
// train.activation_checkpointing trades compute for memory:
//   moe    each MoE layer's experts (routed and shared) keep only their input rows: the hidden
//          activations [rows, d_ff] (the largest tensors of an MoE block) are recomputed in the
//          backward from them. The router, the dispatch and the all-to-all are outside the
//          recomputed piece, so under EP nothing is communicated again.
//   block  every block keeps only its input (and, in a seq2seq decoder, the encoder's output it
//          attends to): attention, router, dispatch, experts and combine are recomputed. Under EP
//          the recomputed MoE layer repeats its forward all-to-alls (dispatch and combine) in the
//          backward: about 1.5x the all-to-all traffic of a step (the log says so at start).
// checkpoint() is PyTorch's reentrant torch.utils.checkpoint in C++: a custom autograd function
// whose forward runs `fn` without grad and saves its inputs; its backward runs `fn` again with
// grad from those inputs and differentiates it with autograd::grad with respect to the inputs
// and the parameters `fn` uses, which are inputs of the function too, so that their gradients
// reach them through the ordinary graph (hooks on the parameters still fire, nothing
// accumulates behind the engine's back, and a checkpointed piece whose inputs need no gradient
// still trains its parameters).
//
// The recomputation must be the forward again, bit for bit, or the gradients would belong to
// another forward: the random draws repeat (`gen`, the rank's CPU generator, and on CUDA the
// device's default generator are set back to their state at the forward for the recomputation
// and put forward again after it), the autocast state is the forward's, and the MoE layer's
// side effects are assignments of the same values (its last statistics). So the losses and the
// gradients equal those without checkpointing up to float rounding (tests/model/recompute_test).
// Without grad mode (evaluation, the global-batch counting pass) fn simply runs. Not with
// train.cuda_graph (validate() refuses it): the generators' states are host-side values.
#pragma once

#include <functional>
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

namespace sy {

using RecomputeFn = std::function<std::vector<at::Tensor>(const std::vector<at::Tensor>& inputs)>;

// fn(inputs), its activations recomputed in the backward (Note [Activation checkpointing]).
// `params`: every tensor fn uses that needs a gradient besides `inputs` (the parameters of its
// modules). Outputs that fn leaves undefined stay undefined.
std::vector<at::Tensor> checkpoint(const RecomputeFn& fn, const std::vector<at::Tensor>& inputs,
                                   const std::vector<at::Tensor>& params, at::Generator* gen);

}  // namespace sy
