// Internal to the watchdog: between the registry and the watchdog thread (watchdog.cpp), the
// watched communicators (watched_comm.cpp) and the CUDA completion markers (watchdog_cuda.cpp, in
// CUDA builds).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/watchdog.h"

namespace sy::detail {

// A marker recorded after asynchronous device work; done() polls without blocking and may be
// called from any thread.
class Completion {
 public:
  virtual ~Completion() = default;
  virtual bool done() = 0;
};

#ifdef SWITCHYARD_CUDA
// An event recorded on LibTorch's current CUDA stream of `device` (watchdog_cuda.cpp).
std::unique_ptr<Completion> record_cuda_completion(int device);
#endif

// How many collectives one watched communicator of this process has begun, for the heartbeats.
struct CommCount {
  std::string name;  // "ep 0,1,2,3 #0": group, member world ranks, creation ordinal (heartbeat.h)
  std::atomic<uint64_t> begun{0};
};

// One operation in flight, as the dump describes it.
struct OpRecord {
  int world_rank = 0, world_size = 1;
  int64_t step = -1;
  std::string where, group, op;
  int group_size = 0;  // 0: not a collective (a debug stall)
  // The group's world ranks, by group rank (null or empty: not known), shared with the
  // communicator (no copy per collective). members_in_process: every member is a thread of this
  // process (in-process ranks), so the registry shows what each is doing.
  std::shared_ptr<const std::vector<int>> members;
  bool members_in_process = false;
  // The operation's communicator's counter (its name) and the operation's ordinal there
  // (1-based), for the heartbeats (Note [Heartbeats]); shared, not copied, per collective. Null
  // and 0 for a debug stall.
  std::shared_ptr<const CommCount> comm;
  uint64_t seq = 0;
  bool has_splits = false;
  std::vector<int64_t> send, recv;  // an all-to-all's splits; both empty: "equal splits"
  double timeout_s = 0;             // 0: listed in dumps, never fires
};

// A counter for a new watched communicator of world rank `world_rank` (group `group`, members
// by group rank, empty when not known), listed in this process's heartbeat while it lives.
std::shared_ptr<CommCount> register_comm(int world_rank, const std::string& group,
                                         const std::vector<int>& members);

// Makes this process write its heartbeat in `dir` for job `job` (watchdog.cpp; the public
// start_heartbeat first agrees on the job id) and writes the first file; throws when it cannot.
std::shared_ptr<HeartbeatHandle> enable_heartbeat(const std::string& dir, uint64_t job,
                                                  std::shared_ptr<RankContext> ctx);

// Adds `op` to the in-flight registry, started now; returns its id.
uint64_t begin_in_flight(OpRecord op);
// Removes operation `id` from the registry.
void end_in_flight(uint64_t id);
// The host call of operation `id` returned but its device work may not have: the watchdog keeps
// it in flight until `done` completes, then removes it. False (and nothing kept) when `id` is not
// in flight.
bool end_in_flight_when(uint64_t id, std::unique_ptr<Completion> done);

// The watchdog thread runs while any handle returned by acquire_watchdog() lives.
class Watchdog;
std::shared_ptr<Watchdog> acquire_watchdog();

// Makes `comm` one of the communicators that the watchdog aborts when it fires (it keeps only a
// weak reference). An MPI communicator is not aborted from the watchdog thread, and an MPI or
// NCCL one makes the process end itself (watchdog.h).
void abort_on_timeout(const std::shared_ptr<Communicator>& comm);

}  // namespace sy::detail
