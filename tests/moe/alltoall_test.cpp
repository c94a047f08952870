// Expert parallelism on in-process ranks (real threads and a real communicator):
//   - sy::all_to_all, the autograd exchange, with rank-tagged payloads (value = src * 1e6 +
//     dst * 1e3 + row + column / 8, exact in double) for equal and uneven splits with zero rows
//     to and from some ranks; its backward against the closed form (the upstream rows routed
//     back to their sources);
//   - the MoE layer with identity experts (relu(x) - relu(-x) = x, exactly): every token's output
//     is its own row times its kept gate weight, so each row came back to where it left;
//   - Note [EP invariance]: the layer on N ranks equals, per source rank, the single-process layer
//     holding all experts (same config and seed; Note [Sharding-independent init]): outputs,
//     losses, dropped choices, input and router gradients, and expert gradients summed over the
//     source ranks.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#include "moe/alltoall.h"
#include "moe/moe_layer.h"
#include "moe/moe_test_util.h"
#include "parallel/inproc_comm.h"
#include "recording_comm.h"

namespace sy {
namespace {

using testing_moe::expect_close;
using testing_moe::expect_equal;
using testing_moe::make_test_layer;
using testing_moe::param;
using testing_moe::seeded_randn;

using RowsFn = std::function<int64_t(int src, int dst)>;  // rows that src sends to dst

constexpr int64_t kCols = 4;

double payload(int src, int dst, int64_t row, int64_t col) {
  return src * 1e6 + dst * 1e3 + static_cast<double>(row) + static_cast<double>(col) / 8.0;
}
// Upstream gradient at row j of rank r's output.
double upstream(int rank, int64_t row, int64_t col) {
  return rank * 100.0 + static_cast<double>(row) + static_cast<double>(col) / 4.0 + 0.5;
}

// Counts wrong elements of the forward and the backward on every rank.
void check_all_to_all(int n, const RowsFn& rows, bool pass_splits, bool three_dims) {
  std::vector<int64_t> wrong_fwd(n, -1), wrong_bwd(n, -1);
  run_inproc_ranks(n, [&](CommPtr world) {
    const int r = world->rank();
    std::vector<int64_t> send(n), recv(n);
    for (int p = 0; p < n; ++p) {
      send[p] = rows(r, p);
      recv[p] = rows(p, r);
    }
    // Input: blocks for destinations 0..n-1 in order.
    std::vector<double> x_vals;
    for (int d = 0; d < n; ++d) {
      for (int64_t i = 0; i < send[d]; ++i) {
        for (int64_t c = 0; c < kCols; ++c) x_vals.push_back(payload(r, d, i, c));
      }
    }
    const int64_t n_in = static_cast<int64_t>(x_vals.size()) / kCols;
    at::Tensor x = at::tensor(x_vals, at::kDouble).reshape({n_in, kCols});
    if (three_dims) x = x.reshape({n_in, 2, kCols / 2});
    x.requires_grad_(true);
    const std::vector<int64_t> no_splits;
    at::Tensor out =
        all_to_all(x, *world, pass_splits ? send : no_splits, pass_splits ? recv : no_splits);

    // Expected: blocks from sources 0..n-1 in order, each tagged (src, r, row).
    std::vector<double> want, w_vals;
    int64_t j = 0;
    for (int s = 0; s < n; ++s) {
      for (int64_t i = 0; i < recv[s]; ++i, ++j) {
        for (int64_t c = 0; c < kCols; ++c) {
          want.push_back(payload(s, r, i, c));
          w_vals.push_back(upstream(r, j, c));
        }
      }
    }
    const int64_t n_out = j;
    const at::Tensor flat = out.detach().reshape({-1});
    wrong_fwd[r] = out.size(0) != n_out
                       ? 1000000
                       : flat.ne(at::tensor(want, at::kDouble)).sum().item<int64_t>();

    // Backward of sum(out * w): row i of our block for d gets w_d at row (offset of r in d's
    // receive layout) + i.
    const at::Tensor w = at::tensor(w_vals, at::kDouble).reshape(out.sizes());
    const at::Tensor gx = torch::autograd::grad({(out * w).sum()}, {x})[0];
    std::vector<double> want_g;
    for (int d = 0; d < n; ++d) {
      int64_t offset = 0;
      for (int s = 0; s < r; ++s) offset += rows(s, d);
      for (int64_t i = 0; i < send[d]; ++i) {
        for (int64_t c = 0; c < kCols; ++c) want_g.push_back(upstream(d, offset + i, c));
      }
    }
    wrong_bwd[r] = gx.reshape({-1}).ne(at::tensor(want_g, at::kDouble)).sum().item<int64_t>();
  });
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(wrong_fwd[r], 0) << "forward, rank " << r << " of " << n;
    EXPECT_EQ(wrong_bwd[r], 0) << "backward, rank " << r << " of " << n;
  }
}

class AllToAll : public ::testing::TestWithParam<int> {};
INSTANTIATE_TEST_SUITE_P(Ranks, AllToAll, ::testing::Values(1, 2, 4, 8),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return "n" + std::to_string(info.param);
                         });

