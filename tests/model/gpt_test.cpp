// The GPT model: shapes, causality, the loss at initialisation against its closed form,
// attention against a hand-written reference, which blocks are MoE, and the parameter layout
// of a model sharded over EP ranks (Note [Sharding-independent init]).
#include <algorithm>
#include <cmath>
#include <map>
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
#include "common/autocast.h"

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
  SelfAttention attn(mc, causal);
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

// Cross-attention against softmax(Q K^T / sqrt(d)) V over the memory's kept positions only, in
// double, from the module's own weights: the masked positions get no weight at all.
TEST(Gpt, CrossAttentionMatchesManualReferenceAndSkipsMaskedKeys) {
  ModelConfig mc;
  mc.d_model = 8;
  mc.n_heads = 2;
  mc.dropout = 0.0;
  CrossAttention cross(mc);
  const int64_t B = 2, T = 3, S = 5, H = 8, nh = 2, hd = H / nh;
  at::Generator gen = make_cpu_generator(9);
  const at::Tensor x = at::randn({B, T, H}, gen, at::kFloat);
  const at::Tensor memory = at::randn({B, S, H}, gen, at::kFloat);
  // Row 0 keeps positions 0..2, row 1 keeps 0, 1 and 3 (a hole, not only a tail).
  const at::Tensor keep =
      at::tensor({1, 1, 1, 0, 0, 1, 1, 0, 1, 0}, at::kInt).view({B, S}).to(at::kBool);
  torch::NoGradGuard no_grad;
  const at::Tensor got = cross->forward(x, memory, keep, nullptr).to(at::kDouble);

  auto lin = [](const torch::nn::Linear& l, const at::Tensor& in) {
    return in.to(at::kDouble).matmul(l->weight.to(at::kDouble).t()) + l->bias.to(at::kDouble);
  };
  const at::Tensor q = lin(cross->q, x), kv = lin(cross->kv, memory);
  at::Tensor y = at::zeros({B, T, H}, at::kDouble);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < nh; ++h) {
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> w(S, 0.0);
        double denom = 0;
        for (int64_t j = 0; j < S; ++j) {
          if (!keep[b][j].item<bool>()) continue;
          const double s = (q[b][t].narrow(0, h * hd, hd) * kv[b][j].narrow(0, h * hd, hd))
                               .sum()
                               .item<double>() /
                           std::sqrt(static_cast<double>(hd));
          denom += (w[j] = std::exp(s));
        }
        for (int64_t j = 0; j < S; ++j) {
          y[b][t].narrow(0, h * hd, hd) += w[j] / denom * kv[b][j].narrow(0, H + h * hd, hd);
        }
      }
    }
  }
  const at::Tensor expected = lin(cross->proj, y);
  EXPECT_LT((got - expected).abs().max().item<double>(), 1e-5);
  // Anything at a masked memory position changes nothing.
  at::Tensor noisy = memory.clone();
  noisy.masked_fill_(keep.logical_not().unsqueeze(2), 1e3);
  EXPECT_TRUE(at::equal(cross->forward(x, noisy, keep, nullptr), got.to(at::kFloat)));
}

// model.kind encoder_decoder: rows [source | BOS target] (Note [Seq2seq batches]) with 10
// characters, PAD 10, BOS 11, EOS 12.
Config seq2seq_config(MoeWhere where) {
  Config cfg = tiny_config(experts(4, 2, /*capacity_factor=*/0.0), /*n_layers=*/2,
                           /*d_model=*/16, /*block_size=*/8);
  cfg.model.kind = ModelKind::kEncoderDecoder;
  cfg.moe.where = where;
  return cfg;
}

// Two rows: a source of 3 and one of 6 characters, targets of 4 and 6.
at::Tensor seq2seq_rows() {
  const int P = 10, S = 11;
  return at::tensor({1, 2, 3, P, P, P, P, P, S, 4, 5, 6, 7, P, P, P,  //
                     9, 8, 7, 6, 5, 4, P, P, S, 0, 1, 2, 3, 4, 5, P},
                    at::kLong)
      .view({2, 16});
}

