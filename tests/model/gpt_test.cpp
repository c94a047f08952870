// The GPT model: shapes, causality, the loss at initialisation against its closed form,
// attention against a hand-written reference, which blocks are MoE, and the parameter layout
// of a model sharded over EP ranks (Note [Sharding-independent init]).
#include <cmath>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#include "config/config.h"
#include "model/gpt.h"
#include "moe/init.h"
#include "parallel/groups.h"
#include "parallel/inproc_comm.h"
#include "train/autocast.h"

namespace sy {
namespace {

// A tiny model (built in code: test_model links the model layer, not the YAML loader).
struct MoeSetup {
  int64_t num_experts = 4, top_k = 2, every = 1;
  RouterKind router = RouterKind::kTopK;
  double capacity_factor = 1.25, eval_capacity_factor = 2.0;
};

Config tiny_config(const MoeSetup& moe, int64_t n_layers = 2, int64_t d_model = 16,
                   int64_t block_size = 16) {
  Config cfg;
  cfg.model.n_layers = n_layers;
  cfg.model.d_model = d_model;
  cfg.model.n_heads = 2;
  cfg.model.d_ff = 32;
  cfg.model.block_size = block_size;
  cfg.model.dropout = 0.0;
  cfg.model.init = InitKind::kNormal;
  cfg.moe.num_experts = moe.num_experts;
  cfg.moe.top_k = moe.top_k;
  cfg.moe.every = moe.every;
  cfg.moe.router = moe.router;
  cfg.moe.capacity_factor = moe.capacity_factor;
  cfg.moe.eval_capacity_factor = moe.eval_capacity_factor;
  cfg.train.seed = 11;
  return cfg;
}

MoeSetup dense() {
  MoeSetup m;
  m.every = 0;
  return m;
}

MoeSetup experts(int64_t num_experts, int64_t top_k, double capacity_factor = 1.25,
                 int64_t every = 1) {
  MoeSetup m;
  m.num_experts = num_experts;
  m.top_k = top_k;
  m.router = top_k == 1 ? RouterKind::kSwitch : RouterKind::kTopK;
  m.capacity_factor = m.eval_capacity_factor = capacity_factor;
  m.every = every;
  return m;
}

GPT make_gpt(const Config& cfg, int64_t vocab, CommPtr ep = nullptr) {
  return GPT(cfg.model, cfg.moe, vocab, std::move(ep), static_cast<uint64_t>(cfg.train.seed));
}

at::Tensor random_ids(int64_t b, int64_t t, int64_t vocab, uint64_t seed) {
  at::Generator gen = make_cpu_generator(seed);
  return at::randint(0, vocab, {b, t}, gen, at::kLong);
}

// ------------------------------------------------------------------------------------------

TEST(Gpt, OutputShapesAndLossParts) {
  const Config cfg = tiny_config(experts(4, 2, /*capacity_factor=*/0.0));
  GPT model = make_gpt(cfg, /*vocab=*/13);
  const at::Tensor idx = random_ids(3, 7, 13, 1);
  at::Tensor aux, z;
  const at::Tensor logits = model->forward(idx, &aux, &z);
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{3, 7, 13}));
  EXPECT_EQ(logits.scalar_type(), at::kFloat);
  EXPECT_EQ(aux.dim(), 0);
  EXPECT_EQ(z.dim(), 0);

  const LossOutput out = model->loss(idx, random_ids(3, 7, 13, 2));
  EXPECT_EQ(out.loss.dim(), 0);
  // loss = ce + aux_coef * aux + z_coef * z (defaults 0.01 and 0.001).
  const double expected =
      out.ce.item<double>() + 0.01 * out.aux.item<double>() + 0.001 * out.z.item<double>();
  EXPECT_NEAR(out.loss.item<double>(), expected, 1e-6);
  EXPECT_EQ(model->vocab_size(), 13);
  EXPECT_EQ(model->block_size(), 16);
}

