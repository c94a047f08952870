// MoELayer on one process against a slow per-token reference written here: the reference routes
// each token by a hand sort of its router probabilities, assigns slots with a plain counter loop
// (Note [Slot order]), and for every kept choice runs that expert's FFN on the token's row alone,
// with the activation written out by hand (erf, exp). It is built with autograd from the layer's
// own parameter tensors, so outputs and ALL gradients (input, router weight, expert w1/b1/w2/b2)
// are compared for one random upstream gradient, with the aux and z losses in the objective.
//
// Precision: experts run in double (the layer is converted), the router is fp32 by design, so
// values agree to fp32 rounding of the gate weights (rtol 1e-5); zeros of dropped choices are
// checked bitwise.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moe/experts.h"
#include "moe/moe_layer.h"
#include "moe/moe_test_util.h"

namespace sy {
namespace {

using testing_moe::expect_close;
using testing_moe::make_test_layer;
using testing_moe::param;
using testing_moe::seeded_randn;

constexpr int64_t kHidden = 6;
constexpr int64_t kFfn = 5;
constexpr double kAuxCoef = 0.37;
constexpr double kZCoef = 0.11;

at::Tensor activate_by_hand(const at::Tensor& h, Activation activation) {
  if (activation == Activation::kGelu)
    return 0.5 * h * (1.0 + at::erf(h * M_SQRT1_2));  // exact GELU
  if (activation == Activation::kRelu) return h * h.gt(0).to(h.scalar_type());
  // swiglu: [gate, up] halves, silu(gate) * up.
  const int64_t f = h.size(-1) / 2;
  const at::Tensor gate = h.narrow(-1, 0, f);
  const at::Tensor up = h.narrow(-1, f, f);
  return gate / (1.0 + at::exp(-gate)) * up;
}

struct Params {
  at::Tensor x, router_w, w1, b1, w2, b2;
  at::Tensor score_bias;          // moe.balance bias: [E] (no gradient)
  at::Tensor sw1, sb1, sw2, sb2;  // moe.shared_experts > 0: the shared FFN ([1, H, F'] ...)
  std::vector<at::Tensor> list() const {
    std::vector<at::Tensor> l{x, router_w, w1, b1, w2, b2};
    if (sw1.defined()) l.insert(l.end(), {sw1, sb1, sw2, sb2});
    return l;
  }
};
const char* const kParamNames[] = {"x",  "router.weight", "w1",        "b1",        "w2",
                                   "b2", "shared.w1",     "shared.b1", "shared.w2", "shared.b2"};

struct Reference {
  at::Tensor y;                         // [S, H]
  at::Tensor aux, z;                    // []
  std::vector<std::vector<bool>> kept;  // [S][k]
  int64_t dropped = 0;
};

// The slow reference. capacity 0: dropless.
Reference reference_moe(const MoeConfig& cfg, int64_t capacity, const Params& p) {
  const int64_t num_tokens = p.x.size(0);
  const int64_t num_experts = cfg.num_experts;
  const int64_t k = cfg.top_k;
  const at::Tensor logits = p.x.to(at::kFloat).matmul(p.router_w);  // [S, E]
  // Scores: softmax, or sigmoid with P = scores over their sum (moe.score).
  const bool sigmoid = cfg.score == ScoreKind::kSigmoid;
  const at::Tensor scores = sigmoid ? at::sigmoid(logits) : at::softmax(logits, /*dim=*/-1);
  const at::Tensor probs = sigmoid ? scores / scores.sum(-1, true) : scores;
  // The experts are chosen by score + bias (moe.balance bias), within the best groups.
  at::Tensor sd = scores.detach().to(at::kDouble);
  if (p.score_bias.defined()) sd = sd + p.score_bias.to(at::kDouble);
  auto pa = sd.accessor<double, 2>();
  const int64_t groups = cfg.route_groups > 1 ? cfg.route_groups : 1;
  const int64_t per_group = num_experts / groups;

  // Choices by a hand sort (best first); gate weights per the router variant.
  std::vector<std::vector<int64_t>> choice(num_tokens);
  std::vector<std::vector<at::Tensor>> gate(num_tokens);
  std::vector<double> top_score(num_tokens);
  for (int64_t s = 0; s < num_tokens; ++s) {
    std::vector<int64_t> order(num_experts);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return pa[s][a] > pa[s][b]; });
    if (groups > 1) {
      // Group g's rank: the sum of its two best scores; keep the route_group_limit best groups.
      std::vector<double> group_score(groups);
      for (int64_t g = 0; g < groups; ++g) {
        std::vector<double> v;
        for (int64_t e = g * per_group; e < (g + 1) * per_group; ++e) v.push_back(pa[s][e]);
        std::sort(v.rbegin(), v.rend());
        group_score[g] = v[0] + (per_group > 1 ? v[1] : 0.0);
      }
      std::vector<int64_t> g_order(groups);
      std::iota(g_order.begin(), g_order.end(), 0);
      std::stable_sort(g_order.begin(), g_order.end(),
                       [&](int64_t a, int64_t b) { return group_score[a] > group_score[b]; });
      g_order.resize(cfg.route_group_limit);
      std::vector<int64_t> allowed;
      for (int64_t e : order) {
        if (std::find(g_order.begin(), g_order.end(), e / per_group) != g_order.end()) {
          allowed.push_back(e);
        }
      }
      order = allowed;
    }
    order.resize(k);
    choice[s] = order;
    const at::Tensor idx = testing_moe::long_tensor(order);
    at::Tensor w;
    if (cfg.router == RouterKind::kTopKLogits) {
      w = at::softmax(logits[s].index_select(0, idx), 0);
    } else {
      w = scores[s].index_select(0, idx);
      if (cfg.router == RouterKind::kTopK && cfg.renormalize && k > 1) w = w / w.sum();
    }
    w = w * cfg.route_scale;
    for (int64_t c = 0; c < k; ++c) gate[s].push_back(w[c]);
    top_score[s] = w[0].item<double>();
  }

