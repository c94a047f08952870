// Freezing (Note [Freezing] in src/train/freeze.h) and the model side of data.tasks:
//   - pattern_matches() against a hand-written table (glob '*' across dots, module prefixes at
//     dot boundaries only);
//   - plan_freezing() counts against hand-computed parameter counts (every expert counted once
//     under EP), the rows or whole tensors each EP rank freezes, and its errors;
//   - setup(): frozen tensors lose requires_grad and leave the gradient/norm sets;
//   - training: frozen tensors and frozen expert rows end bitwise at their initial values (1
//     rank; 2 EP ranks with rows frozen, and with one rank's experts frozen whole) while the rest
//     trains; the trained weights equal an independent reference loop (torch::optim::AdamW over
//     the trainable parameters of an identically initialised GPT on the same batches, frozen
//     expert rows held constant); a run stopped and resumed ends bitwise as one never stopped;
//   - data.tasks in the model: heads.<name> of tasks with head own give those tasks' logits (a
//     closed form from hidden() and ln_f), the others lm_head; per-task evaluation.
#include <cmath>
#include <cstdint>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#include "common/files.h"
#include "config/config.h"
#include "data/corpus.h"
#include "data/dataset.h"
#include "model/gpt.h"
#include "moe/init.h"
#include "parallel/groups.h"
#include "parallel/inproc_comm.h"
#include "train/checkpoint.h"
#include "train/freeze.h"
#include "train/optimizer.h"
#include "train/run.h"
#include "train/schedule.h"
#include "train/trainer.h"
#include "temp_folder.h"

namespace sy {
namespace {

using sy::testing::TempFolder;

using Weights = std::map<std::string, at::Tensor>;

template <typename F> std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.message();
  }
  return "<no error>";
}

#define EXPECT_CONTAINS(text, part)                          \
  EXPECT_NE(std::string(text).find(part), std::string::npos) \
      << "expected to find \"" << (part) << "\" in \"" << (text) << "\""

// ------------------------------------------------------------------------------------------
// pattern_matches

TEST(FreezePatterns, MatchTable) {
  struct Case {
    const char* pattern;
    const char* name;
    bool match;
  };
  const Case cases[] = {
      // A module prefix matches every parameter under it.
      {"lm_head", "lm_head.weight", true},
      {"blocks.*.moe.experts", "blocks.1.moe.experts.w1", true},
      {"blocks.0.attn", "blocks.0.attn.qkv.bias", true},
      {"blocks.0", "blocks.0.moe.router.weight", true},
      {"ln_f", "ln_f.bias", true},
      // ... at dot boundaries only: not a prefix of a name part.
      {"lm", "lm_head.weight", false},
      {"blocks.1", "blocks.10.attn.qkv.weight", false},
      {"blocks.0.ln", "blocks.0.ln1.weight", false},
      {"lm_head.w", "lm_head.weight", false},
      // '*' matches any run of characters, dots included, also none.
      {"*.router.*", "blocks.0.moe.router.weight", true},
      {"*.router.*", "blocks.0.moe.router.noise_weight", true},
      {"*router*", "blocks.3.moe.router.weight", true},
      {"*", "wte.weight", true},
      {"*.weight", "blocks.0.attn.proj.weight", true},
      {"*.bias", "blocks.0.attn.proj.weight", false},
      {"blocks.*", "blocks.7.ln2.bias", true},
      {"blocks.1*", "blocks.10.attn.qkv.weight", true},
      {"blocks.*.attn", "blocks.0.ln1.weight", false},
      {"blocks.*.attn", "blocks.12.attn.proj.bias", true},
      {"*ln1", "blocks.0.ln1.weight", true},
      {"*.moe.experts.w*", "blocks.1.moe.experts.w2", true},
      {"*.moe.experts.w*", "blocks.1.moe.experts.b2", false},
      {"blocks.*.moe.*.b1", "blocks.1.moe.experts.b1", true},
      {"b*s.0.*.b1", "blocks.0.moe.experts.b1", true},  // backtracking over several dots
      {"heads.*", "heads.code.weight", true},
      // The whole name (or a whole prefix) must match: anchored at both ends.
      {"lm_head.weight", "lm_head.weight", true},
      {"m_head.weight", "lm_head.weight", false},
      {"lm_head.weights", "lm_head.weight", false},
      {"head", "lm_head.weight", false},
      {"*head", "lm_head.weight", true},
      {"wte.weight.x", "wte.weight", false},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(pattern_matches(c.pattern, c.name), c.match)
        << "pattern '" << c.pattern << "' on '" << c.name << "'";
  }
}

