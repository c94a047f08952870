// start_beside and join on CUDA: see side_stream.h.
#include <array>
#include <mutex>
#include <optional>

#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "moe/side_stream.h"

namespace sy {
namespace {

constexpr int kMaxDevices = 64;

// One stream of each kind per device, made on first use and kept for the process. The compute
// side stream is fixed too (not a new pool stream each call): autograd keeps a weight's
// gradient accumulator from the stream it was made on, and with a different side stream each
// step LibTorch 2.11 warned of the mismatch ("The AccumulateGrad node's stream does not match
// ...") and added a cross-stream wait for the shared experts' weights.
c10::cuda::CUDAStream side_stream(c10::DeviceIndex device, SideStream kind) {
  static std::mutex mutex;
  static std::array<std::optional<c10::cuda::CUDAStream>, 2 * kMaxDevices> streams;
  std::lock_guard<std::mutex> lock(mutex);
  const bool comm = kind == SideStream::kComm;
  std::optional<c10::cuda::CUDAStream>& s =
      streams.at(static_cast<size_t>(device) * 2 + (comm ? 1 : 0));
  if (!s) s = c10::cuda::getStreamFromPool(/*isHighPriority=*/comm, device);
  return *s;
}

}  // namespace

ForkPoint fork_point(const at::Tensor& input) {
  if (!input.is_cuda()) return ForkPoint{input, nullptr};
  auto ready = std::make_shared<at::cuda::CUDAEvent>();
  ready->record(c10::cuda::getCurrentCUDAStream(input.device().index()));
  return ForkPoint{input, std::move(ready)};
}

Pending start_beside(ForkPoint fork, SideStream stream,
                     const std::function<at::Tensor(const at::Tensor&)>& fn) {
  const at::Tensor& input = fork.input;
  if (!fork.ready || stream == SideStream::kCurrent) {
    return Pending{fn(input), at::Tensor(), nullptr};
  }
  const c10::DeviceIndex device = input.device().index();
  c10::cuda::CUDAStream side = side_stream(device, stream);
  static_cast<at::cuda::CUDAEvent*>(fork.ready.get())->block(side);
  Pending p;
  {
    c10::cuda::CUDAStreamGuard guard(side);
    p.value = fn(input);
  }
  auto done = std::make_shared<at::cuda::CUDAEvent>();
  done->record(side);
  p.input = input;  // freed by the caller only after join(), when the side stream is done with it
  p.done = std::move(done);
  return p;
}

at::Tensor join(Pending&& pending) {
  if (!pending.done) return std::move(pending.value);
  at::Tensor out = std::move(pending.value);
  const c10::DeviceIndex device = out.device().index();
  c10::cuda::CUDAStream main = c10::cuda::getCurrentCUDAStream(device);
  static_cast<at::cuda::CUDAEvent*>(pending.done.get())->block(main);
  // Allocated on the side stream, used (and freed) on the main one.
  out.record_stream(main);
  return out;
}

}  // namespace sy