  // Slots: choice-major, tokens in order (or by descending top weight for priority "score").
  std::vector<int64_t> token_order(num_tokens);
  std::iota(token_order.begin(), token_order.end(), 0);
  if (cfg.priority == SlotPriority::kScore) {
    std::stable_sort(token_order.begin(), token_order.end(),
                     [&](int64_t a, int64_t b) { return top_score[a] > top_score[b]; });
  }
  Reference ref;
  ref.kept.assign(num_tokens, std::vector<bool>(k, false));
  std::vector<int64_t> filled(num_experts, 0);
  for (int64_t c = 0; c < k; ++c) {
    for (int64_t s : token_order) {
      const int64_t e = choice[s][c];
      ref.kept[s][c] = capacity == 0 || filled[e] < capacity;
      ref.dropped += ref.kept[s][c] ? 0 : 1;
      ++filled[e];
    }
  }

  // Per token, per kept choice: that expert's FFN on this row alone.
  std::vector<at::Tensor> rows;
  for (int64_t s = 0; s < num_tokens; ++s) {
    at::Tensor acc = at::zeros({kHidden}, p.x.options());
    for (int64_t c = 0; c < k; ++c) {
      if (!ref.kept[s][c]) continue;
      const int64_t e = choice[s][c];
      at::Tensor h = p.x[s].unsqueeze(0).matmul(p.w1[e]) + p.b1[e];
      at::Tensor out = activate_by_hand(h, cfg.activation).matmul(p.w2[e]) + p.b2[e];
      acc = acc + gate[s][c] * out.squeeze(0);
    }
    if (p.sw1.defined()) {  // the shared experts: every token, never dropped
      at::Tensor h = p.x[s].unsqueeze(0).matmul(p.sw1[0]) + p.sb1[0];
      acc = acc + (activate_by_hand(h, cfg.activation).matmul(p.sw2[0]) + p.sb2[0]).squeeze(0);
    }
    rows.push_back(acc);
  }
  ref.y = at::stack(rows);

  // Aux: E * sum_i f_i P_i with f from the S*k choices; z: mean logsumexp^2.
  std::vector<double> f(num_experts, 0.0);
  for (const auto& row : choice) {
    for (int64_t e : row) f[e] += 1.0 / static_cast<double>(num_tokens * k);
  }
  const at::Tensor f_t = at::tensor(f, at::TensorOptions().dtype(at::kDouble)).to(at::kFloat);
  ref.aux = (f_t * probs.mean(0)).sum() * static_cast<double>(num_experts);
  const at::Tensor lse = logits.exp().sum(-1).log();
  ref.z = (lse * lse).mean();
  return ref;
}

Params params_of(MoELayer& layer, const at::Tensor& x) {
  const ExpertsImpl& ex = *layer->experts;
  Params p;
  p.x = x;
  p.router_w = param(*layer, "router.weight");
  p.w1 = ex.w1;
  p.b1 = ex.b1;
  p.w2 = ex.w2;
  p.b2 = ex.b2;
  p.score_bias = layer->router->score_bias();
  if (layer->shared) {
    p.sw1 = layer->shared->w1;
    p.sb1 = layer->shared->b1;
    p.sw2 = layer->shared->w2;
    p.sb2 = layer->shared->b2;
  }
  return p;
}

// Runs the layer and the reference on the same tokens and compares outputs, losses, dropped
// choices and all gradients. Returns the reference for further checks.
Reference check_against_reference(const MoeConfig& cfg, int64_t num_tokens, int64_t capacity,
                                  uint64_t seed, bool training = true) {
  MoELayer layer = make_test_layer(cfg, kHidden, kFfn, seed);
  if (!training) layer->eval();
  if (layer->router->score_bias().defined()) {
    // A bias of the scores' size, so that it changes which experts are chosen.
    torch::NoGradGuard no_grad;
    layer->router->score_bias().copy_(seeded_randn({cfg.num_experts}, seed + 3).to(at::kFloat) *
                                      0.3);
  }
  const at::Tensor x = seeded_randn({num_tokens, kHidden}, seed + 1).requires_grad_(true);
  const at::Tensor g = seeded_randn({num_tokens, kHidden}, seed + 2);
  const Params p = params_of(layer, x);

  MoeOutput out = layer->forward(x);
  EXPECT_EQ(layer->last_stats().capacity, capacity) << "capacity";
  Reference ref = reference_moe(cfg, capacity, p);

  expect_close(out.y, ref.y, 1e-5, 1e-8, "y");
  EXPECT_EQ(out.y.scalar_type(), at::kDouble);
  expect_close(out.aux_loss, ref.aux, 1e-5, 1e-7, "aux loss");
  expect_close(out.z_loss, ref.z, 1e-5, 1e-7, "z loss");
  EXPECT_EQ(layer->last_stats().dropped.item<int64_t>(), ref.dropped) << "dropped count";

  // Dropped choices add exactly nothing: a token with every choice dropped gets exactly 0.
  for (int64_t s = 0; s < num_tokens && !layer->shared; ++s) {
    if (std::none_of(ref.kept[s].begin(), ref.kept[s].end(), [](bool b) { return b; })) {
      EXPECT_TRUE(at::equal(out.y[s], at::zeros({kHidden}, at::kDouble))) << "token " << s;
    }
  }

  auto objective = [&](const at::Tensor& y, const at::Tensor& aux, const at::Tensor& z) {
    return (y * g).sum() + kAuxCoef * aux.to(at::kDouble) + kZCoef * z.to(at::kDouble);
  };
  const auto got = torch::autograd::grad({objective(out.y, out.aux_loss, out.z_loss)}, p.list());
  const auto want = torch::autograd::grad({objective(ref.y, ref.aux, ref.z)}, p.list());
  for (size_t i = 0; i < got.size(); ++i) {
    expect_close(got[i], want[i], 1e-5, 1e-7, std::string("grad of ") + kParamNames[i]);
  }
  return ref;
}