TEST(Gpt, RejectsSequencesLongerThanTheBlock) {
  const Config cfg = tiny_config(experts(4, 2));
  GPT model = make_gpt(cfg, 13);
  try {
    model->forward(random_ids(1, 17, 13, 1));
    FAIL() << "no error for T = 17 > block_size 16";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("model.block_size"), std::string::npos) << e.message();
  }
}

// Logits at positions <= t do not depend on tokens after t. Without drops (a dropped choice
// depends on the other tokens competing for its expert: not causal by design). Equal to fp32
// rounding, not bit for bit: changing later tokens changes how many rows each expert's matmul
// has, and the BLAS may then block the sum differently (OpenBLAS does).
class Causality : public ::testing::TestWithParam<int> {};

TEST_P(Causality, FutureTokensDoNotChangeThePast) {
  // 0: dense; 1: switch (top-1) with room for every token; 2: top-2 dropless.
  const MoeSetup setups[] = {dense(), experts(4, 1, /*capacity_factor=*/100.0),
                             experts(4, 2, /*capacity_factor=*/0.0)};
  const Config cfg = tiny_config(setups[GetParam()]);
  GPT model = make_gpt(cfg, 17);
  model->eval();
  torch::NoGradGuard no_grad;
  const int64_t B = 2, T = 12, V = 17;
  const at::Tensor idx = random_ids(B, T, V, 3);
  const at::Tensor base = model->forward(idx);
  for (const int64_t t : {0, 4, 10}) {
    at::Tensor changed = idx.clone();
    // Different tokens at every position after t (shifted by 1..V-1, never the same).
    changed.narrow(1, t + 1, T - t - 1)
        .add_(random_ids(B, T - t - 1, V - 1, 4 + t) + 1)
        .remainder_(V);
    ASSERT_FALSE(at::equal(changed.narrow(1, t + 1, T - t - 1), idx.narrow(1, t + 1, T - t - 1)));
    const at::Tensor out = model->forward(changed);
    const at::Tensor past_diff = (out.narrow(1, 0, t + 1) - base.narrow(1, 0, t + 1)).abs().max();
    EXPECT_LE(past_diff.item<double>(), 1e-5) << "t = " << t;
    // ... and the change is seen downstream (the test would notice a model ignoring its input).
    EXPECT_FALSE(at::allclose(out.narrow(1, t + 1, T - t - 1), base.narrow(1, t + 1, T - t - 1)))
        << "t = " << t;
  }
}

INSTANTIATE_TEST_SUITE_P(Ffn, Causality, ::testing::Values(0, 1, 2),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::string(info.param == 0   ? "dense"
                                              : info.param == 1 ? "switch_capacity"
                                                                : "topk_dropless");
                         });

// With N(0, 0.02) weights the logits are ~N(0, 0.02^2 * d_model): the cross-entropy on random
// targets is ln(V) + O(0.02^2 d / 2), the router is near uniform, so the Switch aux loss is
// ~1 and the z-loss ~ln(E)^2.
TEST(Gpt, LossAtInitIsNearLnVocab) {
  const Config cfg = tiny_config(experts(8, 2, /*capacity_factor=*/0.0),
                                 /*n_layers=*/2, /*d_model=*/64, /*block_size=*/32);
  const int64_t V = 65;
  GPT model = make_gpt(cfg, V);
  const LossOutput out = model->loss(random_ids(4, 32, V, 5), random_ids(4, 32, V, 6));
  EXPECT_NEAR(out.ce.item<double>(), std::log(65.0), 0.05);
  EXPECT_NEAR(out.aux.item<double>(), 1.0, 0.05);
  EXPECT_NEAR(out.z.item<double>(), std::pow(std::log(8.0), 2), 0.15);
}

