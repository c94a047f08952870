// Router math against hand-computed values, one test per variant of src/moe/router.h, and the two
// auxiliary losses against closed forms evaluated here with plain double arithmetic.
//
// The router weight is set to a permutation matrix W[h][e] = 1 iff e == (h + 1) % 4 (not
// symmetric, so a transposed weight would fail), so the logits of a token are its features
// rotated by one: logits[e] = x[(e + 3) % 4]. Tokens are chosen as log-probabilities (softmax =
// the probabilities) or small integer logits (softmax = closed forms in std::exp).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <numeric>
#include <set>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#include "moe/init.h"
#include "moe/moe_layer.h"
#include "moe/router.h"
#include "moe/moe_test_util.h"
#include "parallel/inproc_comm.h"

namespace sy {
namespace {

using testing_moe::double_matrix;
using testing_moe::expect_close;
using testing_moe::expect_equal;
using testing_moe::long_matrix;
using testing_moe::param;

using Rows = std::vector<std::vector<double>>;

at::Tensor scalar(double v) { return at::scalar_tensor(v, at::kDouble); }

constexpr int64_t kE = 4;      // experts (and hidden size) of the hand-computed cases
constexpr double kTol = 1e-6;  // fp32 router: softmax(log p) reproduces p to a few ulps

// Router input whose logits (under the permutation weight) are `logits`: x[h] = L[(h + 1) % 4].
at::Tensor input_for_logits(const Rows& logits) {
  Rows x = logits;
  for (size_t s = 0; s < logits.size(); ++s) {
    for (int64_t h = 0; h < kE; ++h) x[s][h] = logits[s][(h + 1) % kE];
  }
  return double_matrix(x).to(at::kFloat);
}

Rows log_of(const Rows& p) {
  Rows l = p;
  for (auto& row : l) {
    for (double& v : row) v = std::log(v);
  }
  return l;
}

struct RouterSpec {
  std::string kind = "topk";
  int64_t top_k = 2;
  bool renormalize = true;
  double jitter_eps = 0.0;
  int64_t num_experts = kE;
  ScoreKind score = ScoreKind::kSoftmax;
  double route_scale = 1.0;
};

Router make_router(const RouterSpec& spec) {
  MoeConfig cfg;
  cfg.num_experts = spec.num_experts;
  cfg.top_k = spec.top_k;
  cfg.router = parse_choice_or_throw<RouterKind>(spec.kind, "router");
  cfg.renormalize = spec.renormalize;
  cfg.jitter_eps = spec.jitter_eps;
  cfg.score = spec.score;
  cfg.route_scale = spec.route_scale;
  at::Generator init_gen = make_cpu_generator(1);
  Router router(cfg, /*d_model=*/kE, /*init_std=*/0.02, init_gen);
  if (spec.num_experts == kE) {
    torch::NoGradGuard no_grad;
    at::Tensor w = at::zeros({kE, kE}, at::kFloat);
    for (int64_t h = 0; h < kE; ++h) w[h][(h + 1) % kE] = 1.0;
    param(*router, "weight").copy_(w);
    if (spec.kind == "noisy_topk") param(*router, "noise_weight").zero_();  // softplus(0) = ln 2
  }
  return router;
}

// The hand-picked probabilities of three tokens (no ties anywhere in a row).
const Rows kProbs = {{0.1, 0.2, 0.3, 0.4}, {0.5, 0.1, 0.15, 0.25}, {0.04, 0.6, 0.3, 0.06}};

// E * sum_i f_i P_i with f_i = share of all S*k choices on expert i, P_i = mean probability.
double aux_closed_form(const Rows& probs, const std::vector<std::vector<int64_t>>& idx) {
  const auto num_experts = static_cast<int64_t>(probs[0].size());
  std::vector<double> f(num_experts, 0.0), p(num_experts, 0.0);
  double choices = 0;
  for (const auto& row : idx) {
    for (int64_t e : row) {
      f[e] += 1.0;
      choices += 1.0;
    }
  }
  for (const auto& row : probs) {
    for (int64_t e = 0; e < num_experts; ++e) p[e] += row[e] / static_cast<double>(probs.size());
  }
  double sum = 0;
  for (int64_t e = 0; e < num_experts; ++e) sum += f[e] / choices * p[e];
  return static_cast<double>(num_experts) * sum;
}

double logsumexp(const std::vector<double>& row) {
  double s = 0;
  for (double v : row) s += std::exp(v);
  return std::log(s);
}

Rows softmax_rows(const Rows& logits) {
  Rows p = logits;
  for (auto& row : p) {
    const double lse = logsumexp(row);
    for (double& v : row) v = std::exp(v - lse);
  }
  return p;
}

// Top-k of one row by a hand sort (descending, stable), as the reference for choices.
std::vector<int64_t> top_k_of(const std::vector<double>& row, int64_t k) {
  std::vector<int64_t> order(row.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return row[a] > row[b]; });
  order.resize(k);
  return order;
}

double z_closed_form(const Rows& logits) {
  double sum = 0;
  for (const auto& row : logits) sum += std::pow(logsumexp(row), 2);
  return sum / static_cast<double>(logits.size());
}

TEST(Router, SwitchTop1RawProbability) {
  Router router = make_router({"switch", /*top_k=*/1});
  RouterOutput out = router->forward(input_for_logits(log_of(kProbs)), {}, nullptr);
  expect_equal(out.topk_idx, long_matrix({{3}, {0}, {1}}), "switch topk_idx");
  expect_close(out.topk_weights, double_matrix({{0.4}, {0.5}, {0.6}}), kTol, kTol,
               "switch weights");
  EXPECT_EQ(out.topk_weights.scalar_type(), at::kFloat);
  expect_close(out.probs, double_matrix(kProbs), kTol, kTol, "switch probs");
  expect_close(out.aux_loss, scalar(aux_closed_form(kProbs, {{3}, {0}, {1}})), kTol, kTol,
               "switch aux");
  // logsumexp(log p) = log 1 = 0 for every token.
  expect_close(out.z_loss, scalar(0.0), 0, kTol, "switch z");
}

TEST(Router, SwitchRejectsTopKAboveOne) {
  EXPECT_THROW(make_router({"switch", /*top_k=*/2}), Error);
}

TEST(Router, TopKRenormalizedBestFirst) {
  Router router = make_router({"topk", /*top_k=*/2, /*renormalize=*/true});
  RouterOutput out = router->forward(input_for_logits(log_of(kProbs)), {}, nullptr);
  expect_equal(out.topk_idx, long_matrix({{3, 2}, {0, 3}, {1, 2}}), "topk idx");
  expect_close(out.topk_weights,
               double_matrix({{4.0 / 7, 3.0 / 7}, {2.0 / 3, 1.0 / 3}, {2.0 / 3, 1.0 / 3}}), kTol,
               kTol, "topk renormalised weights");
  expect_close(out.topk_weights.sum(/*dim=*/-1), at::ones({3}, at::kDouble), kTol, 0, "sum to 1");
  expect_close(out.aux_loss, scalar(aux_closed_form(kProbs, {{3, 2}, {0, 3}, {1, 2}})), kTol, kTol,
               "topk aux (f over both choices)");
}

TEST(Router, TopKRawWhenNotRenormalized) {
  Router router = make_router({"topk", /*top_k=*/2, /*renormalize=*/false});
  RouterOutput out = router->forward(input_for_logits(log_of(kProbs)), {}, nullptr);
  expect_equal(out.topk_idx, long_matrix({{3, 2}, {0, 3}, {1, 2}}), "topk idx");
  expect_close(out.topk_weights, double_matrix({{0.4, 0.3}, {0.5, 0.25}, {0.6, 0.3}}), kTol, kTol,
               "topk raw weights");
}

TEST(Router, TopKThreeOfFour) {
  Router router = make_router({"topk", /*top_k=*/3, /*renormalize=*/true});
  RouterOutput out = router->forward(input_for_logits(log_of(kProbs)), {}, nullptr);
  expect_equal(out.topk_idx, long_matrix({{3, 2, 1}, {0, 3, 2}, {1, 2, 3}}), "top-3 idx");
  expect_close(out.topk_weights,
               double_matrix({{4.0 / 9, 3.0 / 9, 2.0 / 9},
                              {0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9},
                              {0.6 / 0.96, 0.3 / 0.96, 0.06 / 0.96}}),
               kTol, kTol, "top-3 weights");
}

// Integer logits: the kept logits' softmax has closed forms in e.
const Rows kLogits = {{1, 2, 3, 0}, {0.5, -1, 2, 1.5}, {-2, 0.25, -1, 1}};

TEST(Router, TopKLogitsSoftmaxOverKept) {
  Router router = make_router({"topk_logits", /*top_k=*/2});
  RouterOutput out = router->forward(input_for_logits(kLogits), {}, nullptr);
  expect_equal(out.topk_idx, long_matrix({{2, 1}, {2, 3}, {3, 1}}), "topk_logits idx");
  const double e = std::exp(1.0);
  const double a = std::exp(0.5), b = std::exp(0.75);
  expect_close(out.topk_weights,
               double_matrix({{1 / (1 + 1 / e), 1 / (1 + e)},
                              {1 / (1 + 1 / a), 1 / (1 + a)},
                              {1 / (1 + 1 / b), 1 / (1 + b)}}),
               kTol, kTol, "topk_logits weights");
  expect_close(out.probs, double_matrix(softmax_rows(kLogits)), kTol, kTol, "probs = full softmax");
  expect_close(out.aux_loss,
               scalar(aux_closed_form(softmax_rows(kLogits), {{2, 1}, {2, 3}, {3, 1}})), kTol, kTol,
               "topk_logits aux");
  expect_close(out.z_loss, scalar(z_closed_form(kLogits)), kTol, kTol, "topk_logits z");

  // With log-probabilities as logits, softmax over the kept equals renormalised top-k.
  RouterOutput lp = router->forward(input_for_logits(log_of(kProbs)), {}, nullptr);
  expect_close(lp.topk_weights,
               double_matrix({{4.0 / 7, 3.0 / 7}, {2.0 / 3, 1.0 / 3}, {2.0 / 3, 1.0 / 3}}), kTol,
               kTol, "topk_logits on log p");

  // Top-1 of the logits: a softmax over one value is exactly 1.
  Router top1 = make_router({"topk_logits", /*top_k=*/1});
  RouterOutput one = top1->forward(input_for_logits(kLogits), {}, nullptr);
  expect_equal(one.topk_idx, long_matrix({{2}, {2}, {3}}), "topk_logits top-1 idx");
  expect_equal(one.topk_weights, at::ones({3, 1}, at::kFloat), "topk_logits top-1 weight");
}

TEST(Router, NoisyTopKInEvalIsCleanTopKLogits) {
  Router router = make_router({"noisy_topk", /*top_k=*/2});
  router->eval();
  at::Generator gen = make_cpu_generator(42);
  for (at::Generator* g : {static_cast<at::Generator*>(nullptr), &gen}) {
    RouterOutput out = router->forward(input_for_logits(kLogits), {}, g);
    expect_equal(out.topk_idx, long_matrix({{2, 1}, {2, 3}, {3, 1}}), "noisy eval idx");
    const double e = std::exp(1.0), a = std::exp(0.5), b = std::exp(0.75);
    expect_close(out.topk_weights,
                 double_matrix({{1 / (1 + 1 / e), 1 / (1 + e)},
                                {1 / (1 + 1 / a), 1 / (1 + a)},
                                {1 / (1 + 1 / b), 1 / (1 + b)}}),
                 kTol, kTol, "noisy eval weights");
    expect_close(out.z_loss, scalar(z_closed_form(kLogits)), kTol, kTol, "noisy eval z");
  }
}

TEST(Router, NoisyTopKInTrainingAddsSeededNoise) {
  Router router = make_router({"noisy_topk", /*top_k=*/2});
  router->train();
  // 64 copies of one token whose clean top-2 is (0, 1), with logit gaps of ~0.1-0.4 against a
  // noise std of softplus(0) = ln 2: the noise changes the choice for many of them.
  const int64_t num_tokens = 64;
  const std::vector<double> clean = {std::log(0.3), std::log(0.26), std::log(0.24), std::log(0.2)};
  const Rows logits(num_tokens, clean);
  const at::Tensor x = input_for_logits(logits);

  at::Generator gen = make_cpu_generator(7);
  RouterOutput out = router->forward(x, {}, &gen);

  // Reference: scores = logits + N(0,1) * ln 2, the normal draws from the same seed.
  at::Generator ref_gen = make_cpu_generator(7);
  const at::Tensor noise = at::randn({num_tokens, kE}, ref_gen, at::kFloat).to(at::kDouble);
  auto n = noise.accessor<double, 2>();
  const auto idx = out.topk_idx.accessor<int64_t, 2>();
  const at::Tensor w = out.topk_weights.to(at::kDouble);
  auto wa = w.accessor<double, 2>();
  int changed = 0;
  for (int64_t s = 0; s < num_tokens; ++s) {
    std::vector<double> scores(kE);
    for (int64_t e = 0; e < kE; ++e) scores[e] = clean[e] + n[s][e] * std::log(2.0);
    const std::vector<int64_t> top = top_k_of(scores, 2);
    EXPECT_EQ(idx[s][0], top[0]) << "token " << s;
    EXPECT_EQ(idx[s][1], top[1]) << "token " << s;
    const double w0 = 1.0 / (1.0 + std::exp(scores[top[1]] - scores[top[0]]));
    EXPECT_NEAR(wa[s][0], w0, 1e-5) << "token " << s;
    EXPECT_NEAR(wa[s][1], 1.0 - w0, 1e-5) << "token " << s;
    if (idx[s][0] != 0 || idx[s][1] != 1) ++changed;
  }
  EXPECT_GT(changed, 0) << "noise never changed the clean choice (0, 1)";
  EXPECT_LT(changed, num_tokens) << "noise changed every choice";
  // probs stay the softmax of the clean logits.
  expect_close(out.probs, double_matrix(softmax_rows(logits)), kTol, kTol, "noisy probs");

  // Same seed: bitwise the same; another seed: other choices.
  at::Generator again = make_cpu_generator(7);
  RouterOutput rep = router->forward(x, {}, &again);
  expect_equal(rep.topk_idx, out.topk_idx, "noisy same seed idx");
  expect_equal(rep.topk_weights, out.topk_weights, "noisy same seed weights");
  at::Generator other = make_cpu_generator(8);
  RouterOutput diff = router->forward(x, {}, &other);
  EXPECT_FALSE(at::equal(diff.topk_idx, out.topk_idx)) << "another seed gave the same choices";
}

TEST(Router, DenseRoutesEveryExpertWithFullSoftmax) {
  Router router = make_router({"dense", /*top_k=*/2});  // top_k is overridden to E
  EXPECT_EQ(router->top_k(), kE);
  RouterOutput out = router->forward(input_for_logits(log_of(kProbs)), {}, nullptr);
  expect_equal(out.topk_idx, long_matrix({{0, 1, 2, 3}, {0, 1, 2, 3}, {0, 1, 2, 3}}), "dense idx");
  expect_close(out.topk_weights, double_matrix(kProbs), kTol, kTol, "dense weights");
  // Every expert gets 1/E of the choices: E * sum_i (1/E) P_i = sum_i P_i = 1.
  expect_close(out.aux_loss, scalar(1.0), kTol, kTol, "dense aux");
}

TEST(Router, HashIsDeterministicFromTokenId) {
  const int64_t num_experts = 5, top_k = 2;
  Router router = make_router({"hash", top_k, true, 0.0, num_experts});
  const std::vector<int64_t> ids = {0, 1, 7, 12345, 50000, 7, 1000003};
  const at::Tensor x = at::randn({static_cast<int64_t>(ids.size()), kE}, at::kFloat);
  RouterOutput out = router->forward(x, testing_moe::long_tensor(ids), nullptr);
  // Knuth's multiplicative hash mod 2^32, then k consecutive experts.
  std::vector<std::vector<int64_t>> expected;
  for (int64_t id : ids) {
    const uint64_t h = (static_cast<uint64_t>(id) * 2654435761ULL) % (1ULL << 32);
    std::vector<int64_t> row;
    for (int64_t j = 0; j < top_k; ++j) {
      row.push_back(static_cast<int64_t>((h + static_cast<uint64_t>(j)) % num_experts));
    }
    expected.push_back(row);
  }
  expect_equal(out.topk_idx, long_matrix(expected), "hash idx");
  for (const auto& row : expected) EXPECT_NE(row[0], row[1]);
  // Token 7 appears twice: same experts.
  EXPECT_TRUE(at::equal(out.topk_idx[2], out.topk_idx[5]));
  expect_equal(out.topk_weights, at::full({7, top_k}, 0.5, at::kFloat), "hash weights 1/k");
  EXPECT_EQ(out.aux_loss.item<float>(), 0.0f);
  EXPECT_EQ(out.z_loss.item<float>(), 0.0f);
  EXPECT_FALSE(out.probs.defined());
  EXPECT_THROW(router->forward(x, {}, nullptr), Error);  // hash needs token ids
}

TEST(Router, RandomIsDistinctUniformWeightsAndSeeded) {
  const int64_t num_experts = 6, top_k = 3, num_tokens = 50;
  Router router = make_router({"random", top_k, true, 0.0, num_experts});
  const at::Tensor x = at::randn({num_tokens, kE}, at::kFloat);
  at::Generator gen = make_cpu_generator(11);
  RouterOutput out = router->forward(x, {}, &gen);
  ASSERT_EQ(out.topk_idx.sizes(), (std::vector<int64_t>{num_tokens, top_k}));
  std::set<int64_t> seen;
  auto idx = out.topk_idx.accessor<int64_t, 2>();
  for (int64_t s = 0; s < num_tokens; ++s) {
    std::set<int64_t> row;
    for (int64_t j = 0; j < top_k; ++j) {
      EXPECT_GE(idx[s][j], 0);
      EXPECT_LT(idx[s][j], num_experts);
      row.insert(idx[s][j]);
      seen.insert(idx[s][j]);
    }
    EXPECT_EQ(static_cast<int64_t>(row.size()), top_k) << "token " << s << " repeats an expert";
  }
  EXPECT_EQ(static_cast<int64_t>(seen.size()), num_experts) << "150 draws missed an expert";
  expect_equal(out.topk_weights, at::full({num_tokens, top_k}, 1.0 / 3.0, at::kFloat),
               "random weights 1/k");
  at::Generator same = make_cpu_generator(11);
  expect_equal(router->forward(x, {}, &same).topk_idx, out.topk_idx, "random same seed");
  at::Generator other = make_cpu_generator(12);
  EXPECT_FALSE(at::equal(router->forward(x, {}, &other).topk_idx, out.topk_idx));
}

TEST(Router, JitterOffInEvalAndSeededInTraining) {
  Router router = make_router({"switch", /*top_k=*/1, true, /*jitter_eps=*/0.1});
  const at::Tensor x = input_for_logits(log_of(kProbs));
  router->eval();
  at::Generator gen = make_cpu_generator(5);
  RouterOutput clean = router->forward(x, {}, &gen);
  expect_close(clean.probs, double_matrix(kProbs), kTol, kTol, "eval: no jitter");
  expect_close(clean.topk_weights, double_matrix({{0.4}, {0.5}, {0.6}}), kTol, kTol, "eval w");

  router->train();
  at::Generator train_gen = make_cpu_generator(5);
  RouterOutput jittered = router->forward(x, {}, &train_gen);
  // Reference: x * U(0.9, 1.1) elementwise with the uniform draws from the same seed, then the
  // permutation weight and a softmax.
  at::Generator ref_gen = make_cpu_generator(5);
  const at::Tensor u = at::rand({3, kE}, ref_gen, at::kFloat);
  const at::Tensor xj = (x * (u * 0.2f + 0.9f)).to(at::kDouble);
  auto xa = xj.accessor<double, 2>();
  Rows logits(3, std::vector<double>(kE));
  for (int64_t s = 0; s < 3; ++s) {
    for (int64_t e = 0; e < kE; ++e) logits[s][e] = xa[s][(e + 3) % kE];
  }
  const Rows probs = softmax_rows(logits);
  expect_close(jittered.probs, double_matrix(probs), kTol, kTol, "jittered probs");
  EXPECT_GT((jittered.probs - clean.probs).abs().max().item<float>(), 1e-3f)
      << "training jitter left the probabilities unchanged";
  for (int64_t s = 0; s < 3; ++s) {
    const int64_t best = top_k_of(probs[s], 1)[0];
    EXPECT_EQ(jittered.topk_idx[s][0].item<int64_t>(), best);
    EXPECT_NEAR(jittered.topk_weights[s][0].item<float>(), probs[s][best], kTol);
  }
}

TEST(RouterLoss, LoadBalancingClosedFormAndGradient) {
  const Rows p = {{0.1, 0.2, 0.3, 0.4}, {0.5, 0.1, 0.15, 0.25}};
  const std::vector<std::vector<int64_t>> idx = {{3, 2}, {0, 3}};
  // f = [1, 0, 1, 2] / 4, P = [0.3, 0.15, 0.225, 0.325]: 4 * (0.075 + 0.05625 + 0.1625) = 1.175.
  ASSERT_NEAR(aux_closed_form(p, idx), 1.175, 1e-12);
  at::Tensor probs = double_matrix(p).to(at::kFloat).requires_grad_(true);
  at::Tensor loss = load_balancing_loss(probs, long_matrix(idx));
  EXPECT_NEAR(loss.item<float>(), 1.175, kTol);
  // d loss / d probs[s][i] = E * f_i / S (f is a constant of the routing).
  at::Tensor grad = torch::autograd::grad({loss}, {probs})[0];
  const double g[kE] = {4 * 0.25 / 2, 0.0, 4 * 0.25 / 2, 4 * 0.5 / 2};
  expect_close(grad, double_matrix({{g[0], g[1], g[2], g[3]}, {g[0], g[1], g[2], g[3]}}), kTol,
               kTol, "aux grad");
}

TEST(RouterLoss, LoadBalancingIsOneWhenBalanced) {
  // Uniform probabilities and every expert chosen equally often: exactly 1.
  at::Tensor uniform = at::full({4, kE}, 0.25, at::kFloat);
  at::Tensor idx = long_matrix({{0, 1}, {2, 3}, {1, 0}, {3, 2}});
  EXPECT_EQ(load_balancing_loss(uniform, idx).item<float>(), 1.0f);
  // Balanced choices make it sum_i P_i = 1 whatever the probabilities.
  const Rows p = {{0.1, 0.2, 0.3, 0.4},
                  {0.5, 0.1, 0.15, 0.25},
                  {0.04, 0.6, 0.3, 0.06},
                  {0.25, 0.25, 0.25, 0.25}};
  EXPECT_NEAR(load_balancing_loss(double_matrix(p).to(at::kFloat), idx).item<float>(), 1.0, kTol);
  // All choices on one expert: E * P_0.
  at::Tensor skew = long_matrix({{0}, {0}, {0}, {0}});
  EXPECT_NEAR(load_balancing_loss(double_matrix(p).to(at::kFloat), skew).item<float>(),
              4 * (0.1 + 0.5 + 0.04 + 0.25) / 4, kTol);
  // No tokens: zero.
  EXPECT_EQ(load_balancing_loss(at::zeros({0, kE}), at::zeros({0, 2}, at::kLong)).item<float>(),
            0.0f);
}

// moe.score sigmoid: weights = the kept sigmoid scores over their sum, times route_scale; P of the
// aux loss = each token's sigmoid scores over their sum.
TEST(Router, SigmoidScoresRenormalizedAndScaled) {
  RouterSpec spec;
  spec.score = ScoreKind::kSigmoid;
  spec.route_scale = 2.0;
  Router router = make_router(spec);
  const Rows logits = {{-1, 0, 1, 2}, {3, -2, 0.5, 1}};
  const RouterOutput out = router->forward(input_for_logits(logits), {}, nullptr);
  auto sig = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
  expect_equal(out.topk_idx, long_matrix({{3, 2}, {0, 3}}), "idx");
  const double a = sig(2) / (sig(2) + sig(1)), b = sig(3) / (sig(3) + sig(1));
  expect_close(out.topk_weights, double_matrix({{2 * a, 2 * (1 - a)}, {2 * b, 2 * (1 - b)}}), kTol,
               kTol, "weights");
  Rows p = logits;
  for (auto& row : p) {
    double sum = 0;
    for (double& v : row) sum += (v = sig(v));
    for (double& v : row) v /= sum;
  }
  expect_close(out.probs, double_matrix(p), kTol, kTol, "probs");
  EXPECT_NEAR(out.aux_loss.item<float>(), aux_closed_form(p, {{3, 2}, {0, 3}}), kTol);
}

// moe.aux_loss_scope sequence: the Switch loss of each sequence on its own, averaged.
TEST(RouterLoss, SequenceScopeIsTheMeanOverSequences) {
  const Rows p = {{0.1, 0.2, 0.3, 0.4},
                  {0.5, 0.1, 0.15, 0.25},
                  {0.04, 0.6, 0.3, 0.06},
                  {0.25, 0.25, 0.25, 0.25}};
  const std::vector<std::vector<int64_t>> idx = {{3, 2}, {0, 3}, {1, 2}, {1, 0}};
  const at::Tensor probs = double_matrix(p).to(at::kFloat);
  const at::Tensor w = at::full({4, 2}, 0.5, at::kFloat);
  const double first = aux_closed_form({p[0], p[1]}, {idx[0], idx[1]});
  const double second = aux_closed_form({p[2], p[3]}, {idx[2], idx[3]});
  EXPECT_NEAR(balance_loss(AuxLossKind::kSwitch, probs, long_matrix(idx), w, 2).item<float>(),
              (first + second) / 2, kTol);
  // One sequence of all four tokens is the micro-batch loss.
  EXPECT_NEAR(balance_loss(AuxLossKind::kSwitch, probs, long_matrix(idx), w, 0).item<float>(),
              aux_closed_form(p, idx), kTol);
  EXPECT_NEAR(balance_loss(AuxLossKind::kSwitch, probs, long_matrix(idx), w, 4).item<float>(),
              aux_closed_form(p, idx), kTol);
  EXPECT_THROW(balance_loss(AuxLossKind::kSwitch, probs, long_matrix(idx), w, 3), Error);
}

// moe.aux_loss_scope global_batch: f from the global batch's counts, P from the tokens here.
TEST(RouterLoss, GlobalBatchTakesFFromTheGivenShares) {
  const Rows p = {{0.1, 0.2, 0.3, 0.4}, {0.5, 0.1, 0.15, 0.25}};
  const at::Tensor probs = double_matrix(p).to(at::kFloat).requires_grad_(true);
  const at::Tensor f = at::tensor({0.5f, 0.25f, 0.125f, 0.125f});
  const at::Tensor loss = balance_loss(AuxLossKind::kSwitch, probs, long_matrix({{3, 2}, {0, 3}}),
                                       at::full({2, 2}, 0.5, at::kFloat), 0, f);
  // P = [0.3, 0.15, 0.225, 0.325]: 4 * (0.15 + 0.0375 + 0.028125 + 0.040625) = 1.025.
  EXPECT_NEAR(loss.item<float>(), 1.025, kTol);
  const at::Tensor grad = torch::autograd::grad({loss}, {probs})[0];  // E * f_i / S
  expect_close(grad, double_matrix({{1.0, 0.5, 0.25, 0.25}, {1.0, 0.5, 0.25, 0.25}}), kTol, kTol,
               "global aux grad");
  // A router given counts takes them in training, and forgets them when given none.
  MoeConfig cfg;
  cfg.num_experts = kE;
  cfg.aux_loss_scope = AuxScope::kGlobalBatch;
  at::Generator init_gen = make_cpu_generator(1);
  Router router(cfg, kE, 0.02, init_gen);
  const at::Tensor x = input_for_logits(log_of(p));
  const float own = router->forward(x, {}, nullptr).aux_loss.item<float>();
  router->set_global_counts(at::tensor({4, 2, 1, 1}, at::kLong));  // shares 0.5, 0.25, 0.125, 0.125
  const float global = router->forward(x, {}, nullptr).aux_loss.item<float>();
  const RouterOutput again = router->forward(x, {}, nullptr);
  EXPECT_NEAR(global, (4 * (f * again.probs.mean(0)).sum()).item<float>(), kTol);
  EXPECT_NE(global, own);
  router->eval();  // evaluation: the micro-batch's own f
  EXPECT_EQ(router->forward(x, {}, nullptr).aux_loss.item<float>(), own);
  router->train();
  router->set_global_counts({});
  EXPECT_EQ(router->forward(x, {}, nullptr).aux_loss.item<float>(), own);
}

// moe.aux_loss variance: sum_i (c_i - mean c)^2 / E over the column sums c of the gate weights.
TEST(RouterLoss, VarianceClosedFormAndGradient) {
  const at::Tensor idx = long_matrix({{3, 2}, {0, 3}});
  at::Tensor w = double_matrix({{0.6, 0.4}, {0.7, 0.3}}).to(at::kFloat).requires_grad_(true);
  const at::Tensor probs = at::full({2, kE}, 0.25, at::kFloat);
  // c = [0.7, 0, 0.4, 0.9], mean 0.5: (0.04 + 0.25 + 0.01 + 0.16) / 4 = 0.115.
  const at::Tensor loss = balance_loss(AuxLossKind::kVariance, probs, idx, w, 0);
  EXPECT_NEAR(loss.item<float>(), 0.115, kTol);
  // d/dw[s][j] = 2 (c_e - mean c) / E for the chosen expert e (the mean's terms cancel).
  const at::Tensor grad = torch::autograd::grad({loss}, {w})[0];
  expect_close(grad, double_matrix({{0.2, -0.05}, {0.1, 0.2}}), kTol, kTol, "variance grad");
  // Per sequence of one token: c = [0, 0, 0.4, 0.6] then [0.7, 0, 0, 0.3].
  const double one = (0.25 * 0.25 * 2 + 0.15 * 0.15 + 0.35 * 0.35) / 4;
  const double two = (0.45 * 0.45 + 0.25 * 0.25 * 2 + 0.05 * 0.05) / 4;
  EXPECT_NEAR(balance_loss(AuxLossKind::kVariance, probs, idx, w, 1).item<float>(), (one + two) / 2,
              kTol);
}

// Groups ranked by the sum of their two best scores; the experts of the others masked.
TEST(Router, LimitToGroupsClosedForm) {
  const at::Tensor scores =
      double_matrix({{0.1, 0.9, 0.5, 0.6, 0.8, 0.05, 0.3, 0.3}}).to(at::kFloat);
  // Group sums 1.0, 1.1, 0.85, 0.6: groups 1 and 0 stay.
  const float inf = std::numeric_limits<float>::infinity();
  const at::Tensor want =
      at::tensor({0.1f, 0.9f, 0.5f, 0.6f, -inf, -inf, -inf, -inf}).reshape({1, 8});
  EXPECT_TRUE(at::equal(limit_to_groups(scores, 4, 2), want));
  // One group: the best pair (0.1 + 0.9 < 0.5 + 0.6).
  const at::Tensor one = limit_to_groups(scores, 4, 1);
  EXPECT_EQ(at::isfinite(one).sum().item<int64_t>(), 2);
  EXPECT_TRUE(at::isfinite(one[0][2]).item<bool>() && at::isfinite(one[0][3]).item<bool>());
  // Groups of one expert rank by that expert alone.
  EXPECT_EQ(at::isfinite(limit_to_groups(scores, 8, 3)).sum().item<int64_t>(), 3);
}

// Note [Score bias balancing]: two ranks with two MoE layers each; the loads add over the world and
// every rank applies rate * sign(mean - load) to every layer.
TEST(ScoreBias, UpdateUsesTheWorldsLoad) {
  MoeConfig cfg;
  cfg.num_experts = 4;
  cfg.top_k = 2;
  cfg.balance = BalanceKind::kBias;
  std::vector<at::Tensor> bias(4);
  run_inproc_ranks(2, [&](CommPtr world) {
    const int r = world->rank();
    std::vector<MoELayer> layers = {testing_moe::make_test_layer(cfg, 8, 16, 1),
                                    testing_moe::make_test_layer(cfg, 8, 16, 2)};
    const at::Tensor load = r == 0 ? long_matrix({{3, 1, 2, 2}, {5, 0, 0, 3}})
                                   : long_matrix({{1, 1, 4, 2}, {0, 0, 0, 0}});
    update_score_biases(layers, load, *world, 0.01);
    update_score_biases(layers, load, *world, 0.01);  // the same loads again: twice the step
    bias[2 * r] = layers[0]->router->score_bias().clone();
    bias[2 * r + 1] = layers[1]->router->score_bias().clone();
  });
  // Layer 0: totals [4, 2, 6, 4], mean 4 -> sign [0, +1, -1, 0]. Layer 1: [5, 0, 0, 3], mean 2.
  const at::Tensor want0 = at::tensor({0.0f, 0.02f, -0.02f, 0.0f});
  const at::Tensor want1 = at::tensor({-0.02f, 0.02f, 0.02f, -0.02f});
  for (int r = 0; r < 2; ++r) {
    expect_close(bias[2 * r], want0, 1e-7, 0, "layer 0, rank " + std::to_string(r));
    expect_close(bias[2 * r + 1], want1, 1e-7, 0, "layer 1, rank " + std::to_string(r));
  }
  EXPECT_TRUE(at::equal(bias[0], bias[2]));
  // A layer without a score bias is an error naming it.
  cfg.balance = BalanceKind::kAux;
  std::vector<MoELayer> plain = {testing_moe::make_test_layer(cfg, 8, 16, 3)};
  EXPECT_THROW(
      update_score_biases(plain, long_matrix({{1, 1, 1, 1}}), *make_self_communicator(), 0.1),
      Error);
}

TEST(RouterLoss, ZLossClosedFormAndGradient) {
  const Rows l = {{1, 2, 3, 0}, {0.5, -1, 2, 1.5}, {0, 0, 0, 0}};
  at::Tensor logits = double_matrix(l).to(at::kFloat).requires_grad_(true);
  at::Tensor z = router_z_loss(logits);
  // Row 3: lse = log 4.
  EXPECT_NEAR(z.item<float>(), z_closed_form(l), 1e-5 * z_closed_form(l));
  // d z / d logits[s] = 2 * lse_s * softmax_s / S.
  const Rows sm = softmax_rows(l);
  Rows g = sm;
  for (size_t s = 0; s < l.size(); ++s) {
    const double lse = logsumexp(l[s]);
    for (int64_t e = 0; e < kE; ++e) g[s][e] = 2.0 * lse * sm[s][e] / 3.0;
  }
  expect_close(torch::autograd::grad({z}, {logits})[0], double_matrix(g), 1e-5, kTol, "z grad");
  EXPECT_EQ(router_z_loss(at::zeros({0, kE})).item<float>(), 0.0f);
}

}  // namespace
}  // namespace sy
