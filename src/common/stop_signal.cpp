// Stop requests from signals: see stop_signal.h, Note [Clean stop on a signal].
#include "common/stop_signal.h"

#include <unistd.h>

#include <csignal>
#include <cstring>

namespace sy {
namespace {

volatile std::sig_atomic_t g_signal = 0;
constexpr int kSignals[] = {SIGTERM, SIGINT, SIGHUP};
char g_cleanup_file[4096] = {};                // set_stop_cleanup_file
volatile std::sig_atomic_t g_cleanup_set = 0;  // g_cleanup_file holds a path
volatile std::sig_atomic_t g_training = 0;     // set_stop_in_training

void on_signal(int signal) {
  if (g_signal != 0) {                            // the second: stop now
    if (g_cleanup_set) ::unlink(g_cleanup_file);  // signal-safe
    std::signal(signal, SIG_DFL);
    std::raise(signal);
    return;
  }
  g_signal = signal;
  static const char training[] =
      "\n[switchyard] stop requested: finishing this step and writing a checkpoint "
      "(signal again to stop at once)\n";
  static const char starting[] = "\n[switchyard] stop requested (signal again to stop at once)\n";
  const bool in_training = g_training != 0;
  [[maybe_unused]] const ssize_t n =  // signal-safe
      in_training ? ::write(2, training, sizeof(training) - 1)
                  : ::write(2, starting, sizeof(starting) - 1);
}

}  // namespace

void install_stop_handlers() {
  g_signal = 0;
  g_training = 0;
  for (int s : kSignals) std::signal(s, on_signal);
}

void remove_stop_handlers() {
  for (int s : kSignals) std::signal(s, SIG_DFL);
}

void set_stop_cleanup_file(const std::string& path) {
  g_cleanup_set = 0;
  if (path.empty() || path.size() >= sizeof(g_cleanup_file)) return;
  std::memcpy(g_cleanup_file, path.c_str(), path.size() + 1);
  g_cleanup_set = 1;
}

void set_stop_in_training(bool training) { g_training = training ? 1 : 0; }

int stop_signal() { return static_cast<int>(g_signal); }

const char* stop_signal_name(int signal) {
  switch (signal) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGHUP: return "SIGHUP";
    default: return "a signal";
  }
}

}  // namespace sy
