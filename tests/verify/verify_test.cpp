// Note [EP invariance] through verify_expert_parallel(): the MoE layer on N in-process ranks
// against one process holding all experts, for N in {1, 2, 4, 8, 32}, top-1 (switch) and top-2
// (topk) routers, with drops, without drops and dropless, and EP x DP layouts. Besides the
// report's own verdict, the test checks what follows from the shapes alone: the capacity (Note
// [Capacity scope]), the number of choices, and the dropped count (0 without drops; at least the
// overflow S*k - E*C per rank when the slots cannot hold every choice).
#include <algorithm>
#include <cmath>
#include <ostream>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "config/config.h"
#include "verify/verify.h"

namespace sy {
namespace {

constexpr int64_t kBatch = 2, kBlock = 8;  // 16 tokens per rank
constexpr int64_t kTokens = kBatch * kBlock;
constexpr int64_t kMinCapacity = 1;

struct Case {
  int ranks;
  int ep_size;
  std::string router;  // "switch" (top-1) | "topk" (top-2)
  double capacity_factor;
  int64_t num_experts;
};

int64_t top_k_of(const Case& c) { return c.router == "switch" ? 1 : 2; }

Config make_config(const Case& c) {
  const std::string yaml = "model: {n_layers: 1, d_model: 16, n_heads: 2, d_ff: 32, block_size: " +
                           std::to_string(kBlock) +
                           ", dropout: 0.0, init: normal}\n"
                           "moe: {num_experts: " +
                           std::to_string(c.num_experts) +
                           ", top_k: " + std::to_string(top_k_of(c)) + ", router: " + c.router +
                           ", capacity_factor: " + std::to_string(c.capacity_factor) +
                           ", min_capacity: " + std::to_string(kMinCapacity) +
                           ", aux_loss_coef: 0.01, z_loss_coef: 0.001, activation: gelu}\n"
                           "data: {batch_size: " +
                           std::to_string(kBatch) +
                           "}\n"
                           "train: {lr: 1.0e-3, seed: 7}\n"
                           "parallel: {ep_size: " +
                           std::to_string(c.ep_size) + "}\n";
  return load_config_from_string(yaml, "verify_test");
}

// Note [Capacity scope], written out: max(min_capacity, min(S, ceil(cf * k * S / E))); 0 when
// dropless.
int64_t expected_capacity(const Case& c) {
  if (c.capacity_factor <= 0) return 0;
  const double raw = c.capacity_factor * static_cast<double>(top_k_of(c) * kTokens) /
                     static_cast<double>(c.num_experts);
  const auto ceiling = static_cast<int64_t>(std::ceil(raw - 1e-9));
  return std::max<int64_t>(kMinCapacity, std::min<int64_t>(kTokens, ceiling));
}

// One layout of ranks: each is checked with both routers and the three capacity modes.
struct Layout {
  int ranks;
  int ep_size;
  int64_t num_experts;
};

void PrintTo(const Layout& l, std::ostream* os) {
  *os << "n" << l.ranks << "_ep" << l.ep_size << "_e" << l.num_experts;
}

void check_case(const Case& c) {
  const VerifyReport report = verify_expert_parallel(make_config(c), c.ranks, /*tolerance=*/1e-5);
  SCOPED_TRACE(report.table());

  EXPECT_TRUE(report.ok());
  EXPECT_EQ(report.drop_set_mismatches, 0);
  ASSERT_FALSE(report.rows.empty());
  for (const VerifyRow& row : report.rows) {
    EXPECT_TRUE(row.ok) << row.quantity;
    EXPECT_TRUE(std::isfinite(row.rel_err) && std::isfinite(row.max_abs_err)) << row.quantity;
    EXPECT_LE(row.rel_err, 1e-5) << row.quantity;
  }

  EXPECT_EQ(report.ranks, c.ranks);
  EXPECT_EQ(report.ep_size, c.ep_size);
  EXPECT_EQ(report.tokens_per_rank, kTokens);
  const int64_t k = top_k_of(c);
  const int64_t capacity = expected_capacity(c);
  EXPECT_EQ(report.capacity, capacity);
  EXPECT_EQ(report.choices, c.ranks * kTokens * k);
  if (capacity == 0 || capacity >= kTokens) {
    // Dropless, or every expert has room for every token of its source rank.
    EXPECT_EQ(report.dropped, 0);
  } else {
    // E * C slots per rank for S * k choices: at least the overflow is dropped (8 experts:
    // C = 1 for top-1, 2 for top-2, half the choices fit; 16 experts, top-2: 16 slots for 32
    // choices; with more slots than choices the bound is 0 and only the drop set is checked).
    const int64_t overflow = std::max<int64_t>(0, kTokens * k - c.num_experts * capacity);
    EXPECT_GE(report.dropped, c.ranks * overflow);
    EXPECT_LT(report.dropped, report.choices);
  }
}

class EpInvariance : public ::testing::TestWithParam<Layout> {};

TEST_P(EpInvariance, MatchesSingleProcess) {
  const Layout& l = GetParam();
  for (const std::string router : {"switch", "topk"}) {
    for (const double cf : {0.5, 100.0, 0.0}) {
      const Case c{l.ranks, l.ep_size, router, cf, l.num_experts};
      SCOPED_TRACE(router + (cf <= 0 ? " dropless" : cf < 1 ? " with drops" : " without drops"));
      check_case(c);
    }
  }
}

// The 8-expert layouts run with drops (capacity 1 for top-1, 2 for top-2: half the choices
// fit) and the 32-rank ones with 16 or 32 experts.
INSTANTIATE_TEST_SUITE_P(Layouts, EpInvariance,
                         ::testing::Values(Layout{1, 1, 8}, Layout{2, 2, 8}, Layout{4, 4, 8},
                                           Layout{8, 8, 8}, Layout{4, 2, 8}, Layout{8, 4, 8},
                                           Layout{32, 16, 16}, Layout{32, 32, 32}),
                         [](const ::testing::TestParamInfo<Layout>& info) {
                           std::ostringstream os;
                           PrintTo(info.param, &os);
                           return os.str();
                         });

// The report is able to say no: with a negative tolerance only bitwise-equal quantities pass,
// so every row's verdict must be exactly its `bitwise` flag, and ok() the conjunction. The
// table names every quantity and flags each failure.
TEST(VerifyReport, VerdictFollowsTolerance) {
  const Case c{4, 4, "topk", 0.5, 8};
  const Config cfg = make_config(c);
  const VerifyReport strict = verify_expert_parallel(cfg, c.ranks, /*tolerance=*/-1.0);
  const VerifyReport loose = verify_expert_parallel(cfg, c.ranks, /*tolerance=*/1e-5);
  ASSERT_EQ(strict.rows.size(), loose.rows.size());
  const std::string table = strict.table();
  bool all_bitwise = true;
  for (size_t i = 0; i < strict.rows.size(); ++i) {
    const VerifyRow& row = strict.rows[i];
    EXPECT_EQ(row.quantity, loose.rows[i].quantity);
    // Same computation, same numbers: only the verdict depends on the tolerance.
    EXPECT_EQ(row.rel_err, loose.rows[i].rel_err) << row.quantity;
    EXPECT_EQ(row.ok, row.bitwise) << row.quantity;
    EXPECT_TRUE(loose.rows[i].ok) << row.quantity;
    all_bitwise = all_bitwise && row.bitwise;
    EXPECT_NE(table.find(row.quantity), std::string::npos) << row.quantity;
  }
  EXPECT_EQ(strict.ok(), all_bitwise);
  EXPECT_EQ(table.find("MISMATCH") != std::string::npos, !all_bitwise);
  EXPECT_TRUE(loose.ok());
  EXPECT_NE(loose.table().find("dropped choices: " + std::to_string(loose.dropped)),
            std::string::npos);
  // A non-bitwise quantity exists here (the gradient sync sums in another order than the
  // reference's autograd), so the strict report really fails.
  EXPECT_FALSE(all_bitwise);
  EXPECT_FALSE(strict.ok());
}

// The rows cover every quantity of Note [EP invariance] for a layer with biases.
TEST(VerifyReport, RowsCoverEveryQuantity) {
  const VerifyReport report = verify_expert_parallel(make_config({2, 2, "topk", 100.0, 8}), 2);
  std::vector<std::string> names;
  for (const VerifyRow& row : report.rows) names.push_back(row.quantity);
  for (const std::string expected :
       {"output", "grad input", "aux loss", "z loss", "grad router.weight", "grad experts.w1",
        "grad experts.b1", "grad experts.w2", "grad experts.b2", "step router.weight",
        "step experts.w1", "step experts.b1", "step experts.w2", "step experts.b2"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), expected), names.end()) << expected;
  }
  EXPECT_EQ(names.size(), 14u);
}