TEST(Seq2Seq, ShapesLossAndMoePlacement) {
  for (const MoeWhere where : {MoeWhere::kEncoder, MoeWhere::kDecoder, MoeWhere::kBoth}) {
    GPT model = make_gpt(seq2seq_config(where), /*vocab=*/13);
    const int64_t per_stack = where == MoeWhere::kBoth ? 2 : 1;
    EXPECT_EQ(model->moe_layers().size(), static_cast<size_t>(per_stack == 2 ? 4 : 2));
    std::set<std::string> names;
    for (const auto& p : model->named_parameters()) names.insert(p.key());
    const bool enc = where != MoeWhere::kDecoder, dec = where != MoeWhere::kEncoder;
    EXPECT_EQ(names.count("encoder.blocks.1.moe.experts.w1"), enc ? 1u : 0u);
    EXPECT_EQ(names.count("encoder.blocks.1.mlp.fc.weight"), enc ? 0u : 1u);
    EXPECT_EQ(names.count("blocks.1.moe.experts.w1"), dec ? 1u : 0u);
    EXPECT_EQ(names.count("blocks.0.cross.kv.weight"), 1u);
    EXPECT_EQ(names.count("encoder.blocks.0.cross.kv.weight"), 0u);  // no cross in the encoder
    EXPECT_EQ(names.count("encoder.wpe.weight"), 1u);
    EXPECT_EQ(names.count("encoder.wte.weight"), 0u);  // one token embedding, shared
  }
  GPT model = make_gpt(seq2seq_config(MoeWhere::kBoth), 13);
  const at::Tensor x = seq2seq_rows();
  const at::Tensor logits = model->forward(x);
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{2, 8, 13}));
  // The loss counts the target positions only: at init the CE is near ln(13).
  const at::Tensor y = at::full({2, 8}, -100, at::kLong);
  y[0].narrow(0, 0, 5).copy_(at::tensor({4, 5, 6, 7, 12}, at::kLong));
  const LossOutput out = model->loss(x, y);
  EXPECT_NEAR(out.ce.item<double>(), std::log(13.0), 0.4);
  const at::Tensor by_hand =
      at::cross_entropy_loss(logits[0].narrow(0, 0, 5), y[0].narrow(0, 0, 5));
  EXPECT_NEAR(out.ce.item<double>(), by_hand.item<double>(), 1e-5);
  EXPECT_THROW(model->forward(x.narrow(1, 0, 12)), Error);  // not 2 * block_size
}

// What each decoder position sees: the whole source (both ends of it), the decoder's own past,
// and never a PAD: PAD's embedding changed changes no counted position (the padded positions of
// the source are masked in the encoder and in cross-attention; the decoder's padding lies after
// every target position).
TEST(Seq2Seq, DecoderSeesTheWholeSourceItsPastAndNoPadding) {
  GPT model = make_gpt(seq2seq_config(MoeWhere::kBoth), 13);
  model->eval();
  torch::NoGradGuard no_grad;
  const at::Tensor x = seq2seq_rows();
  const at::Tensor base = model->forward(x);
  auto diff_at = [&](const at::Tensor& changed) {
    return (model->forward(changed) - base).abs().amax({2});  // [B, T]
  };
  // Source position 0 and the row's last source character (row 1: position 5).
  for (const int64_t pos : {0, 5}) {
    at::Tensor changed = x.clone();
    changed[1][pos] = (changed[1][pos].item<int64_t>() + 3) % 10;
    const at::Tensor d = diff_at(changed);
    EXPECT_GT(d[1].min().item<double>(), 1e-4) << "source position " << pos;
    EXPECT_LE(d[0].max().item<double>(), 1e-6);  // the other row untouched
  }
  // Decoder input position 3 (x column 8 + 3): outputs from position 3 on change, not before.
  at::Tensor changed = x.clone();
  changed[1][11] = (changed[1][11].item<int64_t>() + 3) % 10;
  const at::Tensor d = diff_at(changed);
  for (int64_t t = 0; t < 8; ++t) {
    if (t < 3) {
      EXPECT_LE(d[1][t].item<double>(), 1e-6) << "decoder position " << t;
    } else {
      EXPECT_GT(d[1][t].item<double>(), 1e-4) << "decoder position " << t;
    }
  }
  // PAD's embedding moved far: the counted positions (row 0: 0..4, row 1: 0..6) are unchanged.
  // (Random, not a constant: LayerNorm would take a constant shift out.)
  at::Generator gen = make_cpu_generator(4);
  model->wte->weight[10].add_(at::randn({16}, gen, at::kFloat) * 5.0);
  const at::Tensor padded = (model->forward(x) - base).abs().amax({2});
  EXPECT_LE(padded[0].narrow(0, 0, 5).max().item<double>(), 1e-5);
  EXPECT_LE(padded[1].narrow(0, 0, 7).max().item<double>(), 1e-5);
  EXPECT_GT(padded[0].narrow(0, 5, 3).max().item<double>(), 1e-3);  // the padding itself moved
}