MoeConfig config(const std::string& router, int64_t top_k, double capacity_factor,
                 const std::string& activation) {
  MoeConfig cfg;
  cfg.num_experts = 4;
  cfg.top_k = top_k;
  cfg.router = parse_choice_or_throw<RouterKind>(router, "router");
  cfg.capacity_factor = capacity_factor;
  cfg.eval_capacity_factor = capacity_factor;
  cfg.min_capacity = 1;
  cfg.activation = parse_choice_or_throw<Activation>(activation, "activation");
  return cfg;
}

int count_fully_dropped(const Reference& ref) {
  int n = 0;
  for (const auto& row : ref.kept)
    n += std::none_of(row.begin(), row.end(), [](bool b) { return b; });
  return n;
}

TEST(MoELayer, SwitchTop1WithDropsGelu) {
  // 16 tokens, 4 experts, capacity ceil(0.5 * 1 * 16 / 4) = 2: at least 8 tokens are dropped.
  const Reference ref = check_against_reference(config("switch", 1, 0.5, "gelu"), 16, 2, 100);
  EXPECT_GE(count_fully_dropped(ref), 8);
}

TEST(MoELayer, DroppedTokenGetsZeroOutputAndZeroInputGrad) {
  MoeConfig cfg = config("switch", 1, 0.5, "relu");
  MoELayer layer = make_test_layer(cfg, kHidden, kFfn, 110);
  const at::Tensor x = seeded_randn({16, kHidden}, 111).requires_grad_(true);
  MoeOutput out = layer->forward(x);
  const at::Tensor gx =
      torch::autograd::grad({(out.y * seeded_randn({16, kHidden}, 112)).sum()}, {x})[0];
  const MoeStats& st = layer->last_stats();
  // Top-1, token order: plan entry s is token s.
  int dropped = 0;
  for (int64_t s = 0; s < 16; ++s) {
    ASSERT_EQ(st.plan_token[s].item<int64_t>(), s);
    if (st.plan_kept[s].item<bool>()) continue;
    ++dropped;
    EXPECT_TRUE(at::equal(out.y[s], at::zeros({kHidden}, at::kDouble))) << "token " << s;
    EXPECT_TRUE(at::equal(gx[s], at::zeros({kHidden}, at::kDouble))) << "token " << s;
  }
  EXPECT_GE(dropped, 8);
}

TEST(MoELayer, Top2WithDropsRelu) {
  // Capacity ceil(0.5 * 2 * 16 / 4) = 4 for 32 choices: at least 16 choices dropped.
  const Reference ref = check_against_reference(config("topk", 2, 0.5, "relu"), 16, 4, 200);
  EXPECT_GE(ref.dropped, 16);
}

TEST(MoELayer, Top2WithDropsSwiGluScorePriority) {
  MoeConfig cfg = config("topk", 2, 0.5, "swiglu");
  cfg.priority = SlotPriority::kScore;
  const Reference ref = check_against_reference(cfg, 16, 4, 250);
  EXPECT_GE(ref.dropped, 16);
}

TEST(MoELayer, Top2UnnormalizedWithDrops) {
  MoeConfig cfg = config("topk", 2, 0.75, "gelu");
  cfg.renormalize = false;
  // ceil(0.75 * 2 * 12 / 4) = 5.
  check_against_reference(cfg, 12, 5, 260);
}

// DeepSeek-V3 style routers against the per-token reference: sigmoid scores renormalized over the
// kept k and scaled, a score bias that changes the choice but not the weights, group-limited
// choice, shared experts beside the routed ones (a token whose choices all drop still gets the
// shared output).
TEST(ModernMoE, SigmoidScoresRenormalizedAndScaled) {
  MoeConfig cfg = config("topk", 2, 0.75, "gelu");
  cfg.score = ScoreKind::kSigmoid;
  cfg.route_scale = 2.5;
  check_against_reference(cfg, 12, 5, 910);
  cfg.renormalize = false;
  check_against_reference(cfg, 12, 5, 911);
}

TEST(ModernMoE, SigmoidSwitchKeepsTheRawScore) {
  MoeConfig cfg = config("switch", 1, 1.0, "relu");
  cfg.score = ScoreKind::kSigmoid;
  check_against_reference(cfg, 16, 4, 920);
}

TEST(ModernMoE, ScoreBiasChoosesButDoesNotWeigh) {
  MoeConfig cfg = config("topk", 2, 0.0, "gelu");  // dropless
  cfg.balance = BalanceKind::kBias;
  check_against_reference(cfg, 16, 0, 930);
  cfg.score = ScoreKind::kSigmoid;
  cfg.balance = BalanceKind::kAuxBias;
  check_against_reference(cfg, 16, 0, 931);
  // The bias decides: a large bias on expert 3 puts it in every token's choice, while its gate
  // weight stays its own (renormalized) score.
  MoELayer layer = make_test_layer(cfg, kHidden, kFfn, 932);
  {
    torch::NoGradGuard no_grad;
    layer->router->score_bias().copy_(at::tensor({0.0, 0.0, 0.0, 100.0}, at::kDouble));
  }
  layer->forward(seeded_randn({10, kHidden}, 933));
  const MoeStats& st = layer->last_stats();
  EXPECT_EQ(st.tokens_per_expert[3].item<int64_t>(), 10);
}

TEST(ModernMoE, GroupLimitedChoice) {
  MoeConfig cfg = config("topk", 3, 0.0, "gelu");
  cfg.num_experts = 8;
  cfg.route_groups = 4;
  cfg.route_group_limit = 2;
  check_against_reference(cfg, 16, 0, 940);
  cfg.route_group_limit = 1;  // k 2 within one group of 2
  cfg.top_k = 2;
  cfg.score = ScoreKind::kSigmoid;
  cfg.balance = BalanceKind::kBias;
  check_against_reference(cfg, 16, 0, 941);
  // With one group allowed, both choices of every token lie in one group.
  MoELayer layer = make_test_layer(cfg, kHidden, kFfn, 942);
  layer->forward(seeded_randn({20, kHidden}, 943));
  const at::Tensor experts = layer->last_stats().plan_expert.view({2, 20});  // choice-major
  EXPECT_TRUE(at::equal(experts[0].div(2, "floor"), experts[1].div(2, "floor")));
}

