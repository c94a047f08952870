// Note [Padding out of routing]: tokens whose `routed` flag is false (an encoder-decoder's PAD
// positions) keep their router scores but take no expert slot, get no routed output, and count
// in no loss, load or drop. Checked against independent references:
//   - the plan against a hand-computed slot table;
//   - each aux loss and the z loss against the same loss of the routed tokens alone (the
//     sequence-wise ones per sequence by hand, a sequence without routed tokens left out);
//   - the layer against the same layer run on the routed tokens alone (same weights, the same
//     capacity through moe.min_capacity, so the same drops): outputs, losses, loads, drops and
//     every gradient; the padding's rows carry the shared experts' output only.
// EP invariance with padding: EpInvariance.PaddingOutOfRouting (alltoall_test.cpp).
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moe/moe_layer.h"
#include "moe/moe_test_util.h"
#include "moe/plan.h"
#include "moe/router.h"

namespace sy {
namespace {

using testing_moe::bool_tensor;
using testing_moe::expect_close;
using testing_moe::expect_equal;
using testing_moe::long_matrix;
using testing_moe::long_tensor;
using testing_moe::make_test_layer;
using testing_moe::param;
using testing_moe::seeded_randn;

// ---- plan ------------------------------------------------------------------------------------

// 5 tokens, top-2 of 3 experts, token 0 not routed. Choice-major order (Note [Slot order]):
//   first choices  t0:- t1:e0 t2:e0 t3:e0 t4:e1   slots - 0 1 2 0
//   second choices t0:- t1:e2 t2:e1 t3:e1 t4:e0   slots - 0 1 2 3
// The routed choices per expert: e0 4, e1 3, e2 1. With capacity 2 the kept ones are t1, t2 and
// t4 first, t1 and t2 second. Routed, token 0 would take slot 0 of e0 and push t2's first choice
// out (below).
TEST(PaddingPlan, RoutedChoicesAloneTakeSlots) {
  const at::Tensor idx = long_matrix({{0, 1}, {0, 2}, {0, 1}, {0, 1}, {1, 0}});
  const at::Tensor routed = bool_tensor({0, 1, 1, 1, 1});
  const at::Tensor routed_choice = bool_tensor({0, 1, 1, 1, 1, 0, 1, 1, 1, 1});
  for (const int64_t capacity : {2, 0}) {
    const DispatchPlan plan = make_plan(idx, {}, 3, capacity, /*score_priority=*/false,
                                        /*fused_kernel=*/false, routed);
    const std::string what = capacity ? "capacity 2" : "dropless";
    expect_equal(plan.token, long_tensor({0, 1, 2, 3, 4, 0, 1, 2, 3, 4}), what + ": tokens");
    expect_equal(plan.expert, long_tensor({0, 0, 0, 0, 1, 1, 2, 1, 1, 0}), what + ": experts");
    expect_equal(plan.slot.masked_select(routed_choice), long_tensor({0, 1, 2, 0, 0, 1, 2, 3}),
                 what + ": slots of the routed choices");
    expect_equal(plan.tokens_per_expert, long_tensor({4, 3, 1}), what + ": routed per expert");
    expect_equal(plan.kept, capacity ? bool_tensor({0, 1, 1, 0, 1, 0, 1, 1, 0, 0}) : routed_choice,
                 what + ": kept");
  }
  // Without the flags token 0 takes slots, and t2's first choice (slot 2 of e0) is dropped.
  const DispatchPlan all = make_plan(idx, {}, 3, 2, false);
  expect_equal(all.slot, long_tensor({0, 1, 2, 3, 0, 1, 0, 2, 3, 4}), "every token routed: slots");
  expect_equal(all.tokens_per_expert, long_tensor({5, 4, 1}), "every token routed: counts");
  expect_equal(all.kept, bool_tensor({1, 1, 0, 0, 1, 1, 1, 0, 0, 0}), "every token routed: kept");
}

// ---- losses ----------------------------------------------------------------------------------

constexpr int64_t kExpertsL = 4, kK = 2, kSeq = 4;

struct Routing {
  at::Tensor logits, probs, idx, weights, routed;
};

// 12 tokens in 3 sequences of 4; sequence 1 has no routed token, the others two and three.
Routing make_routing() {
  Routing r;
  r.logits = seeded_randn({12, kExpertsL}, 31).to(at::kFloat).requires_grad_(true);
  r.probs = at::softmax(r.logits, -1);
  auto [w, i] = r.probs.topk(kK, -1);
  r.weights = w;
  r.idx = i;
  r.routed = bool_tensor({1, 0, 1, 0, 0, 0, 0, 0, 1, 1, 0, 1});
  return r;
}

at::Tensor rows(const at::Tensor& t, const at::Tensor& keep) {
  return t.index_select(0, keep.nonzero().reshape(-1));
}

TEST(PaddingLosses, EachLossEqualsItsValueOnTheRoutedTokensAlone) {
  const Routing r = make_routing();
  const at::Tensor p = rows(r.probs, r.routed), i = rows(r.idx, r.routed),
                   w = rows(r.weights, r.routed);
  // micro_batch scope: the loss of the routed rows.
  expect_close(load_balancing_loss(r.probs, r.idx, r.routed), load_balancing_loss(p, i), 1e-6, 1e-7,
               "switch, micro-batch");
  expect_close(balance_loss(AuxLossKind::kVariance, r.probs, r.idx, r.weights, 0, {}, r.routed),
               balance_loss(AuxLossKind::kVariance, p, i, w, 0), 1e-6, 1e-7,
               "variance, micro-batch");
  expect_close(router_z_loss(r.logits, r.routed), router_z_loss(rows(r.logits, r.routed)), 1e-6,
               1e-7, "z loss");
  // global_batch scope: P over the routed tokens.
  const at::Tensor global_f = at::tensor({0.1f, 0.2f, 0.3f, 0.4f});
  expect_close(balance_loss(AuxLossKind::kSwitch, r.probs, r.idx, r.weights, 0, global_f, r.routed),
               (global_f * p.mean(0)).sum() * kExpertsL, 1e-6, 1e-7, "switch, global batch");
  // sequence scope: sequences 0 and 2 (rows 0, 2 and 8, 9, 11), sequence 1 left out.
  for (const AuxLossKind kind : {AuxLossKind::kSwitch, AuxLossKind::kVariance}) {
    std::vector<at::Tensor> per_seq;
    for (const int64_t s : {0, 2}) {
      const at::Tensor keep = r.routed.narrow(0, s * kSeq, kSeq);
      auto part = [&](const at::Tensor& t) { return rows(t.narrow(0, s * kSeq, kSeq), keep); };
      per_seq.push_back(balance_loss(kind, part(r.probs), part(r.idx), part(r.weights), 0));
    }
    expect_close(balance_loss(kind, r.probs, r.idx, r.weights, kSeq, {}, r.routed),
                 (per_seq[0] + per_seq[1]) / 2.0, 1e-6, 1e-7,
                 kind == AuxLossKind::kSwitch ? "switch, per sequence" : "variance, per sequence");
  }
  // Task groups (Note [Task masks]): shares and counts over the routed tokens.
  const at::Tensor group = long_tensor({0, 0, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1});
  const at::Tensor allowed = bool_tensor({1, 1, 1, 0, 0, 1, 1, 1}).view({2, 4});
  for (const AuxLossKind kind : {AuxLossKind::kSwitch, AuxLossKind::kVariance}) {
    expect_close(masked_balance_loss(kind, r.probs, r.idx, r.weights, group, allowed, r.routed),
                 masked_balance_loss(kind, p, i, w, rows(group, r.routed), allowed), 1e-6, 1e-7,
                 "task groups");
  }
  // No gradient reaches the rows that are not routed.
  const at::Tensor total =
      load_balancing_loss(r.probs, r.idx, r.routed) + router_z_loss(r.logits, r.routed) +
      balance_loss(AuxLossKind::kVariance, r.probs, r.idx, r.weights, kSeq, {}, r.routed);
  const at::Tensor g = torch::autograd::grad({total}, {r.logits})[0];
  EXPECT_EQ(rows(g, r.routed.logical_not()).abs().max().item<float>(), 0.f);
  EXPECT_GT(rows(g, r.routed).abs().max().item<float>(), 0.f);
  // Nothing routed: every loss is 0, not NaN.
  const at::Tensor none = at::zeros({12}, at::kBool);
  EXPECT_EQ(load_balancing_loss(r.probs, r.idx, none).item<float>(), 0.f);
  EXPECT_EQ(
      balance_loss(AuxLossKind::kSwitch, r.probs, r.idx, r.weights, kSeq, {}, none).item<float>(),
      0.f);
  EXPECT_EQ(router_z_loss(r.logits, none).item<float>(), 0.f);
}

// ---- the layer -------------------------------------------------------------------------------

// Width 8: the fused permute and combine take multiples of 4 (PaddingCuda runs them).
constexpr int64_t kHidden = 8, kFfn = 5, kTokens = 14;

MoeConfig layer_config(RouterKind router, int64_t k, double factor, int64_t min_capacity) {
  MoeConfig cfg;
  cfg.num_experts = 4;
  cfg.top_k = k;
  cfg.router = router;
  cfg.capacity_factor = factor;
  cfg.eval_capacity_factor = factor;
  cfg.min_capacity = min_capacity;
  cfg.activation = Activation::kGelu;
  return cfg;
}

struct LayerRun {
  at::Tensor y, aux, z, load, dropped;
  std::vector<at::Tensor> grads;  // x, then every parameter in order
};

// The layer on x (rows `keep` of the base input and upstream gradient), objective
// sum(y * g) over the rows `counted` + 0.37 aux + 0.11 z.
// f32: the input in fp32 (the CUDA comparison), else double. The results come back to the CPU.
LayerRun run_layer(MoELayer& layer, const at::Tensor& keep, const at::Tensor& routed,
                   const at::Tensor& counted, bool f32 = false) {
  const auto dtype = f32 ? at::kFloat : at::kDouble;
  const at::Device device = layer->router->parameters()[0].device();
  const at::Tensor x_all = seeded_randn({kTokens, kHidden}, 71).to(dtype);
  const at::Tensor g_all = seeded_randn({kTokens, kHidden}, 72).to(dtype);
  const at::Tensor x = rows(x_all, keep).to(device).requires_grad_(true);
  const at::Tensor g = (rows(g_all, keep) * counted.unsqueeze(1).to(dtype)).to(device);
  const MoeOutput out =
      layer->forward(x, {}, nullptr, 0, {}, routed.defined() ? routed.to(device) : routed);
  LayerRun run;
  run.y = out.y.detach().cpu();
  run.aux = out.aux_loss.detach().cpu();
  run.z = out.z_loss.detach().cpu();
  run.load = layer->last_stats().tokens_per_expert.cpu();
  run.dropped = layer->last_stats().dropped.cpu();
  std::vector<at::Tensor> wrt{x};
  for (const auto& p : layer->parameters()) wrt.push_back(p);
  const at::Tensor objective =
      (out.y * g).sum() + 0.37 * out.aux_loss.to(dtype) + 0.11 * out.z_loss.to(dtype);
  run.grads = torch::autograd::grad({objective}, wrt, {}, false, false, /*allow_unused=*/true);
  for (at::Tensor& t : run.grads) {
    if (t.defined()) t = t.cpu();
  }
  return run;
}

// The layer with padding against the same layer on the routed tokens alone. cuda: the padded run
// on the GPU in fp32 (the fused router, plan, permute and combine kernels), the reference on the
// CPU in fp32, compared to fp32 rounding.
void check_against_routed_alone(const MoeConfig& cfg, const std::string& what, bool cuda = false) {
  SCOPED_TRACE(what);
  const at::Tensor routed = at::arange(kTokens, at::kLong).remainder(4).ne(1);  // 1, 5, 9, 13 pad
  const at::Tensor all = at::ones({kTokens}, at::kBool);
  MoELayer padded = make_test_layer(cfg, kHidden, kFfn, 5);
  MoELayer alone = make_test_layer(cfg, kHidden, kFfn, 5);
  const double rtol = cuda ? 1e-4 : 1e-6, atol = cuda ? 1e-5 : 1e-9;
  if (cuda) {
    padded->to(at::kFloat);
    padded->to(at::Device(at::kCUDA));
    alone->to(at::kFloat);
  }
  const LayerRun got = run_layer(padded, all, routed, routed, cuda);
  const int64_t n = routed.sum().item<int64_t>();
  const LayerRun want = run_layer(alone, routed, {}, at::ones({n}, at::kBool), cuda);
  EXPECT_EQ(padded->last_stats().capacity, alone->last_stats().capacity) << "same capacity";
  expect_close(rows(got.y, routed), want.y, rtol, atol, "routed rows");
  // The padding's rows: the shared experts' output alone (zero without them).
  const at::Tensor pad_x = rows(seeded_randn({kTokens, kHidden}, 71), routed.logical_not())
                               .to(cuda ? at::kFloat : at::kDouble);
  const at::Tensor pad_want =
      padded->shared ? alone->shared->forward(pad_x.view({1, -1, kHidden})).view({-1, kHidden})
                     : at::zeros_like(pad_x);
  expect_close(rows(got.y, routed.logical_not()), pad_want.detach(), rtol, cuda ? atol : 1e-12,
               "padding rows");
  expect_close(got.aux, want.aux, 1e-5, 1e-7, "aux loss");
  expect_close(got.z, want.z, 1e-5, 1e-7, "z loss");
  expect_equal(got.load, want.load, "load");
  expect_equal(got.dropped, want.dropped, "dropped");
  if (cfg.capacity_factor > 0) {
    EXPECT_GT(want.dropped.item<int64_t>(), 0) << "the capacity drops some routed choices";
  }
  expect_close(rows(got.grads[0], routed), want.grads[0], 1e-5, atol, "grad x, routed rows");
  for (size_t i = 1; i < got.grads.size(); ++i) {
    const at::Tensor a = got.grads[i].defined() ? got.grads[i] : at::zeros({1});
    const at::Tensor b = want.grads[i].defined() ? want.grads[i] : at::zeros({1});
    expect_close(a, b, 1e-5, atol, "grad of parameter " + std::to_string(i));
  }
}

TEST(PaddingLayer, RoutedTokensAsIfAloneWithDrops) {
  // Capacity 2 on both sides (min_capacity): the drops of the routed tokens are the same only if
  // the padding takes no slot.
  check_against_routed_alone(layer_config(RouterKind::kTopK, 2, 0.01, 2), "top-2, capacity 2");
  MoeConfig priority = layer_config(RouterKind::kSwitch, 1, 0.01, 2);
  priority.priority = SlotPriority::kScore;
  check_against_routed_alone(priority, "switch, score priority, capacity 2");
  MoeConfig grouped = layer_config(RouterKind::kTopK, 2, 0.01, 3);
  grouped.expert_gemm = ExpertGemm::kGrouped;
  check_against_routed_alone(grouped, "top-2, grouped rows, capacity 3");
}

TEST(PaddingLayer, RoutedTokensAsIfAloneDroplessAndModernRouters) {
  MoeConfig dropless = layer_config(RouterKind::kTopK, 2, 0.0, 1);
  dropless.shared_experts = 1;
  check_against_routed_alone(dropless, "top-2 dropless, a shared expert");
  MoeConfig modern = layer_config(RouterKind::kTopK, 2, 0.01, 3);
  modern.score = ScoreKind::kSigmoid;
  modern.balance = BalanceKind::kAuxBias;
  modern.route_groups = 2;
  modern.route_group_limit = 1;
  modern.aux_loss = AuxLossKind::kVariance;
  check_against_routed_alone(modern, "sigmoid, score bias, 2 groups limit 1, variance loss");
}

// The fused CUDA kernels with padding (the plan kernel counts the padding as an extra expert; the
// fused router's losses fall back to LibTorch's masked ones) against the CPU layer on the routed
// tokens alone.
TEST(PaddingCuda, FusedLayerAsIfRoutedTokensAlone) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device (or a LibTorch without CUDA)";
  check_against_routed_alone(layer_config(RouterKind::kTopK, 2, 0.01, 2), "capacity 2", true);
  check_against_routed_alone(layer_config(RouterKind::kTopK, 2, 0.0, 1), "dropless", true);
}

TEST(PaddingLayer, ExpertChoiceTakesRoutedTokensFirstAndWeighsPaddingZero) {
  MoeConfig cfg = layer_config(RouterKind::kExpertChoice, 2, 1.0, 1);
  MoELayer layer = make_test_layer(cfg, kHidden, kFfn, 5);
  const at::Tensor routed = at::arange(kTokens, at::kLong).remainder(4).ne(1);
  const LayerRun got = run_layer(layer, at::ones({kTokens}, at::kBool), routed, routed);
  // Capacity ceil(1.0 * 2 * 14 / 4) = 7 of the 10 routed tokens: no expert takes padding, whose
  // rows stay zero.
  EXPECT_EQ(layer->last_stats().capacity, 7);
  const at::Tensor taken = layer->last_stats().plan_token;
  EXPECT_FALSE(routed.index_select(0, taken).logical_not().any().item<bool>());
  EXPECT_EQ(rows(got.y, routed.logical_not()).abs().max().item<double>(), 0.0);
  EXPECT_GT(rows(got.y, routed).abs().max().item<double>(), 0.0);
}

}  // namespace
}  // namespace sy