// ------------------------------------------------------------------------------------------
// plan_freezing against hand counts. The model: 2 MoE blocks, d 16, d_ff 32, block 8, V 13,
// biases on, gelu experts.
//   wte 13*16 = 208, wpe 8*16 = 128, ln_f 32, lm_head 13*16 = 208 (no bias);
//   per block: ln1 32, ln2 32, attn.qkv 16*48 + 48 = 816, attn.proj 16*16 + 16 = 272,
//              router 16*E, experts E * (16*32 + 32 + 32*16 + 16) = 1072 E.
//   E = 4: block 1152 + 64 + 4288 = 5504 -> total 576 + 2 * 5504 = 11584.
//   E = 8: block 1152 + 128 + 8576 = 9856 -> total 576 + 2 * 9856 = 20288.

constexpr int64_t kVocab = 13;

// `frozen_experts`: the moe.frozen_experts list; `extra`: a train section.
Config plan_config(int64_t experts, const std::string& extra = "",
                   const std::string& frozen_experts = "[]") {
  return load_config_from_string(
      "model: {n_layers: 2, d_model: 16, n_heads: 2, d_ff: 32, block_size: 8}\n"
      "moe: {num_experts: " +
          std::to_string(experts) + ", top_k: 2, frozen_experts: " + frozen_experts + "}\n" + extra,
      "plan_config");
}

GPT make_model(const Config& cfg, int64_t vocab, CommPtr ep = nullptr) {
  return GPT(cfg.model, cfg.moe, vocab, std::move(ep), static_cast<uint64_t>(cfg.train.seed),
             cfg.data.tasks);
}

std::set<std::string> as_set(const std::vector<std::string>& v) { return {v.begin(), v.end()}; }

// The plan of every EP rank of `ep` (1: one process).
std::vector<FreezePlan> plans(const Config& cfg, int ep) {
  std::vector<FreezePlan> out(ep);
  std::mutex mu;
  run_inproc_ranks(ep, [&](CommPtr world) {
    GPT model = make_model(cfg, kVocab, world);
    FreezePlan p = plan_freezing(cfg, *model, world->rank());
    std::lock_guard<std::mutex> lock(mu);
    out[world->rank()] = p;
  });
  return out;
}

TEST(PlanFreezing, CountsByHand) {
  {
    const Config cfg = plan_config(4);
    GPT model = make_model(cfg, kVocab);
    int64_t numel = 0;
    for (const auto& p : model->parameters()) numel += p.numel();
    ASSERT_EQ(numel, 11584) << "the hand count of the model";
    const FreezePlan none = plan_freezing(cfg, *model, 0);
    EXPECT_EQ(none.total_params, 11584);
    EXPECT_EQ(none.trainable_params, 11584);
    EXPECT_TRUE(none.frozen.empty());
    EXPECT_TRUE(none.frozen_local_rows.empty());
  }
  {
    const Config cfg = plan_config(4, "train: {frozen: [lm_head, \"blocks.0.attn\"]}");
    const FreezePlan p = plans(cfg, 1)[0];
    EXPECT_EQ(as_set(p.frozen),
              (std::set<std::string>{"lm_head.weight", "blocks.0.attn.qkv.weight",
                                     "blocks.0.attn.qkv.bias", "blocks.0.attn.proj.weight",
                                     "blocks.0.attn.proj.bias"}));
    EXPECT_EQ(p.total_params, 11584);
    EXPECT_EQ(p.trainable_params, 11584 - 208 - 816 - 272);
    EXPECT_TRUE(p.frozen_whole("lm_head.weight"));
    EXPECT_FALSE(p.frozen_whole("blocks.1.attn.qkv.weight"));
  }
  {
    // Only the experts train: by trainable alone, and by trainable then frozen.
    for (const char* extra : {"train: {trainable: [\"blocks.*.moe.experts\"]}",
                              "train: {trainable: [\"*.moe.*\"], frozen: [\"*.router.*\"]}"}) {
      const FreezePlan p = plans(plan_config(4, extra), 1)[0];
      EXPECT_EQ(p.trainable_params, 2 * 4288) << extra;
      // wte, wpe; per block ln1 (2), qkv (2), proj (2), ln2 (2), router; ln_f (2), lm_head.
      EXPECT_EQ(p.frozen.size(), 2u + 2 * 9 + 2 + 1) << extra;
      for (const std::string& name : p.frozen) {
        EXPECT_EQ(name.find("experts."), std::string::npos) << extra << ": " << name;
      }
    }
  }
  {
    // One process, expert 1 of 4 frozen: one row of each expert tensor.
    const FreezePlan p = plans(plan_config(4, "", "[1]"), 1)[0];
    EXPECT_EQ(p.frozen_local_rows, (std::vector<int64_t>{1}));
    EXPECT_TRUE(p.frozen.empty());
    EXPECT_EQ(p.trainable_params, 11584 - 2 * 1072);
  }
}