// The DeepSeek-V3-style layer (docs/moe.md) on 4 ranks, ep 2 x dp 2: sigmoid scores, the score
// bias (and its update over the world), a shared expert, group-limited choice, sequence aux loss.
TEST(VerifyModern, DeepSeekStyleLayerEqualsOneProcess) {
  Config cfg = make_config({4, 2, "topk", 1.25, 8});
  cfg.moe.score = ScoreKind::kSigmoid;
  cfg.moe.balance = BalanceKind::kAuxBias;
  cfg.moe.shared_experts = 1;
  cfg.moe.shared_d_ff = 8;
  cfg.moe.route_groups = 4;
  cfg.moe.route_group_limit = 2;
  cfg.moe.aux_loss_scope = AuxScope::kSequence;
  validate(cfg, 4);
  const VerifyReport report = verify_expert_parallel(cfg, 4);
  EXPECT_TRUE(report.ok()) << report.table();
  std::vector<std::string> names;
  for (const VerifyRow& row : report.rows) names.push_back(row.quantity);
  for (const std::string expected :
       {"score bias after update", "grad shared.w1", "step shared.w2"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), expected), names.end()) << expected;
  }
  EXPECT_GT(report.dropped, 0);  // capacity 1.25 with a random bias: some choices drop
}

// The training-layout check: bias balancing with the global-batch aux loss trains the same on
// ep 4, ep 2 x dp 2, grad_accum 4 and ep 2 x grad_accum 2 (to fp32 rounding), and the report
// really compares: at tolerance 0 the rounding-level differences fail it.
TEST(VerifyLayouts, BiasAndGlobalBatchAuxAreLayoutInvariant) {
  Config cfg = make_config({4, 4, "topk", 1.25, 8});
  cfg.model.n_layers = 2;
  cfg.moe.balance = BalanceKind::kAuxBias;
  cfg.moe.bias_update_rate = 0.01;
  cfg.moe.aux_loss_scope = AuxScope::kGlobalBatch;
  cfg.moe.shared_experts = 1;
  const LayoutReport report = verify_layouts(cfg, /*steps=*/3, /*tolerance=*/1e-5);
  ASSERT_EQ(report.rows.size(), 4u);
  EXPECT_TRUE(report.ok()) << report.table();
  for (const LayoutRow& row : report.rows) {
    ASSERT_EQ(row.losses.size(), 3u) << row.layout;
    for (size_t s = 0; s < 3; ++s) EXPECT_NEAR(row.losses[s], report.rows[0].losses[s], 1e-6);
  }
  EXPECT_EQ(report.rows[2].layout, "ep 1 x dp 1, grad_accum 4");
  const std::string table = report.table();
  EXPECT_NE(table.find("ep 2 x dp 2, grad_accum 1"), std::string::npos);
  const LayoutReport strict = verify_layouts(cfg, /*steps=*/1, /*tolerance=*/0.0);
  EXPECT_FALSE(strict.ok()) << strict.table();
}

