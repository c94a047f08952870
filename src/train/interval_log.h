// The log interval (Note [No host sync in the step]): the step's losses and router statistics
// are summed on the device over train.log_interval steps, then all-reduced once, copied to the
// host once, printed as one line and written to metrics.jsonl. Also the step clock the ms/step
// and tokens/s figures come from.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

namespace sy {

struct Run;

// What one step produced on this rank, on the device (sums over its micro-batches).
struct StepOutput {
  at::Tensor loss, ce, aux, z, dropped, load;  // [] each; load: [num_moe, E] choices per expert
  at::Tensor flags;                            // [2]: loss, gradient norm not finite (this rank)
  at::Tensor grad_norm;                        // [] the global norm before clipping
  bool applied = false;  // the optimizer stepped (false: a skipped non-finite step)
  // A stop requested by a signal on any rank (Note [Clean stop on a signal]): its number, the
  // same on every rank after this step's exchange; 0: none.
  int stop_signal = 0;
};

// Sums over the interval, on the device; reduced and read at log time.
struct IntervalStats {
  at::Tensor ce, aux, z;  // [] sums over micro-batches
  at::Tensor dropped;     // [] choices dropped
  at::Tensor load;        // [num_moe_layers, E] choices per expert
  int64_t micro_batches = 0, steps = 0;
  double seconds = 0;  // training time (evaluation excluded)

  // Zeros on `device` for `num_moe` layers of `num_experts` experts.
  static IntervalStats zeros(c10::Device device, int64_t num_moe, int64_t num_experts);
  // Adds an applied step of `micro_batches` micro-batches.
  void add(const StepOutput& step, int64_t micro_batches);

  // What a checkpoint's RankState carries of the interval, by key: one table for save and load.
  std::vector<std::pair<const char*, at::Tensor*>> saved_tensors();
  std::vector<std::pair<const char*, int64_t*>> saved_ints();
};

// Wall time of the steps. Step time excludes evaluation and the first step of the process
// (allocator and kernel warm-up); CUDA work is drained before the clock is read at the first and
// last step and before an evaluation, so asynchronous kernels are charged to the right side.
class StepClock {
 public:
  void start() { start_ = std::chrono::steady_clock::now(); }
  // The step's seconds so far; `first` steps are not counted in the steady time.
  double stop(bool first);
  // After a host read drained the device mid-interval: re-times the last step up to now and
  // returns the seconds added to it.
  double resync();
  double steady_seconds() const { return steady_s_; }  // steps after the run's first

 private:
  std::chrono::steady_clock::time_point start_;
  double step_s_ = 0;
  double steady_s_ = 0;
  bool first_ = false;
};

// Adds each step to the interval and, every train.log_interval steps (and after the last),
// prints the interval's line and writes it to metrics.jsonl.
class IntervalLog {
 public:
  explicit IntervalLog(Run& run) : run_(run) {}
  void add(const StepOutput& step, double step_seconds);
  bool due(int64_t steps_done) const;
  // One all-reduce and one host copy: the line of the steps up to `steps_done` at rate `lr`.
  void write(int64_t steps_done, double lr, StepClock& clock);

 private:
  Run& run_;
  at::Tensor grad_norm_;  // the last step's
};

}  // namespace sy
