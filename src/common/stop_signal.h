// Note [Clean stop on a signal]: clusters preempt a job with SIGTERM (Slurm, then SIGKILL after a
// grace period), and a user stops one with Ctrl-C (SIGINT) or by closing its terminal (SIGHUP).
// While a run trains, the first of these signals only sets a request: the step in flight
// finishes, every rank learns of the request in the step's existing per-step exchange (the
// non-finite check, src/train/step.cpp), so all ranks stop after the same step, write a
// checkpoint, log "stopped by SIGTERM at step N; resume with --resume auto" and exit with
// kExitStopped. An evaluation in progress checks for a request (on any rank) before each of its
// batches and ends, unlogged (src/train/run.cpp); the final one so ended leaves the run stopped. A second signal ends the process at once (the
// signal's default action).
#pragma once

#include <string>

namespace sy {

// The exit status of a run stopped by a signal, with a checkpoint to resume from (EX_TEMPFAIL:
// "try again later").
inline constexpr int kExitStopped = 75;

// Installs the handlers for SIGTERM, SIGINT and SIGHUP (idempotent; clears an earlier request).
void install_stop_handlers();
// Puts the default actions back.
void remove_stop_handlers();
// The signal that asked this process to stop, or 0.
int stop_signal();
// A file the second signal removes before the process ends (the run folder's lock, Note [Run
// folders] in train/run_folder.h); "" for none.
void set_stop_cleanup_file(const std::string& path);
// Whether the training loop runs, which decides the line the first signal prints: "finishing
// this step and writing a checkpoint" only then; before it (mpirun ending the job after another
// rank's error, say) only "stop requested". Off after install_stop_handlers().
void set_stop_in_training(bool training);
// "SIGTERM", "SIGINT", "SIGHUP" (or "signal N").
const char* stop_signal_name(int signal);

}  // namespace sy