// Expert-choice routing on 4 ranks, ep 2 x dp 2 and ep 4: each rank's experts take the best tokens
// of every source rank's micro-batch, as the single process does per rank.
TEST(VerifyModern, ExpertChoiceEqualsOneProcess) {
  for (const int ep : {2, 4}) {
    const VerifyReport report =
        verify_expert_parallel(make_config({4, ep, "expert_choice", 1.0, 8}), 4);
    EXPECT_TRUE(report.ok()) << "ep " << ep << "\n" << report.table();
    EXPECT_EQ(report.dropped, 0);
  }
}

// parallel.a2a hierarchical (Note [Two-level all-to-all]): the layer on 8 ranks as 2 nodes x 4
// (ep 8, with drops), as nodes of 2 in ep 4 x dp 2, and dropless (variable splits) equals one
// process, dropped sets included.
TEST(VerifyModern, TwoLevelAllToAllEqualsOneProcess) {
  struct Case {
    int ep, ranks_per_node;
    double capacity_factor;
  };
  for (const Case c : {Case{8, 4, 1.0}, Case{4, 2, 1.0}, Case{8, 2, 0.0}}) {
    Config cfg = make_config({8, c.ep, "topk", c.capacity_factor, 8});
    cfg.parallel.a2a = A2aKind::kHierarchical;
    cfg.parallel.ranks_per_node = c.ranks_per_node;
    validate(cfg, 8);
    const VerifyReport report = verify_expert_parallel(cfg, 8);
    EXPECT_TRUE(report.ok()) << "ep " << c.ep << ", nodes of " << c.ranks_per_node << "\n"
                             << report.table();
    if (c.capacity_factor > 0) {
      EXPECT_GT(report.dropped, 0);
    }
  }
}

// moe.a2a_chunks (Note [Chunked all-to-all]): the layer whose exchanges run in 3 chunks, on 4
// ranks with drops, on 8 ranks as ep 4 x dp 2 with shared experts, and dropless, equals one
// process (the one-process layer has no exchange to cut), dropped sets included.
TEST(VerifyModern, ChunkedAllToAllEqualsOneProcess) {
  struct Case {
    int ranks, ep;
    double capacity_factor;
    int64_t shared_experts;
  };
  for (const Case c : {Case{4, 4, 1.0, 0}, Case{8, 4, 1.0, 1}, Case{4, 4, 0.0, 0}}) {
    Config cfg = make_config({c.ranks, c.ep, "topk", c.capacity_factor, 8});
    cfg.moe.a2a_chunks = 3;
    cfg.moe.shared_experts = c.shared_experts;
    validate(cfg, c.ranks);
    const VerifyReport report = verify_expert_parallel(cfg, c.ranks);
    EXPECT_TRUE(report.ok()) << c.ranks << " ranks, ep " << c.ep << ", capacity factor "
                             << c.capacity_factor << "\n"
                             << report.table();
    if (c.capacity_factor > 0) {
      EXPECT_GT(report.dropped, 0);
    }
  }
}

