// The watchdog and the watched communicators (parallel/watchdog.h) on in-process ranks: a rank
// that never enters a collective makes its peers fail within a few seconds with an error naming
// the timeout, and the dump names every waiting rank's step, label, group, operation and splits;
// watched collectives compute what unwatched ones do; timeout 0 starts no watchdog; check_splits
// catches split and row-width mismatches with the label and both ranks, and passes consistent
// variable splits. Every run is guarded by checks::run_ranks, which ends the process on a hang.
#include <chrono>
#include <mutex>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#include "mpi/collective_checks.h"
#include "parallel/groups.h"
#include "parallel/inproc_comm.h"
#include "parallel/watchdog.h"

namespace sy {
namespace {

#define EXPECT_CONTAINS(text, part)                          \
  EXPECT_NE(std::string(text).find(part), std::string::npos) \
      << "'" << (text) << "' lacks '" << (part) << "'"

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// The line of `dump` that starts with "rank <r> |" ("" when none).
std::string dump_line(const std::string& dump, int rank) {
  const std::string head = "rank " + std::to_string(rank) + " |";
  size_t pos = 0;
  while (pos < dump.size()) {
    const size_t end = dump.find('\n', pos);
    const std::string line =
        dump.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    if (line.rfind(head, 0) == 0) return line;
    if (end == std::string::npos) break;
    pos = end + 1;
  }
  return "";
}

// Collects each rank's error message, by world rank.
struct RankErrors {
  std::mutex mu;
  std::vector<std::string> by_rank;
  explicit RankErrors(int n) : by_rank(static_cast<size_t>(n)) {}
  template <typename F> void run(int rank, F&& f) {
    try {
      f();
    } catch (const Error& e) {
      std::lock_guard<std::mutex> lock(mu);
      by_rank[static_cast<size_t>(rank)] = e.message();
      throw;
    }
  }
};

const WatchOptions kOneSecond{1.0, false};

TEST(Watchdog, StalledRankEndsPeersWithTimeoutErrorAndDump) {
  reset_fault_state();
  RankErrors errors(4);
  std::string error;
  testing::internal::CaptureStderr();
  const auto start = std::chrono::steady_clock::now();
  try {
    checks::run_ranks(
        4,
        [&](CommPtr world) {
          ParallelGroups g = make_groups(world, /*ep_size=*/4, kOneSecond);
          g.context->set_step(7);
          errors.run(g.world_rank, [&] {
            if (g.world_rank == 2) stall_until_aborted("rank 2 stops on purpose", 2, 7);
            CollectiveLabel label("grad sync dense");
            at::Tensor t = at::ones({3});
            g.world->all_reduce(t, ReduceOp::kSum);
          });
        },
        /*seconds=*/30);
  } catch (const Error& e) {
    error = e.message();
  }
  const double seconds = seconds_since(start);
  const std::string err = testing::internal::GetCapturedStderr();

  EXPECT_GE(seconds, 1.0);
  EXPECT_LT(seconds, 5.0);
  // The stalled rank is the one that failed first; it says why it was released.
  EXPECT_EQ(
      error.rfind("rank 2: rank 2 stops on purpose; stalled rank released by the job's abort: "
                  "collective timeout: ",
                  0),
      0u)
      << error;
  for (int r : {0, 1, 3}) {
    EXPECT_CONTAINS(errors.by_rank[r], "aborted in all_reduce: collective timeout: rank ");
    EXPECT_CONTAINS(errors.by_rank[r],
                    "in all_reduce (group world, step 7, at 'grad sync dense'; "
                    "parallel.timeout_s = 1)");
  }
  EXPECT_TRUE(fault_signalled());

  const std::string dump = last_watchdog_dump();
  EXPECT_CONTAINS(dump,
                  "collective timeout: an operation has been in flight for more than 1 s "
                  "(parallel.timeout_s); 4 in flight in this process");
  for (int r : {0, 1, 3}) {
    const std::string line = dump_line(dump, r);
    EXPECT_EQ(
        line.rfind(str("rank ", r,
                       " | step 7 | grad sync dense | world (4 ranks) | all_reduce | - | waiting "),
                   0),
        0u)
        << "rank " << r << ": '" << line << "' in\n"
        << dump;
    // Printed to stderr under the rank's own prefix.
    EXPECT_CONTAINS(err, str("[r0", r, "/04] [watchdog] ", line));
  }
  EXPECT_EQ(
      dump_line(dump, 2).rfind("rank 2 | step 7 | rank 2 stops on purpose | - | stalled (not in a "
                               "collective) | - | waiting ",
                               0),
      0u)
      << dump;
  reset_fault_state();
}

// The dump names each rank's own group, operation and splits: ranks 0 and 1 wait in a world
// all-reduce, rank 2 in an all-to-all of its EP group with variable splits, rank 3 stalls.
TEST(Watchdog, DumpShowsGroupsOperationsAndSplits) {
  reset_fault_state();
  std::string error;
  try {
    checks::run_ranks(
        4,
        [&](CommPtr world) {
          ParallelGroups g = make_groups(world, /*ep_size=*/2, kOneSecond);
          g.context->set_step(11 + g.world_rank);
          if (g.world_rank == 3) stall_until_aborted("rank 3 stops", 3, 14);
          if (g.world_rank == 2) {
            CollectiveLabel label("moe block 1: dispatch");
            at::Tensor in = at::zeros({4, 2}), out = at::zeros({4, 2});
            g.ep->all_to_all_single(out, in, {1, 3}, {2, 2});
            return;
          }
          {
            CollectiveLabel label(
                "moe block 0: dispatch");  // completes: ranks 0 and 1 are both here
            at::Tensor in = at::zeros({4, 2}), out = at::zeros({4, 2});
            g.ep->all_to_all_single(out, in, {}, {});
          }
          CollectiveLabel outer("step");
          {
            CollectiveLabel label("grad sync dense");
            at::Tensor t = at::ones({2});
            g.world->all_reduce(t, ReduceOp::kSum);
          }
        },
        /*seconds=*/30);
  } catch (const Error& e) {
    error = e.message();
  }
  EXPECT_CONTAINS(
      error, "rank 3: rank 3 stops; stalled rank released by the job's abort: collective timeout");
  const std::string dump = last_watchdog_dump();
  for (int r : {0, 1}) {
    EXPECT_EQ(dump_line(dump, r).rfind(
                  str("rank ", r, " | step ", 11 + r,
                      " | grad sync dense | world (4 ranks) | all_reduce | - | waiting "),
                  0),
              0u)
        << dump;
  }
  EXPECT_EQ(dump_line(dump, 2).rfind("rank 2 | step 13 | moe block 1: dispatch | ep (2 ranks) | "
                                     "all_to_all_single | send [1, 3] recv [2, 2] | waiting ",
                                     0),
            0u)
      << dump;
  EXPECT_EQ(dump_line(dump, 3).rfind("rank 3 | step 14 | rank 3 stops | - | stalled", 0), 0u)
      << dump;
  // Nothing completed is left in the dump.
  EXPECT_EQ(dump.find("moe block 0"), std::string::npos) << dump;
  reset_fault_state();
}

// Every collective, over watched world / EP / DP groups with the watchdog and the split check on,
// gives the exact results the unwatched checks expect; nothing fires.
TEST(Watchdog, WatchedCollectivesGiveTheSameResults) {
  reset_fault_state();
  const std::string dump_before = last_watchdog_dump();
  std::vector<int64_t> wrong(4, -1);
  std::vector<std::vector<double>> watched_sum(4), plain_sum(4);
  checks::run_ranks(4, [&](CommPtr world) {
    ParallelGroups g = make_groups(world, /*ep_size=*/2, WatchOptions{30.0, true});
    EXPECT_NE(g.world.get(), world.get());  // watched
    EXPECT_EQ(g.world->backend(), "inproc");
    EXPECT_EQ(g.ep->size(), 2);
    EXPECT_EQ(g.dp->size(), 2);
    EXPECT_TRUE(watchdog_running());
    int64_t w = 0;
    for (Communicator* c : {g.world.get(), g.ep.get(), g.dp.get()}) {
      w += checks::check_all_reduce(*c, /*exact_rank_order=*/true);
      w += checks::check_all_gather(*c);
      w += checks::check_broadcast(*c);
      w += checks::check_all_to_all_equal(*c, 3, at::kFloat);
      w += checks::check_all_to_all_uneven(*c, at::kLong);
      c->barrier();
    }
    w += checks::check_split(*g.world);
    wrong[g.world_rank] = w;
    // The same random sum, watched and not: bitwise equal.
    at::Tensor x = at::randn({16}, at::TensorOptions().dtype(at::kFloat)) * (g.world_rank + 1);
    at::Tensor a = x.clone(), b = x.clone();
    g.world->all_reduce(a, ReduceOp::kSum);
    world->all_reduce(b, ReduceOp::kSum);
    auto values = [](const at::Tensor& t) {
      const at::Tensor d = t.to(at::kDouble).contiguous();
      return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
    };
    watched_sum[g.world_rank] = values(a);
    plain_sum[g.world_rank] = values(b);
  });
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(wrong[r], 0) << "rank " << r;
    EXPECT_EQ(watched_sum[r], plain_sum[r]) << "rank " << r;
  }
  EXPECT_FALSE(fault_signalled());
  EXPECT_EQ(last_watchdog_dump(), dump_before);  // never fired
  EXPECT_FALSE(watchdog_running());              // stopped with the last watched communicator
}

TEST(Watchdog, TimeoutZeroStartsNoWatchdog) {
  EXPECT_FALSE(watchdog_running());
  checks::run_ranks(4, [&](CommPtr world) {
    // Default options: today's communicators, untouched.
    ParallelGroups plain = make_groups(world, /*ep_size=*/4);
    EXPECT_EQ(plain.world.get(), world.get());
    EXPECT_EQ(plain.ep.get(), world.get());
    ASSERT_NE(plain.context, nullptr);
    EXPECT_EQ(plain.context->world_rank(), world->rank());
    EXPECT_EQ(plain.context->step(), -1);
    // check_splits alone wraps the communicators but starts no thread.
    ParallelGroups checked = make_groups(world, /*ep_size=*/2, WatchOptions{0.0, true});
    EXPECT_NE(checked.world.get(), world.get());
    EXPECT_EQ(checks::check_all_to_all_uneven(*checked.ep, at::kFloat), 0);
    EXPECT_FALSE(watchdog_running());
    world->barrier();
    {
      ParallelGroups watched = make_groups(world, /*ep_size=*/2, kOneSecond);
      EXPECT_TRUE(watchdog_running());
      world->barrier();
    }
    world->barrier();  // every rank's watched groups are gone
    EXPECT_FALSE(watchdog_running());
  });
  // A world of one never waits: not watched at all.
  ParallelGroups one = make_groups(make_self_communicator(), 1, kOneSecond);
  EXPECT_FALSE(watchdog_running());
  EXPECT_EQ(one.world->backend(), "self");
}

TEST(Watchdog, CheckSplitsCatchesRecvMismatchNamingBothRanks) {
  std::mutex mu;
  std::vector<std::string> errors;
  std::string error;
  try {
    checks::run_ranks(3, [&](CommPtr world) {
      ParallelGroups g = make_groups(world, /*ep_size=*/3, WatchOptions{0.0, true});
      const int r = g.world_rank;
      // Rank r sends r + 1 rows to every rank, so rank q expects (1, 2, 3) rows; rank 1 expects
      // one row too many from rank 2, consistently with its own output size.
      std::vector<int64_t> send(3, r + 1), recv = {1, 2, 3};
      if (r == 1) recv = {1, 2, 4};
      at::Tensor in = at::zeros({3 * (r + 1), 2});
      at::Tensor out = at::zeros({recv[0] + recv[1] + recv[2], 2});
      CollectiveLabel label("moe block 5: dispatch");
      try {
        g.ep->all_to_all_single(out, in, send, recv);
      } catch (const Error& e) {
        std::lock_guard<std::mutex> lock(mu);
        errors.push_back(e.message());
        throw;
      }
    });
  } catch (const Error& e) {
    error = e.message();
  }
  const std::string expected =
      "all_to_all_single at 'moe block 5: dispatch' (group ep, parallel.check_splits): rank 2 "
      "sends "
      "3 rows to rank 1, but rank 1 expects 4 rows from rank 2";
  EXPECT_CONTAINS(error, expected);
  ASSERT_EQ(errors.size(), 3u);  // every rank checks the same table and throws the same error
  for (const auto& e : errors) EXPECT_EQ(e, expected);
}

TEST(Watchdog, CheckSplitsCatchesRowWidthMismatch) {
  std::string error;
  try {
    checks::run_ranks(2, [&](CommPtr world) {
      ParallelGroups g = make_groups(world, /*ep_size=*/2, WatchOptions{0.0, true});
      const int64_t width = g.world_rank == 1 ? 3 : 2;
      at::Tensor in = at::zeros({2, width}), out = at::zeros({2, width});
      CollectiveLabel label("moe block 0: combine");
      g.ep->all_to_all_single(out, in, {}, {});
    });
  } catch (const Error& e) {
    error = e.message();
  }
  EXPECT_CONTAINS(error,
                  "all_to_all_single at 'moe block 0: combine' (group ep, parallel.check_splits): "
                  "rank 1 sends rows of 3 elements but rank 0 rows of 2");
}

// Ranks of a split group are named by world rank, with their group rank.
TEST(Watchdog, CheckSplitsNamesWorldRanksOfSubgroups) {
  std::string error;
  try {
    checks::run_ranks(4, [&](CommPtr world) {
      ParallelGroups g = make_groups(world, /*ep_size=*/2, WatchOptions{0.0, true});
      std::vector<int64_t> recv = {1, 1};
      if (g.world_rank == 3) recv = {2, 0};
      at::Tensor in = at::zeros({2, 2}), out = at::zeros({2, 2});
      g.ep->all_to_all_single(out, in, {1, 1}, recv);
    });
  } catch (const Error& e) {
    error = e.message();
  }
  EXPECT_CONTAINS(error,
                  "all_to_all_single at '(no label)' (group ep, parallel.check_splits): rank 2 "
                  "(ep rank 0) sends 1 rows to rank 3 (ep rank 1), but rank 3 (ep rank 1) "
                  "expects 2 rows from rank 2 (ep rank 0)");
}

TEST(Watchdog, CheckSplitsPassesConsistentVariableSplits) {
  std::vector<int64_t> wrong(4, -1);
  checks::run_ranks(4, [&](CommPtr world) {
    ParallelGroups g = make_groups(world, /*ep_size=*/4, WatchOptions{0.0, true});
    int64_t w = checks::check_all_to_all_uneven(*g.ep, at::kFloat);  // zeros included
    w += checks::check_all_to_all_equal(*g.ep, 2, at::kDouble);
    at::Tensor empty_in = at::zeros({0, 5}), empty_out = at::zeros({0, 5});
    g.ep->all_to_all_single(empty_out, empty_in, {0, 0, 0, 0}, {0, 0, 0, 0});
    wrong[g.world_rank] = w;
  });
  for (int r = 0; r < 4; ++r) EXPECT_EQ(wrong[r], 0) << "rank " << r;
}

TEST(Watchdog, LabelsNestAndRestore) {
  EXPECT_EQ(current_collective_label(), "");
  {
    CollectiveLabel outer("grad sync dense");
    EXPECT_EQ(current_collective_label(), "grad sync dense");
    {
      CollectiveLabel inner("moe block 2: combine");
      EXPECT_EQ(current_collective_label(), "moe block 2: combine");
    }
    EXPECT_EQ(current_collective_label(), "grad sync dense");
  }
  EXPECT_EQ(current_collective_label(), "");
}

// An abort of an in-process world (a rank failed) also releases a stalled rank.
TEST(Watchdog, AbortReleasesStalledRankWithoutWatchdog) {
  reset_fault_state();
  std::string error;
  try {
    checks::run_ranks(
        3,
        [&](CommPtr world) {
          if (world->rank() == 0) SY_THROW("rank 0 fails");
          if (world->rank() == 1) stall_until_aborted("rank 1 stalls", 1, 0);
          world->barrier();
        },
        /*seconds=*/30);
  } catch (const Error& e) {
    error = e.message();
  }
  EXPECT_EQ(error, "rank 0: rank 0 fails");
  EXPECT_TRUE(fault_signalled());
  EXPECT_CONTAINS(fault_reason(), "rank 0 failed: rank 0 fails");
  reset_fault_state();
  EXPECT_FALSE(fault_signalled());
}

}  // namespace
}  // namespace sy
