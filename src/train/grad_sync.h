// Gradient synchronisation and clipping for expert-parallel training.
//
// Note [Gradient scaling]: the objective is the mean of the ranks' losses, L = (1/W) sum_r L_r.
// A dense parameter's gradient is therefore the world sum of local gradients over W. An expert
// already receives, through the all-to-all's backward, the gradients of every token of its EP
// group; replicas of the same expert sit at the same position of each EP group (its DP group),
// so its gradient is the DP-group sum over W. Then EP=N training equals the same global batch
// on one process.
//
// The global norm counts every parameter once: dense gradients are identical on every rank
// after the sync, and each expert lives once per EP group, so
//   norm^2 = sum(dense^2) + all_reduce_ep(sum(local expert^2)).
#pragma once

#include <vector>

#include <ATen/core/Tensor.h>

#include "parallel/groups.h"

namespace sy {

// The parameters that train (frozen ones are left out: Note [Freezing] in freeze.h).
struct ParamSet {
  std::vector<at::Tensor> dense;
  std::vector<at::Tensor> expert;
  at::Tensor anchor;  // any parameter of the model: the norm's device when both lists are empty
};

// Missing gradients (a parameter unused this step) are filled with zeros so that every rank
// reduces buffers of the same layout.
void sync_gradients(ParamSet& params, const ParallelGroups& groups);

// Returns the global gradient norm (a device scalar, no host sync) and, if max_norm > 0,
// scales every gradient by min(1, max_norm / (norm + 1e-6)).
at::Tensor clip_grad_norm(ParamSet& params, const ParallelGroups& groups, double max_norm);

}  // namespace sy