// Note [Padding out of routing]: an encoder-decoder routes only the non-PAD positions of each
// half (unless moe.route_padding), so the loads count them alone, and with a capacity factor
// that drops, PAD's embedding still changes no counted position: PAD takes no expert slot.
TEST(Seq2Seq, PaddingTakesNoExpertSlot) {
  for (const bool route_padding : {false, true}) {
    Config cfg = seq2seq_config(MoeWhere::kBoth);
    cfg.moe.capacity_factor = cfg.moe.eval_capacity_factor = 0.5;  // capacity 4 of 16 * 2
    cfg.moe.route_padding = route_padding;
    GPT model = make_gpt(cfg, 13);
    model->eval();
    torch::NoGradGuard no_grad;
    const at::Tensor x = seq2seq_rows();
    const at::Tensor base = model->forward(x);
    // Encoder layers: 3 + 6 source characters; decoder layers: 5 + 7 decoder inputs; top-2.
    const std::vector<int64_t> routed =
        route_padding ? std::vector<int64_t>{32, 32, 32, 32} : std::vector<int64_t>{18, 18, 24, 24};
    const auto layers = model->moe_layers();
    ASSERT_EQ(layers.size(), 4u);
    for (size_t l = 0; l < layers.size(); ++l) {
      EXPECT_EQ(layers[l]->last_stats().tokens_per_expert.sum().item<int64_t>(), routed[l])
          << "layer " << l << ", route_padding " << route_padding;
    }
    at::Generator gen = make_cpu_generator(4);
    model->wte->weight[10].add_(at::randn({16}, gen, at::kFloat) * 5.0);
    const at::Tensor moved = (model->forward(x) - base).abs().amax({2});
    const double counted = std::max(moved[0].narrow(0, 0, 5).max().item<double>(),
                                    moved[1].narrow(0, 0, 7).max().item<double>());
    if (route_padding) {
      EXPECT_GT(counted, 1e-3) << "routed PAD changes which tokens are dropped";
    } else {
      EXPECT_LE(counted, 1e-5);
    }
  }
}

// The nodes of t's autograd graph whose name contains `name`.
int64_t count_nodes(const at::Tensor& t, const std::string& name) {
  std::set<torch::autograd::Node*> seen;
  std::vector<torch::autograd::Node*> todo{t.grad_fn().get()};
  int64_t n = 0;
  while (!todo.empty()) {
    torch::autograd::Node* node = todo.back();
    todo.pop_back();
    if (node == nullptr || !seen.insert(node).second) continue;
    if (node->name().find(name) != std::string::npos) ++n;
    for (const auto& edge : node->next_edges()) todo.push_back(edge.function.get());
  }
  return n;
}

// train.activation_checkpointing: the loss and every gradient equal those of the model that keeps
// its activations, for a GPT and a seq2seq model with dropout and a noisy router (random draws
// that the recomputation must repeat), and the rank's generator ends where it would have.
TEST(ActivationCheckpointing, SameLossAndGradientsAsKeepingActivations) {
  for (const ModelKind kind : {ModelKind::kDecoder, ModelKind::kEncoderDecoder}) {
    Config cfg = kind == ModelKind::kDecoder ? tiny_config(experts(4, 2, /*capacity_factor=*/1.0))
                                             : seq2seq_config(MoeWhere::kBoth);
    cfg.model.dropout = 0.1;
    cfg.moe.router = RouterKind::kNoisyTopK;
    cfg.moe.capacity_factor = 1.0;  // drops: the recomputed routing must drop the same tokens
    cfg.moe.shared_experts = 1;
    const at::Tensor x = kind == ModelKind::kDecoder ? random_ids(3, 16, 13, 5) : seq2seq_rows();
    const at::Tensor y = kind == ModelKind::kDecoder
                             ? random_ids(3, 16, 13, 6)
                             : at::constant_pad_nd(x.narrow(1, 9, 7).remainder(10), {0, 1}, 12);
    struct Result {
      double loss;
      std::map<std::string, at::Tensor> grads;
      double next_draw;
      int64_t checkpoints;  // recomputed pieces in the loss's graph
    };
    auto run = [&](Recompute what) {
      GPT model = make_gpt(cfg, 13);
      model->train();
      model->set_activation_checkpointing(what);
      at::Generator gen = make_cpu_generator(77);
      model->set_generator(&gen);
      const LossOutput out = model->loss(x, y);
      Result r{out.loss.item<double>(), {}, 0, count_nodes(out.loss, "Checkpoint")};
      out.loss.backward();
      r.next_draw = at::rand({1}, gen).item<double>();
      for (const auto& p : model->named_parameters()) {
        if (p.value().grad().defined()) r.grads[p.key()] = p.value().grad().clone();
      }
      return r;
    };
    const Result keep = run(Recompute::kNone);
    EXPECT_EQ(keep.checkpoints, 0);
    const int64_t blocks = kind == ModelKind::kDecoder ? 2 : 4;  // all MoE blocks here
    for (const Recompute what : {Recompute::kMoe, Recompute::kBlock}) {
      const Result got = run(what);
      const std::string label =
          std::string(choice_name(kind)) + " with " + choice_name(what) + " recomputed";
      // moe: each MoE layer's routed and shared experts; block: each block.
      EXPECT_EQ(got.checkpoints, what == Recompute::kMoe ? 2 * blocks : blocks) << label;
      EXPECT_NEAR(got.loss, keep.loss, 1e-6) << label;
      EXPECT_EQ(got.next_draw, keep.next_draw) << label;
      ASSERT_EQ(got.grads.size(), keep.grads.size()) << label;
      for (const auto& [name, g] : keep.grads) {
        ASSERT_EQ(got.grads.count(name), 1u) << label << ": no gradient for " << name;
        EXPECT_LE((got.grads.at(name) - g).abs().max().item<double>(),
                  1e-6 + 1e-5 * g.abs().max().item<double>())
            << label << ": " << name;
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