TEST_P(AllToAll, EqualSplits) {
  const RowsFn three = [](int, int) { return int64_t{3}; };
  check_all_to_all(GetParam(), three, /*pass_splits=*/false, /*three_dims=*/false);
  check_all_to_all(GetParam(), three, /*pass_splits=*/true, /*three_dims=*/true);
}

TEST_P(AllToAll, UnevenSplitsWithZeroRows) {
  const int n = GetParam();
  // Rank 0 receives nothing and the last rank sends nothing (for n > 1); other pairs send
  // 0, 1 or 2 rows (plus one to themselves).
  const RowsFn uneven = [n](int s, int d) -> int64_t {
    if (n > 1 && (d == 0 || s == n - 1)) return 0;
    return (s + 2 * d) % 3 + (s == d ? 1 : 0);
  };
  check_all_to_all(n, uneven, /*pass_splits=*/true, /*three_dims=*/false);
  check_all_to_all(n, uneven, /*pass_splits=*/true, /*three_dims=*/true);
  const RowsFn nothing = [](int, int) { return int64_t{0}; };
  check_all_to_all(n, nothing, /*pass_splits=*/true, /*three_dims=*/false);
}

TEST(AllToAllSelf, SelfCommunicatorIsIdentityWithGradient) {
  CommPtr self = make_self_communicator();
  const at::Tensor x = seeded_randn({5, 3}, 1).requires_grad_(true);
  const at::Tensor out = all_to_all(x, *self, {5}, {5});
  EXPECT_TRUE(at::equal(out, x));
  const at::Tensor w = seeded_randn({5, 3}, 2);
  EXPECT_TRUE(at::equal(torch::autograd::grad({(out * w).sum()}, {x})[0], w));
}

// ---- The MoE layer over EP ranks -------------------------------------------------------------

constexpr int64_t kHidden = 6;
constexpr int64_t kFfn = 5;
constexpr int64_t kExperts = 8;

MoeConfig ep_config(const std::string& router, int64_t top_k, double capacity_factor,
                    const std::string& activation) {
  MoeConfig cfg;
  cfg.num_experts = kExperts;
  cfg.top_k = top_k;
  cfg.router = parse_choice_or_throw<RouterKind>(router, "router");
  cfg.capacity_factor = capacity_factor;
  cfg.eval_capacity_factor = capacity_factor;
  cfg.min_capacity = 1;
  cfg.activation = parse_choice_or_throw<Activation>(activation, "activation");
  return cfg;
}

// Experts that return their input exactly: W1 = [I, -I], relu, W2 = [I; -I], zero biases.
void make_identity_experts(MoELayer& layer) {
  torch::NoGradGuard no_grad;
  ExpertsImpl& ex = *layer->experts;
  const at::Tensor eye = at::eye(kHidden, at::kDouble);
  for (int64_t e = 0; e < ex.num_local(); ++e) {
    ex.w1[e].copy_(at::cat({eye, -eye}, /*dim=*/1));
    ex.w2[e].copy_(at::cat({eye, -eye}, /*dim=*/0));
  }
  ex.b1.zero_();
  ex.b2.zero_();
}

