// Checkpoints (docs/checkpoints.md), on in-process ranks:
//   - resume exactness: a run stopped at step 13 and resumed logs bitwise the same losses after
//     step 13, and ends with bitwise the same weights, as the run that was never stopped (1 rank,
//     2 EP ranks, and 4 ranks = 2 EP x 2 DP), with a checkpoint between log steps;
//   - resharding: a checkpoint written by 4 EP ranks loads on 4, 2 and 1 ranks with the weights
//     of model.pt (written by another path, save_model) and the same outputs on a fixed batch;
//   - bad checkpoints (truncated or corrupt shard, missing shard or manifest, another model shape
//     or vocabulary): one error naming the file and field, on every rank;
//   - NaN: the run stops naming the step and the rank, writes no checkpoint after it, or skips
//     the step when train.skip_nonfinite allows;
//   - keep_checkpoints prunes the oldest.
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <list>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#include "common/files.h"
#include "config/config.h"
#include "data/tokenizer.h"
#include "model/gpt.h"
#include "moe/init.h"
#include "parallel/groups.h"
#include "parallel/inproc_comm.h"
#include "train/checkpoint.h"
#include "train/model_io.h"
#include "train/optimizer.h"
#include "train/trainer.h"
#include "temp_folder.h"

namespace sy {
namespace {

using sy::testing::TempFolder;

bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// Dropout and noisy top-k routing draw from the rank's generator, evaluation from its own
// sampler: resuming must restore all of them.
Config run_config(const std::string& out_dir, const std::string& extra = "") {
  return load_config_from_string(
      "model: {n_layers: 2, d_model: 16, n_heads: 2, d_ff: 32, block_size: 8, dropout: 0.1}\n"
      "moe: {num_experts: 4, top_k: 2, router: noisy_topk, capacity_factor: 1.0}\n"
      "data: {batch_size: 4, synthetic_chars: 20000}\n"
      "train: {max_steps: 30, log_interval: 5, eval_interval: 10, eval_iters: 2, warmup_steps: 5,\n"
      "        checkpoint_interval: 7, seed: 3, device: cpu, out_dir: '" +
          out_dir + "'}\n" + extra,
      "checkpoint_test");
}

Config with(Config cfg, const std::function<void(Config&)>& change) {
  change(cfg);
  return cfg;
}

// Trains on `ranks` in-process ranks; returns world rank 0's result.
TrainResult train_on(int ranks, const Config& cfg, const std::string& resume = "") {
  TrainResult result;
  std::mutex mu;
  run_inproc_ranks(ranks, [&](CommPtr world) {
    ParallelGroups g = make_groups(world, cfg.parallel.ep_size);
    TrainResult r = train(cfg, g, TrainOptions{resume});
    if (g.world_rank == 0) {
      std::lock_guard<std::mutex> lock(mu);
      result = r;
    }
  });
  return result;
}

std::map<std::string, at::Tensor> read_model_file(const std::string& path) {
  torch::serialize::InputArchive archive;
  archive.load_from(path);
  std::map<std::string, at::Tensor> out;
  for (const std::string& key : archive.keys()) {
    at::Tensor t;
    archive.read(key, t);
    out[key] = t;
  }
  return out;
}

// ------------------------------------------------------------------------------------------

struct Layout {
  int ranks;
  int ep_size;
  const char* param_dtype = "fp32";  // bf16: bf16 parameters with fp32 masters in AdamW
  // DeepSeek-V3-style layer (docs/moe.md): sigmoid scores, score bias balancing with the aux loss
  // per sequence, a shared expert, group-limited routing. The biases must resume exactly too.
  bool modern = false;
  // model.kind encoder with train.objective mlm (the masking draws from the data stream too), or
  // encoder_decoder on the embedded pairs (the encoder's and the decoder's MoE layers).
  ModelKind kind = ModelKind::kDecoder;
};

class ResumeExactness : public ::testing::TestWithParam<Layout> {};

TEST_P(ResumeExactness, StoppedAndResumedEqualsUninterrupted) {
  const Layout l = GetParam();
  const TempFolder folder("ckpt_resume");
  const std::string& dir = folder.path();
  auto cfg_for = [&](const std::string& sub) {
    return with(run_config(dir + "/" + sub), [&](Config& c) {
      c.parallel.ep_size = l.ep_size;
      c.train.param_dtype = parse_choice_or_throw<Precision>(l.param_dtype, "param_dtype");
      c.model.kind = l.kind;
      if (l.kind == ModelKind::kEncoder) c.train.objective = Objective::kMlm;
      if (l.kind == ModelKind::kEncoderDecoder) {
        c.model.block_size = 48;  // room for whole sentences
        c.data.pairs = PairTask::kReverse;
      }
      if (l.modern) {
        c.moe.router = RouterKind::kTopK;
        c.moe.score = ScoreKind::kSigmoid;
        c.moe.balance = BalanceKind::kAuxBias;
        c.moe.bias_update_rate = 0.01;
        c.moe.aux_loss_scope = AuxScope::kSequence;
        c.moe.shared_experts = 1;
        c.moe.shared_d_ff = 16;
        // Two groups, both allowed: the group path runs, and the biases still move (with one
        // group of two allowed for top-2, both experts of a group are always chosen together,
        // their loads stay equal, and the sign of the update flips every step).
        c.moe.route_groups = 2;
        c.moe.route_group_limit = 2;
      }
    });
  };
  const TrainResult whole = train_on(l.ranks, cfg_for("whole"));
  ASSERT_EQ(whole.steps, 30);
  EXPECT_LT(whole.train_loss.back().second, whole.train_loss.front().second) << "the loss falls";

  // Stopped at 13: checkpoints at 7 (interval) and 13 (stop); 13 is between log steps.
  const TrainResult first =
      train_on(l.ranks, with(cfg_for("parts"), [](Config& c) { c.train.stop_at_step = 13; }));
  EXPECT_EQ(first.steps, 13);
  EXPECT_TRUE(exists(dir + "/parts/checkpoints/step_7/manifest.json"));
  EXPECT_TRUE(exists(dir + "/parts/checkpoints/step_13/manifest.json"));
  EXPECT_EQ(latest_checkpoint(dir + "/parts/checkpoints"), dir + "/parts/checkpoints/step_13");

  const TrainResult rest = train_on(l.ranks, cfg_for("parts"), "auto");
  EXPECT_EQ(rest.start_step, 13);
  EXPECT_EQ(rest.steps, 30);

  std::vector<std::pair<int64_t, double>> expected_train, expected_val;
  for (const auto& e : whole.train_loss) {
    if (e.first > 13) expected_train.push_back(e);
  }
  for (const auto& e : whole.val_loss) {
    if (e.first > 13) expected_val.push_back(e);
  }
  ASSERT_EQ(expected_train.size(),
            4u);  // 15 (covering 11..15: the checkpoint held 11..13), 20, 25, 30
  ASSERT_EQ(expected_val.size(), 2u);  // 20, 30
  ASSERT_EQ(rest.train_loss.size(), expected_train.size());
  for (size_t i = 0; i < expected_train.size(); ++i) {
    EXPECT_EQ(rest.train_loss[i].first, expected_train[i].first);
    EXPECT_EQ(rest.train_loss[i].second, expected_train[i].second)
        << "step " << expected_train[i].first;
  }
  ASSERT_EQ(rest.val_loss.size(), expected_val.size());
  for (size_t i = 0; i < expected_val.size(); ++i) {
    EXPECT_EQ(rest.val_loss[i], expected_val[i]);
  }
  // The final weights, bit for bit.
  const auto a = read_model_file(dir + "/whole/model.pt");
  const auto b = read_model_file(dir + "/parts/model.pt");
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    EXPECT_TRUE(at::equal(t, b.at(name))) << name;
  }
  if (l.modern) {  // the biases moved, and are in the model file
    const at::Tensor& bias = a.at("blocks.0.moe.router.score_bias");
    EXPECT_GT(bias.abs().sum().item<double>(), 0.0);
    EXPECT_TRUE(a.count("blocks.1.moe.shared.w1"));
  }
  if (std::string(l.param_dtype) == "bf16") {
    // The model holds bf16 weights (routers fp32); checkpoints hold the fp32 masters.
    EXPECT_EQ(a.at("wte.weight").scalar_type(), at::kBFloat16);
    for (const auto& [name, t] : a) {
      if (name.find("router.") != std::string::npos) {
        EXPECT_EQ(t.scalar_type(), at::kFloat) << name;
      }
    }
    torch::serialize::InputArchive dense;
    dense.load_from(latest_checkpoint(dir + "/parts/checkpoints") + "/dense.pt");
    at::Tensor master;
    dense.read("wte.weight", master);
    EXPECT_EQ(master.scalar_type(), at::kFloat);
  }
  // metrics.jsonl: the stopped run's lines up to 13, then the resumed run's, with no repeats.
  std::ifstream in(dir + "/parts/metrics.jsonl");
  std::vector<int64_t> train_steps;
  for (std::string line; std::getline(in, line);) {
    if (line.find("\"train_loss\"") != std::string::npos) {
      train_steps.push_back(std::stoll(line.substr(line.find(':') + 1)));
    }
  }
  EXPECT_EQ(train_steps, (std::vector<int64_t>{5, 10, 15, 20, 25, 30}));
}

INSTANTIATE_TEST_SUITE_P(Layouts, ResumeExactness,
                         ::testing::Values(Layout{1, 1}, Layout{2, 2}, Layout{4, 2},
                                           Layout{2, 2, "bf16"}, Layout{2, 2, "fp32", true},
                                           Layout{2, 2, "fp32", false, ModelKind::kEncoder},
                                           Layout{2, 2, "fp32", false, ModelKind::kEncoderDecoder}),
                         [](const ::testing::TestParamInfo<Layout>& info) {
                           return "n" + std::to_string(info.param.ranks) + "_ep" +
                                  std::to_string(info.param.ep_size) + "_" +
                                  info.param.param_dtype + (info.param.modern ? "_modern" : "") +
                                  (info.param.kind == ModelKind::kDecoder
                                       ? ""
                                       : std::string("_") + choice_name(info.param.kind));
                         });

// ------------------------------------------------------------------------------------------

// A model and its optimizer for one rank of a layout, as the trainer builds them.
struct Built {
  GPT model{nullptr};
  AdamW optimizer{0.9, 0.95};
};

Built build(const Config& cfg, int64_t vocab, const ParallelGroups& g) {
  Built b;
  b.model = GPT(cfg.model, cfg.moe, vocab, g.ep, static_cast<uint64_t>(cfg.train.seed));
  for (const auto& item : b.model->named_parameters())
    b.optimizer.add(item.key(), item.value(), 0.1);
  return b;
}

class Checkpoints : public ::testing::Test {
 protected:
  // One checkpoint written by 4 EP ranks after 6 steps, shared by the tests below.
  static void SetUpTestSuite() {
    folder_ = new TempFolder("ckpt_shared");
    dir_ = folder_->path();
    cfg_ = with(run_config(dir_ + "/run"), [](Config& c) {
      c.train.max_steps = 6;
      c.train.checkpoint_interval = 0;
      c.parallel.ep_size = 4;
    });
    train_on(4, cfg_);
    ckpt_ = dir_ + "/run/checkpoints/step_6";
  }
  static void TearDownTestSuite() {
    delete folder_;
    folder_ = nullptr;
  }

