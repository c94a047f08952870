// The exchange's "where" label reaches the watchdog in backward too: sy::all_to_all saves the
// caller's CollectiveLabel with the autograd node and sets "<label> (backward)" around the reverse
// exchange, which autograd may run on another thread, after the caller's label is gone. Rank 1
// stalls after forward, so rank 0 waits in backward's exchange and the watchdog's dump shows it.
#include <string>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#include "moe/alltoall.h"
#include "mpi/collective_checks.h"
#include "parallel/groups.h"
#include "parallel/watchdog.h"

namespace sy {
namespace {

TEST(AllToAllLabel, BackwardCarriesTheForwardLabel) {
  reset_fault_state();
  std::string error;
  try {
    checks::run_ranks(
        2,
        [&](CommPtr world) {
          ParallelGroups g = make_groups(world, /*ep_size=*/2, WatchOptions{1.0, false});
          g.context->set_step(4);
          at::Tensor x = at::ones({4, 3}).requires_grad_(true);
          at::Tensor y;
          {
            CollectiveLabel label("moe block 1: dispatch");
            // Rank 0 sends (1, 3) and receives (1, 2) rows; rank 1 sends (2, 2), receives (3, 2).
            y = g.world_rank == 0 ? all_to_all(x, *g.ep, {1, 3}, {1, 2})
                                  : all_to_all(x, *g.ep, {2, 2}, {3, 2});
          }
          EXPECT_EQ(current_collective_label(), "");
          if (g.world_rank == 1) stall_until_aborted("rank 1 stops before backward", 1, 4);
          y.sum().backward();
        },
        /*seconds=*/30);
  } catch (const Error& e) {
    error = e.message();
  }
  EXPECT_NE(error.find("stalled rank released by the job's abort: collective timeout"),
            std::string::npos)
      << error;
  const std::string dump = last_watchdog_dump();
  EXPECT_NE(dump.find("rank 0 | step 4 | moe block 1: dispatch (backward) | ep (2 ranks) | "
                      "all_to_all_single | send [1, 2] recv [1, 3] | waiting "),
            std::string::npos)
      << dump;
  reset_fault_state();
}

}  // namespace
}  // namespace sy