// Identity experts: y_s = (sum of token s's kept gate weights) * x_s. Checks every row is a
// multiple in [0, 1] of its own input, exactly 0 when all choices are dropped, a positive multiple
// when one is kept, and ~x_s when none is dropped and the gate weights sum to 1.
void check_identity_round_trip(int n, const MoeConfig& cfg, bool sums_to_one) {
  std::vector<std::string> failures(n);
  run_inproc_ranks(n, [&](CommPtr world) {
    MoELayer layer = make_test_layer(cfg, kHidden, 2 * kHidden, 77, world);
    make_identity_experts(layer);
    const int r = world->rank();
    const int64_t num_tokens = 16;
    const at::Tensor x = seeded_randn({num_tokens, kHidden}, 500 + r);
    const at::Tensor y = layer->forward(x).y;
    const MoeStats& st = layer->last_stats();
    const int64_t k = cfg.top_k;
    std::vector<int64_t> kept(num_tokens, 0);
    for (int64_t i = 0; i < st.plan_token.numel(); ++i) {
      kept[st.plan_token[i].item<int64_t>()] += st.plan_kept[i].item<bool>() ? 1 : 0;
    }
    std::string& f = failures[r];
    for (int64_t s = 0; s < num_tokens; ++s) {
      const at::Tensor xs = x[s], ys = y[s];
      const double c = (ys * xs).sum().item<double>() / (xs * xs).sum().item<double>();
      const double off = (ys - c * xs).abs().max().item<double>();
      if (off > 1e-12) f += str("token ", s, " is not a multiple of its row; ");
      if (kept[s] == 0 && !at::equal(ys, at::zeros_like(ys))) f += "dropped token not zero; ";
      if (sums_to_one && kept[s] == k && std::abs(c - 1.0) > 1e-6) f += "kept token changed; ";
      if (kept[s] > 0 && c <= 0) f += "kept token lost; ";
      if (c < -1e-12 || c > 1.0 + 1e-6) f += "gate sum outside [0, 1]; ";
    }
  });
  for (int r = 0; r < n; ++r) EXPECT_EQ(failures[r], "") << "rank " << r << " of " << n;
}

TEST(EpLayer, IdentityExpertsRoundTrip) {
  for (int n : {1, 2, 4}) {
    check_identity_round_trip(n, ep_config("topk", 2, 8.0, "relu"), true);     // no drops
    check_identity_round_trip(n, ep_config("topk", 2, 0.0, "relu"), true);     // dropless
    check_identity_round_trip(n, ep_config("topk", 2, 0.5, "relu"), true);     // drops
    check_identity_round_trip(n, ep_config("switch", 1, 0.5, "relu"), false);  // drops
  }
}

// What one rank computed, for comparison with the reference.
struct RankResult {
  at::Tensor y, aux, z, kept, plan_token, plan_expert;
  at::Tensor gx, g_router;
  std::vector<at::Tensor> g_experts;  // w1, b1, w2, b2: this rank's local experts
  bool same_init = false;
};

std::vector<at::Tensor> expert_params(MoELayer& layer) {
  const ExpertsImpl& ex = *layer->experts;
  return {ex.w1, ex.b1, ex.w2, ex.b2};
}
const char* const kExpertNames[] = {"w1", "b1", "w2", "b2"};

// Rank r's tokens to route when some are padding (Note [Padding out of routing]): every third
// one, offset by the rank, is not.
at::Tensor routed_tokens(int64_t num_tokens, int r) {
  return at::arange(num_tokens, at::kLong).add(r).remainder(3).ne(0);
}

// Runs rank r's tokens through `layer`, with objective sum(y * g) + 0.37 aux + 0.11 z.
RankResult run_tokens(MoELayer& layer, int64_t num_tokens, int r, bool padded = false) {
  const at::Tensor x = seeded_randn({num_tokens, kHidden}, 1000 + r).requires_grad_(true);
  const at::Tensor g = seeded_randn({num_tokens, kHidden}, 2000 + r);
  MoeOutput out =
      layer->forward(x, {}, nullptr, 0, {}, padded ? routed_tokens(num_tokens, r) : at::Tensor());
  const MoeStats& st = layer->last_stats();
  RankResult res;
  res.y = out.y.detach();
  res.aux = out.aux_loss.detach();
  res.z = out.z_loss.detach();
  res.kept = st.plan_kept;
  res.plan_token = st.plan_token;
  res.plan_expert = st.plan_expert;
  std::vector<at::Tensor> wrt = {x, param(*layer, "router.weight")};
  for (const at::Tensor& t : expert_params(layer)) wrt.push_back(t);
  const at::Tensor objective =
      (out.y * g).sum() + 0.37 * out.aux_loss.to(at::kDouble) + 0.11 * out.z_loss.to(at::kDouble);
  // allow_unused: with no tokens, nothing depends on the router weight.
  auto grads = torch::autograd::grad({objective}, wrt, /*grad_outputs=*/{}, /*retain_graph=*/false,
                                     /*create_graph=*/false, /*allow_unused=*/true);
  for (size_t i = 0; i < grads.size(); ++i) {
    if (!grads[i].defined()) grads[i] = at::zeros_like(wrt[i]);
  }
  res.gx = grads[0];
  res.g_router = grads[1];
  res.g_experts.assign(grads.begin() + 2, grads.end());
  return res;
}