TEST(ModernMoE, SharedExpertsBesideRoutedOnes) {
  MoeConfig cfg = config("topk", 2, 0.5, "gelu");  // drops: ceil(0.5 * 2 * 16 / 4) = 4
  cfg.shared_experts = 2;
  cfg.shared_d_ff = 3;
  const Reference ref = check_against_reference(cfg, 16, 4, 950);
  EXPECT_GT(ref.dropped, 0);
  cfg.activation = Activation::kSwiGlu;
  cfg.shared_d_ff = 0;  // the routed experts' width
  cfg.score = ScoreKind::kSigmoid;
  check_against_reference(cfg, 16, 4, 951);
  MoELayer layer = make_test_layer(cfg, kHidden, kFfn, 952);
  EXPECT_EQ(layer->shared->w1.sizes(), (std::vector<int64_t>{1, kHidden, 2 * 2 * kFfn}));
}

// Note [Shared experts on a side stream]: the shared experts' ops are recorded after the routed
// path's, so autograd's engine (ready nodes newest first) computes their gradients before any of
// the routed path's: on CUDA their backward is then enqueued first, beside the routed backward.
// Gradient hooks record the order in which the engine reaches the weights.
TEST(ModernMoE, SharedExpertsBackwardComesBeforeTheRoutedBackward) {
  for (const double factor : {1.25, 0.0}) {
    MoeConfig cfg = config("topk", 2, factor, "gelu");
    cfg.shared_experts = 1;
    MoELayer layer = make_test_layer(cfg, kHidden, kFfn, 960);
    std::vector<std::string> order;
    auto record = [&order](at::Tensor& w, std::string name) {
      w.register_hook([&order, name](const at::Tensor&) { order.push_back(name); });
    };
    record(layer->shared->w1, "shared w1");
    record(layer->shared->w2, "shared w2");
    record(layer->experts->w1, "routed w1");
    record(layer->experts->w2, "routed w2");
    at::Tensor router_weight = layer->router->named_parameters()["weight"];
    record(router_weight, "router");
    const at::Tensor x = seeded_randn({16, kHidden}, 961).requires_grad_(true);
    const MoeOutput out = layer->forward(x);
    (out.y * seeded_randn({16, kHidden}, 962)).sum().backward();
    const std::vector<std::string> expected = {"shared w2", "shared w1", "routed w2", "routed w1",
                                               "router"};
    EXPECT_EQ(order, expected) << "capacity factor " << factor;
  }
}

// moe.router expert_choice against a reference written per expert: expert e takes the C tokens of
// highest probability (a hand sort, stable), each contributes p[s][e] * FFN_e(x_s); tokens no
// expert took get exactly 0. Outputs, the z-loss (the aux loss is 0) and every gradient.
TEST(ExpertChoice, EachExpertTakesItsBestTokens) {
  MoeConfig cfg = config("expert_choice", 2, 1.0, "gelu");  // C = ceil(1.0 * 2 * 10 / 4) = 5
  const int64_t S = 10, C = 5;
  MoELayer layer = make_test_layer(cfg, kHidden, kFfn, 960);
  const at::Tensor x = seeded_randn({S, kHidden}, 961).requires_grad_(true);
  const at::Tensor g = seeded_randn({S, kHidden}, 962);
  const Params p = params_of(layer, x);
  const MoeOutput out = layer->forward(x);
  EXPECT_EQ(layer->last_stats().capacity, C);
  EXPECT_EQ(layer->last_stats().path, MoePath::kExpertChoice);
  EXPECT_EQ(out.aux_loss.item<float>(), 0.0f);

  const at::Tensor logits = p.x.to(at::kFloat).matmul(p.router_w);
  const at::Tensor probs = at::softmax(logits, -1);
  const at::Tensor pd = probs.detach().to(at::kDouble);
  auto pa = pd.accessor<double, 2>();
  std::vector<at::Tensor> rows(S);
  for (int64_t s = 0; s < S; ++s) rows[s] = at::zeros({kHidden}, p.x.options());
  std::vector<int> taken(S, 0);
  for (int64_t e = 0; e < cfg.num_experts; ++e) {
    std::vector<int64_t> order(S);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return pa[a][e] > pa[b][e]; });
    for (int64_t c = 0; c < C; ++c) {
      const int64_t s = order[c];
      ++taken[s];
      const at::Tensor h = p.x[s].unsqueeze(0).matmul(p.w1[e]) + p.b1[e];
      const at::Tensor ffn = activate_by_hand(h, cfg.activation).matmul(p.w2[e]) + p.b2[e];
      rows[s] = rows[s] + probs[s][e] * ffn.squeeze(0);
    }
  }
  const at::Tensor want = at::stack(rows);
  expect_close(out.y, want, 1e-5, 1e-8, "y");
  for (int64_t s = 0; s < S; ++s) {
    if (taken[s] == 0) {
      EXPECT_TRUE(at::equal(out.y[s], at::zeros({kHidden}, at::kDouble))) << "token " << s;
    }
  }
  EXPECT_EQ(std::accumulate(taken.begin(), taken.end(), 0), 4 * C);
  const at::Tensor lse = logits.exp().sum(-1).log();
  expect_close(out.z_loss, (lse * lse).mean(), 1e-5, 1e-7, "z loss");
  auto objective = [&](const at::Tensor& y, const at::Tensor& z) {
    return (y * g).sum() + kZCoef * z.to(at::kDouble);
  };
  const auto got = torch::autograd::grad({objective(out.y, out.z_loss)}, p.list());
  const auto ref = torch::autograd::grad({objective(want, (lse * lse).mean())}, p.list());
  for (size_t i = 0; i < got.size(); ++i) {
    expect_close(got[i], ref[i], 1e-5, 1e-7, std::string("grad of ") + kParamNames[i]);
  }
}

