// A training step's device work as one CUDA graph (train.cuda_graph; Note [CUDA graph step] in
// step.cpp). Compiled in both toolchains: the CUDA side is step_graph_cuda.cpp, and a CPU-only
// build has a stub that refuses to be constructed.
#pragma once

#include <functional>
#include <memory>

#include <c10/core/Device.h>

namespace sy {

class StepGraph {
 public:
  // Makes a side stream of `device` the current stream until destruction: a capture needs a
  // stream other than the default one, and the eager steps before it run on the same stream so
  // that the libraries' per-stream state (cuBLAS workspaces) exists before the capture.
  explicit StepGraph(c10::Device device);
  ~StepGraph();
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;

  // Records what `step` launches on the device; nothing runs. Autocast's weight-cast cache is off
  // during the capture (a cached cast would hold the weights of the capture's step). Throws an
  // error naming train.cuda_graph when the work cannot be captured (a host synchronization, a
  // copy from pageable host memory); the capture is then ended and discarded.
  void capture(const std::function<void()>& step);
  bool captured() const;
  // Runs the recorded work once more, on the current stream. The tensors the captured step
  // produced (its outputs, the gradients) hold this replay's values afterwards.
  void replay();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sy
