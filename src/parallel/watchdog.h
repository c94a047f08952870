// Jobs fail loudly instead of hanging (docs/parallel.md#faults).
//
// A collective that never completes (a peer crashed without ending the job, stalled, or called a
// different collective) would otherwise hang every rank of the job until the scheduler kills it,
// with nothing saying where. A *watched* communicator (watch_communicator) registers every
// collective, while it is in flight, in a process-wide registry: world rank, step, a "where"
// label, group, operation and splits. One watchdog thread per process polls the registry; when an
// operation has been in flight longer than the timeout it prints one line per in-flight
// operation of this process (the dump) and ends the job:
//   - every watched communicator of the process is aborted: in-process ranks wake with an
//     sy::Error naming the timeout, NCCL communicators get ncclCommAbort;
//   - in an MPI job (watched MPI or NCCL communicators), the process then exits with
//     kWatchdogExitCode (std::_Exit after a flush: MPI_Abort from this thread would break
//     MPI_THREAD_SERIALIZED), and mpirun ends the other ranks.
//
// On NCCL a collective returns once it is enqueued, so the wrapper also records a CUDA event
// after it (CUDA builds only) and the operation stays in flight until the event has completed:
// the watchdog sees collectives stuck on the GPU, not only host-side waits.
//
// check_splits additionally exchanges every all-to-all's splits and row widths before the
// exchange itself and throws an sy::Error naming both ranks on any mismatch, which MPI and NCCL
// would otherwise turn into garbage or a hang.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace sy {

// Exit status of a process ended by the watchdog under MPI.
constexpr int kWatchdogExitCode = 12;

// What a rank is doing, for the dump: shared by the rank's watched communicators. The trainer
// updates the step (steps done so far) at the top of every step.
class RankContext {
 public:
  RankContext(int world_rank, int world_size) : world_rank_(world_rank), world_size_(world_size) {}
  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }
  void set_step(int64_t step) { step_.store(step, std::memory_order_relaxed); }
  int64_t step() const { return step_.load(std::memory_order_relaxed); }  // -1: before step 0

 private:
  int world_rank_, world_size_;
  std::atomic<int64_t> step_{-1};
};

// An aggregate, so that WatchOptions{cfg.parallel.timeout_s, cfg.parallel.check_splits} works.
struct WatchOptions {
  double timeout_s = 0;       // > 0: the watchdog ends the job after this long in one collective
  bool check_splits = false;  // cross-check all-to-all splits and row widths before each exchange
  // With a timeout, in a job of one rank per process (MPI, NCCL): the folder of the ranks'
  // heartbeat files (<train.out_dir>/heartbeats), by which a dump names the ranks that did not
  // arrive (Note [Heartbeats]); "" for none. In-process ranks need none.
  std::string heartbeat_dir = {};
  bool enabled() const { return timeout_s > 0 || check_splits; }
};

// This process's heartbeat (Note [Heartbeats] in heartbeat.h), written by the watchdog thread
// about once a second while the handle lives; the handle's end removes the file.
class HeartbeatHandle;

// Starts the heartbeat of world rank ctx->world_rank() in `dir`, and writes its first file now.
// Collective over `world` (rank 0 broadcasts the job's id, which tells this job's files from an
// earlier job's). Throws naming the file when it cannot be written.
std::shared_ptr<HeartbeatHandle> start_heartbeat(const CommPtr& world,
                                                 std::shared_ptr<RankContext> ctx,
                                                 const std::string& dir);

// Names the collectives issued by this thread while it lives, for the dump and the errors of
// check_splits, e.g. CollectiveLabel label("moe block 3: dispatch"). Nested labels replace the
// outer one and restore it on destruction. The label is thread-local: code that issues a
// collective on another thread (autograd backward on CUDA) must carry it over itself.
class CollectiveLabel {
 public:
  explicit CollectiveLabel(std::string label);
  ~CollectiveLabel();
  CollectiveLabel(const CollectiveLabel&) = delete;
  CollectiveLabel& operator=(const CollectiveLabel&) = delete;

 private:
  std::string previous_;
};

// The calling thread's current label ("" when none).
const std::string& current_collective_label();

// `inner` with every collective registered while in flight, its all-to-alls checked when
// opt.check_splits, and the watchdog started while any communicator with opt.timeout_s > 0
// lives. group_name is "world", "ep" or "dp"; split() returns a watched child named
// "<group_name>/split" (watched_split names it). backend() is the inner one's.
CommPtr watch_communicator(CommPtr inner, std::string group_name, std::shared_ptr<RankContext> ctx,
                           const WatchOptions& opt);

// split() of `comm`; when comm is watched, the child is watched under `group_name` (and the split
// itself is watched as an operation of comm).
CommPtr watched_split(const CommPtr& comm, int color, int key, const std::string& group_name);

// The process's fault flag: set when the watchdog fires, when a watched or in-process
// communicator is aborted, or by signal_fault. Ranks that stall on purpose wait for it.
void signal_fault(const std::string& reason);
bool fault_signalled();
std::string fault_reason();  // the first reason since the last reset ("" when none)
// Clears the flag, for a process that starts another job after a failure (tests).
void reset_fault_state();

// Debug stall (debug.stall_rank): sleeps in 50 ms steps until the fault flag is set, then
// throws sy::Error("<what>; stalled rank released by the job's abort: <reason>"). While it waits
// the stall is listed in the watchdog's dump (as rank world_rank at `step`, not counted for the
// timeout: the peers waiting for it are), so the dump shows which rank stopped.
[[noreturn]] void stall_until_aborted(const std::string& what, int world_rank, int64_t step);

// For tests and diagnostics: whether the watchdog thread runs now, and the text of its last
// dump ("" when it never fired), the same lines it printed without the log prefixes.
bool watchdog_running();
std::string last_watchdog_dump();

}  // namespace sy