// softmax(Q K^T / sqrt(d)) V with the causal mask (decoder) or none (encoder), per head, in
// double, from the module's own qkv and proj weights.
void check_attention(ModelKind kind) {
  const bool causal = kind == ModelKind::kDecoder;
  ModelConfig mc;
  mc.kind = kind;
  mc.d_model = 16;
  mc.n_heads = 4;
  mc.dropout = 0.0;
  SelfAttention attn(mc);
  const int64_t B = 2, T = 5, H = 16, nh = 4, hd = H / nh;
  at::Generator gen = make_cpu_generator(8);
  const at::Tensor x = at::randn({B, T, H}, gen, at::kFloat);
  at::Tensor got;
  {
    torch::NoGradGuard no_grad;
    got = attn->forward(x, nullptr);
  }

  const at::Tensor xd = x.to(at::kDouble);
  const at::Tensor wqkv = attn->qkv->weight.detach().to(at::kDouble);  // [3H, H]
  const at::Tensor bqkv = attn->qkv->bias.detach().to(at::kDouble);
  const at::Tensor qkv = xd.matmul(wqkv.t()) + bqkv;  // [B, T, 3H]
  auto a = qkv.accessor<double, 3>();
  at::Tensor y = at::zeros({B, T, H}, at::kDouble);
  auto ya = y.accessor<double, 3>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < nh; ++h) {
      for (int64_t t = 0; t < T; ++t) {
        const int64_t last = causal ? t : T - 1;  // causal: keys 0..t only
        std::vector<double> score(last + 1);
        double max_s = -1e300;
        for (int64_t j = 0; j <= last; ++j) {
          double s = 0;
          for (int64_t d = 0; d < hd; ++d) s += a[b][t][h * hd + d] * a[b][j][H + h * hd + d];
          score[j] = s / std::sqrt(static_cast<double>(hd));
          max_s = std::max(max_s, score[j]);
        }
        double denom = 0;
        for (double& s : score) denom += (s = std::exp(s - max_s));
        for (int64_t j = 0; j <= last; ++j) {
          for (int64_t d = 0; d < hd; ++d) {
            ya[b][t][h * hd + d] += score[j] / denom * a[b][j][2 * H + h * hd + d];
          }
        }
      }
    }
  }
  const at::Tensor expected = y.matmul(attn->proj->weight.detach().to(at::kDouble).t()) +
                              attn->proj->bias.detach().to(at::kDouble);
  EXPECT_LT((got.to(at::kDouble) - expected).abs().max().item<double>(), 1e-5);
  EXPECT_GT(expected.abs().max().item<double>(), 1e-2);  // not trivially zero
}

TEST(Gpt, AttentionMatchesManualReference) { check_attention(ModelKind::kDecoder); }
TEST(Gpt, EncoderAttentionMatchesManualReference) { check_attention(ModelKind::kEncoder); }

// model.kind encoder: a token changed at position t changes the outputs at every position,
// before t included (the decoder's are unchanged there: Causality above), and only the encoder's.
TEST(Gpt, EncoderSeesBothSidesDecoderOnlyThePast) {
  for (const ModelKind kind : {ModelKind::kEncoder, ModelKind::kDecoder}) {
    Config cfg = tiny_config(experts(4, 2, /*capacity_factor=*/0.0));
    cfg.model.kind = kind;
    GPT model = make_gpt(cfg, 17);
    model->eval();
    torch::NoGradGuard no_grad;
    const int64_t T = 12;
    const at::Tensor idx = random_ids(2, T, 17, 3);
    at::Tensor changed = idx.clone();
    changed.select(1, 8).add_(5).remainder_(17);  // position 8 only
    const at::Tensor diff = (model->forward(changed) - model->forward(idx)).abs().amax({0, 2});
    for (int64_t t = 0; t < T; ++t) {
      if (kind == ModelKind::kEncoder || t >= 8) {
        EXPECT_GT(diff[t].item<double>(), 1e-4) << choice_name(kind) << " position " << t;
      } else {
        EXPECT_LE(diff[t].item<double>(), 1e-5) << choice_name(kind) << " position " << t;
      }
    }
  }
}

