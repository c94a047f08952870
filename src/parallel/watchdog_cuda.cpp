// CUDA completion markers for the watchdog (watchdog.cpp): an NCCL collective returns once it is
// enqueued, so the watchdog tracks an event recorded right after it on the same stream (LibTorch's
// current stream of the device, where NcclCommunicator enqueues) and polls it with
// cudaEventQuery, which never blocks and may be called from any thread. Compiled only in CUDA
// builds (CMake skips *cuda*.cpp otherwise).
#include <cuda_runtime_api.h>

#include <memory>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "common/error.h"
#include "parallel/watchdog_internal.h"

namespace sy::detail {

namespace {

class CudaCompletion final : public Completion {
 public:
  explicit CudaCompletion(int device) : device_(device) {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
    cudaError_t rc = cudaEventCreateWithFlags(&event_, cudaEventDisableTiming);
    SY_CHECK(rc == cudaSuccess, "watchdog: cudaEventCreateWithFlags failed on cuda:", device_, ": ",
             cudaGetErrorString(rc));
    const cudaStream_t stream =
        c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device_)).stream();
    rc = cudaEventRecord(event_, stream);
    if (rc != cudaSuccess) {
      cudaEventDestroy(event_);
      SY_THROW("watchdog: cudaEventRecord failed on cuda:", device_, ": ", cudaGetErrorString(rc));
    }
  }
  ~CudaCompletion() override {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
    cudaEventDestroy(event_);
  }
  CudaCompletion(const CudaCompletion&) = delete;
  CudaCompletion& operator=(const CudaCompletion&) = delete;

  // cudaErrorNotReady: still pending (cleared from this thread's last error, as LibTorch's
  // CUDAEvent::query does). Any other error: the work cannot complete later, so it is not
  // waited for; the failure surfaces on the rank's own thread at its next CUDA call.
  bool done() override {
    const cudaError_t rc = cudaEventQuery(event_);
    if (rc == cudaErrorNotReady) {
      (void)cudaGetLastError();
      return false;
    }
    return true;
  }

 private:
  int device_;
  cudaEvent_t event_ = nullptr;
};

}  // namespace

std::unique_ptr<Completion> record_cuda_completion(int device) {
  return std::make_unique<CudaCompletion>(device);
}

}  // namespace sy::detail