// moe.expert_gemm trimmed (Note [Trimmed expert buffer]): every rank cuts its buffer to the
// largest kept load over the EP group (an all-reduce), the single process to its own; equal with
// drops, without (a capacity far above the loads, so the buffer is cut) and dropless (padded
// exchanges then, instead of exact counts), with a chunked exchange too.
TEST(VerifyModern, TrimmedBufferEqualsOneProcess) {
  struct Case {
    int ranks, ep;
    double capacity_factor;
    int64_t chunks;
  };
  for (const Case c :
       {Case{4, 4, 1.0, 1}, Case{4, 4, 100.0, 1}, Case{8, 4, 0.0, 1}, Case{4, 2, 100.0, 2}}) {
    Config cfg = make_config({c.ranks, c.ep, "topk", c.capacity_factor, 8});
    cfg.moe.expert_gemm = ExpertGemm::kTrimmed;
    cfg.moe.a2a_chunks = c.chunks;
    validate(cfg, c.ranks);
    const VerifyReport report = verify_expert_parallel(cfg, c.ranks);
    EXPECT_TRUE(report.ok()) << c.ranks << " ranks, ep " << c.ep << ", capacity factor "
                             << c.capacity_factor << ", " << c.chunks << " chunk(s)\n"
                             << report.table();
    EXPECT_EQ(report.dropped > 0, c.capacity_factor == 1.0) << report.table();
  }
}

// An encoder_decoder config (Note [Padding out of routing]): verify pads every sequence of its
// inputs, and the routed tokens alone count as choices: fewer than S * k, the dropped ones among
// them; equal to one process with drops, dropless and the sequence aux loss. With
// moe.route_padding every token counts again.
TEST(VerifyModern, PaddingOutOfRoutingEqualsOneProcess) {
  for (const double cf : {0.5, 0.0}) {
    Config cfg = make_config({4, 4, "topk", cf, 8});
    cfg.model.kind = ModelKind::kEncoderDecoder;
    cfg.moe.aux_loss_scope = AuxScope::kSequence;
    validate(cfg, 4);
    const VerifyReport report = verify_expert_parallel(cfg, 4);
    EXPECT_TRUE(report.ok()) << "capacity factor " << cf << "\n" << report.table();
    EXPECT_EQ(report.drop_set_mismatches, 0);
    EXPECT_GT(report.choices, 0);
    EXPECT_LT(report.choices, 4 * kTokens * 2);  // padding is not counted
    if (cf > 0) {
      EXPECT_GT(report.dropped, 0);
    } else {
      EXPECT_EQ(report.dropped, 0);
    }
    cfg.moe.route_padding = true;
    EXPECT_EQ(verify_expert_parallel(cfg, 4).choices, 4 * kTokens * 2);
  }
}

// moe.dedup_dispatch (Note [Node-deduplicated dispatch]): the dispatch sends each token once per
// node of the two-level exchange. On 8 ranks as 2 nodes x 4 (ep 8) with route groups = nodes and
// a limit of 1 node per token, as ep 4 x dp 2 with nodes of 2, and with 2 chunks on top: equal
// to one process, dropped sets included.
TEST(VerifyModern, DedupDispatchEqualsOneProcess) {
  struct Case {
    int ep, ranks_per_node;
    int64_t route_groups, chunks;
  };
  for (const Case c : {Case{8, 4, 2, 1}, Case{4, 2, 2, 1}, Case{8, 4, 0, 2}}) {
    Config cfg = make_config({8, c.ep, "topk", 1.0, 8});
    cfg.parallel.a2a = A2aKind::kHierarchical;
    cfg.parallel.ranks_per_node = c.ranks_per_node;
    cfg.moe.dedup_dispatch = true;
    cfg.moe.route_groups = c.route_groups;
    cfg.moe.route_group_limit = c.route_groups > 0 ? 1 : 0;
    cfg.moe.a2a_chunks = c.chunks;
    validate(cfg, 8);
    const VerifyReport report = verify_expert_parallel(cfg, 8);
    EXPECT_TRUE(report.ok()) << "ep " << c.ep << ", nodes of " << c.ranks_per_node
                             << ", route groups " << c.route_groups << ", chunks " << c.chunks
                             << "\n"
                             << report.table();
    EXPECT_GT(report.dropped, 0);
  }
}

}  // namespace
}  // namespace sy
