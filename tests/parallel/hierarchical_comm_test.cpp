// The two-level all-to-all (Note [Two-level all-to-all], parallel/hierarchical_comm.h) on
// in-process ranks with simulated nodes: every row arrives where the flat exchange puts it
// (rank-tagged payloads: source, destination and index in each row), for 8 ranks as 2 nodes x 4,
// 4 x 2, 8 x 1 and 1 x 8, with equal splits, uneven splits with empty pairs and random splits, in
// several dtypes; the other collectives are the flat communicator's; a ranks_per_node that does
// not divide the group is one clear error. The same checks run under mpirun in
// tests/mpi/test_parallel_mpi.cpp.
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#include "mpi/collective_checks.h"
#include "parallel/hierarchical_comm.h"
#include "recording_comm.h"

namespace sy {
namespace {

int64_t check_every_exchange(Communicator& c) {
  int64_t wrong = checks::check_all_to_all_equal(c, 3, at::kLong) +
                  checks::check_all_to_all_equal(c, 0, at::kFloat) +
                  checks::check_all_to_all_uneven(c, at::kLong) +
                  checks::check_all_to_all_uneven(c, at::kBFloat16);
  for (uint32_t seed = 1; seed <= 5; ++seed) {
    wrong += checks::check_all_to_all_random(c, seed, /*max_rows=*/6, at::kDouble);
  }
  return wrong;
}

class TwoLevel : public ::testing::TestWithParam<int> {};

TEST_P(TwoLevel, EqualsTheFlatAllToAllRowForRow) {
  const int ranks_per_node = GetParam();
  checks::run_ranks(8, [&](CommPtr world) {
    const CommPtr two_level = make_hierarchical(world, ranks_per_node, "ep");
    EXPECT_EQ(two_level->size(), 8);
    EXPECT_EQ(two_level->rank(), world->rank());
    EXPECT_EQ(two_level->backend(), world->backend());
    EXPECT_EQ(check_every_exchange(*two_level), 0)
        << "rank " << world->rank() << ", " << 8 / ranks_per_node << " nodes x " << ranks_per_node;
    // The rest is the flat communicator's.
    EXPECT_EQ(checks::check_all_reduce(*two_level, /*exact_rank_order=*/false), 0);
    EXPECT_EQ(checks::check_all_gather(*two_level), 0);
    EXPECT_EQ(checks::check_broadcast(*two_level), 0);
  });
}

INSTANTIATE_TEST_SUITE_P(RanksPerNode, TwoLevel, ::testing::Values(1, 2, 4, 8),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::to_string(8 / info.param) + "nodes_x" +
                                  std::to_string(info.param);
                         });

// Equal splits (empty split lists on every rank, as capacity mode passes them) need no gather of
// the node's split lists: the two levels are the only collectives. The same exchange given as
// explicit lists (which could differ between ranks) gathers them first. Both give the flat result.
TEST(TwoLevelEqualSplits, SkipTheGatherOfSplitLists) {
  checks::run_ranks(8, [](CommPtr world) {
    auto recording = std::make_shared<testing::RecordingComm>(world);
    const CommPtr two_level = make_hierarchical(recording, 4, "ep");
    recording->clear();
    const int r = world->rank();
    const at::Tensor x = at::arange(16, at::kLong) + 100 * r;  // 2 rows for each rank
    at::Tensor y = at::empty({16}, at::kLong), flat = at::empty({16}, at::kLong);
    two_level->all_to_all_single(y, x, {}, {});
    EXPECT_EQ(recording->calls("all_gather").size(), 0u) << "rank " << r;
    EXPECT_EQ(recording->calls("all_to_all").size(), 2u) << "rank " << r;  // node, then across
    world->all_to_all_single(flat, x, {}, {});
    EXPECT_TRUE(at::equal(y, flat)) << "rank " << r;

    recording->clear();
    const std::vector<int64_t> twos(8, 2);
    two_level->all_to_all_single(y, x, twos, twos);
    EXPECT_EQ(recording->calls("all_gather").size(), 1u) << "rank " << r;
    EXPECT_EQ(recording->calls("all_to_all").size(), 2u) << "rank " << r;
    EXPECT_TRUE(at::equal(y, flat)) << "rank " << r;
  });
}

TEST(TwoLevelErrors, RanksPerNodeMustDivideTheGroup) {
  checks::run_ranks(4, [](CommPtr world) {
    try {
      make_hierarchical(world, 3, "ep");
      ADD_FAILURE() << "ranks_per_node 3 of 4 accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.message(),
                "parallel.ranks_per_node (3) must divide the ep group's size (4) for parallel.a2a "
                "hierarchical");
    }
  });
}

}  // namespace
}  // namespace sy
