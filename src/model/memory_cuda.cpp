// available_memory() on CUDA devices (memory.h); compiled only in builds with CUDA.
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>

#include "model/memory.h"

namespace sy {

int64_t cuda_free_memory(c10::DeviceIndex index) {
  const c10::cuda::CUDAGuard guard(index < 0 ? c10::DeviceIndex{0} : index);
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the error state
    return -1;
  }
  return static_cast<int64_t>(free_bytes);
}

}  // namespace sy
