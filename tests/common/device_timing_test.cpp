// DeviceTimer and median_seconds on the CPU (the host clock); the CUDA side runs in the GPU
// benchmarks.
#include <chrono>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "common/device_timing.h"

namespace sy {
namespace {

TEST(DeviceTiming, TimerCoversTheWork) {
  DeviceTimer t(c10::Device(c10::kCPU));
  t.start();
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  t.stop();
  EXPECT_GE(t.seconds(), 0.029);
}

TEST(DeviceTiming, MedianIsTheMiddleRun) {
  // Runs sleep 5, 60 and 30 ms after one untimed warm-up; the median is the 30 ms run, so at least
  // 29 ms and below the 60 ms run.
  const std::vector<int> ms = {0, 5, 60, 30};
  size_t call = 0;
  const double s = median_seconds(c10::Device(c10::kCPU), 1, 3, [&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms.at(call++)));
  });
  EXPECT_EQ(call, 4u);
  EXPECT_GE(s, 0.029);
  EXPECT_LT(s, 0.060);
}

TEST(DeviceTiming, NoDeviceMemoryOnTheCpu) {
  reset_peak_memory(c10::Device(c10::kCPU));
  EXPECT_EQ(peak_memory_bytes(c10::Device(c10::kCPU)), 0);
}

}  // namespace
}  // namespace sy