// moe.every 0: no MoE layer anywhere, zero router losses, and every parameter trains.
TEST(Gpt, DenseModel) {
  const Config cfg = tiny_config(dense());
  GPT model = make_gpt(cfg, 11);
  EXPECT_TRUE(model->moe_layers().empty());
  for (const auto& p : model->named_parameters()) {
    EXPECT_EQ(p.key().find("moe"), std::string::npos) << p.key();
    EXPECT_FALSE(is_expert_parameter(p.key())) << p.key();
  }
  const LossOutput out = model->loss(random_ids(2, 8, 11, 1), random_ids(2, 8, 11, 2));
  EXPECT_EQ(out.aux.item<double>(), 0.0);
  EXPECT_EQ(out.z.item<double>(), 0.0);
  EXPECT_EQ(out.loss.item<double>(), out.ce.item<double>());
  out.loss.backward();
  for (const auto& p : model->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_TRUE(p.value().grad().isfinite().all().item<bool>()) << p.key();
  }
  EXPECT_GT(model->lm_head->weight.grad().abs().sum().item<double>(), 0.0);
}

// moe.every 2 over 4 layers: blocks 2 and 4 (1-based) are MoE, 1 and 3 dense.
TEST(Gpt, MoeEverySecondBlock) {
  const Config cfg = tiny_config(experts(4, 2, 1.25, /*every=*/2), /*n_layers=*/4);
  GPT model = make_gpt(cfg, 11);
  for (int64_t i = 0; i < 4; ++i) {
    auto block = model->blocks->ptr<BlockImpl>(i);
    EXPECT_EQ(static_cast<bool>(block->moe), i % 2 == 1) << "block " << i;
    EXPECT_EQ(static_cast<bool>(block->mlp), i % 2 == 0) << "block " << i;
  }
  const auto layers = model->moe_layers();
  ASSERT_EQ(layers.size(), 2u);
  EXPECT_EQ(layers[0]->layer_index(), 1);
  EXPECT_EQ(layers[1]->layer_index(), 3);
}

// The exact parameter names of a two-layer model with one dense and one MoE block.
TEST(Gpt, ParameterNames) {
  const Config cfg = tiny_config(experts(4, 2, 1.25, /*every=*/2));
  GPT model = make_gpt(cfg, 11);
  std::set<std::string> names, experts;
  for (const auto& p : model->named_parameters()) {
    names.insert(p.key());
    if (is_expert_parameter(p.key())) experts.insert(p.key());
  }
  std::set<std::string> expected = {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias",
                                    "lm_head.weight"};
  for (const std::string b : {"blocks.0.", "blocks.1."}) {
    for (const std::string n : {"ln1.weight", "ln1.bias", "attn.qkv.weight", "attn.qkv.bias",
                                "attn.proj.weight", "attn.proj.bias", "ln2.weight", "ln2.bias"}) {
      expected.insert(b + n);
    }
  }
  for (const std::string n : {"fc.weight", "fc.bias", "proj.weight", "proj.bias"}) {
    expected.insert("blocks.0.mlp." + n);
  }
  const std::set<std::string> expected_experts = {
      "blocks.1.moe.experts.w1", "blocks.1.moe.experts.b1", "blocks.1.moe.experts.w2",
      "blocks.1.moe.experts.b2"};
  expected.insert("blocks.1.moe.router.weight");
  expected.insert(expected_experts.begin(), expected_experts.end());
  EXPECT_EQ(names, expected);
  EXPECT_EQ(experts, expected_experts);
  // Expert weights are [E, ...] by expert; the router is dense.
  auto params = model->named_parameters();
  EXPECT_EQ(params["blocks.1.moe.experts.w1"].sizes(), (std::vector<int64_t>{4, 16, 32}));
  EXPECT_EQ(params["blocks.1.moe.experts.w2"].sizes(), (std::vector<int64_t>{4, 32, 16}));
  EXPECT_EQ(params["blocks.1.moe.router.weight"].sizes(), (std::vector<int64_t>{16, 4}));
}

// Note [Sharding-independent init]: EP rank r of ep_size holds global experts
// [r E / ep, (r + 1) E / ep), equal to that slice of the single-process model's experts, and
// every dense parameter equal to the single-process one.
class ShardedLayout : public ::testing::TestWithParam<int> {};

