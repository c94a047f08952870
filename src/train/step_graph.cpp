#include "train/step_graph.h"

#include "common/error.h"

namespace sy {

#ifndef SWITCHYARD_CUDA
// CPU-only builds: no graphs (the trainer asks for one only on a CUDA device).
struct StepGraph::Impl {};
StepGraph::StepGraph(c10::Device device) {
  SY_THROW("train.cuda_graph: this build of Switchyard has no CUDA support (device ", device.str(),
           ")");
}
StepGraph::~StepGraph() = default;
void StepGraph::capture(const std::function<void()>&) {}
bool StepGraph::captured() const { return false; }
void StepGraph::replay() {}
#endif

}  // namespace sy
