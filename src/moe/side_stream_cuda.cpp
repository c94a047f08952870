// run_beside on CUDA: see side_stream.h.
#include "moe/side_stream.h"

#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace sy {

at::Tensor run_beside(const at::Tensor& like, const std::function<at::Tensor()>& fn) {
  if (!like.is_cuda()) return fn();
  const c10::DeviceIndex device = like.device().index();
  c10::cuda::CUDAStream main = c10::cuda::getCurrentCUDAStream(device);
  c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device);
  at::cuda::CUDAEvent ready;
  ready.record(main);
  ready.block(side);
  at::Tensor out;
  {
    c10::cuda::CUDAStreamGuard guard(side);
    out = fn();
  }
  at::cuda::CUDAEvent done;
  done.record(side);
  done.block(main);
  // Allocated on the side stream, used (and freed) on the main one.
  out.record_stream(main);
  return out;
}

}  // namespace sy