  static CharTokenizer vocab() { return CharTokenizer::load(ckpt_ + "/vocab.json"); }

  // A copy of the shared checkpoint to damage, in a folder of its own that the test removes.
  std::string copy_checkpoint(const std::string& tag) {
    const std::string copy = copies_.emplace_back("ckpt_" + tag) / "step_6";
    std::filesystem::copy(ckpt_, copy, std::filesystem::copy_options::recursive);
    return copy;
  }

  // Loads `dir` on `ranks` EP ranks; each rank's error message ("" when it loaded).
  static std::vector<std::string> load_errors(const std::string& dir, int ranks, const Config& cfg,
                                              const CharTokenizer& tok) {
    std::vector<std::string> errors(ranks);
    try {
      run_inproc_ranks(ranks, [&](CommPtr world) {
        ParallelGroups g = make_groups(world, ranks);
        Built b = build(cfg, tok.vocab_size(), g);
        try {
          load_checkpoint(dir, cfg, &tok, tok.vocab_size(), *b.model, b.optimizer, g, at::kCPU);
        } catch (const Error& e) {
          errors[g.world_rank] = e.message();
        }
      });
    } catch (const std::exception& e) {
      ADD_FAILURE() << "a rank did not turn the failure into an sy::Error: " << e.what();
    }
    return errors;
  }

