// The process groups of expert parallelism (Note [Groups]): world = ep_size x dp_size. Ranks
// [i * ep_size, (i + 1) * ep_size) form EP group i and exchange tokens by all-to-all (consecutive
// ranks, so one node's ranks first and the all-to-all stays on NVLink); ranks at the same position
// of every EP group form a DP group, hold the same experts and average those experts' gradients.
//
//   world 8, ep_size 4:   EP groups {0,1,2,3} {4,5,6,7}      DP groups {0,4} {1,5} {2,6} {3,7}
#pragma once

#include <cstdint>

#include <memory>

#include "parallel/communicator.h"
#include "parallel/watchdog.h"

namespace sy {

struct ParallelGroups {
  CommPtr world, ep, dp;
  int world_rank = 0, world_size = 1;
  int ep_rank = 0, ep_size = 1;  // ep_rank = world_rank % ep_size
  int dp_rank = 0, dp_size = 1;  // dp_rank = world_rank / ep_size
  // What this rank is doing, for the watchdog's dump: the trainer calls context->set_step(step)
  // at the top of every step. Always set by make_groups.
  std::shared_ptr<RankContext> context;
  // This rank's heartbeat, when the watch options name a folder for it (MPI and NCCL jobs).
  std::shared_ptr<HeartbeatHandle> heartbeat;
};

// Builds the groups from `world` (collective over it). ep_size 0 means the whole world. Throws
// the same sy::Error on every rank, before any communication, unless ep_size divides the world
// size. When a group is the whole world it is `world` itself, and a group of one rank is a self
// communicator: neither costs a new (e.g. NCCL) communicator.
//
// With watch.enabled() (a timeout or check_splits; watchdog.h), world, ep and dp are watched
// communicators named "world", "ep" and "dp" (a group that is the world is a second watched view
// of it; one-rank groups, which never wait, are not watched), and the splits are watched too.
// With watch.heartbeat_dir, a timeout and one rank per process, the ranks also write heartbeats
// there (Note [Heartbeats]). The default options leave the communicators exactly as they are.
//
// ranks_per_node > 0 (parallel.a2a hierarchical): the EP group's all-to-alls run in two levels,
// within nodes of that many consecutive ranks, then across nodes (Note [Two-level all-to-all]).
ParallelGroups make_groups(const CommPtr& world, int64_t ep_size, const WatchOptions& watch = {},
                           int64_t ranks_per_node = 0);

}  // namespace sy