TEST(PlanFreezing, FrozenExpertsUnderEp) {
  // 8 experts on 2 EP ranks (0-3 and 4-7); totals count every expert once, on both ranks.
  {
    const std::vector<FreezePlan> p = plans(plan_config(8, "", "[5, 1]"), 2);
    for (int r = 0; r < 2; ++r) {
      EXPECT_EQ(p[r].frozen_local_rows, (std::vector<int64_t>{1})) << "rank " << r;
      EXPECT_TRUE(p[r].frozen.empty()) << "rank " << r;
      EXPECT_EQ(p[r].total_params, 20288) << "rank " << r;
      EXPECT_EQ(p[r].trainable_params, 20288 - 2 * 2 * 1072) << "rank " << r;
    }
  }
  {
    // Rank 1 holds only frozen experts: its expert tensors freeze whole; rank 0 freezes none.
    const std::vector<FreezePlan> p = plans(plan_config(8, "", "[4, 5, 6, 7]"), 2);
    EXPECT_TRUE(p[0].frozen.empty());
    EXPECT_TRUE(p[0].frozen_local_rows.empty());
    EXPECT_EQ(as_set(p[1].frozen),
              (std::set<std::string>{"blocks.0.moe.experts.w1", "blocks.0.moe.experts.b1",
                                     "blocks.0.moe.experts.w2", "blocks.0.moe.experts.b2",
                                     "blocks.1.moe.experts.w1", "blocks.1.moe.experts.b1",
                                     "blocks.1.moe.experts.w2", "blocks.1.moe.experts.b2"}));
    EXPECT_TRUE(p[1].frozen_local_rows.empty());
    for (int r = 0; r < 2; ++r) {
      EXPECT_EQ(p[r].total_params, 20288) << "rank " << r;
      EXPECT_EQ(p[r].trainable_params, 20288 - 4 * 2 * 1072) << "rank " << r;
    }
  }
  {
    // One process holding all 8: rows.
    const FreezePlan p = plans(plan_config(8, "", "[4, 5, 6, 7]"), 1)[0];
    EXPECT_EQ(p.frozen_local_rows, (std::vector<int64_t>{4, 5, 6, 7}));
    EXPECT_TRUE(p.frozen.empty());
  }
}

TEST(PlanFreezing, ErrorsNameTheKey) {
  auto plan_error = [](const std::string& extra, const std::string& frozen_experts = "[]") {
    const Config cfg = plan_config(4, extra, frozen_experts);
    GPT model = make_model(cfg, kVocab);
    return error_of([&] { plan_freezing(cfg, *model, 0); });
  };
  const std::string typo = plan_error("train: {frozen: [lm_head, lm]}");
  EXPECT_CONTAINS(typo, "train.frozen[1] 'lm' matches no parameter");
  EXPECT_CONTAINS(plan_error("train: {trainable: [\"blocks.*.mlp\"]}"),
                  "train.trainable[0] 'blocks.*.mlp' matches no parameter");
  EXPECT_CONTAINS(plan_error("train: {trainable: [lm_head], frozen: [lm_head]}"),
                  "leave no parameter to train");
  EXPECT_CONTAINS(plan_error("train: {frozen: [\"*\"]}"), "leave no parameter to train");
  EXPECT_CONTAINS(plan_error("train: {trainable: [\"*.experts\"]}", "[0, 1, 2, 3]"),
                  "leave no parameter to train");
}

TEST(PlanFreezing, SetupTakesFrozenTensorsOutOfTheGradientSets) {
  const Config cfg = load_config_from_string(
      "model: {n_layers: 2, d_model: 16, n_heads: 2, d_ff: 32, block_size: 8}\n"
      "moe: {num_experts: 4, top_k: 2, frozen_experts: [2]}\n"
      "data: {batch_size: 2, synthetic_chars: 5000}\n"
      "train: {frozen: [lm_head, \"blocks.0.attn\"], device: cpu}\n",
      "setup");
  run_inproc_ranks(1, [&](CommPtr world) {
    const ParallelGroups g = make_groups(world, 1);
    std::unique_ptr<sy::Run> run = setup(cfg, g);
    std::set<const void*> in_sets;
    for (const auto& p : run->params.dense) in_sets.insert(p.unsafeGetTensorImpl());
    for (const auto& p : run->params.expert) in_sets.insert(p.unsafeGetTensorImpl());
    for (const auto& item : run->model->named_parameters()) {
      const std::string& name = item.key();
      const bool frozen = name == "lm_head.weight" || name.rfind("blocks.0.attn.", 0) == 0;
      EXPECT_EQ(item.value().requires_grad(), !frozen) << name;
      EXPECT_EQ(in_sets.count(item.value().unsafeGetTensorImpl()), frozen ? 0u : 1u) << name;
      const AdamWSlot* slot = run->optimizer.find(name);
      ASSERT_NE(slot, nullptr) << name;
      EXPECT_EQ(slot->frozen, frozen) << name;
      EXPECT_EQ(slot->frozen_rows.defined(), is_expert_parameter(name)) << name;
      if (slot->frozen_rows.defined()) {
        EXPECT_TRUE(at::equal(slot->frozen_rows.cpu(), at::tensor({int64_t{2}}))) << name;
      }
    }
  });
}