void check_ep_invariance(int n, const MoeConfig& cfg, const std::vector<int64_t>& tokens,
                         bool padded = false) {
  const uint64_t seed = 4242;
  // Reference: one process, all experts, each source rank's tokens run separately.
  MoELayer ref = make_test_layer(cfg, kHidden, kFfn, seed);
  std::vector<RankResult> want(n);
  std::vector<at::Tensor> expert_grad_sum;
  for (int r = 0; r < n; ++r) {
    want[r] = run_tokens(ref, tokens[r], r, padded);
    for (size_t i = 0; i < want[r].g_experts.size(); ++i) {
      if (r == 0) expert_grad_sum.push_back(want[r].g_experts[i].clone());
      else expert_grad_sum[i] += want[r].g_experts[i];
    }
  }
  const int64_t num_local = kExperts / n;
  std::vector<at::Tensor> ref_experts;
  for (const at::Tensor& t : expert_params(ref)) ref_experts.push_back(t.detach().clone());
  const at::Tensor ref_router = param(*ref, "router.weight").detach().clone();

  std::vector<RankResult> got(n);
  run_inproc_ranks(n, [&](CommPtr world) {
    const int r = world->rank();
    MoELayer layer = make_test_layer(cfg, kHidden, kFfn, seed, world);
    // Note [Sharding-independent init]: this rank's slice of the single-process weights, bitwise.
    bool same = at::equal(param(*layer, "router.weight"), ref_router);
    const auto mine = expert_params(layer);
    for (size_t i = 0; i < mine.size(); ++i) {
      same = same && at::equal(mine[i], ref_experts[i].narrow(0, r * num_local, num_local));
    }
    got[r] = run_tokens(layer, tokens[r], r, padded);
    got[r].same_init = same;
  });

  for (int r = 0; r < n; ++r) {
    const std::string at_rank = "rank " + std::to_string(r) + " of " + std::to_string(n) + ": ";
    EXPECT_TRUE(got[r].same_init) << at_rank << "weights differ from the single-process layer";
    // The routing is the same fp32 computation on the same rows: plans agree exactly.
    EXPECT_TRUE(at::equal(got[r].plan_token, want[r].plan_token)) << at_rank << "plan tokens";
    EXPECT_TRUE(at::equal(got[r].plan_expert, want[r].plan_expert)) << at_rank << "plan experts";
    EXPECT_TRUE(at::equal(got[r].kept, want[r].kept)) << at_rank << "dropped set";
    // Expert GEMMs see other batch shapes ([E/N, N*C, H] vs [E, C, H]): equal to rounding.
    expect_close(got[r].y, want[r].y, 1e-10, 1e-12, at_rank + "y");
    expect_close(got[r].aux, want[r].aux, 1e-6, 1e-7, at_rank + "aux");
    expect_close(got[r].z, want[r].z, 1e-6, 1e-7, at_rank + "z");
    expect_close(got[r].gx, want[r].gx, 1e-6, 1e-9, at_rank + "grad x");
    expect_close(got[r].g_router, want[r].g_router, 1e-5, 1e-7, at_rank + "grad router");
    for (size_t i = 0; i < got[r].g_experts.size(); ++i) {
      expect_close(got[r].g_experts[i], expert_grad_sum[i].narrow(0, r * num_local, num_local),
                   1e-10, 1e-12, at_rank + "grad " + kExpertNames[i] + " (summed over sources)");
    }
  }
}

class EpInvariance : public ::testing::TestWithParam<int> {};
INSTANTIATE_TEST_SUITE_P(Ranks, EpInvariance, ::testing::Values(2, 4),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return "n" + std::to_string(info.param);
                         });

TEST_P(EpInvariance, Top1WithDrops) {
  const int n = GetParam();
  // 12 tokens per rank, capacity ceil(0.5 * 12 / 8) = 1.
  check_ep_invariance(n, ep_config("switch", 1, 0.5, "gelu"), std::vector<int64_t>(n, 12));
}

TEST_P(EpInvariance, Top2WithDrops) {
  const int n = GetParam();
  // capacity ceil(0.75 * 2 * 12 / 8) = 3.
  check_ep_invariance(n, ep_config("topk", 2, 0.75, "swiglu"), std::vector<int64_t>(n, 12));
}

