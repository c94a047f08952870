// CUDA side of train/step_graph.h (CUDA builds only).
#include <optional>
#include <string>

#include <ATen/autocast_mode.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "common/error.h"
#include "train/step_graph.h"

namespace sy {

struct StepGraph::Impl {
  c10::cuda::CUDAStream stream;
  c10::cuda::CUDAStreamGuard guard;  // the side stream is current while the graph lives
  std::optional<at::cuda::CUDAGraph> graph;
  explicit Impl(c10::cuda::CUDAStream s) : stream(s), guard(s) {}
};

StepGraph::StepGraph(c10::Device device) {
  SY_CHECK(device.is_cuda(), "train.cuda_graph: CUDA graphs need a CUDA device, not ",
           device.str());
  impl_ = std::make_unique<Impl>(
      c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index()));
}

StepGraph::~StepGraph() = default;

bool StepGraph::captured() const { return impl_->graph.has_value(); }

void StepGraph::capture(const std::function<void()>& step) {
  SY_CHECK(!captured(), "StepGraph: the step is captured once");
  impl_->stream.synchronize();
  const bool cache = at::autocast::is_autocast_cache_enabled();
  at::autocast::set_autocast_cache_enabled(false);
  at::cuda::CUDAGraph& graph = impl_->graph.emplace();  // not movable: built in place
  std::string failure;
  try {
    graph.capture_begin();
    try {
      step();
    } catch (const std::exception& e) {
      failure = e.what();
      try {
        graph.capture_end();  // ends the (invalidated) capture; its own error adds nothing
      } catch (const std::exception&) {
      }
    }
    if (failure.empty()) graph.capture_end();
  } catch (const std::exception& e) {
    if (failure.empty()) failure = e.what();
  }
  at::autocast::set_autocast_cache_enabled(cache);
  if (!failure.empty()) {
    impl_->graph.reset();
    failure = failure.substr(0, failure.find('\n'));
    SY_THROW("train.cuda_graph: the training step cannot be captured as a CUDA graph (", failure,
             "). Steps that synchronize with the host or change shape from step to step cannot be "
             "captured, e.g. dropless MoE layers without the grouped GEMM (bf16 on sm90); set "
             "train.cuda_graph false for this run");
  }
}

void StepGraph::replay() {
  SY_CHECK(captured(), "StepGraph: replay before capture");
  impl_->graph->replay();
}

}  // namespace sy
