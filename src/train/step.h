// One training step of one rank: forward and backward of every micro-batch, the gradient sync,
// the global gradient norm and clipping, the non-finite agreement across ranks (Note
// [Non-finite steps]) and the optimizer step; with train.cuda_graph the step's device work is
// captured once and replayed (Note [CUDA graph step]) behind the same call.
#pragma once

#include <cstdint>
#include <memory>

#include <ATen/core/Tensor.h>

#include "train/interval_log.h"

namespace sy {

struct Run;
class StepGraph;

// The micro-batches of one step: [grad_accum, batch, block] token ids and targets, on the CPU,
// and with data.tasks each sequence's task [grad_accum, batch].
struct StepBatches {
  at::Tensor x, y;
  at::Tensor task;  // undefined without data.tasks
};

// train.grad_accum micro-batches from this rank's training stream.
StepBatches next_batches(Run& run);

class StepRunner {
 public:
  explicit StepRunner(Run& run);
  ~StepRunner();
  StepRunner(const StepRunner&) = delete;
  StepRunner& operator=(const StepRunner&) = delete;

  // Step `step` (0-based) at learning rate `lr`. A step whose loss or gradient norm is NaN/Inf on
  // any rank is skipped on every rank (train.skip_nonfinite) or ends the run with an error.
  StepOutput run(const StepBatches& batches, int64_t step, double lr);

 private:
  // Forward and backward of every micro-batch, gradient sync, norm and this rank's flags.
  StepOutput device_step(const at::Tensor& xs, const at::Tensor& ys, const at::Tensor& tasks);
  // Eager, or captured and replayed as a CUDA graph.
  StepOutput forward_backward(const StepBatches& batches, int64_t step);
  // Every rank learns whether any rank's loss or the gradient norm is not finite; "" if none.
  // Also sets out.stop_signal: a stop any rank was asked for (Note [Clean stop on a signal]).
  std::string nonfinite_reason(StepOutput& out);

  Run& run_;
  std::unique_ptr<StepGraph> graph_;
  at::Tensor graph_x_, graph_y_, graph_task_;  // the captured step's inputs
  StepOutput graph_out_;                       // ... and outputs
  at::Tensor loss_gate_;                       // debug.nan_step: the loss is multiplied by it
};

}  // namespace sy