// ------------------------------------------------------------------------------------------
// Training runs.

Config train_config(const std::string& out_dir, const std::string& moe,
                    const std::string& train_extra = "") {
  return load_config_from_string(
      "model: {n_layers: 2, d_model: 32, n_heads: 2, d_ff: 32, block_size: 16, dropout: 0.0}\n"
      "moe: {" +
          moe +
          "}\n"
          "data: {batch_size: 4, synthetic_chars: 20000}\n"
          "train: {max_steps: 6, lr: 0.01, min_lr: 0.001, warmup_steps: 2, log_interval: 3,\n"
          "        eval_interval: 0, seed: 11, device: cpu, checkpoint_interval: 0,\n"
          "        out_dir: '" +
          out_dir + "'" + train_extra + "}\n",
      "freeze_test");
}

TrainResult train_on(int ranks, const Config& cfg, const std::string& resume = "") {
  TrainResult result;
  std::mutex mu;
  run_inproc_ranks(ranks, [&](CommPtr world) {
    const ParallelGroups g = make_groups(world, cfg.parallel.ep_size);
    TrainResult r = train(cfg, g, TrainOptions{resume});
    if (g.world_rank == 0) {
      std::lock_guard<std::mutex> lock(mu);
      result = r;
    }
  });
  return result;
}

Weights read_model_file(const std::string& path) {
  torch::serialize::InputArchive archive;
  archive.load_from(path);
  Weights out;
  for (const std::string& key : archive.keys()) {
    at::Tensor t;
    archive.read(key, t);
    out[key] = t;
  }
  return out;
}

// The parameters of a fresh model of `cfg` on one process: what every layout starts from (Note
// [Sharding-independent init]).
Weights initial_weights(const Config& cfg) {
  const Corpus corpus = load_corpus(cfg);
  GPT model = make_model(cfg, corpus.vocab_size);
  Weights out;
  for (const auto& item : model->named_parameters())
    out[item.key()] = item.value().detach().clone();
  return out;
}

bool is_frozen_tensor(const std::string& name, const std::vector<std::string>& patterns) {
  for (const std::string& p : patterns) {
    if (name == p || name.rfind(p + ".", 0) == 0) return true;
  }
  return false;
}

TEST(FreezeTraining, FrozenTensorsStayBitwiseAndTheRestTrains) {
  const TempFolder folder("freeze_tensors");
  const std::string& dir = folder.path();
  const Config cfg =
      train_config(dir, "num_experts: 4, top_k: 2", ", frozen: [lm_head, \"blocks.0.attn\"]");
  const TrainResult r = train_on(1, cfg);
  ASSERT_EQ(r.steps, 6);
  const Weights init = initial_weights(cfg);
  const Weights trained = read_model_file(dir + "/model.pt");
  const std::vector<std::string> frozen = {"lm_head", "blocks.0.attn"};
  int64_t frozen_seen = 0;
  for (const auto& [name, t0] : init) {
    ASSERT_TRUE(trained.count(name)) << name;
    const at::Tensor& t = trained.at(name);
    if (is_frozen_tensor(name, frozen)) {
      ++frozen_seen;
      EXPECT_TRUE(at::equal(t, t0)) << name << " is frozen but changed";
    } else {
      EXPECT_FALSE(at::equal(t, t0)) << name << " trains but did not change";
    }
  }
  EXPECT_EQ(frozen_seen, 5);  // lm_head.weight, qkv and proj weight and bias
  // The checkpoint keeps no optimizer state for them: zero moments and no steps, beside N steps
  // of the trainable ones.
  torch::serialize::InputArchive dense;
  dense.load_from(latest_checkpoint(dir + "/checkpoints") + "/dense.pt");
  for (const std::string& name : {std::string("lm_head.weight"), std::string("wte.weight")}) {
    at::Tensor m, steps;
    dense.read("exp_avg." + name, m);
    dense.read("steps." + name, steps);
    const bool is_frozen = name == "lm_head.weight";
    EXPECT_EQ(steps.item<int64_t>(), is_frozen ? 0 : 6) << name;
    EXPECT_EQ(m.abs().sum().item<double>() == 0.0, is_frozen) << name;
  }
}

// Checks that rows `frozen` of every expert tensor are bitwise their initial values and every
// other row changed; returns the number of expert tensors checked.
int64_t check_expert_rows(const Weights& init, const Weights& trained,
                          const std::set<int64_t>& frozen, int64_t num_experts) {
  int64_t tensors = 0;
  for (const auto& [name, t0] : init) {
    if (trained.count(name) == 0) {
      ADD_FAILURE() << name << " is not in model.pt";
      continue;
    }
    const at::Tensor& t = trained.at(name);
    if (!is_expert_parameter(name)) {
      EXPECT_FALSE(at::equal(t, t0)) << name << " trains but did not change";
      continue;
    }
    ++tensors;
    EXPECT_EQ(t.size(0), num_experts) << name;
    for (int64_t e = 0; e < num_experts; ++e) {
      if (frozen.count(e)) {
        EXPECT_TRUE(at::equal(t[e], t0[e])) << name << " row " << e << " is frozen but changed";
      } else {
        EXPECT_FALSE(at::equal(t[e], t0[e])) << name << " row " << e << " did not change";
      }
    }
  }
  return tensors;
}

