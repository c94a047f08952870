// Fault injection for the failure tests (the debug.* keys, docs/config.md#debug): a rank that
// throws, dies without cleanup, or stops making progress at a given step, so that the tests can
// check that every such job ends promptly, non-zero, with the rank and the cause in its output
// (docs/parallel.md#faults). Everything is off by default.
#pragma once

#include <cstdint>

#include "config/config.h"

namespace sy {

// Exit status of a rank killed by debug.crash_mode "exit".
constexpr int kInjectedExitCode = 13;

// Called by the trainer at the top of every training step, `step` = steps done so far. On
// world_rank == debug.crash_rank at step == debug.crash_step: "throw" throws
// sy::Error("rank R: injected crash at step S (debug.crash_rank/crash_step)"); "exit" prints
// one line and std::_Exit(kInjectedExitCode) (no unwinding, no MPI_Finalize, no abort of the
// peers). On world_rank == debug.stall_rank at step == debug.stall_step: prints one line and
// stalls until the job is aborted (stall_until_aborted, parallel/watchdog.h), then throws.
void inject_faults_before_step(const DebugConfig& debug, int world_rank, int64_t step);

}  // namespace sy