  // Every rank fails, and each message holds every part of `expected`.
  static void expect_error_everywhere(const std::string& dir,
                                      const std::vector<std::string>& expected, const Config& cfg,
                                      const CharTokenizer& tok, int ranks = 2) {
    const std::vector<std::string> errors = load_errors(dir, ranks, cfg, tok);
    for (int r = 0; r < ranks; ++r) {
      ASSERT_FALSE(errors[r].empty()) << "rank " << r << " loaded a bad checkpoint";
      for (const std::string& part : expected) {
        EXPECT_NE(errors[r].find(part), std::string::npos) << "rank " << r << ": " << errors[r];
      }
    }
  }

  std::list<TempFolder> copies_;  // copy_checkpoint's folders
  static TempFolder* folder_;
  static std::string dir_, ckpt_;
  static Config cfg_;
};

TempFolder* Checkpoints::folder_ = nullptr;
std::string Checkpoints::dir_, Checkpoints::ckpt_;
Config Checkpoints::cfg_;

TEST_F(Checkpoints, LayoutOnDisk) {
  for (const char* f : {"manifest.json", "meta.json", "config.yaml", "vocab.json", "dense.pt",
                        "experts/expert_00000.pt", "experts/expert_00003.pt", "ranks/rank_00000.pt",
                        "ranks/rank_00003.pt"}) {
    EXPECT_TRUE(exists(ckpt_ + "/" + f)) << f;
  }
  EXPECT_FALSE(exists(ckpt_ + "/experts/expert_00004.pt"));
  EXPECT_FALSE(exists(ckpt_ + "/parts"));  // merged into the manifest
  EXPECT_FALSE(exists(ckpt_ + ".partial"));
  const std::string manifest = read_file(ckpt_ + "/manifest.json");
  // The manifest's CRC of dense.pt is the file's.
  const std::string dense = read_file(ckpt_ + "/dense.pt");
  char crc[16];
  std::snprintf(crc, sizeof(crc), "%08x", crc32(dense.data(), dense.size()));
  EXPECT_NE(manifest.find("\"path\": \"dense.pt\", \"bytes\": " + std::to_string(dense.size()) +
                          ", \"crc32\": \"" + crc + "\""),
            std::string::npos)
      << manifest;
}

TEST_F(Checkpoints, ReshardsAcrossEpSizes) {
  const CharTokenizer tok = vocab();
  const int64_t V = tok.vocab_size();
  // The reference: model.pt, written at the end of the same run by save_model (all-gathered
  // experts), loaded on one process.
  Config one = with(cfg_, [](Config& c) { c.parallel.ep_size = 1; });
  GPT ref(one.model, one.moe, V, nullptr, 99);  // other init: everything must come from the file
  load_model(dir_ + "/run/model.pt", *ref, 0, 1);
  ref->eval();
  const at::Tensor batch = at::randint(0, V, {3, 8}, make_cpu_generator(4), at::kLong);
  at::Tensor ref_logits;
  {
    torch::NoGradGuard no_grad;
    ref_logits = ref->forward(batch);
  }
  std::map<std::string, at::Tensor> ref_params;
  for (const auto& p : ref->named_parameters()) ref_params[p.key()] = p.value().detach();

  // Moments from the one-rank load, to compare each layout's slices with.
  std::map<std::string, at::Tensor> one_rank_moments;
  for (const Layout l : {Layout{1, 1}, Layout{2, 2}, Layout{4, 4}, Layout{4, 2}}) {
    SCOPED_TRACE("ranks " + std::to_string(l.ranks) + ", ep_size " + std::to_string(l.ep_size));
    Config cfg = with(cfg_, [&](Config& c) { c.parallel.ep_size = l.ep_size; });
    std::mutex mu;
    std::vector<std::string> failures;
    run_inproc_ranks(l.ranks, [&](CommPtr world) {
      ParallelGroups g = make_groups(world, l.ep_size);
      Built b = build(cfg, V, g);
      const LoadedCheckpoint ck =
          load_checkpoint(ckpt_, cfg, &tok, V, *b.model, b.optimizer, g, at::kCPU);
      std::vector<std::string> bad;
      if (ck.step != 6) bad.push_back("step " + std::to_string(ck.step));
      if (ck.saved_world_size != 4 || ck.saved_ep_size != 4) bad.push_back("saved layout");
      if (ck.has_rank_state != (l.ranks == 4)) bad.push_back("has_rank_state");
      for (const AdamWSlot& s : b.optimizer.slots()) {
        at::Tensor want = ref_params.at(s.name);
        const bool expert = is_expert_parameter(s.name);
        const int64_t local = expert ? s.param.size(0) : 0;
        if (expert) want = want.narrow(0, g.ep_rank * local, local);
        if (!at::equal(s.param.detach(), want)) bad.push_back("weights of " + s.name);
        if (s.steps != 6) bad.push_back("AdamW steps of " + s.name);
        if (!s.exp_avg.defined() || s.exp_avg.abs().sum().item<double>() == 0) {
          bad.push_back("no AdamW moments for " + s.name);
        }
        std::lock_guard<std::mutex> lock(mu);
        if (l.ranks == 1) {
          one_rank_moments[s.name] = s.exp_avg_sq.clone();
        } else {
          at::Tensor m = one_rank_moments.at(s.name);
          if (expert) m = m.narrow(0, g.ep_rank * local, local);
          if (!at::equal(s.exp_avg_sq, m)) bad.push_back("AdamW moments of " + s.name);
        }
      }
      // The same batch on every rank: each rank's output must be the one-process output.
      b.model->eval();
      torch::NoGradGuard no_grad;
      const at::Tensor logits = b.model->forward(batch);
      const double diff = (logits - ref_logits).abs().max().item<double>();
      if (!(diff <= 1e-5)) bad.push_back("logits differ by " + std::to_string(diff));
      std::lock_guard<std::mutex> lock(mu);
      for (const std::string& what : bad)
        failures.push_back("rank " + std::to_string(g.world_rank) + ": " + what);
    });
    for (const std::string& f : failures) ADD_FAILURE() << f;
  }

  // And training continues on another layout from the checkpoint's step.
  const Config two = with(cfg_, [&](Config& c) {
    c.parallel.ep_size = 2;
    c.train.max_steps = 8;
    c.train.out_dir = dir_ + "/continued";
  });
  const TrainResult r = train_on(2, two, ckpt_);
  EXPECT_EQ(r.start_step, 6);
  EXPECT_EQ(r.steps, 8);
  ASSERT_FALSE(r.train_loss.empty());
  EXPECT_TRUE(std::isfinite(r.train_loss.back().second));
}

TEST_F(Checkpoints, TruncatedShard) {
  const std::string dir = copy_checkpoint("truncated");
  const std::string shard = dir + "/experts/expert_00003.pt";
  const std::string bytes = read_file(shard);
  write_file_atomic(shard, bytes.substr(0, bytes.size() / 2));
  expect_error_everywhere(dir,
                          {"expert_00003.pt", std::to_string(bytes.size() / 2) + " bytes",
                           "manifest.json says " + std::to_string(bytes.size())},
                          cfg_, vocab());
}

TEST_F(Checkpoints, CorruptShardFoundByTheRankReadingIt) {
  const std::string dir = copy_checkpoint("crc");
  const std::string shard = dir + "/experts/expert_00003.pt";  // read by EP rank 1 of 2
  std::string bytes = read_file(shard);
  bytes[bytes.size() / 2] ^= 0x01;
  write_file_atomic(shard, bytes);
  // Rank 0 does not read it, yet fails with rank 1's message.
  expect_error_everywhere(dir, {"rank 1: ", "expert_00003.pt", "CRC-32", "corrupt"}, cfg_, vocab());
}

TEST_F(Checkpoints, MissingShard) {
  const std::string dir = copy_checkpoint("missing");
  ASSERT_EQ(std::remove((dir + "/experts/expert_00000.pt").c_str()), 0);
  expect_error_everywhere(dir, {"expert_00000.pt", "is missing"}, cfg_, vocab());
}

TEST_F(Checkpoints, MissingManifest) {
  const std::string dir = copy_checkpoint("nomanifest");
  ASSERT_EQ(std::remove((dir + "/manifest.json").c_str()), 0);
  expect_error_everywhere(dir, {dir, "no manifest.json"}, cfg_, vocab());
  EXPECT_EQ(latest_checkpoint(dir.substr(0, dir.rfind('/'))), "");  // auto skips it
}

TEST_F(Checkpoints, NoSuchFolder) {
  expect_error_everywhere(dir_ + "/nowhere", {dir_ + "/nowhere", "does not exist"}, cfg_, vocab());
}

TEST_F(Checkpoints, OtherModelShape) {
  const Config wider = with(cfg_, [](Config& c) { c.model.d_model = 32; });
  expect_error_everywhere(ckpt_, {ckpt_ + "/config.yaml", "model.d_model is 16, this run has 32"},
                          wider, vocab());
  const Config more = with(cfg_, [](Config& c) { c.moe.num_experts = 8; });
  expect_error_everywhere(ckpt_, {"moe.num_experts is 4, this run has 8"}, more, vocab());
}

TEST_F(Checkpoints, OtherVocabulary) {
  const CharTokenizer other = CharTokenizer::from_text("abcdefg");
  expect_error_everywhere(ckpt_, {ckpt_ + "/vocab.json", "differs from this run's data"}, cfg_,
                          other);
}

// ------------------------------------------------------------------------------------------

TEST(NonFinite, StopsNamingStepAndRankWithoutWritingACheckpoint) {
  const TempFolder folder("ckpt_nan");
  const std::string& dir = folder.path();
  const Config cfg = with(run_config(dir), [](Config& c) {
    c.parallel.ep_size = 2;
    c.train.checkpoint_interval = 5;
    c.debug.nan_step = 7;  // the 8th step
    c.debug.nan_rank = 1;
  });
  try {
    train_on(2, cfg);
    FAIL() << "no error for a NaN loss";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("step 8: the loss is NaN or Inf on rank(s) 1"), std::string::npos)
        << e.message();
    EXPECT_NE(e.message().find("step_5"), std::string::npos) << e.message();
  }
  EXPECT_TRUE(exists(dir + "/checkpoints/step_5/manifest.json"));
  EXPECT_FALSE(exists(dir + "/checkpoints/step_10"));
  EXPECT_FALSE(exists(dir + "/checkpoints/step_8"));
}

