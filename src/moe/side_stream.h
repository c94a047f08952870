// Work beside the main CUDA stream: the shared experts (Note [Shared experts on a side stream])
// and the chunked all-to-alls (Note [Chunked all-to-all] in moe_layer.cpp).
#pragma once

#include <functional>
#include <memory>

#include <ATen/core/Tensor.h>

namespace sy {

// Note [Shared experts on a side stream]: the shared experts read the layer's input and nothing
// the routed path writes, so on CUDA they run on a second stream while the router, the plan, the
// permute, the dispatch all-to-all and the routed experts run on the current one; their result is
// joined back before the sum. The side stream first waits for the current stream's work (the
// input must be ready), and the current stream waits for the side stream before anything after
// the join. Autograd runs each op's backward on the stream of its forward, so the shared
// experts' backward overlaps the routed backward in the same way. Captured in a CUDA graph, the
// two events make the usual fork and join of a multi-stream capture.

enum class SideStream {
  kCurrent,  // none: the work runs in place, on the current stream
  kCompute,  // a stream from LibTorch's pool
  // The device's one communication stream (high priority): collectives started on it run in the
  // order they were started, which every rank of a communicator must share.
  kComm,
};

// Work started beside the current stream, whose result the current stream must not read before
// join(). Holds the work's input until then, so that its memory is not reused while the side
// stream may still read it.
struct Pending {
  at::Tensor value;
  at::Tensor input;
  std::shared_ptr<void> done;  // CUDA: the event recorded on the side stream after the work
};

// Runs fn(input) on a side stream of input's device once the current stream's work so far is
// done, when input is a CUDA tensor of a CUDA build and stream is not kCurrent; otherwise runs
// it in place, at once.
Pending start_beside(const at::Tensor& input, SideStream stream,
                     const std::function<at::Tensor(const at::Tensor&)>& fn);

// The current stream waits for the work; returns its result, ready for the current stream.
at::Tensor join(Pending&& pending);

// start_beside + join: fn runs on a pool stream, overlapping whatever the current stream is
// given between the two (the routed path, for the shared experts).
inline at::Tensor run_beside(const at::Tensor& input,
                             const std::function<at::Tensor(const at::Tensor&)>& fn) {
  return join(start_beside(input, SideStream::kCompute, fn));
}

}  // namespace sy
