#include "common/device_timing.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <vector>

#include "common/error.h"

namespace sy {

double median_seconds(c10::Device device, int warmup, int reps, const std::function<void()>& work) {
  return median_seconds_each(device, warmup, reps, {work}).front();
}

std::vector<double> median_seconds_each(c10::Device device, int warmup, int reps,
                                        const std::vector<std::function<void()>>& works) {
  SY_CHECK(reps >= 1 && warmup >= 0, "timing: reps must be >= 1 and warmup >= 0");
  for (int i = 0; i < warmup; ++i) {
    for (const auto& work : works) work();
  }
  // The runs are queued back to back, each between its own pair of events, and read after the
  // last one: the host does not wait between runs, so a run's time is the device's, not the gap
  // while the host issues the next run's first kernels (as triton's do_bench times).
  const size_t n = works.size();
  std::vector<std::unique_ptr<DeviceTimer>> timers;
  for (size_t i = 0; i < n * static_cast<size_t>(reps); ++i) {
    timers.push_back(std::make_unique<DeviceTimer>(device));
  }
  for (int i = 0; i < reps; ++i) {
    for (size_t j = 0; j < n; ++j) {
      DeviceTimer& t = *timers[static_cast<size_t>(i) * n + j];
      t.start();
      works[j]();
      t.stop();
    }
  }
  std::vector<double> medians;
  for (size_t j = 0; j < n; ++j) {
    std::vector<double> times;
    for (int i = 0; i < reps; ++i)
      times.push_back(timers[static_cast<size_t>(i) * n + j]->seconds());
    std::sort(times.begin(), times.end());
    const size_t m = times.size();
    medians.push_back(m % 2 ? times[m / 2] : 0.5 * (times[m / 2 - 1] + times[m / 2]));
  }
  return medians;
}

#ifndef SWITCHYARD_CUDA
// CPU-only builds: the host clock, nothing to synchronize, no device memory.
struct DeviceTimer::Impl {
  std::chrono::steady_clock::time_point t0, t1;
};

DeviceTimer::DeviceTimer(c10::Device device) : impl_(std::make_unique<Impl>()) {
  SY_CHECK(device.is_cpu(), "this build has no CUDA: cannot time device ", device.str());
}
DeviceTimer::~DeviceTimer() = default;
void DeviceTimer::start() { impl_->t0 = std::chrono::steady_clock::now(); }
void DeviceTimer::stop() { impl_->t1 = std::chrono::steady_clock::now(); }
double DeviceTimer::seconds() {
  return std::chrono::duration<double>(impl_->t1 - impl_->t0).count();
}
void synchronize(c10::Device) {}
int64_t peak_memory_bytes(c10::Device) { return 0; }
void reset_peak_memory(c10::Device) {}
#endif

}  // namespace sy
