// make_groups (groups.h): the EP and DP communicators of Note [Groups], split from the world.
#include "parallel/groups.h"

#include "common/error.h"
#include "common/log.h"
#include "parallel/hierarchical_comm.h"

namespace sy {

ParallelGroups make_groups(const CommPtr& world, int64_t ep_size, const WatchOptions& watch,
                           int64_t ranks_per_node) {
  SY_CHECK(world != nullptr, "make_groups: no world communicator");
  const int n = world->size();
  const int r = world->rank();
  SY_CHECK(ep_size >= 0, "parallel.ep_size must be >= 0 (0 means the world size), got ", ep_size);
  const int64_t ep = ep_size == 0 ? n : ep_size;
  SY_CHECK(n % ep == 0, "parallel.ep_size (", ep, ") must divide the world size (", n, ")");

  ParallelGroups g;
  g.context = std::make_shared<RankContext>(r, n);
  // Watched only when asked and when there is someone to wait for.
  const bool watched = watch.enabled() && n > 1;
  if (watched && watch.timeout_s > 0 && !watch.heartbeat_dir.empty() &&
      world->backend() != "inproc") {
    g.heartbeat = start_heartbeat(world, g.context, watch.heartbeat_dir);
  }
  g.world = watched ? watch_communicator(world, "world", g.context, watch) : world;
  g.world_rank = r;
  g.world_size = n;
  g.ep_size = static_cast<int>(ep);
  g.dp_size = static_cast<int>(n / ep);
  g.ep_rank = static_cast<int>(r % ep);
  g.dp_rank = static_cast<int>(r / ep);

  // Both decisions below are the same on every rank, so the splits stay collective.
  // EP group: color = which EP group, ordered by position inside it.
  // (watched_split is a plain split of an unwatched world.)
  if (g.ep_size == 1) g.ep = make_self_communicator();
  else if (g.ep_size == n)
    g.ep = watched ? watch_communicator(world, "ep", g.context, watch) : world;
  else g.ep = watched_split(g.world, /*color=*/g.dp_rank, /*key=*/g.ep_rank, "ep");
  // DP group: color = position inside the EP group, ordered by EP group.
  if (g.dp_size == 1) g.dp = make_self_communicator();
  else if (g.dp_size == n)
    g.dp = watched ? watch_communicator(world, "dp", g.context, watch) : world;
  else g.dp = watched_split(g.world, /*color=*/g.ep_rank, /*key=*/g.dp_rank, "dp");

  if (ranks_per_node > 0 && g.ep_size > 1) {
    g.ep = make_hierarchical(g.ep, static_cast<int>(ranks_per_node), "ep");
  }
  SY_CHECK(g.ep->size() == g.ep_size && g.ep->rank() == g.ep_rank, "make_groups: EP group of rank ",
           r, " has rank ", g.ep->rank(), " of ", g.ep->size(), ", expected ", g.ep_rank, " of ",
           g.ep_size);
  SY_CHECK(g.dp->size() == g.dp_size && g.dp->rank() == g.dp_rank, "make_groups: DP group of rank ",
           r, " has rank ", g.dp->rank(), " of ", g.dp->size(), ", expected ", g.dp_rank, " of ",
           g.dp_size);
  SY_LOG("parallel", "world ", n, " = ep_size ", g.ep_size, " x dp_size ", g.dp_size, " (",
         world->backend(), ")",
         watched ? str("; watchdog ",
                       watch.timeout_s > 0 ? str(watch.timeout_s, " s") : std::string("off"),
                       watch.check_splits ? ", all-to-all splits checked" : "",
                       g.heartbeat ? str(", heartbeats in ", watch.heartbeat_dir) : "")
                 : std::string(),
         ranks_per_node > 0 && g.ep_size > 1
             ? str("; two-level all-to-all, ", g.ep_size / ranks_per_node, " nodes x ",
                   ranks_per_node, " ranks")
             : std::string());
  return g;
}

}  // namespace sy
