// The switchyard command line end to end on the CPU: a short training run leaves a complete run
// folder whose losses fall, `generate` samples from it, two expert-parallel layouts of the same
// four ranks train identically, and `verify` passes with drops and dropless over EP x DP.
//
// Kept small for shared CI cores: debug-cpu with a few steps (the full config trains 150).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "apps/cli_util.h"
#include "data/pairs.h"

namespace sy::cli {
namespace {

namespace fs = std::filesystem;

TEST(CliRunTest, TrainThenGenerate) {
  TempFolder dir;
  const std::string run = dir / "run";
  const RunResult train =
      run_switchyard(dir.path(), {"train", "--config", kDebugConfig, "--set", "train.max_steps=30",
                                  "--set", "train.log_interval=5", "--set",
                                  "train.eval_interval=10", "--set", "train.eval_iters=2", "--set",
                                  "data.batch_size=8", "--set", "train.out_dir=" + run});
  ASSERT_EQ(train.exit_code, 0) << train.describe();
  ASSERT_FALSE(train.crashed) << train.describe();
  for (const char* file : {"config.yaml", "vocab.json", "metrics.jsonl", "model.pt"}) {
    EXPECT_TRUE(fs::is_regular_file(run + "/" + file)) << file << " missing in " << run;
  }

  const std::vector<MetricsLine> metrics = read_metrics(run + "/metrics.jsonl");
  // A train line every 5 steps; each carries the documented fields.
  const auto train_loss = series(metrics, "train_loss");
  ASSERT_EQ(train_loss.size(), 6u) << read_text(run + "/metrics.jsonl");
  for (size_t i = 0; i < train_loss.size(); ++i) {
    EXPECT_EQ(train_loss[i].first, static_cast<int64_t>(5 * (i + 1)));
    EXPECT_TRUE(std::isfinite(train_loss[i].second));
  }
  for (const MetricsLine& m : metrics) {
    if (m.values.count("train_loss") == 0) continue;
    for (const char* key : {"aux_loss", "z_loss", "drop_fraction", "grad_norm", "lr",
                            "tokens_per_s", "ms_per_step"}) {
      EXPECT_EQ(m.values.count(key), 1u) << key << " missing at step " << m.step;
    }
  }
  // From ln(vocab) ~ 3.9 the loss must fall clearly within 30 steps, in training and validation.
  EXPECT_LT(train_loss.back().second, train_loss.front().second - 0.3);
  const auto val_loss = series(metrics, "val_loss");
  ASSERT_GE(val_loss.size(), 2u);
  EXPECT_EQ(val_loss.front().first, 0);
  EXPECT_EQ(val_loss.back().first, 30);
  EXPECT_LT(val_loss.back().second, val_loss.front().second - 0.3);

  // generate: text of at least the requested length, the same for the same seed.
  const std::vector<std::string> gen = {"generate", "--run", run, "--tokens", "60", "--seed", "7"};
  const RunResult a = run_switchyard(dir.path(), gen, /*timeout_s=*/120);
  ASSERT_EQ(a.exit_code, 0) << a.describe();
  EXPECT_GE(a.out.size(), 60u) << a.describe();
  const RunResult b = run_switchyard(dir.path(), gen, /*timeout_s=*/120);
  EXPECT_EQ(a.out, b.out) << "same seed, different text";
  const RunResult prompted = run_switchyard(
      dir.path(),
      {"generate", "--run", run, "--prompt", "ab", "--tokens", "10", "--temperature", "0"},
      /*timeout_s=*/120);
  if (prompted.exit_code == 0) {
    EXPECT_EQ(prompted.out.rfind("ab", 0), 0u) << "the output starts with the prompt";
  } else {
    // 'a' or 'b' may be missing from the synthetic vocabulary; then the error must be clean.
    expect_clean_error(prompted, {"vocabulary"});
  }
  // A byte the corpus never holds: a clean error, not a crash.
  expect_clean_error(run_switchyard(dir.path(), {"generate", "--run", run, "--prompt", "\x7f"},
                                    /*timeout_s=*/120),
                     {"vocabulary"});
}

// Four in-process ranks as one EP group of 4, or as 2 EP groups of 2 (DP 2): each rank reads the
// same data and capacity is per source rank, so every step's loss is the same (Note [EP
// invariance] carried through backward, gradient sync and the optimizer).
TEST(CliRunTest, EpLayoutsOfFourRanksTrainAlike) {
  TempFolder dir;
  std::vector<std::vector<std::pair<int64_t, double>>> losses;
  for (const char* ep_size : {"4", "2"}) {
    const std::string run = dir / (std::string("ep") + ep_size);
    const RunResult r = run_switchyard(
        dir.path(), {"train", "--config", kDebugConfig, "--ranks", "4", "--set",
                     std::string("parallel.ep_size=") + ep_size, "--set", "train.max_steps=4",
                     "--set", "train.log_interval=1", "--set", "train.eval_interval=0", "--set",
                     "data.batch_size=4", "--set", "train.out_dir=" + run});
    ASSERT_EQ(r.exit_code, 0) << "ep_size " << ep_size << "\n" << r.describe();
    EXPECT_NE(r.err.find(std::string("ep_size ") + ep_size), std::string::npos) << r.err;
    losses.push_back(series(read_metrics(run + "/metrics.jsonl"), "train_loss"));
    ASSERT_EQ(losses.back().size(), 4u) << "ep_size " << ep_size;
  }
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(losses[0][i].first, losses[1][i].first);
    EXPECT_NEAR(losses[0][i].second, losses[1][i].second, 1e-5 * std::abs(losses[0][i].second))
        << "step " << losses[0][i].first;
  }
}

void expect_verify_passes(const std::vector<std::string>& sets) {
  TempFolder dir;
  std::vector<std::string> args = {"verify", "--config", kDebugConfig, "--ranks", "8"};
  for (const std::string& s : sets) {
    args.push_back("--set");
    args.push_back(s);
  }
  const RunResult r = run_switchyard(dir.path(), args);
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_FALSE(r.crashed) << r.describe();
  const std::string all = r.out + r.err;
  EXPECT_NE(all.find("PASS"), std::string::npos) << r.describe();
  EXPECT_EQ(all.find("FAIL"), std::string::npos) << r.describe();
}

// Half the capacity: many choices dropped, and the dropped set must match too.
TEST(CliRunTest, VerifyPassesWithDrops) { expect_verify_passes({"moe.capacity_factor=0.5"}); }

// Dropless (variable splits) over 2 EP groups of 4.
TEST(CliRunTest, VerifyPassesDroplessEpTimesDp) {
  expect_verify_passes({"parallel.ep_size=4", "moe.capacity_factor=0"});
}

}  // namespace
}  // namespace sy::cli

