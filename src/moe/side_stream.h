// Work beside the main CUDA stream: the shared experts (Note [Shared experts on a side stream])
// and the chunked all-to-alls (Note [Chunked all-to-all] in moe_layer.cpp).
#pragma once

#include <functional>
#include <memory>

#include <ATen/core/Tensor.h>

namespace sy {

// Note [Shared experts on a side stream]: the shared experts read the layer's input and nothing
// the routed path writes, so on CUDA they run on a second stream beside the routed path (router,
// plan, permute, all-to-alls, routed experts, combine) on the current one. The side stream waits
// for a fork point recorded where the input is ready (before the router); the current stream
// waits for the side stream before the sum. Autograd runs each op's backward on the stream of its
// forward, and its engine takes ready nodes newest first: so the shared experts' ops are given
// to the side stream *after* the routed path has been enqueued (still waiting only for the fork
// point), which makes them the newest nodes, and their backward is enqueued on the side stream
// first, beside the whole routed backward. Enqueued first in the forward (an earlier order),
// their backward came last, after the routed backward had been enqueued, and on an H100
// ran after it with nothing beside it (bench/results/2026-12-05-h100-c3-trace-and-bias-act-
// backward.md). In the forward the side work then overlaps whatever of the routed path the GPU
// has not yet run when the host enqueues it. On the fused paths the shared experts are enqueued
// after the routed experts but before the combine, which adds their output in its own pass (no
// separate sum): their backward is then enqueued right after the combine's, still before the
// routed experts' backward. Captured in a CUDA graph, the two events make the
// usual fork and join of a multi-stream capture.

enum class SideStream {
  kCurrent,  // none: the work runs in place, on the current stream
  kCompute,  // the device's one compute side stream (from LibTorch's pool, normal priority)
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

// A point of the current stream's work (where the side work's input is ready), recorded when
// made: work started from it later waits for that point only, not for what the current stream
// was given in between. Holds the input.
struct ForkPoint {
  at::Tensor input;
  std::shared_ptr<void> ready;  // CUDA: the event recorded on the current stream
};
ForkPoint fork_point(const at::Tensor& input);

// Runs fn(fork.input) on a side stream of the input's device once the current stream's work up
// to the fork point is done, when the input is a CUDA tensor of a CUDA build and stream is not
// kCurrent; otherwise runs it in place, at once.
Pending start_beside(ForkPoint fork, SideStream stream,
                     const std::function<at::Tensor(const at::Tensor&)>& fn);
// The fork point is now (none is recorded for work that runs in place).
inline Pending start_beside(const at::Tensor& input, SideStream stream,
                            const std::function<at::Tensor(const at::Tensor&)>& fn) {
  return start_beside(
      stream == SideStream::kCurrent ? ForkPoint{input, nullptr} : fork_point(input), stream, fn);
}

// The current stream waits for the work; returns its result, ready for the current stream.
at::Tensor join(Pending&& pending);

// start_beside + join: fn runs on a pool stream, overlapping whatever the current stream is
// given between the two (the routed path, for the shared experts).
inline at::Tensor run_beside(const at::Tensor& input,
                             const std::function<at::Tensor(const at::Tensor&)>& fn) {
  return join(start_beside(input, SideStream::kCompute, fn));
}

}  // namespace sy
