// Work beside the main CUDA stream: the shared experts (Note [Shared experts on a side stream]).
#pragma once

#include <functional>

#include <ATen/core/Tensor.h>

namespace sy {

// Note [Shared experts on a side stream]: the shared experts read the layer's input and nothing
// the routed path writes, so on CUDA they run on a second stream while the router, the plan, the
// permute, the dispatch all-to-all and the routed experts run on the current one; their result is
// joined back before the sum. The side stream first waits for the current stream's work (the
// input must be ready), and the current stream waits for the side stream before anything after
// this call. Autograd runs each op's backward on the stream of its forward, so the shared
// experts' backward overlaps the routed backward in the same way. Captured in a CUDA graph, the
// two events make the usual fork and join of a multi-stream capture.
//
// Runs `fn` on a side stream of `like`'s device when `like` is a CUDA tensor of a CUDA build,
// else in place; returns fn's result, ready for the current stream.
at::Tensor run_beside(const at::Tensor& like, const std::function<at::Tensor()>& fn);

}  // namespace sy