TEST_P(ShardedLayout, ExpertsAreSlicesOfTheSingleProcessModel) {
  const int world = 4, ep_size = GetParam();
  const int64_t E = 8;
  const Config cfg = tiny_config(experts(8, 2));
  GPT single = make_gpt(cfg, 11);
  const auto ref = single->named_parameters();
  std::vector<std::string> failures(world);
  std::vector<int64_t> expert_params(world, 0), first(world * 2, -1);
  run_inproc_ranks(world, [&](CommPtr w) {
    ParallelGroups g = make_groups(w, ep_size);
    GPT model = make_gpt(cfg, 11, g.ep);
    const int r = g.world_rank;
    const int64_t local = E / ep_size, lo = g.ep_rank * local;
    std::string& fail = failures[r];
    auto params = model->named_parameters();
    if (params.size() != ref.size()) fail += "parameter count differs; ";
    for (const auto& p : params) {
      if (!ref.contains(p.key())) {
        fail += "unexpected " + p.key() + "; ";
        continue;
      }
      const at::Tensor& full = ref[p.key()];
      if (is_expert_parameter(p.key())) {
        ++expert_params[r];
        if (p.value().size(0) != local) fail += p.key() + " holds the wrong number of experts; ";
        else if (!at::equal(p.value(), full.narrow(0, lo, local))) fail += p.key() + " differs; ";
      } else if (!at::equal(p.value(), full)) {
        fail += p.key() + " differs; ";
      }
    }
    const auto layers = model->moe_layers();
    for (size_t l = 0; l < layers.size(); ++l) {
      first[r * 2 + l] = layers[l]->experts->first_expert();
      if (layers[l]->experts->num_local() != local) fail += "num_local; ";
    }
  });
  for (int r = 0; r < world; ++r) {
    EXPECT_EQ(failures[r], "") << "rank " << r;
    EXPECT_EQ(expert_params[r], 8) << "rank " << r;  // w1, b1, w2, b2 in each of 2 layers
    const int64_t expected_first = (r % ep_size) * (E / ep_size);
    EXPECT_EQ(first[r * 2], expected_first) << "rank " << r;
    EXPECT_EQ(first[r * 2 + 1], expected_first) << "rank " << r;
  }
}

INSTANTIATE_TEST_SUITE_P(EpSizes, ShardedLayout, ::testing::Values(4, 2),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return "world4_ep" + std::to_string(info.param);
                         });

// Note [LayerNorm dtype]: under bf16 autocast a bf16 input with bf16 weights is normalised into
// bf16 (LibTorch's own autocast would return fp32), to bf16's rounding of the fp32 norm; fp32
// weights keep autocast's fp32 result.
TEST(GptCuda, LayerNormKeepsABf16StreamInBf16) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device (or a LibTorch without CUDA)";
  torch::nn::LayerNorm ln(torch::nn::LayerNormOptions({64}));
  {
    torch::NoGradGuard no_grad;
    ln->weight.uniform_(0.5, 1.5);
    ln->bias.uniform_(-0.5, 0.5);
  }
  ln->to(at::kCUDA);
  const at::Tensor x = (at::randn({300, 64}) * 3 + 1).to(at::kCUDA);
  const at::Tensor ref = at::layer_norm(x.to(at::kBFloat16).to(at::kFloat), {64},
                                        ln->weight.to(at::kBFloat16).to(at::kFloat),
                                        ln->bias.to(at::kBFloat16).to(at::kFloat), 1e-5)
                             .to(at::kCPU, at::kDouble);
  CudaAutocast autocast(true);
  const at::Tensor y32 = layer_norm_keep_bf16(ln, x.to(at::kBFloat16));
  EXPECT_EQ(y32.scalar_type(), at::kFloat);  // fp32 weights: autocast's fp32 norm
  ln->to(at::kBFloat16);
  const at::Tensor y = layer_norm_keep_bf16(ln, x.to(at::kBFloat16));
  ASSERT_EQ(y.scalar_type(), at::kBFloat16);
  const at::Tensor err = (y.to(at::kCPU, at::kDouble) - ref).abs();
  EXPECT_TRUE((err <= ref.abs() * std::pow(2.0, -8) + 1e-3).all().item<bool>())
      << err.max().item<double>();
}

}  // namespace
}  // namespace sy