TEST(FreezeTraining, FrozenExpertRowsOnTwoEpRanks) {
  const TempFolder folder("freeze_rows");
  const std::string& dir = folder.path();
  // Experts 1 and 5: a row on each rank (0-3 and 4-7).
  Config cfg = train_config(dir + "/rows", "num_experts: 8, top_k: 2, frozen_experts: [1, 5]");
  cfg.parallel.ep_size = 2;
  ASSERT_EQ(train_on(2, cfg).steps, 6);
  const Weights init = initial_weights(cfg);
  EXPECT_EQ(check_expert_rows(init, read_model_file(dir + "/rows/model.pt"), {1, 5}, 8), 8);

  // Experts 4-7: rank 1's whole expert tensors (the other freezing path), rank 0's all train.
  Config whole =
      train_config(dir + "/whole", "num_experts: 8, top_k: 2, frozen_experts: [4, 5, 6, 7]");
  whole.parallel.ep_size = 2;
  ASSERT_EQ(train_on(2, whole).steps, 6);
  EXPECT_EQ(check_expert_rows(init, read_model_file(dir + "/whole/model.pt"), {4, 5, 6, 7}, 8), 8);
}

// The trained weights against a loop written here: the same GPT (same seed), the batches of the
// trainer's stream (train_rng seeded mix_seed(seed, 0xB1, rank 0, step 0), one sample() per
// step), the loss of GPTImpl::loss, the frozen tensors constants (no gradient, not in the
// optimizer), the frozen expert rows constants too (no gradient, so not in the norm; reset after
// each step), the global norm of the remaining gradients clipped to train.grad_clip, and
// torch::optim::AdamW over the trainable tensors (weight decay on matrices, as sy::is_bias
// decides) at the trainer's learning rates. Returns the reference's weights and counts the
// steps whose norm was clipped.
Weights reference_weights(const Config& cfg, const std::vector<std::string>& frozen,
                          int64_t frozen_row, int64_t* clipped) {
  const Corpus corpus = load_corpus(cfg);
  GPT model = make_model(cfg, corpus.vocab_size);
  model->train();
  const auto seed = static_cast<uint64_t>(cfg.train.seed);
  at::Generator gen = make_cpu_generator(mix_seed(seed, 0xA1, 0, 0));
  model->set_generator(&gen);
  std::mt19937_64 rng(mix_seed(seed, 0xB1, 0, 0));
  Weights init;
  std::vector<at::Tensor> decay, no_decay, dense, experts;
  for (auto& item : model->named_parameters()) {
    init[item.key()] = item.value().detach().clone();
    if (is_frozen_tensor(item.key(), frozen)) {
      item.value().requires_grad_(false);
      continue;
    }
    (is_bias(item.key(), item.value()) ? no_decay : decay).push_back(item.value());
    (is_expert_parameter(item.key()) ? experts : dense).push_back(item.value());
  }
  const TrainConfig& tc = cfg.train;
  auto options = [&](double wd) {
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(tc.lr).betas({tc.beta1, tc.beta2}).eps(1e-8).weight_decay(wd));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, options(tc.weight_decay));
  groups.emplace_back(no_decay, options(0.0));
  torch::optim::AdamW opt(groups, torch::optim::AdamWOptions(tc.lr));
  // The norm in fp32 as one sum of squared per-tensor norms (dense ones, then experts').
  auto sum_of_squares = [](const std::vector<at::Tensor>& params) {
    std::vector<at::Tensor> grads;
    for (const at::Tensor& p : params) grads.push_back(p.grad());
    return at::stack(at::_foreach_norm(grads, 2)).pow(2).sum();
  };
  *clipped = 0;
  for (int64_t step = 0; step < tc.max_steps; ++step) {
    const Batch b = corpus.dataset->sample(Split::kTrain, cfg.data.batch_size, rng);
    opt.zero_grad();
    model->loss(b.x, b.y).loss.backward();
    torch::NoGradGuard no_grad;
    if (frozen_row >= 0) {
      for (at::Tensor& p : experts) p.mutable_grad()[frozen_row].zero_();
    }
    if (tc.grad_clip > 0) {
      const at::Tensor norm = (sum_of_squares(dense) + sum_of_squares(experts)).sqrt();
      const at::Tensor coef = (tc.grad_clip / (norm + 1e-6)).clamp_max(1.0);
      *clipped += coef.item<float>() < 1.0f;
      for (auto* set : {&dense, &experts}) {
        for (at::Tensor& p : *set) p.mutable_grad().mul_(coef);
      }
    }
    for (auto& group : opt.param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(learning_rate(tc, step));
    }
    opt.step();
    if (frozen_row >= 0) {
      for (auto& item : model->named_parameters()) {
        if (is_expert_parameter(item.key())) {
          item.value()[frozen_row].copy_(init.at(item.key())[frozen_row]);
        }
      }
    }
  }
  Weights out;
  for (const auto& item : model->named_parameters()) out[item.key()] = item.value().detach();
  return out;
}