TEST(NonFinite, SkipsWhenAllowed) {
  const TempFolder folder("ckpt_skip");
  const std::string& dir = folder.path();
  const Config cfg = with(run_config(dir), [](Config& c) {
    c.train.max_steps = 12;
    c.train.skip_nonfinite = 1;
    c.debug.nan_step = 7;
  });
  const TrainResult r = train_on(1, cfg);
  EXPECT_EQ(r.steps, 12);
  const std::string metrics = read_file(dir + "/metrics.jsonl");
  EXPECT_NE(metrics.find("{\"step\": 8, \"skipped_nonfinite\": 1}"), std::string::npos) << metrics;
  for (const auto& e : r.train_loss) EXPECT_TRUE(std::isfinite(e.second)) << e.first;
  // The interval holding the skipped step averages the 4 kept steps only (finite).
  ASSERT_GE(r.train_loss.size(), 2u);
  for (const auto& [name, t] : read_model_file(dir + "/model.pt")) {
    EXPECT_TRUE(at::isfinite(t).all().item<bool>()) << name;
  }
}

TEST(CheckpointFiles, KeepsTheNewest) {
  const TempFolder folder("ckpt_keep");
  const std::string& dir = folder.path();
  const Config cfg = with(run_config(dir), [](Config& c) {
    c.train.max_steps = 10;
    c.train.checkpoint_interval = 2;
    c.train.keep_checkpoints = 2;
    c.train.eval_interval = 0;
  });
  train_on(1, cfg);
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir + "/checkpoints")) {
    names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"step_10", "step_8"}));
}

