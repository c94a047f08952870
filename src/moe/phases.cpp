#include "moe/phases.h"

namespace sy {
namespace {
thread_local PhaseRecorder* g_active = nullptr;
}  // namespace

PhaseRecorder::PhaseRecorder(std::function<void()> sync)
    : sync_(std::move(sync)), last_(std::chrono::steady_clock::now()), previous_(g_active) {
  g_active = this;
}

PhaseRecorder::~PhaseRecorder() { g_active = previous_; }

void PhaseRecorder::start() {
  if (sync_) sync_();
  last_ = std::chrono::steady_clock::now();
}

void PhaseRecorder::mark(const char* phase) {
  if (sync_) sync_();
  const auto now = std::chrono::steady_clock::now();
  const double s = std::chrono::duration<double>(now - last_).count();
  last_ = now;
  for (auto& p : phases_) {
    if (p.first == phase) {
      p.second += s;
      return;
    }
  }
  phases_.emplace_back(phase, s);
}

void phase_mark(const char* phase) {
  if (g_active != nullptr) g_active->mark(phase);
}

}  // namespace sy
