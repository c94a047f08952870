// Fault injection (faults.h).
#include "train/faults.h"

#include <cstdio>
#include <cstdlib>

#include "common/error.h"
#include "common/log.h"
#include "parallel/watchdog.h"

namespace sy {

void inject_faults_before_step(const DebugConfig& debug, int world_rank, int64_t step) {
  if (world_rank == debug.crash_rank && step == debug.crash_step) {
    if (debug.crash_mode == CrashMode::kExit) {
      SY_LOG_ALL(
          "debug", "rank ", world_rank, ": injected exit at step ", step,
          " (debug.crash_rank/crash_step, crash_mode exit): the process ends now with status ",
          kInjectedExitCode, ", without cleanup");
      std::fflush(nullptr);
      std::_Exit(kInjectedExitCode);
    }
    SY_THROW("rank ", world_rank, ": injected crash at step ", step,
             " (debug.crash_rank/crash_step)");
  }
  if (world_rank == debug.stall_rank && step == debug.stall_step) {
    SY_LOG_ALL("debug", "rank ", world_rank, ": injected stall at step ", step,
               " (debug.stall_rank/stall_step): waiting, outside any collective, until the job is "
               "aborted");
    stall_until_aborted(str("rank ", world_rank, ": injected stall at step ", step,
                            " (debug.stall_rank/stall_step)"),
                        world_rank, step);
  }
}

}  // namespace sy
