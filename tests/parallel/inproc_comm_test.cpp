// In-process ranks and the self communicator pass the shared collective checks
// (tests/mpi/collective_checks.h, also run under mpirun): rank-tagged all-to-all with equal and
// uneven splits (zero rows to and from some ranks), all-reduce against closed forms and bitwise
// identical across ranks, all-gather, broadcast from every root, barrier, split.
#include <atomic>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/log.h"
#include "common/error.h"
#include "mpi/collective_checks.h"
#include "parallel/inproc_comm.h"

namespace sy {
namespace {

using checks::run_ranks;

// Runs `check` on n in-process ranks and expects no wrong values on any rank.
template <typename Check> void expect_no_wrong(int n, Check check) {
  std::vector<int64_t> wrong(static_cast<size_t>(n), -1);
  run_ranks(n, [&](CommPtr world) { wrong[world->rank()] = check(*world); });
  for (int r = 0; r < n; ++r) EXPECT_EQ(wrong[r], 0) << "rank " << r << " of " << n;
}

class InprocRanks : public ::testing::TestWithParam<int> {};

INSTANTIATE_TEST_SUITE_P(Sizes, InprocRanks, ::testing::Values(1, 2, 3, 4, 8),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return "n" + std::to_string(info.param);
                         });

TEST_P(InprocRanks, RanksAndLogPrefix) {
  const int n = GetParam();
  std::vector<std::string> prefixes(n);
  std::vector<int> sizes(n, 0);
  run_ranks(n, [&](CommPtr world) {
    EXPECT_EQ(world->backend(), "inproc");
    sizes[world->rank()] = world->size();
    prefixes[world->rank()] = log_prefix();
  });
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(sizes[r], n);
    EXPECT_EQ(prefixes[r], str("[r0", r, "/0", n, "]"));
  }
}

TEST_P(InprocRanks, AllToAllEqualSplits) {
  expect_no_wrong(GetParam(), [](Communicator& c) {
    return checks::check_all_to_all_equal(c, /*rows_per_peer=*/3, at::kLong) +
           checks::check_all_to_all_equal(c, /*rows_per_peer=*/2, at::kFloat) +
           checks::check_all_to_all_equal(c, /*rows_per_peer=*/0, at::kFloat);
  });
}

TEST_P(InprocRanks, AllToAllUnevenSplitsWithZeroRows) {
  expect_no_wrong(GetParam(), [](Communicator& c) {
    return checks::check_all_to_all_uneven(c, at::kLong) +
           checks::check_all_to_all_uneven(c, at::kDouble);
  });
}

TEST_P(InprocRanks, AllReduceClosedFormsInRankOrderAndBitwiseEqual) {
  expect_no_wrong(GetParam(), [](Communicator& c) {
    return checks::check_all_reduce(c, /*exact_rank_order=*/true);
  });
}

TEST_P(InprocRanks, AllGather) {
  expect_no_wrong(GetParam(), [](Communicator& c) { return checks::check_all_gather(c); });
}

TEST_P(InprocRanks, BroadcastFromEveryRoot) {
  expect_no_wrong(GetParam(), [](Communicator& c) { return checks::check_broadcast(c); });
}

TEST_P(InprocRanks, Split) {
  expect_no_wrong(GetParam(), [](Communicator& c) { return checks::check_split(c); });
}

// Nobody leaves a barrier before everyone has arrived at it, round after round.
TEST_P(InprocRanks, BarrierSeparatesRounds) {
  const int n = GetParam();
  const int rounds = 20;
  std::atomic<int> arrived{0};
  std::vector<int> wrong(n, 0);
  run_ranks(n, [&](CommPtr world) {
    for (int round = 1; round <= rounds; ++round) {
      arrived.fetch_add(1);
      world->barrier();
      if (arrived.load() < round * n) ++wrong[world->rank()];
      world->barrier();  // nobody starts the next round before everyone has checked this one
    }
  });
  for (int r = 0; r < n; ++r) EXPECT_EQ(wrong[r], 0) << "rank " << r;
  EXPECT_EQ(arrived.load(), rounds * n);
}

// Repeated runs give the same bits: the reduction order does not depend on thread timing.
TEST(InprocComm, AllReduceIsReproducible) {
  const int n = 8;
  auto run_once = [&] {
    at::Tensor result;
    run_ranks(n, [&](CommPtr world) {
      at::Tensor t = at::arange(257, at::kFloat).mul(0.37f + world->rank()).sin();
      world->all_reduce(t, ReduceOp::kSum);
      if (world->rank() == n - 1) result = t;
    });
    return result;
  };
  const at::Tensor first = run_once();
  for (int i = 0; i < 5; ++i)
    EXPECT_TRUE(at::equal(run_once().view(at::kInt), first.view(at::kInt)));
}

TEST(InprocComm, ManyCollectivesInterleavedWithSubgroups) {
  expect_no_wrong(4, [](Communicator& c) {
    int64_t wrong = 0;
    auto pair = c.split(/*color=*/c.rank() / 2, /*key=*/c.rank());
    for (int i = 0; i < 50; ++i) {
      at::Tensor t = at::full({3}, static_cast<double>(c.rank() + i), at::kDouble);
      pair->all_reduce(t, ReduceOp::kSum);
      const int first = (c.rank() / 2) * 2;
      wrong += t.ne(static_cast<double>(2 * first + 1 + 2 * i)).sum().item<int64_t>();
      wrong += checks::check_all_to_all_uneven(c, at::kFloat);
    }
    return wrong;
  });
}

TEST(SelfComm, PassesTheChecks) {
  CommPtr self = make_self_communicator();
  EXPECT_EQ(self->rank(), 0);
  EXPECT_EQ(self->size(), 1);
  EXPECT_EQ(checks::check_all_to_all_equal(*self, 4, at::kLong), 0);
  EXPECT_EQ(checks::check_all_to_all_uneven(*self, at::kFloat), 0);
  EXPECT_EQ(checks::check_all_reduce(*self, /*exact_rank_order=*/true), 0);
  EXPECT_EQ(checks::check_all_gather(*self), 0);
  EXPECT_EQ(checks::check_broadcast(*self), 0);
  EXPECT_EQ(checks::check_split(*self), 0);
  EXPECT_EQ(checks::check_groups(self, 0), 0);
  self->barrier();
}

TEST(SelfComm, RejectsBadArguments) {
  CommPtr self = make_self_communicator();
  at::Tensor in = at::zeros({4, 2}), out = at::zeros({4, 2});
  EXPECT_THROW(self->all_to_all_single(out, in, {3}, {}), Error);
  EXPECT_THROW(self->all_to_all_single(out, in, {4, 0}, {}), Error);
  at::Tensor wide = at::zeros({4, 3});
  EXPECT_THROW(self->all_to_all_single(wide, in, {}, {}), Error);
  at::Tensor t = at::zeros({2, 2}).t();
  EXPECT_THROW(self->all_reduce(t), Error);  // not contiguous
  EXPECT_THROW(self->broadcast(in, 1), Error);
  EXPECT_THROW(self->all_to_all_single(in, in, {}, {}), Error);  // output is the input
  EXPECT_THROW(self->split(-1, 0), Error);
}

}  // namespace
}  // namespace sy