namespace sy::cli {
namespace {

// configs/encoder-mlm-cpu.yaml for a few steps on 2 in-process ranks: eval reports the masked
// tokens' accuracy (in the log and metrics.jsonl), and generate refuses the encoder by name.
TEST(CliRunTest, EncoderTrainsAndGenerateRefusesIt) {
  TempFolder dir;
  ASSERT_FALSE(dir.path().empty());
  const RunResult r = run_switchyard(
      dir.path(), {"train", "--config", kSourceDir + "/configs/encoder-mlm-cpu.yaml", "--ranks",
                   "2", "--set", "train.max_steps=10", "--set", "train.eval_interval=10", "--set",
                   "train.eval_iters=2", "--set", "train.out_dir=enc"});
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_NE((r.out + r.err).find("masked-token accuracy: train "), std::string::npos)
      << r.describe();
  EXPECT_NE(read_text(dir / "enc/metrics.jsonl").find("\"val_accuracy\": "), std::string::npos);
  const RunResult g = run_switchyard(dir.path(), {"generate", "--run", "enc"});
  EXPECT_NE(g.exit_code, 0) << g.describe();
  EXPECT_NE(g.err.find("holds an encoder (model.kind encoder"), std::string::npos) << g.describe();
}

// configs/seq2seq-cpu.yaml for 250 steps (EP: ResumeExactness, train_ep4_matches_inproc.sh):
// the target tokens of the validation pairs are predicted with an accuracy above 0.7 (0.74 here;
// 0.96 after the config's 1500 steps), reported in the log, metrics.jsonl and summary.json. generate
// --source translates a validation sentence of language 0 into language 1's letters, greedily,
// and refuses --prompt. verify --layouts passes on the config.
TEST(CliRunTest, Seq2SeqLearnsTranslatesAndVerifies) {
  TempFolder dir;
  ASSERT_FALSE(dir.path().empty());
  const std::string config = kSourceDir + "/configs/seq2seq-cpu.yaml";
  const RunResult r = run_switchyard(
      dir.path(), {"train", "--config", config, "--set", "train.max_steps=250", "--set",
                   "train.eval_interval=250", "--set", "train.out_dir=s2s"});
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_NE((r.out + r.err).find("| token accuracy: train "), std::string::npos) << r.describe();
  const std::string metrics = read_text(dir / "s2s/metrics.jsonl");
  EXPECT_NE(metrics.find("\"val_exact_match\": "), std::string::npos);
  const std::string summary = read_text(dir / "s2s/summary.json");
  const size_t at = summary.find("\"final_val_accuracy\": ");
  ASSERT_NE(at, std::string::npos) << summary;
  const double accuracy = std::stod(summary.substr(at + 22));
  EXPECT_GT(accuracy, 0.7) << summary;
  std::printf("seq2seq val token accuracy after 250 steps: %.4f\n", accuracy);
  EXPECT_LE(accuracy, 1.0);

  // The last pair of the embedded task is a validation pair.
  const std::vector<TextPair> pairs =
      synthetic_pairs(kEmbeddedCorpusSeed, 200000, PairTask::kTranslate, 0, 1, 47);
  const TextPair& val = pairs.back();
  const RunResult g = run_switchyard(
      dir.path(), {"generate", "--run", "s2s", "--source", val.source, "--temperature", "0"});
  ASSERT_EQ(g.exit_code, 0) << g.describe();
  std::string out = g.out;
  while (!out.empty() && out.back() == '\n') out.pop_back();
  EXPECT_FALSE(out.empty());
  EXPECT_LE(out.size(), 47u);
  std::string target_letters, source_letters;
  for (const TextPair& p : pairs) {
    target_letters += p.target;
    source_letters += p.source;
  }
  size_t in_target = 0;
  for (char c : out) in_target += target_letters.find(c) != std::string::npos ? 1 : 0;
  EXPECT_EQ(in_target, out.size())
      << "source: " << val.source << "\nout: " << out << "\nexpected: " << val.target;
  const RunResult p = run_switchyard(dir.path(), {"generate", "--run", "s2s", "--prompt", "x"});
  EXPECT_NE(p.exit_code, 0);
  EXPECT_NE(p.err.find("holds an encoder_decoder: give the sequence to translate with --source"),
            std::string::npos)
      << p.describe();

  const RunResult v = run_switchyard(dir.path(), {"verify", "--layouts", "--config", config});
  EXPECT_EQ(v.exit_code, 0) << v.describe();
}

// `switchyard params`: every parameter by the name the trainer uses, its shape and count, the
// routed experts split over the EP ranks, and a total that is the sum of the rows.
TEST(CliParams, ListsEveryParameterAndItsEpRanks) {
  TempFolder dir;
  ASSERT_FALSE(dir.path().empty());
  const RunResult r = run_switchyard(dir.path(), {"params", "--config", kDebugConfig, "--ranks",
                                                  "4", "--set", "parallel.ep_size=2"});
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_NE(r.out.find("blocks.1.moe.experts.w1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[8, 64, 256]"), std::string::npos) << r.out;  // E, d_model, d_ff
  EXPECT_NE(r.out.find("ep0: 0-3, ep1: 4-7"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("blocks.0.moe.router.weight"), std::string::npos) << r.out;
  int64_t sum = 0, total = -1;
  for (const std::string& line : lines_of(r.out)) {
    if (line.find(" parameters: ") != std::string::npos) {
      total = std::stoll(line);
      continue;
    }
    if (line.rfind("name", 0) == 0 || line.find("buffer") != std::string::npos) continue;
    // name, shape (with spaces), elements: the count is the first number after the ']'.
    const size_t close = line.find(']');
    ASSERT_NE(close, std::string::npos) << line;
    sum += std::stoll(line.substr(close + 1));
  }
  EXPECT_EQ(total, sum);
  // By hand: wte 48x64 + wpe 64x64 + 2 blocks x (ln 2x128 + qkv 192x64+192 + proj 64x64+64 +
  // router 64x8 + experts 8x(64x256 + 256x64 + 256 + 64)) + ln_f 128 + lm_head 48x64.
  EXPECT_EQ(total, 3072 + 4096 + 2 * (256 + 12480 + 4160 + 512 + 8 * (16384 + 16384 + 256 + 64)) +
                       128 + 3072);
}

}  // namespace
}  // namespace sy::cli
