// Training: the learning-rate schedule against its closed form; gradient sync on in-process
// ranks against one process on the concatenated batch (Note [Gradient scaling]); the global
// gradient norm and clipping; save_model/load_model across EP layouts; and a short CPU run
// whose loss falls, whose run folder holds what the docs promise, and which generate_text reads.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <ostream>
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
#include "train/generate.h"
#include "train/grad_sync.h"
#include "train/model_io.h"
#include "train/schedule.h"
#include "train/trainer.h"
#include "temp_folder.h"

namespace sy {
namespace {

using sy::testing::TempFolder;

Config tiny_config(const std::string& moe, const std::string& extra = "") {
  return load_config_from_string(
      "model: {n_layers: 2, d_model: 16, n_heads: 2, d_ff: 32, block_size: 8, dropout: 0.0}\n"
      "moe: " +
          moe +
          "\n"
          "train: {seed: 5}\n" +
          extra,
      "train_test");
}

GPT make_gpt(const Config& cfg, int64_t vocab, CommPtr ep = nullptr) {
  return GPT(cfg.model, cfg.moe, vocab, std::move(ep), static_cast<uint64_t>(cfg.train.seed));
}

at::Tensor random_ids(int64_t b, int64_t t, int64_t vocab, uint64_t seed) {
  at::Generator gen = make_cpu_generator(seed);
  return at::randint(0, vocab, {b, t}, gen, at::kLong);
}

// ||got - ref|| / ||ref|| in double (absolute when ref is 0).
double rel_err(const at::Tensor& got, const at::Tensor& ref) {
  const at::Tensor g = got.to(at::kDouble), r = ref.to(at::kDouble);
  const double denom = r.norm().item<double>();
  const double diff = (g - r).norm().item<double>();
  return denom > 0 ? diff / denom : diff;
}

// ------------------------------------------------------------------------------------------
// Schedule: warm-up lr (s + 1) / W for s < W, then min + (lr - min) (1 + cos(pi p)) / 2 with
// p = (s - W) / (max_steps - W), then min_lr. Expected values worked out by hand.

TEST(Schedule, WarmupThenCosineToMinLr) {
  TrainConfig tc;
  tc.lr = 1e-3;
  tc.min_lr = 1e-4;
  tc.warmup_steps = 10;
  tc.max_steps = 110;  // 100 decay steps
  const std::vector<std::pair<int64_t, double>> expected = {
      {0, 1e-4},
      {4, 5e-4},
      {9, 1e-3},
      {10, 1e-3},                  // p = 0
      {35, 8.681980515339464e-4},  // p = 1/4: 1e-4 + 9e-4 * (1 + 0.7071067811865476) / 2
      {60, 5.5e-4},                // p = 1/2: the midpoint
      {85, 2.318019484660536e-4},  // p = 3/4: 1e-4 + 9e-4 * (1 - 0.7071067811865476) / 2
      {110, 1e-4},
      {111, 1e-4},
      {1000, 1e-4}};
  for (const auto& [step, lr] : expected) {
    EXPECT_NEAR(learning_rate(tc, step), lr, 1e-15) << "step " << step;
  }
  // Monotone: up during warm-up, never up afterwards.
  for (int64_t s = 1; s < 200; ++s) {
    if (s < tc.warmup_steps) EXPECT_GT(learning_rate(tc, s), learning_rate(tc, s - 1)) << s;
    else EXPECT_LE(learning_rate(tc, s), learning_rate(tc, s - 1)) << s;
  }
}

TEST(Schedule, NoWarmupStartsAtLr) {
  TrainConfig tc;
  tc.lr = 2e-3;
  tc.min_lr = 0;
  tc.warmup_steps = 0;
  tc.max_steps = 4;
  EXPECT_DOUBLE_EQ(learning_rate(tc, 0), 2e-3);
  EXPECT_NEAR(learning_rate(tc, 1), 1e-3 * (1 + std::cos(M_PI / 4)), 1e-15);
  EXPECT_NEAR(learning_rate(tc, 2), 1e-3, 1e-15);
  EXPECT_NEAR(learning_rate(tc, 4), 0.0, 1e-15);
}

// ------------------------------------------------------------------------------------------
// Note [Gradient scaling]: 4 ranks, each with its own batch, after sync_gradients hold the
// gradients of one process on the 4 batches together. Dropless, so no capacity depends on
// how tokens are split. The aux loss is not a per-token mean (E sum f_i P_i is a product of
// two means), so with aux on the reference is the mean of the per-batch losses instead.

struct SyncCase {
  int ep_size;
  double aux_coef;
};

void PrintTo(const SyncCase& c, std::ostream* os) {
  *os << "ep" << c.ep_size << (c.aux_coef > 0 ? "_aux" : "_noaux");
}

class GradSync : public ::testing::TestWithParam<SyncCase> {};

TEST_P(GradSync, EqualsSingleProcessOnTheWholeBatch) {
  const int world = 4;
  const int64_t B = 2, T = 8, V = 13;
  const SyncCase c = GetParam();
  const Config cfg = tiny_config(
      "{num_experts: 4, top_k: 2, router: topk, capacity_factor: 0.0, "
      "aux_loss_coef: " +
      std::to_string(c.aux_coef) + ", z_loss_coef: 0.001}");
  std::vector<at::Tensor> xs, ys;
  for (int r = 0; r < world; ++r) {
    xs.push_back(random_ids(B, T, V, 100 + r));
    ys.push_back(random_ids(B, T, V, 200 + r));
  }

  GPT single = make_gpt(cfg, V);
  if (c.aux_coef == 0) {
    single->loss(at::cat(xs), at::cat(ys)).loss.backward();
  } else {
    at::Tensor total = at::zeros({});
    for (int r = 0; r < world; ++r) total = total + single->loss(xs[r], ys[r]).loss / world;
    total.backward();
  }
  const auto ref = single->named_parameters();
  double ref_sq = 0;
  for (const auto& p : ref) ref_sq += p.value().grad().to(at::kDouble).pow(2).sum().item<double>();
  const double ref_norm = std::sqrt(ref_sq);

  std::vector<std::map<std::string, double>> errors(world);
  std::vector<double> norms(world), clip_errors(world);
  std::vector<int64_t> experts_checked(world, 0);
  run_inproc_ranks(world, [&](CommPtr w) {
    ParallelGroups g = make_groups(w, c.ep_size);
    const int r = g.world_rank;
    GPT model = make_gpt(cfg, V, g.ep);
    model->loss(xs[r], ys[r]).loss.backward();
    ParamSet params;
    for (const auto& p : model->named_parameters()) {
      (is_expert_parameter(p.key()) ? params.expert : params.dense).push_back(p.value());
    }
    sync_gradients(params, g);
    for (const auto& p : model->named_parameters()) {
      at::Tensor expected = ref[p.key()].grad();
      if (is_expert_parameter(p.key())) {
        const int64_t local = p.value().size(0);
        expected = expected.narrow(0, g.ep_rank * local, local);
        ++experts_checked[r];
      }
      errors[r][p.key()] = rel_err(p.value().grad(), expected);
    }
    // The global norm counts every parameter once; then clip to half of it.
    norms[r] = clip_grad_norm(params, g, /*max_norm=*/0).item<double>();
    const at::Tensor before = model->lm_head->weight.grad().clone();
    const double max_norm = 0.5 * ref_norm;
    const double norm = clip_grad_norm(params, g, max_norm).item<double>();
    clip_errors[r] = rel_err(model->lm_head->weight.grad(), before * (max_norm / (norm + 1e-6)));
  });

  for (int r = 0; r < world; ++r) {
    EXPECT_EQ(errors[r].size(), ref.size()) << "rank " << r;
    EXPECT_EQ(experts_checked[r], 8) << "rank " << r;  // 4 expert tensors x 2 MoE layers
    for (const auto& [name, err] : errors[r]) {
      EXPECT_LE(err, 1e-5) << "rank " << r << ": " << name;
    }
    EXPECT_NEAR(norms[r], ref_norm, 1e-5 * ref_norm) << "rank " << r;
    EXPECT_LE(clip_errors[r], 1e-6) << "rank " << r;
  }
  EXPECT_GT(ref_norm, 0.0);
}

INSTANTIATE_TEST_SUITE_P(Layouts, GradSync,
                         ::testing::Values(SyncCase{4, 0.0}, SyncCase{2, 0.0}, SyncCase{4, 0.01},
                                           SyncCase{2, 0.01}),
                         [](const ::testing::TestParamInfo<SyncCase>& info) {
                           std::ostringstream os;
                           PrintTo(info.param, &os);
                           return os.str();
                         });

// ------------------------------------------------------------------------------------------
// save_model / load_model: the file holds every expert whole, whatever the EP layout.

// Moves every parameter away from its initial value by a deterministic amount that depends on
// its name and its global position (expert tensors: the rows of the experts this model holds),
// so a load that did nothing cannot pass.
void perturb(GPTImpl& model, int64_t ep_rank, int64_t ep_size) {
  torch::NoGradGuard no_grad;
  for (auto& p : model.named_parameters()) {
    std::vector<int64_t> shape = p.value().sizes().vec();
    const bool expert = is_expert_parameter(p.key());
    if (expert) shape[0] *= ep_size;
    at::Generator gen = make_cpu_generator(std::hash<std::string>{}(p.key()));
    at::Tensor full = at::randn(shape, gen, at::kFloat) * 0.1;
    p.value().add_(expert ? full.narrow(0, ep_rank * p.value().size(0), p.value().size(0)) : full);
  }
}

class ModelIo : public ::testing::Test {
 protected:
  static constexpr int64_t kVocab = 13;
  TempFolder folder_{"model_io"};
  const std::string& dir_ = folder_.path();
  // Dropless in training and evaluation, so logits never depend on how tokens are split.
  Config cfg_ = tiny_config(
      "{num_experts: 8, top_k: 2, capacity_factor: 0.0, "
      "eval_capacity_factor: 0.0}");
};

TEST_F(ModelIo, SavedOnFourEpRanksLoadsOnOneAndOnTwo) {
  const std::string path = dir_ + "/model.pt";
  run_inproc_ranks(4, [&](CommPtr w) {
    ParallelGroups g = make_groups(w, 4);
    GPT model = make_gpt(cfg_, kVocab, g.ep);
    perturb(*model, g.ep_rank, 4);
    save_model(path, *model, g);
  });
  ASSERT_TRUE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

  // The reference: one process, perturbed the same way.
  GPT ref = make_gpt(cfg_, kVocab);
  perturb(*ref, 0, 1);
  ref->eval();
  const at::Tensor idx = random_ids(4, 8, kVocab, 9);
  torch::NoGradGuard no_grad;
  const at::Tensor ref_logits = ref->forward(idx);

  GPT fresh = make_gpt(cfg_, kVocab);
  fresh->eval();
  ASSERT_FALSE(at::allclose(fresh->forward(idx), ref_logits));  // the perturbation matters
  load_model(path, *fresh, /*ep_rank=*/0, /*ep_size=*/1);
  const auto ref_params = ref->named_parameters();
  for (const auto& p : fresh->named_parameters()) {
    EXPECT_TRUE(at::equal(p.value(), ref_params[p.key()])) << p.key();
  }
  EXPECT_TRUE(at::equal(fresh->forward(idx), ref_logits));

  // Two EP ranks, each reading its own slice and running its half of the batch.
  std::vector<double> errs(2, -1);
  std::vector<std::string> param_mismatch(2);
  run_inproc_ranks(2, [&](CommPtr w) {
    ParallelGroups g = make_groups(w, 2);
    GPT model = make_gpt(cfg_, kVocab, g.ep);
    load_model(path, *model, g.ep_rank, 2);
    for (const auto& p : model->named_parameters()) {
      at::Tensor expected = ref_params[p.key()];
      if (is_expert_parameter(p.key())) expected = expected.narrow(0, g.ep_rank * 4, 4);
      if (!at::equal(p.value(), expected)) param_mismatch[g.ep_rank] += p.key() + " ";
    }
    model->eval();
    torch::NoGradGuard inner_no_grad;
    const at::Tensor logits = model->forward(idx.narrow(0, 2 * g.ep_rank, 2));
    errs[g.ep_rank] = rel_err(logits, ref_logits.narrow(0, 2 * g.ep_rank, 2));
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(param_mismatch[r], "") << "rank " << r;
    EXPECT_GE(errs[r], 0.0) << "rank " << r;
    EXPECT_LE(errs[r], 1e-6) << "rank " << r;
  }
}

std::string load_error(const std::string& path, GPTImpl& model) {
  try {
    load_model(path, model, 0, 1);
  } catch (const Error& e) {
    return e.message();
  }
  return "<no error>";
}

TEST_F(ModelIo, MismatchesNameTheTensor) {
  const std::string path = dir_ + "/model.pt";
  {
    GPT model = make_gpt(cfg_, kVocab);
    ParallelGroups one = make_groups(make_self_communicator(), 1);
    save_model(path, *model, one);
  }
  GPT other_vocab = make_gpt(cfg_, kVocab + 1);
  std::string msg = load_error(path, *other_vocab);
  EXPECT_NE(msg.find("'wte.weight'"), std::string::npos) << msg;
  EXPECT_NE(msg.find(path), std::string::npos) << msg;

  const Config wider = tiny_config("{num_experts: 8, top_k: 2, d_ff: 48}");
  GPT other_ff = make_gpt(wider, kVocab);
  msg = load_error(path, *other_ff);
  EXPECT_NE(msg.find("'blocks.0.moe.experts.w1'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[8, 16, 32]"), std::string::npos) << msg;  // stored
  EXPECT_NE(msg.find("[8, 16, 48]"), std::string::npos) << msg;  // expected

  const Config more_experts = tiny_config("{num_experts: 16, top_k: 2}");
  GPT other_e = make_gpt(more_experts, kVocab);
  msg = load_error(path, *other_e);
  EXPECT_NE(msg.find("'blocks.0.moe.router.weight'"), std::string::npos) << msg;

  const Config dense = tiny_config("{every: 0}");
  GPT dense_model = make_gpt(dense, kVocab);
  msg = load_error(path, *dense_model);
  EXPECT_NE(msg.find("has no tensor 'blocks.0.mlp.fc.weight'"), std::string::npos) << msg;

  msg = load_error(dir_ + "/missing.pt", *dense_model);
  EXPECT_NE(msg.find("missing.pt"), std::string::npos) << msg;
}

// ------------------------------------------------------------------------------------------
// A short CPU run on the synthetic corpus, shared by the tests below.

// The number after "key": in a one-line JSON object (NaN when absent).
double json_number(const std::string& line, const std::string& key) {
  const std::string tag = "\"" + key + "\": ";
  const size_t at = line.find(tag);
  if (at == std::string::npos) return std::nan("");
  return std::stod(line.substr(at + tag.size()));
}

class TrainRun : public ::testing::Test {
 protected:
  static constexpr int64_t kSteps = 80, kLogInterval = 10, kEvalInterval = 40;

  static void SetUpTestSuite() {
    dir_ = new TempFolder("train_run");
    config_ = new Config(load_config_from_string(
        "model: {n_layers: 2, d_model: 32, n_heads: 2, d_ff: 64, block_size: 32, dropout: 0.0}\n"
        "moe: {num_experts: 4, top_k: 2, router: topk, capacity_factor: 1.25}\n"
        "data: {batch_size: 8, synthetic_chars: 40000}\n"
        "train: {max_steps: " +
            std::to_string(kSteps) +
            ", lr: 1.0e-2, min_lr: 1.0e-3, "
            "warmup_steps: 10, eval_interval: " +
            std::to_string(kEvalInterval) + ", eval_iters: 2, log_interval: " +
            std::to_string(kLogInterval) + ", device: cpu, out_dir: '" + dir_->path() + "'}\n",
        "train_run"));
    result_ = new TrainResult(train(*config_, make_groups(make_self_communicator(), 1)));
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete config_;
    delete result_;
  }
  void check_loss_falls();
  void check_run_folder();
  void check_generate();
  static TempFolder* dir_;
  static Config* config_;
  static TrainResult* result_;
};
TempFolder* TrainRun::dir_ = nullptr;
Config* TrainRun::config_ = nullptr;
TrainResult* TrainRun::result_ = nullptr;

void TrainRun::check_loss_falls() {
  const TrainResult& r = *result_;
  ASSERT_EQ(r.val_loss.size(), 3u);  // steps 0, 40, 80
  ASSERT_EQ(r.train_loss.size(), static_cast<size_t>(kSteps / kLogInterval));
  const CharTokenizer tok = CharTokenizer::load(dir_->path() + "/vocab.json");
  // At step 0 the model is at its init: about ln(V) (see tests/model).
  const double start = r.val_loss.front().second;
  EXPECT_NEAR(start, std::log(static_cast<double>(tok.vocab_size())), 0.1);
  EXPECT_LT(r.train_loss.back().second, 0.7 * start);
  EXPECT_LT(r.val_loss.back().second, 0.7 * start);
  EXPECT_GT(r.ms_per_step, 0.0);
  EXPECT_GT(r.tokens_per_s, 0.0);
}

void TrainRun::check_run_folder() {
  for (const char* name : {"config.yaml", "vocab.json", "metrics.jsonl", "model.pt"}) {
    EXPECT_TRUE(std::filesystem::is_regular_file(dir_->path() + "/" + name)) << name;
  }
  // config.yaml reads back to the same resolved config.
  EXPECT_EQ(to_yaml(load_config({dir_->path() + "/config.yaml"}, {})), to_yaml(*config_));

  // metrics.jsonl: one JSON object per line with its step and a train or validation loss,
  // agreeing with what train() returned.
  std::ifstream in(dir_->path() + "/metrics.jsonl");
  std::vector<std::pair<int64_t, double>> train_lines, val_lines;
  std::string line;
  while (std::getline(in, line)) {
    ASSERT_FALSE(line.empty());
    EXPECT_EQ(line.front(), '{') << line;
    EXPECT_EQ(line.back(), '}') << line;
    const double step = json_number(line, "step");
    ASSERT_FALSE(std::isnan(step)) << line;
    const double train_loss = json_number(line, "train_loss"), val = json_number(line, "val_loss");
    ASSERT_NE(std::isnan(train_loss), std::isnan(val)) << "exactly one kind of loss: " << line;
    if (!std::isnan(train_loss)) train_lines.emplace_back(static_cast<int64_t>(step), train_loss);
    else val_lines.emplace_back(static_cast<int64_t>(step), val);
  }
  ASSERT_EQ(train_lines.size(), result_->train_loss.size());
  ASSERT_EQ(val_lines.size(), result_->val_loss.size());
  for (size_t i = 0; i < train_lines.size(); ++i) {
    // Step = steps done: 10, 20, ..., 80.
    EXPECT_EQ(train_lines[i].first, static_cast<int64_t>((i + 1) * kLogInterval));
    EXPECT_EQ(result_->train_loss[i].first, train_lines[i].first);
    EXPECT_NEAR(train_lines[i].second, result_->train_loss[i].second, 1e-6);
  }
  for (size_t i = 0; i < val_lines.size(); ++i) {
    EXPECT_EQ(val_lines[i].first, static_cast<int64_t>(i * kEvalInterval));
    EXPECT_EQ(result_->val_loss[i].first, val_lines[i].first);
    EXPECT_NEAR(val_lines[i].second, result_->val_loss[i].second, 1e-6);
  }
}

void TrainRun::check_generate() {
  const CharTokenizer tok = CharTokenizer::load(dir_->path() + "/vocab.json");
  const std::string& vocab = tok.chars();
  const std::string prompt = vocab.substr(vocab.size() - 3);  // three characters of the data
  GenerateOptions opt;
  opt.run_dir = dir_->path();
  opt.prompt = prompt;
  opt.num_tokens = 40;
  opt.temperature = 0;
  const std::string greedy = generate_text(opt);
  ASSERT_EQ(greedy.size(), prompt.size() + 40);
  EXPECT_EQ(greedy.substr(0, prompt.size()), prompt);
  for (char ch : greedy) EXPECT_NE(vocab.find(ch), std::string::npos) << int(ch);
  EXPECT_EQ(generate_text(opt), greedy);  // greedy is deterministic

  // The first greedy character is the argmax of the saved model's logits after the prompt.
  const Config cfg = load_config({dir_->path() + "/config.yaml"}, {});
  GPT model = make_gpt(cfg, tok.vocab_size());
  load_model(dir_->path() + "/model.pt", *model, 0, 1);
  model->eval();
  torch::NoGradGuard no_grad;
  const at::Tensor idx = at::tensor(tok.encode(prompt), at::kLong).unsqueeze(0);
  const int64_t next = model->forward(idx).select(1, -1).argmax().item<int64_t>();
  EXPECT_EQ(greedy[prompt.size()], vocab[next]);

  // Sampling: in the vocabulary, and reproducible for a seed.
  opt.temperature = 1.0;
  opt.top_k = 5;
  opt.seed = 3;
  const std::string sampled = generate_text(opt);
  ASSERT_EQ(sampled.size(), prompt.size() + 40);
  EXPECT_EQ(sampled.substr(0, prompt.size()), prompt);
  for (char ch : sampled) EXPECT_NE(vocab.find(ch), std::string::npos) << int(ch);
  EXPECT_EQ(generate_text(opt), sampled);
}

// One test, so that the run is trained once (ctest runs every test in its own process).
TEST_F(TrainRun, LossFallsRunFolderAndGenerate) {
  {
    SCOPED_TRACE("loss falls");
    check_loss_falls();
  }
  {
    SCOPED_TRACE("run folder");
    check_run_folder();
  }
  {
    SCOPED_TRACE("generate");
    check_generate();
  }
}

}  // namespace
}  // namespace sy
