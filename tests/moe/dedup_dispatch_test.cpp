// The node-deduplicated dispatch (Note [Node-deduplicated dispatch], moe/dedup_dispatch.h) on 8
// in-process ranks as 8 x 1, 4 x 2, 2 x 4 and 1 x 8 nodes: rows that are copies of a rank's
// tokens (several copies of one token, empty rows of zeros) arrive exactly where the flat
// all-to-all puts them, bitwise; the gradient reaching the tokens equals the flat exchange's up
// to rounding; and the rows sent across nodes are the distinct (token, destination node) pairs,
// counted here by hand from the token table.
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#include "moe/alltoall.h"
#include "moe/dedup_dispatch.h"
#include "moe/moe_test_util.h"
#include "parallel/hierarchical_comm.h"
#include "parallel/inproc_comm.h"

namespace sy {
namespace {

using testing_moe::expect_close;
using testing_moe::seeded_randn;

constexpr int kRanks = 8;
constexpr int64_t kTokens = 10;  // per rank
constexpr int64_t kRowsPerDest = 6;
constexpr int64_t kHidden = 5;

// Rank r's token table: for each of its 8 * 6 rows, a token in [0, 10) or -1 (empty), drawn so
// that tokens repeat within and across destinations.
std::vector<int64_t> token_table(int r) {
  std::vector<int64_t> t;
  uint64_t state = 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(r + 1);
  for (int64_t i = 0; i < kRanks * kRowsPerDest; ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const int64_t v = static_cast<int64_t>((state >> 33) % (kTokens + 3));
    t.push_back(v >= kTokens ? -1 : v);  // about 3 in 13 empty
  }
  return t;
}

struct Exchanged {
  at::Tensor out, grad_x;
};

// rows = x[token] (zeros for -1) through `exchange`, then the objective sum(out * g).
template <typename Exchange>
Exchanged run(int r, const std::vector<int64_t>& tokens, const Exchange& exchange) {
  const at::Tensor x = seeded_randn({kTokens, kHidden}, 300 + r).requires_grad_(true);
  const at::Tensor t = at::tensor(tokens, at::TensorOptions().dtype(at::kLong));
  const at::Tensor with_zero = at::cat({x, at::zeros({1, kHidden}, x.options())});
  const at::Tensor rows = with_zero.index_select(0, at::where(t.ge(0), t, at::full({}, kTokens)));
  const at::Tensor out = exchange(rows, t);
  const at::Tensor g = seeded_randn({out.size(0), kHidden}, 700 + r);
  Exchanged e;
  e.out = out.detach();
  e.grad_x = torch::autograd::grad({(out * g).sum()}, {x})[0];
  return e;
}

class DedupDispatch : public ::testing::TestWithParam<int> {};

TEST_P(DedupDispatch, EqualsTheFlatAllToAllAndSendsEachTokenOncePerNode) {
  const int L = GetParam(), N = kRanks / L;
  std::vector<std::string> failures(kRanks);
  run_inproc_ranks(kRanks, [&](CommPtr world) {
    const int r = world->rank();
    const CommPtr two_level = make_hierarchical(world, L, "ep");
    const TwoLevelGroups* groups = two_level_groups(*two_level);
    ASSERT_NE(groups, nullptr);
    const std::vector<int64_t> tokens = token_table(r);
    const Exchanged flat = run(r, tokens, [&](const at::Tensor& rows, const at::Tensor&) {
      return all_to_all(rows, *world, {}, {});
    });
    DedupStats stats;
    const Exchanged dedup = run(r, tokens, [&](const at::Tensor& rows, const at::Tensor& t) {
      return dedup_dispatch(rows, t, kTokens, *groups, &stats);
    });
    std::string& f = failures[r];
    if (!at::equal(dedup.out, flat.out)) f += "outputs differ from the flat exchange; ";
    expect_close(dedup.grad_x, flat.grad_x, 1e-12, 1e-14, str("rank ", r, " grad x"));
    // By hand: the distinct (node, token) pairs bound for other nodes.
    std::set<std::pair<int64_t, int64_t>> across;
    const int64_t node = r / L;
    for (int64_t i = 0; i < static_cast<int64_t>(tokens.size()); ++i) {
      const int64_t dest_node = i / kRowsPerDest / L;
      if (tokens[i] >= 0 && dest_node != node) across.insert({dest_node, tokens[i]});
    }
    if (stats.rows_across != static_cast<int64_t>(across.size())) {
      f += str("sent ", stats.rows_across, " rows across nodes, expected ", across.size(), "; ");
    }
    if (stats.flat_rows_across != (N - 1) * L * kRowsPerDest) f += "flat row count; ";
    if (N > 1 && stats.rows_across >= stats.flat_rows_across) f += "no rows saved; ";
  });
  for (int r = 0; r < kRanks; ++r) EXPECT_EQ(failures[r], "") << "rank " << r << ", L " << L;
}

INSTANTIATE_TEST_SUITE_P(RanksPerNode, DedupDispatch, ::testing::Values(1, 2, 4, 8),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::to_string(kRanks / info.param) + "nodes_x" +
                                  std::to_string(info.param);
                         });

// All rows empty: nothing crosses nodes and zeros arrive everywhere.
TEST(DedupDispatchEmpty, OnlyEmptyRowsSendNothingAcrossNodes) {
  run_inproc_ranks(4, [&](CommPtr world) {
    const CommPtr two_level = make_hierarchical(world, 2, "ep");
    const at::Tensor rows = at::zeros({4 * 3, 2}, at::kDouble);
    const at::Tensor tokens = at::full({4 * 3}, -1, at::TensorOptions().dtype(at::kLong));
    DedupStats stats;
    const at::Tensor out = dedup_dispatch(rows, tokens, 5, *two_level_groups(*two_level), &stats);
    EXPECT_TRUE(at::equal(out, rows));
    EXPECT_EQ(stats.rows_across, 0);
  });
}

}  // namespace
}  // namespace sy