TEST(MoELayer, NoDropsWithLargeCapacitySwiGlu) {
  // ceil(4 * 2 * 16 / 4) = 32, clamped to the 16 tokens (no expert can receive more).
  const Reference ref =
      check_against_reference(config("topk_logits", 2, 4.0, "swiglu"), 16, 16, 300);
  EXPECT_EQ(ref.dropped, 0);
}

TEST(MoELayer, EvalUsesEvalCapacityFactor) {
  MoeConfig cfg = config("topk", 2, 0.5, "gelu");
  cfg.eval_capacity_factor = 1.0;  // eval: ceil(1.0 * 2 * 16 / 4) = 8
  check_against_reference(cfg, 16, 8, 350, /*training=*/false);
}

TEST(MoELayer, DroplessTop2Gelu) {
  const Reference ref = check_against_reference(config("topk", 2, 0.0, "gelu"), 16, 0, 400);
  EXPECT_EQ(ref.dropped, 0);
}

TEST(MoELayer, DroplessSwitchRelu) {
  check_against_reference(config("switch", 1, 0.0, "relu"), 13, 0, 500);
}

TEST(MoELayer, DroplessTop3SwiGlu) {
  check_against_reference(config("topk", 3, 0.0, "swiglu"), 9, 0, 550);
}

// moe.expert_gemm grouped: the experts see only the kept rows, packed by expert (on the CPU the
// grouped GEMM is one matmul per expert); the same reference holds.
MoeConfig grouped(MoeConfig cfg) {
  cfg.expert_gemm = ExpertGemm::kGrouped;
  return cfg;
}

TEST(MoELayerGrouped, SwitchTop1WithDropsGelu) {
  const Reference ref =
      check_against_reference(grouped(config("switch", 1, 0.5, "gelu")), 16, 2, 100);
  EXPECT_GE(count_fully_dropped(ref), 8);
}

TEST(MoELayerGrouped, Top2WithDropsSwiGluScorePriority) {
  MoeConfig cfg = grouped(config("topk", 2, 0.5, "swiglu"));
  cfg.priority = SlotPriority::kScore;
  const Reference ref = check_against_reference(cfg, 16, 4, 250);
  EXPECT_GE(ref.dropped, 16);
}

TEST(MoELayerGrouped, Top2UnnormalizedWithDropsAndEval) {
  MoeConfig cfg = grouped(config("topk", 2, 0.75, "relu"));
  cfg.renormalize = false;
  check_against_reference(cfg, 12, 5, 260);
  cfg.eval_capacity_factor = 1.0;  // eval: ceil(1.0 * 2 * 12 / 4) = 6
  check_against_reference(cfg, 12, 6, 270, /*training=*/false);
}

TEST(MoELayerGrouped, NoDropsAndDropless) {
  EXPECT_EQ(
      check_against_reference(grouped(config("topk_logits", 2, 4.0, "gelu")), 16, 16, 300).dropped,
      0);
  EXPECT_EQ(check_against_reference(grouped(config("topk", 2, 0.0, "swiglu")), 16, 0, 400).dropped,
            0);
}

// moe.expert_gemm trimmed (Note [Trimmed expert buffer]): the padded bmm over a buffer cut to
// the largest kept load, rounded up to 8 rows and at most the capacity; the reference holds, and
// the buffer has that many rows an expert (by hand from the loads the layer reports).
MoeConfig trimmed(MoeConfig cfg) {
  cfg.expert_gemm = ExpertGemm::kTrimmed;
  return cfg;
}

void check_trimmed(const MoeConfig& cfg, int64_t num_tokens, int64_t capacity, uint64_t seed,
                   int64_t want_rows) {
  SCOPED_TRACE("capacity " + std::to_string(capacity));
  check_against_reference(cfg, num_tokens, capacity, seed);
  MoELayer layer = make_test_layer(cfg, kHidden, kFfn, seed);
  layer->forward(seeded_randn({num_tokens, kHidden}, seed + 1));
  const MoeStats& st = layer->last_stats();
  EXPECT_EQ(st.path, MoePath::kPadded);
  const at::Tensor loads =
      capacity > 0 ? st.tokens_per_expert.clamp_max(capacity) : st.tokens_per_expert;
  const int64_t largest = loads.max().item<int64_t>();
  int64_t rows = std::max<int64_t>(8, (largest + 7) / 8 * 8);
  if (capacity > 0) rows = std::min(rows, capacity);
  EXPECT_EQ(st.buffer_capacity, rows) << "largest kept load " << largest;
  if (want_rows > 0) {
    EXPECT_EQ(st.buffer_capacity, want_rows);
  }
}

TEST(MoELayerTrimmed, CutBelowTheCapacity) {
  // C = min(S, ceil(4 * 2 * 40 / 4)) = 40 rows an expert for a mean load of 20: the buffer is
  // cut to the largest load, rounded up to 8.
  MoeConfig cfg = trimmed(config("topk", 2, 4.0, "gelu"));
  check_trimmed(cfg, 40, 40, 600, 0);
  MoELayer layer = make_test_layer(cfg, kHidden, kFfn, 600);
  layer->forward(seeded_randn({40, kHidden}, 601));
  EXPECT_LT(layer->last_stats().buffer_capacity, 40);
  // The untrimmed bmm reports its whole capacity.
  MoeConfig batched = cfg;
  batched.expert_gemm = ExpertGemm::kBatched;
  MoELayer full = make_test_layer(batched, kHidden, kFfn, 600);
  full->forward(seeded_randn({40, kHidden}, 601));
  EXPECT_EQ(full->last_stats().buffer_capacity, 40);
}

