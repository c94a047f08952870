#include "common/log.h"

#include <atomic>
#include <cstdio>
#include <mutex>

namespace sy {
namespace {
thread_local int t_rank = 0;
thread_local int t_world = 1;
std::atomic<bool> g_all_ranks{false};
std::mutex g_mutex;  // one line at a time, also across in-process ranks
}  // namespace

void set_log_rank(int rank, int world_size) {
  t_rank = rank;
  t_world = world_size;
}

void set_log_all_ranks(bool all) { g_all_ranks = all; }

int log_rank() { return t_rank; }

int log_world_size() { return t_world; }

bool log_enabled() { return t_rank == 0 || g_all_ranks.load(); }

std::string log_prefix() {
  const int width = t_world >= 100 ? 3 : 2;
  char buf[32];
  std::snprintf(buf, sizeof(buf), "[r%0*d/%0*d]", width, t_rank, width, t_world);
  return buf;
}

void log_line(const char* tag, const std::string& message) {
  const std::string line = log_prefix() + " [" + tag + "] " + message + "\n";
  std::lock_guard<std::mutex> lock(g_mutex);
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
}

std::string format_duration(double seconds) {
  const auto s = static_cast<long>(seconds < 0 ? 0 : seconds);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof(buf), "%ldh%02ldm", s / 3600, (s % 3600) / 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%ldm%02lds", s / 60, s % 60);
  }
  return buf;
}

std::string format_bytes(int64_t bytes) {
  char buf[32];
  const double b = static_cast<double>(bytes);
  if (bytes < 1024) {
    std::snprintf(buf, sizeof(buf), "%lld B", static_cast<long long>(bytes));
  } else if (b < 1024.0 * 1024) {
    std::snprintf(buf, sizeof(buf), "%.1f KiB", b / 1024);
  } else if (b < 1024.0 * 1024 * 1024) {
    std::snprintf(buf, sizeof(buf), "%.1f MiB", b / (1024.0 * 1024));
  } else {
    std::snprintf(buf, sizeof(buf), "%.2f GiB", b / (1024.0 * 1024 * 1024));
  }
  return buf;
}

}  // namespace sy
