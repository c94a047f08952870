// Internal to the watchdog (watchdog.cpp, and watchdog_cuda.cpp in CUDA builds).
#pragma once

#include <memory>

namespace sy::detail {

// A marker recorded after asynchronous device work; done() polls without blocking and may be
// called from any thread.
class Completion {
 public:
  virtual ~Completion() = default;
  virtual bool done() = 0;
};

#ifdef SWITCHYARD_CUDA
// An event recorded on LibTorch's current CUDA stream of `device` (watchdog_cuda.cpp).
std::unique_ptr<Completion> record_cuda_completion(int device);
#endif

}  // namespace sy::detail