TEST(MoELayerTrimmed, WithDropsTheCapacityBounds) {
  // C = 2 with 16 tokens top-1 over 4 experts: loads above 2 are cut to the capacity.
  check_trimmed(trimmed(config("switch", 1, 0.5, "gelu")), 16, 2, 100, 2);
  MoeConfig cfg = trimmed(config("topk", 2, 0.5, "swiglu"));
  cfg.priority = SlotPriority::kScore;
  check_trimmed(cfg, 16, 4, 250, 4);
}

TEST(MoELayerTrimmed, DroplessRunsPadded) {
  // Dropless: no capacity bounds the buffer, every choice is kept in the padded bmm.
  check_trimmed(trimmed(config("topk", 2, 0.0, "swiglu")), 16, 0, 400, 0);
  check_trimmed(trimmed(config("switch", 1, 0.0, "relu")), 30, 0, 410, 0);
}

TEST(MoELayer, ZeroTokens) {
  for (double factor : {1.25, 0.0}) {
    MoELayer layer = make_test_layer(config("topk", 2, factor, "gelu"), kHidden, kFfn, 700);
    const at::Tensor x = at::zeros({0, kHidden}, at::kDouble).requires_grad_(true);
    MoeOutput out = layer->forward(x);
    EXPECT_EQ(out.y.sizes(), (std::vector<int64_t>{0, kHidden})) << "factor " << factor;
    MoeConfig gcfg = grouped(config("topk", 2, factor, "gelu"));
    MoELayer glayer = make_test_layer(gcfg, kHidden, kFfn, 700);
    EXPECT_EQ(glayer->forward(x).y.sizes(), (std::vector<int64_t>{0, kHidden}))
        << "grouped, factor " << factor;
    EXPECT_EQ(out.aux_loss.item<float>(), 0.0f);
    EXPECT_EQ(out.z_loss.item<float>(), 0.0f);
    EXPECT_EQ(layer->last_stats().dropped.item<int64_t>(), 0);
    const at::Tensor gx = torch::autograd::grad({out.y.sum()}, {x}, {}, false, false,
                                                /*allow_unused=*/true)[0];
    if (gx.defined()) {
      EXPECT_EQ(gx.numel(), 0);
    }
  }
}

// One expert with weight 1 is the dense FFN y = act(x W1 + b1) W2 + b2.
TEST(MoELayer, OneExpertEqualsDenseFfn) {
  for (const std::string router : {"switch", "topk"}) {
    for (const std::string activation : {"gelu", "relu", "swiglu"}) {
      MoeConfig cfg = config(router, 1, 2.0, activation);
      cfg.num_experts = 1;
      MoELayer layer = make_test_layer(cfg, kHidden, kFfn, 600);
      const at::Tensor x = seeded_randn({10, kHidden}, 601).requires_grad_(true);
      const at::Tensor g = seeded_randn({10, kHidden}, 602);
      const Params p = params_of(layer, x);
      MoeOutput out = layer->forward(x);
      EXPECT_EQ(layer->last_stats().dropped.item<int64_t>(), 0);
      const at::Tensor dense =
          activate_by_hand(x.matmul(p.w1[0]) + p.b1[0], cfg.activation).matmul(p.w2[0]) + p.b2[0];
      const std::string what = router + "/" + activation;
      // Gate weight exactly 1 (softmax over one logit); bmm vs matmul: equal to rounding.
      expect_close(out.y, dense, 1e-12, 1e-12, what + " y");
      const std::vector<at::Tensor> wrt = {x, p.w1, p.b1, p.w2, p.b2};
      const auto got = torch::autograd::grad({(out.y * g).sum()}, wrt);
      const auto want = torch::autograd::grad({(dense * g).sum()}, wrt);
      for (size_t i = 0; i < wrt.size(); ++i) {
        expect_close(got[i], want[i], 1e-12, 1e-12, what + " grad " + std::to_string(i));
      }
      // The gate is constant 1, so the router gets exactly no gradient.
      const at::Tensor gr =
          torch::autograd::grad({(layer->forward(x).y * g).sum()}, {p.router_w})[0];
      EXPECT_TRUE(at::equal(gr, at::zeros_like(gr))) << what << " router grad " << gr;
    }
  }
}

TEST(Experts, GroupedEqualsPaddedAndHandFfn) {
  // Rows grouped by expert with counts 3, 0, 2, 1 (expert 1 empty), against forward() on a
  // zero-padded [E, 3, H] buffer holding the same rows, and the FFN by hand per row.
  const std::vector<int64_t> counts = {3, 0, 2, 1};
  for (const std::string activation : {"gelu", "relu", "swiglu"}) {
    Experts experts(parse_choice_or_throw<Activation>(activation, "activation"), kHidden, kFfn,
                    /*bias=*/true,
                    /*first_expert=*/0, /*num_local=*/4, InitSpec{true, 7}, /*layer_index=*/0);
    experts->to(at::kDouble);
    {
      torch::NoGradGuard no_grad;
      experts->b1.copy_(seeded_randn(experts->b1.sizes().vec(), 8) * 0.1);
      experts->b2.copy_(seeded_randn(experts->b2.sizes().vec(), 9) * 0.1);
    }
    const at::Tensor x = seeded_randn({6, kHidden}, 10);
    const at::Tensor grouped = experts->forward_grouped(x, counts);
    at::Tensor padded = at::zeros({4, 3, kHidden}, at::kDouble);
    int64_t row = 0;
    for (int64_t e = 0; e < 4; ++e) {
      for (int64_t j = 0; j < counts[e]; ++j) padded[e][j].copy_(x[row++]);
    }
    const at::Tensor y_padded = experts->forward(padded);
    row = 0;
    for (int64_t e = 0; e < 4; ++e) {
      for (int64_t j = 0; j < counts[e]; ++j, ++row) {
        const std::string what =
            activation + " expert " + std::to_string(e) + " row " + std::to_string(j);
        // Same arithmetic per row up to the GEMM's summation order: tolerance, not bitwise.
        expect_close(grouped[row], y_padded[e][j], 1e-12, 1e-12, what + " grouped vs padded");
        const at::Tensor h = x[row].unsqueeze(0).matmul(experts->w1[e]) + experts->b1[e];
        const at::Tensor hand =
            (activate_by_hand(h, parse_choice_or_throw<Activation>(activation, "activation"))
                 .matmul(experts->w2[e]) +
             experts->b2[e])
                .squeeze(0);
        expect_close(grouped[row], hand, 1e-12, 1e-12, what + " vs hand");
      }
    }
  }
}