// A run on token ids (a uint16 file, nanoGPT's format) has no character vocabulary: it trains,
// checkpoints without vocab.json, resumes exactly, and a text run cannot resume from it.
TEST(CheckpointFiles, TokenFileRunResumesExactly) {
  const TempFolder folder("ckpt_tokens");
  const std::string& dir = folder.path();
  std::vector<uint16_t> ids(6000);
  std::mt19937_64 rng(1);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<uint16_t>((i * 7 + rng() % 3) % 50);
  write_file_atomic(dir + "/train.bin", ids.data(), ids.size() * sizeof(uint16_t));
  auto cfg_for = [&](const std::string& sub) {
    return with(run_config(dir + "/" + sub), [&](Config& c) {
      c.data.format = DataFormat::kUint16;
      c.data.path = dir + "/train.bin";
      c.model.vocab_size = 50;
      c.train.max_steps = 12;
    });
  };
  const TrainResult whole = train_on(1, cfg_for("whole"));
  train_on(1, with(cfg_for("parts"), [](Config& c) { c.train.stop_at_step = 6; }));
  EXPECT_FALSE(exists(dir + "/parts/vocab.json"));
  EXPECT_FALSE(exists(dir + "/parts/checkpoints/step_6/vocab.json"));
  const TrainResult rest = train_on(1, cfg_for("parts"), "auto");
  ASSERT_EQ(rest.start_step, 6);
  ASSERT_FALSE(rest.train_loss.empty());
  EXPECT_EQ(rest.train_loss.back(), whole.train_loss.back());
  EXPECT_LT(whole.train_loss.back().second, std::log(50.0));  // it learns the file's pattern

  // A text run (the synthetic corpus) cannot continue it.
  const Config text = with(run_config(dir + "/parts"), [](Config& c) { c.train.max_steps = 12; });
  try {
    train_on(1, text, dir + "/parts/checkpoints/step_6");
    FAIL() << "a text run resumed a token-id checkpoint";
  } catch (const Error& e) {
    EXPECT_NE(
        e.message().find("was trained on token ids (it has no vocab.json), this run reads text"),
        std::string::npos)
        << e.message();
  }
  // Nor a token run with another vocabulary size.
  try {
    train_on(1, with(cfg_for("parts"), [](Config& c) { c.model.vocab_size = 64; }), "auto");
    FAIL() << "resumed with another vocabulary size";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("vocab_size is 50, this run has 64"), std::string::npos)
        << e.message();
  }
}

TEST(CheckpointFiles, RandomTokensTrainAtAnyVocabularySize) {
  const TempFolder folder("ckpt_random");
  const std::string& dir = folder.path();
  const Config cfg = with(run_config(dir), [](Config& c) {
    c.data.format = DataFormat::kRandom;
    c.model.vocab_size = 1000;
    c.train.max_steps = 4;
    c.train.eval_interval = 0;
  });
  const TrainResult r = train_on(2, cfg);
  ASSERT_FALSE(r.train_loss.empty());
  // Random tokens: the loss starts near ln(1000) and has nothing to learn.
  EXPECT_NEAR(r.train_loss.front().second, std::log(1000.0), 0.3);
  EXPECT_TRUE(exists(dir + "/checkpoints/step_4/manifest.json"));
}

}  // namespace
}  // namespace sy