TEST_P(EpInvariance, Top2NoDrops) {
  const int n = GetParam();
  check_ep_invariance(n, ep_config("topk_logits", 2, 8.0, "relu"), std::vector<int64_t>(n, 12));
}

TEST_P(EpInvariance, Top1Dropless) {
  const int n = GetParam();
  std::vector<int64_t> tokens;  // different micro-batch sizes per rank (dropless allows it)
  for (int r = 0; r < n; ++r) tokens.push_back(8 + 3 * r);
  check_ep_invariance(n, ep_config("switch", 1, 0.0, "relu"), tokens);
}

TEST_P(EpInvariance, Top2Dropless) {
  const int n = GetParam();
  std::vector<int64_t> tokens;
  for (int r = 0; r < n; ++r) tokens.push_back(10 + 2 * r);
  check_ep_invariance(n, ep_config("topk", 2, 0.0, "gelu"), tokens);
}

TEST_P(EpInvariance, Top2DroplessWithAnEmptyRank) {
  const int n = GetParam();
  // Rank 1 has no tokens this step; it still serves its experts to the other ranks.
  std::vector<int64_t> tokens;
  for (int r = 0; r < n; ++r) tokens.push_back(r == 1 ? 0 : 7 + 2 * r);
  check_ep_invariance(n, ep_config("topk", 2, 0.0, "swiglu"), tokens);
}

// Padding out of routing: the routed tokens' plans, outputs and gradients match the single
// process too, in capacity mode and dropless (where the padding's choices are not sent).
TEST_P(EpInvariance, PaddingOutOfRouting) {
  const int n = GetParam();
  check_ep_invariance(n, ep_config("topk", 2, 0.75, "gelu"), std::vector<int64_t>(n, 12),
                      /*padded=*/true);
  std::vector<int64_t> tokens;
  for (int r = 0; r < n; ++r) tokens.push_back(10 + 2 * r);
  check_ep_invariance(n, ep_config("topk", 2, 0.0, "swiglu"), tokens, /*padded=*/true);
  MoeConfig chunked = ep_config("topk", 2, 0.0, "relu");
  chunked.a2a_chunks = 2;
  check_ep_invariance(n, chunked, tokens, /*padded=*/true);
}

// ---- Chunked exchanges (Note [Chunked all-to-all]) -------------------------------------------

// Every rank's layer with moe.a2a_chunks = `chunks` against the same layer with one exchange each
// way, on the same in-process ranks: the same plans and losses, and the same outputs and
// gradients up to float rounding (a GEMM over fewer rows may take another kernel path, and the
// expert weight gradients are summed chunk by chunk).
void check_chunked(int n, MoeConfig cfg, const std::vector<int64_t>& tokens, int64_t chunks) {
  auto run = [&](int64_t a2a_chunks) {
    cfg.a2a_chunks = a2a_chunks;
    std::vector<RankResult> res(n);
    run_inproc_ranks(n, [&](CommPtr world) {
      MoELayer layer = make_test_layer(cfg, kHidden, kFfn, 4343, world);
      res[world->rank()] = run_tokens(layer, tokens[world->rank()], world->rank());
    });
    return res;
  };
  const std::vector<RankResult> want = run(1);
  const std::vector<RankResult> got = run(chunks);
  for (int r = 0; r < n; ++r) {
    const std::string at_rank = str("rank ", r, " of ", n, ", ", chunks, " chunks: ");
    EXPECT_TRUE(at::equal(got[r].plan_token, want[r].plan_token)) << at_rank << "plan tokens";
    EXPECT_TRUE(at::equal(got[r].kept, want[r].kept)) << at_rank << "dropped set";
    expect_close(got[r].y, want[r].y, 1e-12, 1e-14, at_rank + "y");
    expect_equal(got[r].aux, want[r].aux, at_rank + "aux");
    expect_close(got[r].gx, want[r].gx, 1e-12, 1e-14, at_rank + "grad x");
    expect_close(got[r].g_router, want[r].g_router, 1e-6, 1e-9, at_rank + "grad router");
    for (size_t i = 0; i < got[r].g_experts.size(); ++i) {
      expect_close(got[r].g_experts[i], want[r].g_experts[i], 1e-12, 1e-14,
                   at_rank + "grad " + kExpertNames[i]);
    }
  }
}

TEST_P(EpInvariance, ChunkedTop2WithDrops) {
  const int n = GetParam();
  // capacity ceil(1.5 * 2 * 12 / 8) = 5 slots per expert: 2 chunks of 2 and 3 slots, 3 of
  // 1, 2, 2, and 8 chunks capped at the 5 slots.
  for (int64_t chunks : {2, 3, 8}) {
    check_chunked(n, ep_config("topk", 2, 1.5, "swiglu"), std::vector<int64_t>(n, 12), chunks);
  }
}