TEST(Experts, GroupedByDeviceEndsWithPaddingRows) {
  // Group ends [3, 3, 5, 6] over 8 rows: rows 6 and 7 are padding. The rows in use equal the
  // counts version; on the CPU the padding rows come back as zeros, and get no gradient.
  Experts experts(Activation::kGelu, kHidden, kFfn, /*bias=*/true, 0, 4, InitSpec{true, 7}, 0);
  experts->to(at::kDouble);
  const at::Tensor x = seeded_randn({8, kHidden}, 11).requires_grad_(true);
  const at::Tensor ends =
      at::tensor(std::vector<int64_t>{3, 3, 5, 6}, at::TensorOptions().dtype(at::kLong));
  const at::Tensor y = experts->forward_grouped(x, ends);
  ASSERT_EQ(y.sizes(), x.sizes());
  const at::Tensor want =
      experts->forward_grouped(x.narrow(0, 0, 6), std::vector<int64_t>{3, 0, 2, 1});
  EXPECT_TRUE(at::equal(y.narrow(0, 0, 6), want));
  EXPECT_TRUE(at::equal(y.narrow(0, 6, 2), at::zeros({2, kHidden}, at::kDouble)));
  const at::Tensor gx = torch::autograd::grad({(y * seeded_randn({8, kHidden}, 12)).sum()}, {x})[0];
  EXPECT_TRUE(at::equal(gx.narrow(0, 6, 2), at::zeros({2, kHidden}, at::kDouble)));
  EXPECT_GT(gx.narrow(0, 0, 6).abs().sum().item<double>(), 0.0);
}

// choose_path() against a hand-written table of the cases (moe.expert_gemm, fused kernels, EP
// ranks, capacity or dropless, factor, grouped GEMM available).
TEST(MoePath, ChoosePathTable) {
  struct Row {
    bool fused_io, one_rank;
    int64_t capacity;
    double factor;
    ExpertGemm gemm;
    bool grouped_available;
    MoePath want;
  };
  using G = ExpertGemm;
  using P = MoePath;
  const Row rows[] = {
      // LibTorch ops (the CPU, or fused kernels off).
      {false, true, 10, 1.25, G::kAuto, false, P::kPadded},
      {false, true, 10, 1.25, G::kAuto, true, P::kPadded},  // auto needs the fused kernels
      {false, true, 10, 1.25, G::kGrouped, false, P::kGrouped},
      {false, false, 10, 1.25, G::kGrouped, false, P::kPadded},  // grouped: one EP rank only
      {false, true, 10, 1.25, G::kBatched, true, P::kPadded},
      {false, true, 0, 0.0, G::kAuto, false, P::kDropless},
      {false, false, 0, 0.0, G::kBatched, false, P::kDropless},
      // Fused kernels.
      {true, true, 10, 1.25, G::kAuto, true, P::kFusedGrouped},
      {true, true, 10, 1.0, G::kAuto, true, P::kFusedPadded},  // factor 1: the padded bmm
      {true, true, 10, 1.25, G::kAuto, false, P::kFusedPadded},
      {true, true, 10, 1.25, G::kBatched, true, P::kFusedPadded},
      {true, true, 10, 0.5, G::kGrouped, false, P::kFusedGrouped},
      {true, false, 10, 1.25, G::kAuto, true, P::kFusedPadded},  // several EP ranks: padded
      {true, false, 10, 1.25, G::kGrouped, true, P::kFusedPadded},
      {true, true, 0, 0.0, G::kAuto, false, P::kFusedGrouped},  // dropless, one rank
      {true, false, 0, 0.0, G::kAuto, true, P::kDropless},      // dropless over EP: exact counts
  };
  int i = 0;
  for (const Row& r : rows) {
    PathFacts f;
    f.fused_io = r.fused_io;
    f.one_rank = r.one_rank;
    f.capacity = r.capacity;
    f.factor = r.factor;
    f.expert_gemm = r.gemm;
    f.grouped_gemm_available = r.grouped_available;
    EXPECT_EQ(path_name(choose_path(f)), std::string(path_name(r.want))) << "row " << i;
    ++i;
  }
}

// Facts of a forward of 64 experts whose loads are not read yet, the grouped GEMM available.
PathFacts unread_facts(bool fused_io, bool one_rank, int64_t capacity, double factor,
                       ExpertGemm gemm) {
  PathFacts f;
  f.fused_io = fused_io;
  f.one_rank = one_rank;
  f.capacity = capacity;
  f.factor = factor;
  f.expert_gemm = gemm;
  f.grouped_gemm_available = true;
  f.num_experts = 64;
  return f;
}

