// Task masks (Note [Task masks] in src/moe/router.h): data.tasks expert lists in the routers.
//   - fixed masks: every choice of every token lies in its task's mask, for the switch, topk,
//     topk_logits and noisy_topk routers, softmax and sigmoid scores, a score bias pulling
//     towards a masked expert, and group-limited routing; the masked scores are exactly 0;
//   - masked_balance_loss against hand-computed two-group examples (switch and variance, with
//     the gradient of the switch loss), its reduction to load_balancing_loss / balance_loss for
//     one group of every expert, and the router's aux loss per task and per sequence;
//   - the MoE layer's dispatch plan stays inside the masks on 1 rank and on 4 EP ranks, whose
//     outputs equal the single-process layer's;
//   - learned masks: the task_gate parameter (+4 / -4), its gradient, and closed forms: a task
//     without a list adds the constant log sigmoid(4) to every logit (same routing as no mask, the
//     z-loss shifted), and softmax probabilities are p_i sigmoid(g_i) / sum_j p_j sigmoid(g_j).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#include "config/config.h"
#include "moe/init.h"
#include "moe/moe_layer.h"
#include "moe/moe_test_util.h"
#include "moe/router.h"
#include "parallel/inproc_comm.h"

namespace sy {
namespace {

using testing_moe::double_matrix;
using testing_moe::expect_close;
using testing_moe::long_matrix;
using testing_moe::long_tensor;
using testing_moe::param;

using Lists = std::vector<std::vector<int64_t>>;

constexpr int64_t kE = 8;   // experts
constexpr int64_t kH = 16;  // router input width

// Four tasks over 8 experts: two small masks, one task without a list (all experts), and one
// that allows the expert the score-bias tests pull towards (7).
const Lists kMasks = {{0, 1, 2}, {5, 6}, {}, {7, 3}};

bool allowed(const Lists& masks, int64_t task, int64_t expert) {
  const auto& m = masks[static_cast<size_t>(task)];
  return m.empty() || std::find(m.begin(), m.end(), expert) != m.end();
}

struct Spec {
  RouterKind kind = RouterKind::kTopK;
  int64_t k = 2;
  ScoreKind score = ScoreKind::kSoftmax;
  bool bias = false;  // moe.balance bias (buffer score_bias)
  int64_t groups = 0, limit = 0;
  std::string name() const {
    return std::string(choice_name(kind)) + " k" + std::to_string(k) + " " + choice_name(score) +
           (bias ? " bias" : "") + (groups ? " groups " + std::to_string(groups) : "");
  }
};

MoeConfig moe_config(const Spec& s) {
  MoeConfig c;
  c.num_experts = kE;
  c.top_k = s.k;
  c.router = s.kind;
  c.score = s.score;
  c.balance = s.bias ? BalanceKind::kAuxBias : BalanceKind::kAux;
  c.route_groups = s.groups;
  c.route_group_limit = s.limit;
  return c;
}

// Router weights N(0, 1) from `seed`: logits of order 4, so unmasked routing is diverse.
Router make_router(const MoeConfig& cfg, uint64_t seed = 7) {
  at::Generator gen = make_cpu_generator(seed);
  return Router(cfg, kH, /*init_std=*/1.0, gen);
}

at::Tensor random_input(int64_t tokens, uint64_t seed) {
  at::Generator gen = make_cpu_generator(seed);
  return at::randn({tokens, kH}, gen, at::kFloat);
}

at::Tensor random_tasks(int64_t tokens, int64_t num_tasks, uint64_t seed) {
  at::Generator gen = make_cpu_generator(seed);
  return at::randint(0, num_tasks, {tokens}, gen, at::kLong);
}

// Every choice of every token inside its task's mask; the masked experts' probabilities 0.
void expect_inside(const RouterOutput& out, const at::Tensor& tasks, const Lists& masks,
                   const std::string& what) {
  const int64_t S = out.topk_idx.size(0), k = out.topk_idx.size(1);
  int64_t outside = 0;
  for (int64_t s = 0; s < S; ++s) {
    const int64_t t = tasks[s].item<int64_t>();
    for (int64_t c = 0; c < k; ++c) {
      const int64_t e = out.topk_idx[s][c].item<int64_t>();
      if (!allowed(masks, t, e)) {
        if (++outside <= 3)
          ADD_FAILURE() << what << ": token " << s << " of task " << t << " chose expert " << e
                        << " (outside its mask)";
      }
    }
    // Distinct choices.
    const at::Tensor row = std::get<0>(at::sort(out.topk_idx[s]));
    EXPECT_TRUE(k < 2 || !at::any(row.slice(0, 1).eq(row.slice(0, 0, k - 1))).item<bool>())
        << what << ": token " << s << " chose an expert twice";
    for (int64_t e = 0; e < kE && out.probs.defined(); ++e) {
      if (!allowed(masks, t, e)) {
        EXPECT_EQ(out.probs[s][e].item<float>(), 0.0f)
            << what << ": token " << s << " expert " << e;
      }
    }
  }
  EXPECT_EQ(outside, 0) << what << ": choices outside the mask";
  if (out.probs.defined()) {
    expect_close(out.probs.sum(-1), at::ones({S}), 1e-6, 1e-6, what + ": probs sum to 1");
  }
  EXPECT_TRUE(at::isfinite(out.aux_loss).item<bool>()) << what;
  EXPECT_TRUE(at::isfinite(out.z_loss).item<bool>()) << what;
}

TEST(FixedTaskMasks, EveryChoiceInsideItsTasksMask) {
  std::vector<Spec> specs = {
      {RouterKind::kSwitch, 1},
      {RouterKind::kTopK, 2},
      {RouterKind::kTopK, 1},
      {RouterKind::kTopKLogits, 2},
      {RouterKind::kNoisyTopK, 2},
      {RouterKind::kSwitch, 1, ScoreKind::kSigmoid},
      {RouterKind::kTopK, 2, ScoreKind::kSigmoid},
  };
  const int64_t S = 256;
  const at::Tensor x = random_input(S, 1);
  const at::Tensor tasks = random_tasks(S, 4, 2);
  for (const Spec& spec : specs) {
    Router router = make_router(moe_config(spec));
    router->set_task_masks(kMasks, TaskMaskKind::kFixed);
    ASSERT_TRUE(router->has_task_masks());
    at::Generator gen = make_cpu_generator(3);  // noisy_topk's noise (training mode)
    const RouterOutput out = router->forward(x, {}, &gen, 0, tasks);
    expect_inside(out, tasks, kMasks, spec.name());
    // The masks are no restriction for the task without a list: there the choices are the
    // unmasked router's (same weights, same noise).
    Router plain = make_router(moe_config(spec));
    at::Generator gen2 = make_cpu_generator(3);
    const RouterOutput ref = plain->forward(x, {}, &gen2);
    const at::Tensor free_rows = tasks.eq(2);
    EXPECT_TRUE(at::equal(out.topk_idx.index({free_rows}), ref.topk_idx.index({free_rows})))
        << spec.name();
    // ... and without the masks, some token of a masked task chooses outside its mask.
    int64_t outside = 0;
    for (int64_t s = 0; s < S; ++s) {
      for (int64_t c = 0; c < spec.k; ++c) {
        outside += !allowed(kMasks, tasks[s].item<int64_t>(), ref.topk_idx[s][c].item<int64_t>());
      }
    }
    EXPECT_GT(outside, S / 4) << spec.name() << ": the unmasked router is no trivial case";
  }
  // Without the task ids, a masked router refuses to route.
  Router router = make_router(moe_config(Spec{}));
  router->set_task_masks(kMasks, TaskMaskKind::kFixed);
  EXPECT_THROW(router->forward(x, {}, nullptr), Error);
}

TEST(FixedTaskMasks, ScoreBiasCannotPullTokensOutOfTheirMask) {
  const int64_t S = 128;
  const at::Tensor x = random_input(S, 4);
  const at::Tensor tasks = random_tasks(S, 4, 5);
  for (const Spec& spec : {Spec{RouterKind::kTopK, 2, ScoreKind::kSoftmax, true},
                           Spec{RouterKind::kSwitch, 1, ScoreKind::kSoftmax, true},
                           Spec{RouterKind::kTopK, 2, ScoreKind::kSigmoid, true}}) {
    Router router = make_router(moe_config(spec));
    router->set_task_masks(kMasks, TaskMaskKind::kFixed);
    {
      torch::NoGradGuard no_grad;
      at::Tensor bias = router->named_buffers()["score_bias"];
      bias.zero_();
      bias[7] = 100.0;  // far above any score: expert 7 is every token's first choice if allowed
    }
    const RouterOutput out = router->forward(x, {}, nullptr, 0, tasks);
    expect_inside(out, tasks, kMasks, spec.name());
    for (int64_t s = 0; s < S; ++s) {
      const int64_t t = tasks[s].item<int64_t>();
      if (allowed(kMasks, t, 7)) {  // tasks 2 and 3: the bias wins
        EXPECT_EQ(out.topk_idx[s][0].item<int64_t>(), 7) << spec.name() << " token " << s;
      }
    }
    // The bias chooses, it does not weigh: the gate weights are the unbiased scores of the chosen
    // experts (sigmoid(logit) for switch with sigmoid scores; the top-k's renormalized, where
    // the sums of sigmoid scores or probabilities cancel).
    const at::Tensor logits = x.matmul(param(*router, "weight")).detach();
    const at::Tensor kept = out.probs.gather(1, out.topk_idx);
    const at::Tensor want = spec.kind == RouterKind::kTopK ? kept / kept.sum(-1, true)
                            : spec.score == ScoreKind::kSigmoid
                                ? at::sigmoid(logits).gather(1, out.topk_idx)
                                : kept;
    expect_close(out.topk_weights, want, 1e-6, 1e-7, spec.name() + ": gate weights");
  }
}

TEST(FixedTaskMasks, GroupLimitedRoutingWithMasksAlignedToGroups) {
  // 4 groups of 2 experts, the best 2 groups; each mask is made of whole groups.
  const Lists masks = {{0, 1, 2, 3}, {4, 5}, {}, {2, 3, 6, 7}};
  const int64_t S = 128;
  const at::Tensor x = random_input(S, 6);
  const at::Tensor tasks = random_tasks(S, 4, 7);
  for (ScoreKind score : {ScoreKind::kSoftmax, ScoreKind::kSigmoid}) {
    for (bool bias : {false, true}) {
      Spec spec{RouterKind::kTopK, 2, score, bias, 4, 2};
      Router router = make_router(moe_config(spec));
      router->set_task_masks(masks, TaskMaskKind::kFixed);
      if (bias) {
        torch::NoGradGuard no_grad;
        router->named_buffers()["score_bias"][7] = 100.0;
      }
      expect_inside(router->forward(x, {}, nullptr, 0, tasks), tasks, masks, spec.name());
    }
  }
}

// Masks across groups: limit_to_groups ranks a group by its best allowed scores (a masked
// expert's score is -inf and is left out), so a group holding one allowed expert is not ranked
// like a group holding none, and no choice names an expert outside the mask (Note [Task masks]).
TEST(FixedTaskMasks, GroupLimitedRoutingWithMasksAcrossGroups) {
  Config cfg;
  cfg.moe = moe_config(Spec{RouterKind::kTopK, 2, ScoreKind::kSoftmax, false, 4, 2});
  TaskConfig a, b;
  a.name = "a";
  a.synthetic = 0;
  a.experts = {0, 3};  // one expert in each of groups 0 and 1
  b.name = "b";
  b.synthetic = 1;
  b.experts = {2, 7};  // one expert in each of groups 1 and 3
  cfg.data.tasks = {a, b};
  ASSERT_NO_THROW(validate(cfg));
  const Lists masks = {a.experts, b.experts};
  Router router = make_router(cfg.moe);
  router->set_task_masks(masks, TaskMaskKind::kFixed);
  const int64_t S = 128;
  const at::Tensor tasks = random_tasks(S, 2, 9);
  expect_inside(router->forward(random_input(S, 8), {}, nullptr, 0, tasks), tasks, masks,
                "groups across masks");
}

TEST(FixedTaskMasks, ListsThatAllowEverythingAreDropped) {
  Router router = make_router(moe_config(Spec{}));
  router->set_task_masks({{}, {}}, TaskMaskKind::kFixed);
  EXPECT_FALSE(router->has_task_masks());
  Router plain = make_router(moe_config(Spec{}));
  const at::Tensor x = random_input(32, 10);
  // No task ids needed, and the routing is the plain router's.
  const RouterOutput out = router->forward(x, {}, nullptr);
  const RouterOutput ref = plain->forward(x, {}, nullptr);
  EXPECT_TRUE(at::equal(out.topk_idx, ref.topk_idx));
  EXPECT_TRUE(at::equal(out.topk_weights, ref.topk_weights));
  EXPECT_TRUE(at::equal(out.aux_loss, ref.aux_loss));
}

// ------------------------------------------------------------------------------------------
// masked_balance_loss: two groups over 4 experts, group 0 allowing {0, 1} (m = 2), group 1
// allowing {1, 2, 3} (m = 3); the tokens of the groups interleaved.

const at::Tensor kAllowed() {
  return testing_moe::bool_tensor({1, 1, 0, 0, 0, 1, 1, 1}).view({2, 4});
}

TEST(MaskedBalanceLoss, SwitchTwoGroupsHandComputed) {
  // token: group, probs (0 outside the group's mask), choice (top-1).
  //   s0: 0, [0.7, 0.3, 0, 0], 0        s1: 1, [0, 0.2, 0.5, 0.3], 2
  //   s2: 0, [0.4, 0.6, 0, 0], 1        s3: 1, [0, 0.6, 0.1, 0.3], 1
  //   s4: 0, [0.9, 0.1, 0, 0], 0
  // Group 0: n 3, f = [2/3, 1/3, 0, 0], P = [2/3, 1/3, 0, 0]: sum f P = 5/9, times m = 2: 10/9,
  //          times its share 3/5: 2/3.
  // Group 1: n 2, f = [0, 1/2, 1/2, 0], P = [0, 0.4, 0.3, 0.3]: sum f P = 0.35, times m = 3:
  //          1.05, times its share 2/5: 0.42.
  // Loss: 2/3 + 0.42 = 1.0866666...; d loss / d probs[s][i] = m_g f_gi / S.
  at::Tensor probs = double_matrix({{0.7, 0.3, 0, 0},
                                    {0, 0.2, 0.5, 0.3},
                                    {0.4, 0.6, 0, 0},
                                    {0, 0.6, 0.1, 0.3},
                                    {0.9, 0.1, 0, 0}})
                         .to(at::kFloat)
                         .requires_grad_(true);
  const at::Tensor idx = long_matrix({{0}, {2}, {1}, {1}, {0}});
  const at::Tensor weights = probs.detach().gather(1, idx);
  const at::Tensor group = long_tensor({0, 1, 0, 1, 0});
  const at::Tensor loss =
      masked_balance_loss(AuxLossKind::kSwitch, probs, idx, weights, group, kAllowed());
  EXPECT_NEAR(loss.item<double>(), 2.0 / 3.0 + 0.42, 1e-6);
  const at::Tensor grad = torch::autograd::grad({loss}, {probs})[0];
  const std::vector<double> g0 = {2 * (2.0 / 3) / 5, 2 * (1.0 / 3) / 5, 0, 0};
  const std::vector<double> g1 = {0, 3 * 0.5 / 5, 3 * 0.5 / 5, 0};
  expect_close(grad, double_matrix({g0, g1, g0, g1, g0}), 1e-5, 1e-7, "switch gradient");
  // Balanced within each mask (uniform probabilities over it, choices spread evenly): 1.
  const at::Tensor even = double_matrix({{0.5, 0.5, 0, 0},
                                         {0, 1.0 / 3, 1.0 / 3, 1.0 / 3},
                                         {0.5, 0.5, 0, 0},
                                         {0, 1.0 / 3, 1.0 / 3, 1.0 / 3},
                                         {0, 1.0 / 3, 1.0 / 3, 1.0 / 3}})
                              .to(at::kFloat);
  const at::Tensor even_idx = long_matrix({{0}, {1}, {1}, {2}, {3}});
  EXPECT_NEAR(masked_balance_loss(AuxLossKind::kSwitch, even, even_idx, even.gather(1, even_idx),
                                  long_tensor({0, 1, 0, 1, 1}), kAllowed())
                  .item<double>(),
              1.0, 1e-6);
}

TEST(MaskedBalanceLoss, VarianceTwoGroupsHandComputed) {
  // token: group, choices (top-2) and gate weights.
  //   s0: 0, [0, 1] [0.7, 0.3]     s1: 1, [2, 1] [0.5, 0.5]
  //   s2: 0, [1, 0] [0.6, 0.4]     s3: 1, [3, 2] [0.8, 0.2]
  //   s4: 0, [0, 1] [0.9, 0.1]     s5: 1, [1, 3] [0.4, 0.6]
  // Group 0 (m 2): c = [2.0, 1.0], mean 1.5, sum of squared deviations 0.5, / m: 0.25, times
  //                its share 1/2: 0.125.
  // Group 1 (m 3): c = [_, 0.9, 0.7, 1.4], mean 1.0, squares 0.01 + 0.09 + 0.16 = 0.26, / m:
  //                0.08666..., times 1/2: 0.04333...
  // Loss: 0.125 + 0.0433333... = 0.1683333...
  const at::Tensor idx = long_matrix({{0, 1}, {2, 1}, {1, 0}, {3, 2}, {0, 1}, {1, 3}});
  at::Tensor weights =
      double_matrix({{0.7, 0.3}, {0.5, 0.5}, {0.6, 0.4}, {0.8, 0.2}, {0.9, 0.1}, {0.4, 0.6}})
          .to(at::kFloat)
          .requires_grad_(true);
  const at::Tensor probs = at::full({6, 4}, 0.25, at::kFloat);  // not read by the variance loss
  const at::Tensor group = long_tensor({0, 1, 0, 1, 0, 1});
  const at::Tensor loss =
      masked_balance_loss(AuxLossKind::kVariance, probs, idx, weights, group, kAllowed());
  EXPECT_NEAR(loss.item<double>(), 0.125 + 0.26 / 3 / 2, 1e-6);
  // d loss / d w[s][c] = share_g * 2 (c_gi - mean_g) / m_g for i = idx[s][c] (the deviations
  // sum to 0 over the mask, so the mean's own derivative drops out).
  const at::Tensor grad = torch::autograd::grad({loss}, {weights})[0];
  const double d0 = 0.5 * 2 / 2, d1 = 0.5 * 2 / 3;  // share * 2 / m
  const std::vector<std::vector<double>> want = {{d0 * 0.5, d0 * -0.5}, {d1 * -0.3, d1 * -0.1},
                                                 {d0 * -0.5, d0 * 0.5}, {d1 * 0.4, d1 * -0.3},
                                                 {d0 * 0.5, d0 * -0.5}, {d1 * -0.1, d1 * 0.4}};
  expect_close(grad, double_matrix(want), 1e-5, 1e-7, "variance gradient");
}

TEST(MaskedBalanceLoss, OneGroupOfEveryExpertIsThePlainLoss) {
  at::Generator gen = make_cpu_generator(12);
  const int64_t S = 40, E = 6, k = 2;
  const at::Tensor probs = at::softmax(at::randn({S, E}, gen), -1);
  const at::Tensor idx = std::get<1>(at::randn({S, E}, gen).topk(k, -1));
  const at::Tensor weights = at::rand({S, k}, gen);
  const at::Tensor one_group = at::zeros({S}, at::kLong);
  const at::Tensor all = at::ones({1, E}, at::kBool);
  expect_close(masked_balance_loss(AuxLossKind::kSwitch, probs, idx, weights, one_group, all),
               load_balancing_loss(probs, idx), 1e-6, 0, "switch");
  expect_close(masked_balance_loss(AuxLossKind::kVariance, probs, idx, weights, one_group, all),
               balance_loss(AuxLossKind::kVariance, probs, idx, weights, 0), 1e-6, 0, "variance");
  // A group without tokens adds nothing: a second, empty group changes neither.
  const at::Tensor two = at::ones({2, E}, at::kBool);
  expect_close(masked_balance_loss(AuxLossKind::kSwitch, probs, idx, weights, one_group, two),
               load_balancing_loss(probs, idx), 1e-6, 0, "switch, empty group");
  expect_close(masked_balance_loss(AuxLossKind::kVariance, probs, idx, weights, one_group, two),
               balance_loss(AuxLossKind::kVariance, probs, idx, weights, 0), 1e-6, 0,
               "variance, empty group");
}

// The router's aux loss under fixed masks, from its own outputs by a double loop: groups are the
// tasks (micro_batch scope) or the sequences (sequence scope), each over its task's mask.
double aux_by_hand(AuxLossKind kind, const RouterOutput& out, const std::vector<int64_t>& group,
                   const std::vector<std::set<int64_t>>& mask_of_group) {
  const int64_t S = out.topk_idx.size(0), k = out.topk_idx.size(1);
  double total = 0;
  for (size_t g = 0; g < mask_of_group.size(); ++g) {
    const std::set<int64_t>& mask = mask_of_group[g];
    std::vector<double> f(kE, 0), p(kE, 0), c(kE, 0);
    double n = 0;
    for (int64_t s = 0; s < S; ++s) {
      if (group[s] != static_cast<int64_t>(g)) continue;
      n += 1;
      for (int64_t e = 0; e < kE; ++e) p[e] += out.probs[s][e].item<double>();
      for (int64_t j = 0; j < k; ++j) {
        const int64_t e = out.topk_idx[s][j].item<int64_t>();
        f[e] += 1;
        c[e] += out.topk_weights[s][j].item<double>();
      }
    }
    if (n == 0) continue;
    const double m = static_cast<double>(mask.size());
    double loss = 0;
    if (kind == AuxLossKind::kSwitch) {
      for (int64_t e = 0; e < kE; ++e) loss += f[e] / (n * k) * p[e] / n;
      loss *= m;
    } else {
      double mean = 0;
      for (int64_t e : mask) mean += c[e] / m;
      for (int64_t e : mask) loss += (c[e] - mean) * (c[e] - mean) / m;
    }
    total += n / static_cast<double>(S) * loss;
  }
  return total;
}

TEST(FixedTaskMasks, RouterAuxLossPerTaskAndPerSequence) {
  const int64_t T = 8, B = 6, S = B * T;
  const at::Tensor x = random_input(S, 13);
  const at::Tensor seq_task = random_tasks(B, 4, 14);
  const at::Tensor tasks = seq_task.view({B, 1}).expand({B, T}).reshape({-1});
  std::vector<std::set<int64_t>> task_mask;
  for (int64_t t = 0; t < 4; ++t) {
    std::set<int64_t> m;
    for (int64_t e = 0; e < kE; ++e) {
      if (allowed(kMasks, t, e)) m.insert(e);
    }
    task_mask.push_back(m);
  }
  for (AuxLossKind kind : {AuxLossKind::kSwitch, AuxLossKind::kVariance}) {
    for (AuxScope scope : {AuxScope::kMicroBatch, AuxScope::kSequence}) {
      MoeConfig cfg = moe_config(Spec{});
      cfg.aux_loss = kind;
      cfg.aux_loss_scope = scope;
      Router router = make_router(cfg);
      router->set_task_masks(kMasks, TaskMaskKind::kFixed);
      const RouterOutput out = router->forward(x, {}, nullptr, T, tasks);
      std::vector<int64_t> group(S);
      std::vector<std::set<int64_t>> masks;
      if (scope == AuxScope::kMicroBatch) {
        for (int64_t s = 0; s < S; ++s) group[s] = tasks[s].item<int64_t>();
        masks = task_mask;
      } else {
        for (int64_t s = 0; s < S; ++s) group[s] = s / T;
        for (int64_t b = 0; b < B; ++b) masks.push_back(task_mask[seq_task[b].item<int64_t>()]);
      }
      EXPECT_NEAR(out.aux_loss.item<double>(), aux_by_hand(kind, out, group, masks), 1e-5)
          << choice_name(kind) << " " << choice_name(scope);
    }
  }
}

// ------------------------------------------------------------------------------------------
// The MoE layer: the dispatch plan (the choices the all-to-all carries) inside the masks.

Config layer_config() {
  Config c;
  c.model.d_model = kH;
  c.model.d_ff = 12;
  c.model.block_size = 8;
  c.moe.num_experts = kE;
  c.moe.top_k = 2;
  c.moe.capacity_factor = 1.0;  // drops too: the plan still names only allowed experts
  c.train.seed = 21;
  const std::vector<std::string> names = {"a", "b", "c", "d"};
  for (size_t t = 0; t < kMasks.size(); ++t) {
    TaskConfig task;
    task.name = names[t];
    task.synthetic = static_cast<int64_t>(t);
    task.experts = kMasks[t];
    c.data.tasks.push_back(task);
  }
  validate(c);
  return c;
}

struct LayerRun {
  at::Tensor y, plan_token, plan_expert, plan_kept;
};

LayerRun run_layer(MoELayer& layer, const at::Tensor& x, const at::Tensor& tasks) {
  const MoeOutput out = layer->forward(x, {}, nullptr, /*seq_len=*/8, tasks);
  const MoeStats& st = layer->last_stats();
  return {out.y.detach(), st.plan_token, st.plan_expert, st.plan_kept};
}

void expect_plan_inside(const LayerRun& r, const at::Tensor& tasks, const std::string& what) {
  ASSERT_TRUE(r.plan_expert.defined()) << what;
  ASSERT_EQ(r.plan_expert.numel(), tasks.numel() * 2) << what;
  int64_t outside = 0;
  for (int64_t i = 0; i < r.plan_expert.numel(); ++i) {
    const int64_t token = r.plan_token[i].item<int64_t>();
    const int64_t e = r.plan_expert[i].item<int64_t>();
    outside += !allowed(kMasks, tasks[token].item<int64_t>(), e);
  }
  EXPECT_EQ(outside, 0) << what << ": dispatched choices outside their token's mask";
}

TEST(TaskMaskLayer, DispatchPlanInsideMasksOnOneAndFourEpRanks) {
  const Config cfg = layer_config();
  const int64_t S = 64;  // per rank: 8 sequences of 8
  std::vector<at::Tensor> xs, ts;
  for (int r = 0; r < 4; ++r) {
    xs.push_back(random_input(S, 100 + r) * 3.0);
    ts.push_back(random_tasks(S / 8, 4, 200 + r).view({-1, 1}).expand({S / 8, 8}).reshape({-1}));
  }
  // One process holding all experts, on each rank's tokens.
  std::vector<LayerRun> single;
  MoELayer whole = make_moe_layer(cfg, make_self_communicator());
  ASSERT_TRUE(whole->router->has_task_masks());
  for (int r = 0; r < 4; ++r) {
    single.push_back(run_layer(whole, xs[r], ts[r]));
    expect_plan_inside(single.back(), ts[r], "1 rank, batch " + std::to_string(r));
  }
  // 4 EP ranks: the same plans and outputs.
  std::vector<LayerRun> ep(4);
  std::mutex mu;
  run_inproc_ranks(4, [&](CommPtr world) {
    MoELayer layer = make_moe_layer(cfg, world);
    const int r = world->rank();
    LayerRun out = run_layer(layer, xs[r], ts[r]);
    std::lock_guard<std::mutex> lock(mu);
    ep[r] = out;
  });
  for (int r = 0; r < 4; ++r) {
    const std::string what = "EP rank " + std::to_string(r);
    expect_plan_inside(ep[r], ts[r], what);
    EXPECT_TRUE(at::equal(ep[r].plan_expert, single[r].plan_expert)) << what;
    EXPECT_TRUE(at::equal(ep[r].plan_kept, single[r].plan_kept)) << what;
    expect_close(ep[r].y, single[r].y, 1e-5, 1e-6, what + ": output");
  }
}

// ------------------------------------------------------------------------------------------
// Learned masks.

TEST(LearnedTaskMasks, GateParameterStartsAtPlusFourAndMinusFourAndTrains) {
  Router router = make_router(moe_config(Spec{}));
  router->set_task_masks(kMasks, TaskMaskKind::kLearned);
  EXPECT_TRUE(router->has_task_masks());
  const at::Tensor gate = param(*router, "task_gate");
  ASSERT_EQ(gate.sizes(), (std::vector<int64_t>{4, kE}));
  EXPECT_TRUE(gate.requires_grad());
  for (int64_t t = 0; t < 4; ++t) {
    for (int64_t e = 0; e < kE; ++e) {
      EXPECT_EQ(gate[t][e].item<float>(), allowed(kMasks, t, e) ? 4.0f : -4.0f) << t << " " << e;
    }
  }
  // A loss of the gate weights and the aux loss: a gradient for the rows of the tasks present
  // (0 and 1), none for the absent ones (2 and 3).
  const int64_t S = 64;
  const at::Tensor tasks = random_tasks(S, 2, 30);
  const RouterOutput out = router->forward(random_input(S, 31), {}, nullptr, 0, tasks);
  at::Generator gen = make_cpu_generator(32);
  const at::Tensor loss =
      (out.topk_weights * at::randn(out.topk_weights.sizes(), gen)).sum() + out.aux_loss;
  const at::Tensor grad = torch::autograd::grad({loss}, {gate})[0];
  EXPECT_GT(grad[0].abs().sum().item<double>(), 0.0);
  EXPECT_GT(grad[1].abs().sum().item<double>(), 0.0);
  EXPECT_EQ(grad[2].abs().sum().item<double>(), 0.0);
  EXPECT_EQ(grad[3].abs().sum().item<double>(), 0.0);
  EXPECT_TRUE(at::isfinite(grad).all().item<bool>());
}

TEST(LearnedTaskMasks, ATaskWithoutAListRoutesAsNoMask) {
  // Every gate of the task is +4: log sigmoid(4) is added to all its logits, which leaves the
  // softmax, the top-k of the logits and their softmax unchanged; the z-loss is then
  // mean_s (lse_s + log sigmoid(4))^2.
  const double shift = -std::log1p(std::exp(-4.0));  // log sigmoid(4)
  const int64_t S = 48;
  const at::Tensor x = random_input(S, 40);
  const at::Tensor tasks = at::full({S}, 2, at::kLong);  // kMasks[2] is empty
  for (const Spec& spec : {Spec{RouterKind::kTopK, 2}, Spec{RouterKind::kSwitch, 1},
                           Spec{RouterKind::kTopKLogits, 2}}) {
    Router learned = make_router(moe_config(spec));
    learned->set_task_masks(kMasks, TaskMaskKind::kLearned);
    Router plain = make_router(moe_config(spec));
    const RouterOutput a = learned->forward(x, {}, nullptr, 0, tasks);
    const RouterOutput b = plain->forward(x, {}, nullptr);
    EXPECT_TRUE(at::equal(a.topk_idx, b.topk_idx)) << spec.name();
    expect_close(a.topk_weights, b.topk_weights, 1e-6, 1e-7, spec.name() + ": weights");
    expect_close(a.probs, b.probs, 1e-6, 1e-7, spec.name() + ": probs");
    expect_close(a.aux_loss, b.aux_loss, 1e-6, 0, spec.name() + ": aux");
    const at::Tensor logits = x.matmul(param(*plain, "weight"));
    const at::Tensor z = (at::logsumexp(logits, -1) + shift).pow(2).mean();
    expect_close(a.z_loss, z, 1e-5, 0, spec.name() + ": z-loss");
  }
}

TEST(LearnedTaskMasks, SoftmaxProbabilitiesAreWeightedBySigmoidOfTheGate) {
  // softmax(l + log sigmoid(g))_i = p_i sigmoid(g_i) / sum_j p_j sigmoid(g_j), p = softmax(l);
  // the gate trained away from its start: random values.
  const int64_t S = 40;
  const at::Tensor x = random_input(S, 50);
  const at::Tensor tasks = random_tasks(S, 4, 51);
  Router learned = make_router(moe_config(Spec{}));
  learned->set_task_masks(kMasks, TaskMaskKind::kLearned);
  at::Generator gen = make_cpu_generator(52);
  {
    torch::NoGradGuard no_grad;
    param(*learned, "task_gate").copy_(at::randn({4, kE}, gen) * 3.0);
  }
  const at::Tensor g = at::sigmoid(param(*learned, "task_gate").detach()).to(at::kDouble);
  Router plain = make_router(moe_config(Spec{}));
  const at::Tensor p = plain->forward(x, {}, nullptr).probs.detach().to(at::kDouble);
  const at::Tensor weighted = p * g.index_select(0, tasks);
  const at::Tensor want = weighted / weighted.sum(-1, true);
  const RouterOutput out = learned->forward(x, {}, nullptr, 0, tasks);
  expect_close(out.probs, want, 1e-5, 1e-7, "probs");
  // topk: the two largest of them, renormalized.
  const auto [w, idx] = want.topk(2, -1);
  EXPECT_TRUE(at::equal(out.topk_idx, idx));
  expect_close(out.topk_weights, w / w.sum(-1, true), 1e-5, 1e-7, "gate weights");
  // The aux loss is the plain one of these probabilities and choices.
  expect_close(out.aux_loss, load_balancing_loss(out.probs, out.topk_idx), 1e-6, 0, "aux");
}

// Note [Task masks]: with sigmoid scores a learned gate multiplies the scores by sigmoid(gate)
// (adding log sigmoid(gate) to the logits would not: sigmoid(l + log s) != s sigmoid(l)).
TEST(LearnedTaskMasks, SigmoidScoresAreMultipliedBySigmoidOfTheGate) {
  const int64_t S = 40;
  const at::Tensor x = random_input(S, 60);
  const at::Tensor tasks = random_tasks(S, 4, 61);
  const Spec spec{RouterKind::kTopK, 2, ScoreKind::kSigmoid};
  Router learned = make_router(moe_config(spec));
  learned->set_task_masks(kMasks, TaskMaskKind::kLearned);
  const at::Tensor logits = x.matmul(param(*learned, "weight")).detach().to(at::kDouble);
  const at::Tensor g = at::sigmoid(param(*learned, "task_gate").detach()).to(at::kDouble);
  const at::Tensor scores = at::sigmoid(logits) * g.index_select(0, tasks);
  const RouterOutput out = learned->forward(x, {}, nullptr, 0, tasks);
  expect_close(out.probs, scores / scores.sum(-1, true), 1e-5, 1e-7, "P of the aux loss");
  const auto [w, idx] = scores.topk(2, -1);
  EXPECT_TRUE(at::equal(out.topk_idx, idx));
  expect_close(out.topk_weights, w / w.sum(-1, true), 1e-5, 1e-7, "gate weights");
}

}  // namespace
}  // namespace sy
