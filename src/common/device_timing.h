// Timing and memory of device work (docs/bench.md): CUDA events on LibTorch's current stream for
// CUDA devices (the GPU's own clock, no host overhead counted once the GPU is busy), the host's
// steady clock for the CPU. Compiled in both toolchains; the CUDA parts live in
// device_timing_cuda.cpp (Note [Two toolchains]).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include <c10/core/Device.h>

namespace sy {

class DeviceTimer {
 public:
  explicit DeviceTimer(c10::Device device);
  ~DeviceTimer();
  DeviceTimer(const DeviceTimer&) = delete;
  DeviceTimer& operator=(const DeviceTimer&) = delete;

  void start();      // records the start event (CPU: reads the clock)
  void stop();       // records the stop event (CPU: reads the clock)
  double seconds();  // between start and stop; waits for the stop event

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Median seconds of `reps` timed runs of `work` after `warmup` untimed ones, each run timed on
// its own by a DeviceTimer. The runs are queued back to back and the timers read at the end, so
// on a GPU the host issuing a run does not show as idle device time.
double median_seconds(c10::Device device, int warmup, int reps, const std::function<void()>& work);

// The same for several pieces of work run in turn: each repetition runs every piece once, each
// timed on its own, so that all of them are measured under the same conditions of the device
// (its clocks move with its power and temperature); the median of each piece's runs, in order.
std::vector<double> median_seconds_each(c10::Device device, int warmup, int reps,
                                        const std::vector<std::function<void()>>& works);

// Waits for the device's queued work (CUDA: the device synchronizes; CPU: nothing to wait for).
void synchronize(c10::Device device);

// Peak bytes held by LibTorch's caching allocator on `device` since the last reset (tensors, not
// the allocator's cached free blocks); 0 for the CPU.
int64_t peak_memory_bytes(c10::Device device);
void reset_peak_memory(c10::Device device);

}  // namespace sy
