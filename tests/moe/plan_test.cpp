// compute_capacity and make_plan against hand-written tables (Note [Capacity scope], Note [Slot
// order] in src/moe/plan.h). Every table below was worked out by hand: the processing order is
// all first choices in token order, then all second choices; an expert's slots are handed out in
// that order and a slot >= capacity is a drop.
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moe/fused.h"
#include "moe/init.h"
#include "moe/moe_test_util.h"
#include "moe/plan.h"

namespace sy {
namespace {

using testing_moe::bool_tensor;
using testing_moe::double_matrix;
using testing_moe::expect_equal;
using testing_moe::long_matrix;
using testing_moe::long_tensor;

struct PlanTable {
  std::vector<int64_t> token, expert, slot;
  std::vector<int> kept;
  std::vector<int64_t> tokens_per_expert;
};

void expect_plan(const DispatchPlan& plan, const PlanTable& t, int64_t capacity) {
  EXPECT_EQ(plan.capacity, capacity);
  expect_equal(plan.token, long_tensor(t.token), "token");
  expect_equal(plan.expert, long_tensor(t.expert), "expert");
  expect_equal(plan.slot, long_tensor(t.slot), "slot");
  expect_equal(plan.kept, bool_tensor(t.kept), "kept");
  expect_equal(plan.tokens_per_expert, long_tensor(t.tokens_per_expert), "tokens_per_expert");
  // Both ways of counting arrivals give the table (make_plan took the one-hot count here).
  for (bool by_sort : {false, true}) {
    const ArrivalSlots a =
        arrival_slots(plan.expert, static_cast<int64_t>(t.tokens_per_expert.size()), by_sort);
    expect_equal(a.slot, long_tensor(t.slot), by_sort ? "slot by sort" : "slot by count");
    expect_equal(a.tokens_per_expert, long_tensor(t.tokens_per_expert),
                 by_sort ? "tokens_per_expert by sort" : "tokens_per_expert by count");
  }
}

TEST(Capacity, CeilOfExactProducts) {
  // ceil(factor * k * S / E), exact products must not round up through fp error.
  EXPECT_EQ(compute_capacity(1.25, 2, 8, 4, 0), 5);         // 1.25 * 2 * 8 / 4 = 5 exactly
  EXPECT_EQ(compute_capacity(1.0, 2, 6, 4, 0), 3);          // 12 / 4 = 3
  EXPECT_EQ(compute_capacity(1.1, 1, 20, 2, 0), 11);        // 1.1 * 20 / 2 = 11.000000000000002
  EXPECT_EQ(compute_capacity(0.3, 1, 10, 1, 0), 3);         // 0.3 * 10 = 3.0000000000000004 in fp
  EXPECT_EQ(compute_capacity(1.0, 1, 10, 4, 0), 3);         // ceil(2.5)
  EXPECT_EQ(compute_capacity(2.0, 2, 14, 6, 0), 10);        // ceil(56 / 6 = 9.33)
  EXPECT_EQ(compute_capacity(1.25, 2, 8192, 16, 0), 1280);  // benchmark C1
  EXPECT_EQ(compute_capacity(1.0, 1, 16384, 64, 0), 256);   // benchmark C2
  EXPECT_EQ(compute_capacity(0.01, 1, 4, 8, 0), 1);         // ceil(0.005)
}

TEST(Capacity, MinCapacityAndDropless) {
  EXPECT_EQ(compute_capacity(1.25, 1, 8, 4, 4), 4);  // ceil(2.5) = 3 < min 4
  EXPECT_EQ(compute_capacity(1.25, 2, 8, 4, 4), 5);  // 5 > min 4
  EXPECT_EQ(compute_capacity(0.5, 1, 16, 8, 1), 1);  // exactly 1
  EXPECT_EQ(compute_capacity(0.0, 2, 8, 4, 4), 0);   // dropless, whatever min_capacity
  EXPECT_EQ(compute_capacity(-1.0, 2, 8, 4, 4), 0);
}

TEST(Capacity, ClampedToTheTokensARankHolds) {
  // A token chooses an expert at most once: more than S slots per expert would stay empty.
  EXPECT_EQ(compute_capacity(4.0, 2, 8, 4, 0), 8);    // 4 * 2 * 8 / 4 = 16 > S = 8
  EXPECT_EQ(compute_capacity(1.0, 4, 10, 4, 0), 10);  // exactly S: not clamped
  EXPECT_EQ(compute_capacity(4.0, 2, 8, 4, 12), 8);   // min_capacity above S: clamped too
  EXPECT_EQ(compute_capacity(0.5, 1, 8, 4, 1 << 30), 8);
  EXPECT_EQ(compute_capacity(1.25, 1, 2, 4, 4), 2);  // a generation step's 2 tokens, min 4
  EXPECT_EQ(compute_capacity(1.25, 1, 0, 4, 4), 1);  // no tokens: one (empty) slot
  // A factor whose product leaves every integer range clamps instead of overflowing.
  EXPECT_EQ(compute_capacity(1e300, 2, 8192, 1, 0), 8192);
  EXPECT_EQ(compute_capacity(1e308, 65536, 1 << 20, 1, 0), 1 << 20);  // the product is inf
}

TEST(Plan, Top1DropsInTokenOrder) {
  // E = 3, capacity 2. Expert 0 is chosen by tokens 0, 2, 3, 5: tokens 3 and 5 get slots 2, 3.
  const at::Tensor idx = long_matrix({{0}, {1}, {0}, {0}, {2}, {0}});
  DispatchPlan plan = make_plan(idx, {}, /*num_experts=*/3, /*capacity=*/2, false);
  expect_plan(plan,
              {/*token=*/{0, 1, 2, 3, 4, 5},
               /*expert=*/{0, 1, 0, 0, 2, 0},
               /*slot=*/{0, 0, 1, 2, 0, 3},
               /*kept=*/{1, 1, 1, 0, 1, 0},
               /*tokens_per_expert=*/{4, 1, 1}},
              2);
}

// Top-2, E = 4 (expert 3 gets nothing):
//   token 0 -> (0, 1), token 1 -> (1, 0), token 2 -> (0, 2), token 3 -> (0, 1).
// Processing order i: first choices of tokens 0..3, then second choices of tokens 0..3.
//   i  token choice expert slot
//   0    0     0      0     0
//   1    1     0      1     0
//   2    2     0      0     1
//   3    3     0      0     2
//   4    0     1      1     1
//   5    1     1      0     3   <- token 1's second choice comes after tokens 2 and 3's firsts
//   6    2     1      2     0
//   7    3     1      1     2
// (In token-major order token 1's second choice would have had slot 1 of expert 0.)
const std::vector<std::vector<int64_t>> kTop2 = {{0, 1}, {1, 0}, {0, 2}, {0, 1}};
const std::vector<int64_t> kTop2Token = {0, 1, 2, 3, 0, 1, 2, 3};
const std::vector<int64_t> kTop2Expert = {0, 1, 0, 0, 1, 0, 2, 1};
const std::vector<int64_t> kTop2Slot = {0, 0, 1, 2, 1, 3, 0, 2};
const std::vector<int64_t> kTop2Counts = {4, 3, 1, 0};

TEST(Plan, Top2GShardSecondChoiceLosesToLaterFirstChoice) {
  DispatchPlan plan = make_plan(long_matrix(kTop2), {}, /*num_experts=*/4, /*capacity=*/2, false);
  expect_plan(plan,
              {kTop2Token, kTop2Expert, kTop2Slot,
               /*kept=*/{1, 1, 1, 0, 1, 0, 1, 0}, kTop2Counts},
              2);
}

TEST(Plan, CapacityOne) {
  DispatchPlan plan = make_plan(long_matrix(kTop2), {}, /*num_experts=*/4, /*capacity=*/1, false);
  expect_plan(plan,
              {kTop2Token, kTop2Expert, kTop2Slot,
               /*kept=*/{1, 1, 0, 0, 0, 0, 1, 0}, kTop2Counts},
              1);
}

TEST(Plan, LargeCapacityKeepsAll) {
  DispatchPlan plan = make_plan(long_matrix(kTop2), {}, /*num_experts=*/4, /*capacity=*/4, false);
  expect_plan(plan,
              {kTop2Token, kTop2Expert, kTop2Slot,
               /*kept=*/{1, 1, 1, 1, 1, 1, 1, 1}, kTop2Counts},
              4);
}

TEST(Plan, DroplessKeepsAllWithArrivalSlots) {
  DispatchPlan plan = make_plan(long_matrix(kTop2), {}, /*num_experts=*/4, /*capacity=*/0, false);
  EXPECT_TRUE(plan.tokens_in_order);  // the token table is [0, 4) twice
  expect_plan(plan,
              {kTop2Token, kTop2Expert, kTop2Slot,
               /*kept=*/{1, 1, 1, 1, 1, 1, 1, 1}, kTop2Counts},
              0);
}

TEST(Plan, ScorePriorityOrdersTokensByTopWeight) {
  // Top-1 weights 0.5, 0.9, 0.7, 0.6: tokens are taken in the order 1, 2, 3, 0, first choices
  // before second choices.
  //   i  token choice expert slot (capacity 2)
  //   0    1     0      1     0    kept
  //   1    2     0      0     0    kept
  //   2    3     0      0     1    kept
  //   3    0     0      0     2    dropped (token 0 has the lowest score)
  //   4    1     1      0     3    dropped
  //   5    2     1      2     0    kept
  //   6    3     1      1     1    kept
  //   7    0     1      1     2    dropped
  const at::Tensor weights =
      double_matrix({{0.5, 0.4}, {0.9, 0.1}, {0.7, 0.3}, {0.6, 0.35}}).to(at::kFloat);
  DispatchPlan plan = make_plan(long_matrix(kTop2), weights, /*num_experts=*/4, /*capacity=*/2,
                                /*score_priority=*/true);
  EXPECT_FALSE(plan.tokens_in_order);
  expect_plan(plan,
              {/*token=*/{1, 2, 3, 0, 1, 2, 3, 0},
               /*expert=*/{1, 0, 0, 0, 0, 2, 1, 1},
               /*slot=*/{0, 0, 1, 2, 3, 0, 1, 2},
               /*kept=*/{1, 1, 1, 0, 0, 1, 1, 0},
               /*tokens_per_expert=*/{4, 3, 1, 0}},
              2);
}

TEST(Plan, ScorePriorityTiesKeepTokenOrder) {
  // Equal top weights (0.5 for tokens 0 and 2) keep their token order: 1, 3, 0, 2.
  const at::Tensor idx = long_matrix({{0}, {0}, {0}, {0}});
  const at::Tensor weights = double_matrix({{0.5}, {0.9}, {0.5}, {0.6}}).to(at::kFloat);
  DispatchPlan plan = make_plan(idx, weights, /*num_experts=*/2, /*capacity=*/3, true);
  expect_plan(plan,
              {/*token=*/{1, 3, 0, 2},
               /*expert=*/{0, 0, 0, 0},
               /*slot=*/{0, 1, 2, 3},
               /*kept=*/{1, 1, 1, 0},
               /*tokens_per_expert=*/{4, 0}},
              3);
}

TEST(Plan, Top3ChoiceMajor) {
  // E = 3, every token picks all three experts in some order; capacity 2.
  //   first choices:  t0 e2, t1 e2, t2 e0           -> e2 slots 0, 1; e0 slot 0
  //   second choices: t0 e0, t1 e1, t2 e2           -> e0 slot 1; e1 slot 0; e2 slot 2 (drop)
  //   third choices:  t0 e1, t1 e0, t2 e1           -> e1 slot 1; e0 slot 2 (drop); e1 slot 2
  const at::Tensor idx = long_matrix({{2, 0, 1}, {2, 1, 0}, {0, 2, 1}});
  DispatchPlan plan = make_plan(idx, {}, /*num_experts=*/3, /*capacity=*/2, false);
  expect_plan(plan,
              {/*token=*/{0, 1, 2, 0, 1, 2, 0, 1, 2},
               /*expert=*/{2, 2, 0, 0, 1, 2, 1, 0, 1},
               /*slot=*/{0, 1, 0, 1, 0, 2, 1, 2, 2},
               /*kept=*/{1, 1, 1, 1, 1, 0, 1, 0, 0},
               /*tokens_per_expert=*/{3, 3, 3}},
              2);
}

TEST(Plan, ArrivalSlotsByCountAndBySortEqualAHostCount) {
  at::Generator gen = make_cpu_generator(21);
  for (int64_t num_experts : {1, 5, 37}) {
    const at::Tensor expert = at::randint(0, num_experts, {2000}, gen, at::kLong);
    std::vector<int64_t> slot, seen(num_experts, 0);
    const int64_t* e = expert.data_ptr<int64_t>();
    for (int64_t i = 0; i < expert.numel(); ++i) slot.push_back(seen[e[i]]++);
    for (bool by_sort : {false, true}) {
      const ArrivalSlots a = arrival_slots(expert, num_experts, by_sort);
      expect_equal(a.slot, long_tensor(slot), by_sort ? "slot by sort" : "slot by count");
      expect_equal(a.tokens_per_expert, long_tensor(seen), "tokens_per_expert");
    }
  }
}

TEST(Plan, ZeroTokens) {
  const at::Tensor idx = at::zeros({0, 2}, at::kLong);
  for (bool score : {false, true}) {
    DispatchPlan plan = make_plan(idx, at::zeros({0, 2}, at::kFloat), /*num_experts=*/4,
                                  /*capacity=*/1, score);
    for (const at::Tensor* t : {&plan.token, &plan.expert, &plan.slot, &plan.kept}) {
      EXPECT_EQ(t->numel(), 0);
    }
    EXPECT_EQ(plan.kept.scalar_type(), at::kBool);
    expect_equal(plan.tokens_per_expert, long_tensor({0, 0, 0, 0}), "tokens_per_expert");
  }
}

// fused::dispatch_index (the fused permute and combine's token-major indices) against hand
// tables: 3 tokens, top-2, 2 experts of capacity 2, every token to experts (0, 1). Rows are
// expert * capacity + slot; R = 4 is a drop. src[r] = t * k + c of the choice filling row r.
fused::DispatchIndex index_of(const DispatchPlan& plan, int64_t S, int64_t rows) {
  const at::Tensor dest =
      at::where(plan.kept, plan.expert * plan.capacity + plan.slot, at::full_like(plan.slot, rows));
  return fused::dispatch_index(plan, dest, S, rows);
}

TEST(DispatchIndex, TokenOrderHandTable) {
  const DispatchPlan plan = make_plan(long_matrix({{0, 1}, {0, 1}, {0, 1}}), {}, 2, 2, false);
  // Token 2 comes third at both experts: dropped twice.
  const fused::DispatchIndex d = index_of(plan, 3, 4);
  expect_equal(d.dest, long_matrix({{0, 2}, {1, 3}, {4, 4}}), "dest");
  expect_equal(d.src, long_tensor({0, 2, 1, 3}), "src");
}

TEST(DispatchIndex, ScorePriorityHandTable) {
  // Top-1 weights 0.5, 0.6, 0.9: tokens are taken in the order 2, 1, 0, so token 0 is dropped.
  const DispatchPlan plan =
      make_plan(long_matrix({{0, 1}, {0, 1}, {0, 1}}),
                double_matrix({{0.5, 0.5}, {0.6, 0.4}, {0.9, 0.1}}).to(at::kFloat), 2, 2, true);
  ASSERT_FALSE(plan.tokens_in_order);
  const fused::DispatchIndex d = index_of(plan, 3, 4);
  expect_equal(d.dest, long_matrix({{4, 4}, {1, 3}, {0, 2}}), "dest");
  expect_equal(d.src, long_tensor({4, 2, 5, 3}), "src");
}

TEST(DispatchIndex, NoTokens) {
  const DispatchPlan plan = make_plan(at::zeros({0, 2}, at::kLong), {}, 2, 2, false);
  const fused::DispatchIndex d = index_of(plan, 0, 4);
  EXPECT_EQ(d.dest.numel(), 0);
  expect_equal(d.src, long_tensor({-1, -1, -1, -1}), "src");
}

}  // namespace
}  // namespace sy
