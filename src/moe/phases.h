// Where the MoE layer's forward time goes, for `switchyard bench layer`'s breakdown.
//
// The layer calls phase_mark("router") etc. at the end of each phase. Normally that is a
// thread-local pointer test and nothing more. While a PhaseRecorder is active on the calling
// thread, each mark waits for the device (the recorder's `sync`, e.g. torch::cuda::synchronize)
// and adds the wall time since the previous mark to the named phase. The waits change what they
// measure (no overlap between phases), so the bench times its headline number in runs without a
// recorder and the breakdown in separate runs.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace sy {

class PhaseRecorder {
 public:
  explicit PhaseRecorder(std::function<void()> sync);  // becomes this thread's recorder
  ~PhaseRecorder();                                    // restores the previous one
  PhaseRecorder(const PhaseRecorder&) = delete;
  PhaseRecorder& operator=(const PhaseRecorder&) = delete;

  void start();                  // waits for the device, starts the clock
  void mark(const char* phase);  // waits, adds the time since the last mark/start to `phase`
  // Phases in the order first seen, with their summed seconds.
  const std::vector<std::pair<std::string, double>>& phases() const { return phases_; }

 private:
  std::function<void()> sync_;
  std::chrono::steady_clock::time_point last_;
  std::vector<std::pair<std::string, double>> phases_;
  PhaseRecorder* previous_;
};

// Marks the end of `phase` for this thread's active recorder, if any.
void phase_mark(const char* phase);

}  // namespace sy
