// train.init_from (Note [Initialising from a run] in src/train/init_from.h): a run started from
// another's model.pt. Checked against closed forms: the same config loads every tensor bitwise;
// an upcycled MoE (every expert = the dense FFN, dropless top-2 with renormalized gates) computes
// the dense model's loss; growing the experts keeps the old ones and their router rows bitwise
// and makes the new ones perturbed copies (or this model's own init); on 2 EP ranks each rank
// holds its slice of the source's experts; every mismatch is one error naming the tensor.
#include <mutex>
#include <random>
#include <string>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/files.h"
#include "config/config.h"
#include "parallel/groups.h"
#include "parallel/inproc_comm.h"
#include "train/run.h"
#include "train/trainer.h"
#include "temp_folder.h"

namespace sy {
namespace {

using sy::testing::TempFolder;

// A tiny GPT on the embedded corpus; `moe` is the moe section, `extra` more train keys.
Config tiny(const std::string& out_dir, const std::string& moe, const std::string& extra = "") {
  return load_config_from_string(
      "model: {n_layers: 2, d_model: 16, n_heads: 2, d_ff: 32, block_size: 8, dropout: 0.0}\n"
      "moe: {" +
          moe +
          "}\n"
          "data: {batch_size: 4, synthetic_chars: 20000}\n"
          "train: {max_steps: 6, log_interval: 3, eval_interval: 0, warmup_steps: 1, seed: 5,\n"
          "        device: cpu, out_dir: '" +
          out_dir + "'" + extra + "}\n",
      "init_from_test");
}

// The same as an encoder-decoder on the embedded reversal pairs.
Config tiny_seq2seq(const std::string& out_dir, const std::string& moe,
                    const std::string& extra = "") {
  return load_config_from_string(
      "model: {kind: encoder_decoder, n_layers: 2, d_model: 16, n_heads: 2, d_ff: 32,\n"
      "        block_size: 40, dropout: 0.0}\n"
      "moe: {" +
          moe +
          "}\n"
          "data: {batch_size: 4, synthetic_chars: 20000, pairs: reverse}\n"
          "train: {max_steps: 6, log_interval: 3, eval_interval: 0, warmup_steps: 1, seed: 5,\n"
          "        device: cpu, out_dir: '" +
          out_dir + "'" + extra + "}\n",
      "init_from_test");
}

const char* const kDense = "every: 0";
const char* const kMoe4 = "num_experts: 4, top_k: 2, router: topk, every: 1, capacity_factor: 1.0";

void train_one(const Config& cfg) {
  run_inproc_ranks(1, [&](CommPtr world) { train(cfg, make_groups(world, 1)); });
}

// The model of `cfg` after setup() (init_from applied), on world rank `rank` of `ranks`.
template <typename F> void with_model(const Config& cfg, int ranks, F&& fn) {
  std::mutex mu;
  run_inproc_ranks(ranks, [&](CommPtr world) {
    ParallelGroups g = make_groups(world, cfg.parallel.ep_size);
    std::unique_ptr<Run> run = setup(cfg, g);
    std::lock_guard<std::mutex> lock(mu);
    fn(*run, g);
  });
}

at::Tensor param(sy::Run& run, const std::string& name) {
  for (const auto& item : run.model->named_parameters()) {
    if (item.key() == name) return item.value().detach().clone();
  }
  ADD_FAILURE() << "no parameter " << name;
  return {};
}

at::Tensor stored(const std::string& model_pt, const std::string& name) {
  torch::serialize::InputArchive a;
  a.load_from(model_pt);
  at::Tensor t;
  EXPECT_TRUE(a.try_read(name, t)) << name;
  return t;
}

std::string error_of(const Config& cfg) {
  try {
    with_model(cfg, 1, [](sy::Run&, const ParallelGroups&) {});
  } catch (const Error& e) {
    return e.message();
  }
  return "<no error>";
}

class InitFrom : public ::testing::Test {
 protected:
  TempFolder folder_{"init_from"};
  const std::string& dir_ = folder_.path();
};

TEST_F(InitFrom, SameConfigLoadsEveryTensorBitwise) {
  train_one(tiny(dir_ + "/src", kMoe4));
  const std::string pt = dir_ + "/src/model.pt";
  with_model(tiny(dir_ + "/dst", kMoe4, ", init_from: '" + dir_ + "/src'"), 1,
             [&](sy::Run& run, const ParallelGroups&) {
               for (const auto& item : run.model->named_parameters()) {
                 EXPECT_TRUE(at::equal(item.value(), stored(pt, item.key()))) << item.key();
               }
             });
}

// An MoE model upcycled from a dense one computes it: the experts' d_ff is the dense FFN's, the
// routing dropless in training and evaluation, the top-2 gates renormalized to sum to 1:
// sum_k g_k FFN(x) = FFN(x). For a GPT and for both stacks of an encoder-decoder.
TEST_F(InitFrom, UpcycledMoeComputesTheDenseModel) {
  const std::string moe =
      "num_experts: 4, top_k: 2, router: topk, every: 1, capacity_factor: 0, "
      "eval_capacity_factor: 0, z_loss_coef: 0";
  for (const bool seq2seq : {false, true}) {
    const auto config = seq2seq ? tiny_seq2seq : tiny;
    const std::string base = dir_ + (seq2seq ? "/s2s" : "/gpt");
    train_one(config(base + "-dense", kDense, ""));
    const Config dense = config(base + "-d2", kDense, ", init_from: '" + base + "-dense'");
    const Config up = config(base + "-up", moe, ", init_from: '" + base + "-dense'");
    auto eval_loss = [](sy::Run& run) {
      torch::NoGradGuard no_grad;
      run.model->eval();
      std::mt19937_64 rng(11);
      double sum = 0;
      for (int i = 0; i < 3; ++i) {
        Batch b = run.corpus.dataset->sample(Split::kVal, 4, rng);
        sum += run.model->loss(b.x, b.y).ce.item<double>();
      }
      return sum / 3;
    };
    double dense_loss = 0, up_loss = 0;
    with_model(dense, 1, [&](sy::Run& run, const ParallelGroups&) { dense_loss = eval_loss(run); });
    with_model(up, 1, [&](sy::Run& run, const ParallelGroups&) {
      up_loss = eval_loss(run);
      // Every expert is the FFN, transposed into [in, out] (in both stacks).
      const std::string pt = base + "-dense/model.pt";
      for (const std::string block : {"blocks.1.", seq2seq ? "encoder.blocks.0." : "blocks.0."}) {
        const at::Tensor w1 = param(run, block + "moe.experts.w1");
        for (int64_t e = 0; e < 4; ++e) {
          EXPECT_TRUE(at::equal(w1[e], stored(pt, block + "mlp.fc.weight").t())) << block << e;
        }
      }
    });
    EXPECT_NEAR(up_loss, dense_loss, 1e-5) << (seq2seq ? "encoder_decoder" : "decoder");
    EXPECT_GT(dense_loss, 0.5);  // a real loss, not a degenerate one
  }
}

TEST_F(InitFrom, GrownExpertsKeepTheOldOnesBitwise) {
  train_one(tiny(dir_ + "/src", kMoe4));
  const std::string pt = dir_ + "/src/model.pt";
  const std::string moe8 = "num_experts: 8, top_k: 2, router: topk, every: 1";
  for (const char* init : {"copy", "random"}) {
    SCOPED_TRACE(init);
    const Config cfg = tiny(dir_ + "/grown", moe8 + std::string(", new_expert_init: ") + init,
                            ", init_from: '" + dir_ + "/src'");
    at::Tensor fresh_w1;  // this model's own initialisation, for `random`
    with_model(tiny(dir_ + "/fresh", moe8), 1, [&](sy::Run& run, const ParallelGroups&) {
      fresh_w1 = param(run, "blocks.0.moe.experts.w1");
    });
    with_model(cfg, 1, [&](sy::Run& run, const ParallelGroups&) {
      const at::Tensor w1 = param(run, "blocks.0.moe.experts.w1");
      const at::Tensor src_w1 = stored(pt, "blocks.0.moe.experts.w1");
      const at::Tensor router = param(run, "blocks.0.moe.router.weight").t();  // [E, d_model]
      const at::Tensor src_router = stored(pt, "blocks.0.moe.router.weight").t();
      for (int64_t e = 0; e < 4; ++e) {
        EXPECT_TRUE(at::equal(w1[e], src_w1[e])) << e;
        EXPECT_TRUE(at::equal(router[e], src_router[e])) << e;
      }
      for (int64_t e = 4; e < 8; ++e) {
        if (std::string(init) == "copy") {
          const at::Tensor diff = w1[e] - src_w1[e - 4];
          EXPECT_FALSE(at::equal(w1[e], src_w1[e - 4])) << e;  // perturbed ...
          // ... by noise of 1% of the source tensor's std.
          EXPECT_NEAR(diff.std().item<double>(), 0.01 * src_w1[e - 4].std().item<double>(),
                      0.003 * src_w1[e - 4].std().item<double>())
              << e;
        } else {
          EXPECT_TRUE(at::equal(w1[e], fresh_w1[e])) << e;
        }
      }
    });
  }
}

TEST_F(InitFrom, EachEpRankTakesItsSliceOfTheExperts) {
  train_one(tiny(dir_ + "/src", kMoe4));
  const std::string pt = dir_ + "/src/model.pt";
  Config cfg = tiny(dir_ + "/ep2", kMoe4, ", init_from: '" + dir_ + "/src'");
  cfg.parallel.ep_size = 2;
  int seen = 0;
  with_model(cfg, 2, [&](sy::Run& run, const ParallelGroups& g) {
    const at::Tensor w2 = param(run, "blocks.1.moe.experts.w2");
    ASSERT_EQ(w2.size(0), 2);
    EXPECT_TRUE(at::equal(w2, stored(pt, "blocks.1.moe.experts.w2").narrow(0, 2 * g.ep_rank, 2)));
    ++seen;
  });
  EXPECT_EQ(seen, 2);
}

TEST_F(InitFrom, MismatchesAreOneErrorNamingTheTensor) {
  train_one(tiny(dir_ + "/src", kMoe4));
  const std::string from = ", init_from: '" + dir_ + "/src'";
  // Another d_ff of the experts.
  std::string e = error_of(tiny(dir_ + "/x", std::string(kMoe4) + ", d_ff: 16", from));
  EXPECT_NE(e.find("'blocks.0.moe.experts.w1'"), std::string::npos) << e;
  EXPECT_NE(e.find("[16, 32]"), std::string::npos) << e;  // the source's expert, [in, out]
  EXPECT_NE(e.find("[16, 16]"), std::string::npos) << e;
  // Fewer experts.
  e = error_of(tiny(dir_ + "/x", "num_experts: 2, top_k: 2, router: topk, every: 1", from));
  EXPECT_NE(e.find("holds 4 experts, this model has 2"), std::string::npos) << e;
  // An MoE block made dense.
  e = error_of(tiny(dir_ + "/x", kDense, from));
  EXPECT_NE(e.find("blocks.0 is an MoE block"), std::string::npos) << e;
  // No such run; a run that has not finished.
  e = error_of(tiny(dir_ + "/x", kMoe4, ", init_from: '" + dir_ + "/nope'"));
  EXPECT_NE(e.find("'" + dir_ + "/nope' does not exist"), std::string::npos) << e;
  make_directories(dir_ + "/unfinished/checkpoints");
  e = error_of(tiny(dir_ + "/x", kMoe4, ", init_from: '" + dir_ + "/unfinished'"));
  EXPECT_NE(e.find("has no model.pt yet"), std::string::npos) << e;
}

}  // namespace
}  // namespace sy