TEST(FreezeTraining, EqualsAnAdamWLoopWithTheFrozenOnesConstant) {
  const TempFolder folder("freeze_reference");
  const std::string& dir = folder.path();
  const std::vector<std::string> frozen = {"lm_head", "blocks.0.attn"};
  // Without clipping, and with a clip that binds (the frozen rows' gradients must stay out of
  // the norm).
  for (double clip : {0.0, 0.3}) {
    SCOPED_TRACE("grad_clip " + std::to_string(clip));
    const std::string out = dir + "/clip" + std::to_string(static_cast<int>(clip * 10));
    Config cfg = train_config(out, "num_experts: 4, top_k: 2, frozen_experts: [1]");
    cfg.train.frozen = {"lm_head", "blocks.0.attn"};
    cfg.train.grad_clip = clip;
    validate(cfg);
    train_on(1, cfg);
    const Weights trained = read_model_file(out + "/model.pt");
    const Weights init = initial_weights(cfg);
    int64_t clipped = 0;
    const Weights ref = reference_weights(cfg, frozen, /*frozen_row=*/1, &clipped);
    if (clip > 0) {
      EXPECT_GT(clipped, 0) << "the clip should bind in some step";
    }
    ASSERT_EQ(ref.size(), init.size());
    for (const auto& [name, r] : ref) {
      ASSERT_TRUE(trained.count(name)) << name;
      const at::Tensor& got = trained.at(name);
      if (is_frozen_tensor(name, frozen)) {
        EXPECT_TRUE(at::equal(got, init.at(name))) << name;
        EXPECT_TRUE(at::equal(r, init.at(name))) << name;
        continue;
      }
      EXPECT_FALSE(at::equal(r, init.at(name))) << name << ": the reference did not train it";
      EXPECT_TRUE(at::equal(got, r))
          << name << ": max |trained - reference| "
          << (got.to(at::kDouble) - r.to(at::kDouble)).abs().max().item<double>();
      if (is_expert_parameter(name)) {
        EXPECT_TRUE(at::equal(got[1], init.at(name)[1])) << name;
      }
    }
  }
}

