// Logging that lines up across ranks: every line is prefixed with the zero-padded rank and a
// subsystem tag, "[r03/16] [moe] ...". Rank 0 logs by default; set_log_all_ranks(true) (the
// `--log-all-ranks` flag) makes every rank log. The rank is thread-local, so in-process ranks
// (threads) each carry their own prefix.
#pragma once

#include <cstdint>
#include <string>

#include "common/error.h"

namespace sy {

void set_log_rank(int rank, int world_size);  // for the calling thread
void set_log_all_ranks(bool all);
bool log_enabled();        // true on rank 0, or on every rank when all ranks log
std::string log_prefix();  // "[r03/16]"
int log_rank();            // the calling thread's rank and world size, as set_log_rank set them
int log_world_size();
void log_line(const char* tag, const std::string& message);  // prints unconditionally
// A duration for a log line: "4m05s", or "2h13m" from an hour on (negative counts as 0).
std::string format_duration(double seconds);
// A size for a log line: "812 B", "3.4 KiB", "2.1 MiB", "1.50 GiB".
std::string format_bytes(int64_t bytes);

}  // namespace sy

// Rank 0 (or every rank, see above).
#define SY_LOG(tag, ...)                           \
  do {                                             \
    if (::sy::log_enabled()) {                     \
      ::sy::log_line(tag, ::sy::str(__VA_ARGS__)); \
    }                                              \
  } while (0)
// Every rank, always (errors, per-rank dumps).
#define SY_LOG_ALL(tag, ...) ::sy::log_line(tag, ::sy::str(__VA_ARGS__))
