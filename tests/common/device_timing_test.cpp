// DeviceTimer, median_seconds and median_seconds_each on the CPU (the host clock); the CUDA side
// runs in the GPU benchmarks.
#include <chrono>
#include <string>
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

TEST(DeviceTiming, PiecesRunInTurnEachWithItsMedian) {
  // Two pieces after one warm-up of each: a runs 2, 40, 20, 9 ms and b 50, 1, 30, 90 ms (the
  // warm-ups first); they must alternate a, b, a, b, ... and each gets its own median: a's of
  // 40, 20, 9 is 20 ms, b's of 1, 30, 90 is 30 ms.
  const std::vector<int> a_ms = {2, 40, 20, 9}, b_ms = {50, 1, 30, 90};
  size_t a_calls = 0, b_calls = 0;
  std::string order;
  const std::vector<double> s = median_seconds_each(
      c10::Device(c10::kCPU), 1, 3,
      {[&] {
         order += 'a';
         std::this_thread::sleep_for(std::chrono::milliseconds(a_ms.at(a_calls++)));
       },
       [&] {
         order += 'b';
         std::this_thread::sleep_for(std::chrono::milliseconds(b_ms.at(b_calls++)));
       }});
  EXPECT_EQ(order, "abababab");
  ASSERT_EQ(s.size(), 2u);
  EXPECT_GE(s[0], 0.019);
  EXPECT_LT(s[0], 0.040);
  EXPECT_GE(s[1], 0.029);
  EXPECT_LT(s[1], 0.090);
}

TEST(DeviceTiming, NoDeviceMemoryOnTheCpu) {
  reset_peak_memory(c10::Device(c10::kCPU));
  EXPECT_EQ(peak_memory_bytes(c10::Device(c10::kCPU)), 0);
}

}  // namespace
}  // namespace sy