TEST(FreezeTraining, StoppedAndResumedEqualsUninterrupted) {
  // 2 EP ranks: rank 0 freezes row 1 (expert 1), rank 1 its experts 2 and 3 whole; lm_head is
  // frozen on both. fp32 parameters, and bf16 ones with fp32 masters.
  for (const char* dtype : {"fp32", "bf16"}) {
    SCOPED_TRACE(dtype);
    const TempFolder folder(std::string("freeze_resume_") + dtype);
    const std::string& dir = folder.path();
    auto cfg_for = [&](const std::string& sub, int64_t stop) {
      Config c =
          train_config(dir + "/" + sub, "num_experts: 4, top_k: 2, frozen_experts: [1, 2, 3]",
                       ", frozen: [lm_head]");
      c.train.max_steps = 10;
      c.train.checkpoint_interval = 4;
      c.train.log_interval = 2;
      c.train.param_dtype = parse_choice_or_throw<Precision>(dtype, "param_dtype");
      c.train.stop_at_step = stop;
      c.parallel.ep_size = 2;
      validate(c);
      return c;
    };
    const TrainResult whole = train_on(2, cfg_for("whole", 0));
    ASSERT_EQ(whole.steps, 10);
    const TrainResult first = train_on(2, cfg_for("parts", 5));
    EXPECT_EQ(first.steps, 5);
    const TrainResult rest = train_on(2, cfg_for("parts", 0), "auto");
    EXPECT_EQ(rest.start_step, 5);
    EXPECT_EQ(rest.steps, 10);
    // The logged losses after step 5, bit for bit.
    std::vector<std::pair<int64_t, double>> after;
    for (const auto& e : whole.train_loss) {
      if (e.first > 5) after.push_back(e);
    }
    ASSERT_EQ(rest.train_loss.size(), after.size());
    for (size_t i = 0; i < after.size(); ++i) EXPECT_EQ(rest.train_loss[i], after[i]);
    // The final weights, bit for bit, and the frozen ones still their initial values.
    const Weights a = read_model_file(dir + "/whole/model.pt");
    const Weights b = read_model_file(dir + "/parts/model.pt");
    ASSERT_EQ(a.size(), b.size());
    for (const auto& [name, t] : a) {
      ASSERT_TRUE(b.count(name)) << name;
      EXPECT_TRUE(at::equal(t, b.at(name))) << name;
    }
    const Weights init = initial_weights(cfg_for("whole", 0));
    const at::ScalarType stored = a.at("lm_head.weight").scalar_type();
    EXPECT_TRUE(at::equal(a.at("lm_head.weight"), init.at("lm_head.weight").to(stored)));
    for (const char* name : {"blocks.0.moe.experts.w1", "blocks.1.moe.experts.b2"}) {
      for (int64_t e = 0; e < 4; ++e) {
        const bool same = at::equal(a.at(name)[e], init.at(name)[e].to(stored));
        EXPECT_EQ(same, e != 0) << name << " row " << e;
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// data.tasks in the model: heads and per-task evaluation.

Config head_config(TaskMaskKind masks = TaskMaskKind::kFixed) {
  Config c = plan_config(4);
  c.moe.task_masks = masks;
  const std::vector<std::pair<std::string, TaskHead>> tasks = {
      {"code", TaskHead::kOwn}, {"prose", TaskHead::kShared}, {"q-a", TaskHead::kOwn}};
  const std::vector<std::vector<int64_t>> experts = {{0, 1}, {}, {2, 3}};
  for (size_t t = 0; t < tasks.size(); ++t) {
    TaskConfig task;
    task.name = tasks[t].first;
    task.synthetic = static_cast<int64_t>(t);
    task.head = tasks[t].second;
    task.experts = experts[t];
    c.data.tasks.push_back(task);
  }
  validate(c);
  return c;
}

TEST(TaskHeads, OwnHeadsGiveTheirTasksLogits) {
  const Config cfg = head_config();
  GPT model = make_model(cfg, kVocab);
  const auto params = model->named_parameters();
  ASSERT_TRUE(params.contains("heads.code.weight"));
  ASSERT_TRUE(params.contains("heads.q-a.weight"));
  EXPECT_FALSE(params.contains("heads.prose.weight"));
  EXPECT_EQ(params["heads.code.weight"].sizes(), (std::vector<int64_t>{kVocab, 16}));
  EXPECT_FALSE(at::equal(params["heads.code.weight"], params["lm_head.weight"]));
  EXPECT_FALSE(at::equal(params["heads.code.weight"], params["heads.q-a.weight"]));
  // The tasks' heads come after every other weight: the model without tasks draws the same.
  GPT plain = make_model(plan_config(4), kVocab);
  for (const auto& item : plain->named_parameters()) {
    ASSERT_TRUE(params.contains(item.key())) << item.key();
    EXPECT_TRUE(at::equal(item.value(), params[item.key()])) << item.key();
  }
  EXPECT_EQ(model->named_parameters().size(), plain->named_parameters().size() + 2);

  model->eval();
  torch::NoGradGuard no_grad;
  at::Generator gen = make_cpu_generator(4);
  const at::Tensor idx = at::randint(0, kVocab, {6, 8}, gen, at::kLong);
  const at::Tensor task = at::tensor(std::vector<int64_t>{0, 1, 2, 2, 1, 0});
  const at::Tensor logits = model->forward(idx, nullptr, nullptr, task);
  const at::Tensor h = model->ln_f->forward(model->hidden(idx, nullptr, nullptr, task));
  const at::Tensor head_of_task[3] = {params["heads.code.weight"], params["lm_head.weight"],
                                      params["heads.q-a.weight"]};
  for (int64_t b = 0; b < 6; ++b) {
    const int64_t t = task[b].item<int64_t>();
    const at::Tensor want = h[b].matmul(head_of_task[t].t());
    EXPECT_TRUE(at::allclose(logits[b], want, 1e-5, 1e-6)) << "sequence " << b << " task " << t;
    // ... and not another head's.
    EXPECT_FALSE(at::allclose(logits[b], h[b].matmul(head_of_task[(t + 1) % 3].t()), 1e-3, 1e-4));
  }
  // The loss with tasks is the cross-entropy of those logits.
  const at::Tensor targets = at::randint(0, kVocab, {6, 8}, gen, at::kLong);
  const at::Tensor ce = at::cross_entropy_loss(logits.reshape({-1, kVocab}), targets.reshape({-1}));
  EXPECT_NEAR(model->loss(idx, targets, task).ce.item<double>(), ce.item<double>(), 1e-6);
  // Masks need the task ids.
  EXPECT_THROW(model->forward(idx), Error);
}

TEST(TaskHeads, AHeadLearnsOnlyFromItsTasksSequences) {
  GPT model = make_model(head_config(), kVocab);
  at::Generator gen = make_cpu_generator(8);
  const at::Tensor idx = at::randint(0, kVocab, {4, 8}, gen, at::kLong);
  const at::Tensor targets = at::randint(0, kVocab, {4, 8}, gen, at::kLong);
  model->loss(idx, targets, at::tensor(std::vector<int64_t>{1, 1, 2, 1})).loss.backward();
  const auto params = model->named_parameters();
  EXPECT_GT(params["heads.q-a.weight"].grad().abs().sum().item<double>(), 0.0);
  EXPECT_GT(params["lm_head.weight"].grad().abs().sum().item<double>(), 0.0);
  const at::Tensor code = params["heads.code.weight"].grad();
  EXPECT_TRUE(!code.defined() || code.abs().sum().item<double>() == 0.0);
}

// Task names are the user's ([A-Za-z0-9_-]+) and become parameter names heads.<name>.weight:
// is_expert_parameter, is_router_parameter and is_bias match name components, so a task named
// "experts" does not get a head treated as a sharded expert tensor, nor one named "web2" or
// "bias" a head without weight decay (they once matched substrings).
TEST(TaskHeads, TaskNamesDoNotChangeHowTheirHeadsAreTreated) {
  for (const char* name : {"experts", "my_experts", "web2", "lab1", "bias", "router"}) {
    Config cfg = plan_config(4);
    TaskConfig t;
    t.name = name;
    t.synthetic = 0;
    t.head = TaskHead::kOwn;
    cfg.data.tasks = {t};
    ASSERT_NO_THROW(validate(cfg));
    GPT model = make_model(cfg, kVocab);
    const std::string param = std::string("heads.") + name + ".weight";
    ASSERT_TRUE(model->named_parameters().contains(param));
    const at::Tensor w = model->named_parameters()[param];
    EXPECT_FALSE(is_expert_parameter(param)) << param;
    EXPECT_FALSE(is_bias(param, w)) << param;
    EXPECT_FALSE(is_router_parameter(param)) << param;
  }
  // The consequence: a run with a task named "experts" that has its own head cannot save (the
  // checkpoint takes the head's first dimension, the vocabulary, as the number of local experts:
  // "select(): index 4 out of range for tensor of size [4, 32, 32]").
  const TempFolder folder("freeze_experts_task");
  const std::string& dir = folder.path();
  Config cfg = train_config(dir, "num_experts: 4, top_k: 2");
  cfg.train.max_steps = 2;
  TaskConfig t;
  t.name = "experts";
  t.synthetic = 0;
  t.head = TaskHead::kOwn;
  cfg.data.tasks = {t};
  validate(cfg);
  EXPECT_NO_THROW(train_on(1, cfg));
}

TEST(TaskTraining, PerTaskEvaluationAndTheWeightedMean) {
  // Two synthetic languages, weights 3 : 1, a third of weight 0 (evaluated only); fixed masks
  // and an own head. The run's val loss is the weight-averaged per-task loss.
  const TempFolder folder("freeze_tasks");
  const std::string& dir = folder.path();
  Config cfg = train_config(dir, "num_experts: 4, top_k: 2");
  cfg.train.eval_interval = 3;
  cfg.train.eval_iters = 1;
  const std::vector<double> weights = {3.0, 1.0, 0.0};
  for (int64_t t = 0; t < 3; ++t) {
    TaskConfig task;
    task.name = "lang" + std::to_string(t);
    task.synthetic = t;
    task.weight = weights[t];
    task.experts = t == 0 ? std::vector<int64_t>{0, 1} : std::vector<int64_t>{1, 2, 3};
    task.head = t == 1 ? TaskHead::kOwn : TaskHead::kShared;
    cfg.data.tasks.push_back(task);
  }
  validate(cfg);
  const TrainResult r = train_on(1, cfg);
  ASSERT_EQ(r.task_val_loss.size(), 3u);
  double mean = 0;
  for (int64_t t = 0; t < 3; ++t) {
    EXPECT_EQ(r.task_val_loss[t].first, "lang" + std::to_string(t));
    EXPECT_TRUE(std::isfinite(r.task_val_loss[t].second));
    mean += weights[t] * r.task_val_loss[t].second / 4.0;
  }
  ASSERT_FALSE(r.val_loss.empty());
  EXPECT_NEAR(r.val_loss.back().second, mean, 1e-6 * mean);
  // metrics.jsonl has the per-task losses of each evaluation, by name.
  std::ifstream in(dir + "/metrics.jsonl");
  std::string line;
  int64_t evals = 0;
  while (std::getline(in, line)) {
    if (line.find("\"val_loss\"") == std::string::npos) continue;
    ++evals;
    for (int t = 0; t < 3; ++t) {
      EXPECT_NE(line.find("\"val_loss.lang" + std::to_string(t) + "\""), std::string::npos) << line;
    }
  }
  EXPECT_EQ(evals, 3);  // steps 0, 3, 6
  // The trained model's own head and masks are in model.pt.
  const Weights w = read_model_file(dir + "/model.pt");
  EXPECT_TRUE(w.count("heads.lang1.weight"));
}

}  // namespace
}  // namespace sy