// reads_loads() and choose_path() once the loads are read (Note [Trimmed expert buffer]).
TEST(MoePath, TrimmedBufferTable) {
  using G = ExpertGemm;
  using P = MoePath;
  const auto facts = unread_facts;
  // Who reads the loads.
  EXPECT_TRUE(reads_loads(facts(false, false, 10, 1.25, G::kTrimmed)));  // any path, any EP
  EXPECT_TRUE(reads_loads(facts(true, true, 10, 1.25, G::kAuto)));
  EXPECT_TRUE(reads_loads(facts(true, true, 0, 0.0, G::kAuto)));      // dropless
  EXPECT_FALSE(reads_loads(facts(true, true, 10, 1.0, G::kAuto)));    // factor 1: C is full
  EXPECT_FALSE(reads_loads(facts(true, false, 10, 1.25, G::kAuto)));  // several EP ranks
  EXPECT_FALSE(reads_loads(facts(false, true, 10, 1.25, G::kAuto)));  // LibTorch ops (CPU)
  EXPECT_FALSE(reads_loads(facts(true, true, 10, 1.25, G::kBatched)));
  EXPECT_FALSE(reads_loads(facts(true, true, 10, 1.25, G::kGrouped)));
  PathFacts capturing = facts(true, true, 10, 1.25, G::kTrimmed);
  capturing.capturing = true;  // a CUDA graph: no host sync
  EXPECT_FALSE(reads_loads(capturing));
  EXPECT_EQ(choose_path(capturing), P::kFusedPadded);  // the capacity-sized buffer
  // What runs once they are read: 64 experts, kept rows 768 an expert on average.
  auto read = [](PathFacts f, int64_t rows, int64_t kept) {
    f.trimmed_capacity = rows;
    f.kept_rows = kept;
    return choose_path(f);
  };
  const int64_t kept = 64 * 768;
  EXPECT_EQ(read(facts(true, true, 960, 1.25, G::kAuto), 832, kept), P::kFusedPadded);
  // 64 * 928 = 1.21 times the kept rows: the grouped GEMM.
  EXPECT_EQ(read(facts(true, true, 960, 1.25, G::kAuto), 928, kept), P::kFusedGrouped);
  EXPECT_EQ(read(facts(true, true, 0, 0.0, G::kAuto), 832, kept), P::kFusedPadded);
  EXPECT_EQ(read(facts(true, true, 0, 0.0, G::kAuto), 2048, kept), P::kFusedGrouped);
  PathFacts no_grouped = facts(true, true, 960, 1.25, G::kAuto);
  no_grouped.grouped_gemm_available = false;
  EXPECT_EQ(read(no_grouped, 928, kept), P::kFusedPadded);
  // trimmed: padded whatever the loads, on every path that has a padded buffer.
  EXPECT_EQ(read(facts(true, true, 960, 1.25, G::kTrimmed), 960, kept), P::kFusedPadded);
  EXPECT_EQ(read(facts(false, true, 960, 1.25, G::kTrimmed), 832, kept), P::kPadded);
  EXPECT_EQ(read(facts(false, false, 0, 0.0, G::kTrimmed), 832, kept), P::kPadded);
  EXPECT_EQ(read(facts(true, false, 0, 0.0, G::kTrimmed), 832, kept), P::kFusedPadded);
}

// rows_beside_sync() (Note [Permute beside the host sync]): only where the loads are read, the
// fused kernels run on one EP rank; 1.2 times the mean load rounded up to 8, at most C.
TEST(MoePath, PermuteBesideTheSyncTable) {
  const auto facts = unread_facts;
  using G = ExpertGemm;
  const int64_t choices = 8192 * 6;  // C3: a mean load of 768 over 64 experts, 1.2 times 921.6
  EXPECT_EQ(rows_beside_sync(facts(true, true, 960, 1.25, G::kAuto), choices), 928);
  EXPECT_EQ(rows_beside_sync(facts(true, true, 0, 0.0, G::kAuto), choices), 928);  // dropless
  EXPECT_EQ(rows_beside_sync(facts(true, true, 1536, 2.0, G::kTrimmed), choices), 928);
  EXPECT_EQ(rows_beside_sync(facts(true, true, 384, 0.5, G::kTrimmed), choices), 384);  // C
  EXPECT_EQ(rows_beside_sync(facts(true, true, 0, 0.0, G::kAuto), 100), 8);        // at least 8
  EXPECT_EQ(rows_beside_sync(facts(true, true, 768, 1.0, G::kAuto), choices), 0);  // no read
  EXPECT_EQ(rows_beside_sync(facts(true, false, 960, 1.25, G::kTrimmed), choices), 0);
  EXPECT_EQ(rows_beside_sync(facts(false, true, 960, 1.25, G::kTrimmed), choices), 0);
  PathFacts capturing = facts(true, true, 960, 1.25, G::kTrimmed);
  capturing.capturing = true;
  EXPECT_EQ(rows_beside_sync(capturing, choices), 0);
  // Every C_b for which auto trims (the grouped GEMM available) fits in B: 920 (64 * 920 <= 1.2 *
  // 49152) and below; 928 and above run grouped.
  const PathFacts auto_facts = facts(true, true, 960, 1.25, G::kAuto);
  const int64_t beside = rows_beside_sync(auto_facts, choices);
  for (int64_t rows = 8; rows <= 960; rows += 8) {
    PathFacts f = auto_facts;
    f.trimmed_capacity = rows;
    f.kept_rows = choices;
    const bool trims = choose_path(f) == MoePath::kFusedPadded;
    EXPECT_EQ(trims, rows <= 920) << rows;
    if (trims) {
      EXPECT_LE(rows, beside) << rows;
    }
  }
}

// The path a CPU forward reports in its stats.
TEST(MoePath, CpuLayerReportsItsPath) {
  for (const auto& [factor, gemm, want] :
       {std::tuple<double, ExpertGemm, MoePath>{1.25, ExpertGemm::kAuto, MoePath::kPadded},
        {1.25, ExpertGemm::kGrouped, MoePath::kGrouped},
        {0.0, ExpertGemm::kAuto, MoePath::kDropless}}) {
    MoeConfig cfg = config("topk", 2, factor, "gelu");
    cfg.expert_gemm = gemm;
    MoELayer layer = make_test_layer(cfg, kHidden, kFfn, 700);
    layer->forward(seeded_randn({12, kHidden}, 701));
    EXPECT_EQ(layer->last_stats().path, want) << path_name(want);
  }
}

}  // namespace
}  // namespace sy
