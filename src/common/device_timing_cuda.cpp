// CUDA side of common/device_timing.h (CUDA builds only).
#include <chrono>

#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>

#include "common/device_timing.h"
#include "common/error.h"

namespace sy {

struct DeviceTimer::Impl {
  bool cuda = false;
  at::cuda::CUDAEvent begin{cudaEventDefault}, end{cudaEventDefault};  // timing enabled
  std::chrono::steady_clock::time_point t0, t1;
};

DeviceTimer::DeviceTimer(c10::Device device) : impl_(std::make_unique<Impl>()) {
  impl_->cuda = device.is_cuda();
}
DeviceTimer::~DeviceTimer() = default;

void DeviceTimer::start() {
  if (impl_->cuda) {
    impl_->begin.record();
  } else {
    impl_->t0 = std::chrono::steady_clock::now();
  }
}

void DeviceTimer::stop() {
  if (impl_->cuda) {
    impl_->end.record();
  } else {
    impl_->t1 = std::chrono::steady_clock::now();
  }
}

double DeviceTimer::seconds() {
  if (!impl_->cuda) return std::chrono::duration<double>(impl_->t1 - impl_->t0).count();
  impl_->end.synchronize();
  return impl_->begin.elapsed_time(impl_->end) / 1000.0;
}

void synchronize(c10::Device device) {
  if (device.is_cuda()) c10::cuda::device_synchronize();
}

int64_t peak_memory_bytes(c10::Device device) {
  if (!device.is_cuda()) return 0;
  const auto index = device.has_index() ? device.index() : c10::cuda::current_device();
  // allocated_bytes[0]: the aggregate over small and large pools.
  return c10::cuda::CUDACachingAllocator::getDeviceStats(index).allocated_bytes[0].peak;
}

void reset_peak_memory(c10::Device device) {
  if (!device.is_cuda()) return;
  const auto index = device.has_index() ? device.index() : c10::cuda::current_device();
  c10::cuda::CUDACachingAllocator::resetPeakStats(index);
}

}  // namespace sy