TEST_P(EpInvariance, ChunkedTop1WithDrops) {
  const int n = GetParam();
  // capacity ceil(1.25 * 16 / 8) = 3 slots (some choices still dropped): chunks of 1 and 2.
  check_chunked(n, ep_config("switch", 1, 1.25, "gelu"), std::vector<int64_t>(n, 16), 2);
}

TEST_P(EpInvariance, ChunkedTop2Dropless) {
  const int n = GetParam();
  // Different micro-batch sizes per rank, and more chunks than some (rank, expert) blocks have
  // rows: those chunks carry nothing for that block.
  std::vector<int64_t> tokens;
  for (int r = 0; r < n; ++r) tokens.push_back(9 + 3 * r);
  for (int64_t chunks : {2, 3, 7}) {
    check_chunked(n, ep_config("topk", 2, 0.0, "gelu"), tokens, chunks);
  }
}

TEST_P(EpInvariance, ChunkedDroplessWithAnEmptyRank) {
  const int n = GetParam();
  std::vector<int64_t> tokens;
  for (int r = 0; r < n; ++r) tokens.push_back(r == 1 ? 0 : 6 + 2 * r);
  check_chunked(n, ep_config("topk", 2, 0.0, "relu"), tokens, 4);
}

// The chunks are separate exchanges with the splits of Note [Chunked all-to-all]: dropless, 3
// chunks, 2 ranks of 4 experts each. Rank r sends c_g rows to expert g (its plan's counts), and
// chunk j carries rows [c*j/3, c*(j+1)/3) of each block, so chunk j's send split to rank d is
// the sum of those pieces over d's experts; the three chunks together send every row once, and
// each combine returns its dispatch's rows (splits swapped). Identity experts bring every token
// back whole, so every row also came back to its own place.
TEST(ChunkedExchange, DroplessSplitsCutEachBlockAndCoverEveryRowOnce) {
  MoeConfig cfg = ep_config("topk", 2, 0.0, "relu");
  cfg.a2a_chunks = 3;
  std::vector<std::string> failures(2);
  run_inproc_ranks(2, [&](CommPtr world) {
    auto recording = std::make_shared<testing::RecordingComm>(world);
    MoELayer layer = make_test_layer(cfg, kHidden, 2 * kHidden, 77, recording);
    make_identity_experts(layer);
    const int r = world->rank();
    const at::Tensor x = seeded_randn({10 + 3 * r, kHidden}, 600 + r);
    const at::Tensor y = layer->forward(x).y;
    expect_close(y, x, 1e-6, 1e-7, str("rank ", r, " round trip"));   // fp32 gate weights
    const at::Tensor counts = layer->last_stats().tokens_per_expert;  // [8], this rank's choices
    std::string& f = failures[r];
    // 1 exchange of counts, 3 dispatches, 3 combines.
    const auto exchanges = recording->calls("all_to_all");
    if (exchanges.size() != 7u) {
      f += str("expected 7 exchanges, got ", exchanges.size());
      return;
    }
    std::vector<int64_t> total(2, 0);
    for (int64_t j = 0; j < 3; ++j) {
      std::vector<int64_t> want(2, 0);
      for (int64_t g = 0; g < 8; ++g) {
        const int64_t c = counts[g].item<int64_t>();
        want[g / 4] += c * (j + 1) / 3 - c * j / 3;
      }
      const auto& dispatch = exchanges[1 + j];
      const auto& combine = exchanges[4 + j];
      if (dispatch.send != want) f += str("chunk ", j, ": send splits differ; ");
      if (combine.send != dispatch.recv || combine.recv != dispatch.send) {
        f += str("chunk ", j, ": the combine is not the dispatch reversed; ");
      }
      for (int d = 0; d < 2; ++d) total[d] += dispatch.send[d];
    }
    for (int d = 0; d < 2; ++d) {
      int64_t all = 0;
      for (int64_t g = 4 * d; g < 4 * d + 4; ++g) all += counts[g].item<int64_t>();
      if (total[d] != all) f += str("rank ", d, " got ", total[d], " rows of ", all, "; ");
    }
  });
  for (int r = 0; r < 2; ++r) EXPECT_EQ(failures[r], "") << "rank " << r;
}

}  // namespace
}  // namespace sy
