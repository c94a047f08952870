// make_groups on in-process ranks (Note [Groups]): every rank's EP and DP rank and size, and the
// members of its groups (all-gathered world ranks), for the layouts the trainer uses.
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "common/error.h"
#include "mpi/collective_checks.h"
#include "parallel/groups.h"

namespace sy {
namespace {

class Groups : public ::testing::TestWithParam<std::tuple<int, int>> {};

INSTANTIATE_TEST_SUITE_P(Layouts, Groups,
                         ::testing::Values(std::make_tuple(8, 4), std::make_tuple(8, 8),
                                           std::make_tuple(8, 1), std::make_tuple(4, 2),
                                           std::make_tuple(4, 0), std::make_tuple(1, 1),
                                           std::make_tuple(6, 3)),
                         [](const ::testing::TestParamInfo<std::tuple<int, int>>& info) {
                           return "world" + std::to_string(std::get<0>(info.param)) + "_ep" +
                                  std::to_string(std::get<1>(info.param));
                         });

TEST_P(Groups, RanksSizesAndMembers) {
  const auto [n, ep] = GetParam();
  std::vector<int64_t> wrong(n, -1);
  checks::run_ranks(
      n, [&, ep = ep](CommPtr world) { wrong[world->rank()] = checks::check_groups(world, ep); });
  for (int r = 0; r < n; ++r) EXPECT_EQ(wrong[r], 0) << "rank " << r;
}

// The worked example of groups.h, spelled out.
TEST(GroupsExample, World8Ep4) {
  std::vector<ParallelGroups> got(8);
  std::vector<std::vector<int64_t>> ep_members(8), dp_members(8);
  checks::run_ranks(8, [&](CommPtr world) {
    ParallelGroups g = make_groups(world, 4);
    ep_members[g.world_rank] = checks::gather_ints(*g.ep, g.world_rank);
    dp_members[g.world_rank] = checks::gather_ints(*g.dp, g.world_rank);
    got[g.world_rank] = g;
  });
  const std::vector<int64_t> ep0 = {0, 1, 2, 3}, ep1 = {4, 5, 6, 7};
  for (int r = 0; r < 8; ++r) {
    EXPECT_EQ(got[r].ep_rank, r % 4);
    EXPECT_EQ(got[r].dp_rank, r / 4);
    EXPECT_EQ(got[r].ep_size, 4);
    EXPECT_EQ(got[r].dp_size, 2);
    EXPECT_EQ(ep_members[r], r < 4 ? ep0 : ep1);
    EXPECT_EQ(dp_members[r], (std::vector<int64_t>{r % 4, r % 4 + 4}));
  }
}

// Whole-world and single-rank groups reuse the world or a self communicator.
TEST(GroupsExample, TrivialGroupsCostNoSplit) {
  checks::run_ranks(4, [](CommPtr world) {
    ParallelGroups all = make_groups(world, 0);
    EXPECT_EQ(all.ep.get(), world.get());
    EXPECT_EQ(all.dp->size(), 1);
    ParallelGroups one = make_groups(world, 1);
    EXPECT_EQ(one.dp.get(), world.get());
    EXPECT_EQ(one.ep->size(), 1);
  });
}

TEST(GroupsExample, RejectsBadEpSize) {
  CommPtr self = make_self_communicator();
  EXPECT_THROW(make_groups(self, -1), Error);
  try {
    make_groups(self, 2);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.message(), "parallel.ep_size (2) must divide the world size (1)");
  }
}

}  // namespace
}  // namespace sy
