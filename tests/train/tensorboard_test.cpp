// train.tensorboard: a short CPU run on the embedded corpus writes one events file in out_dir,
// read back by the independent reader of tests/common/tfrecord_reader.h: train/loss at every log
// step equals metrics.jsonl's train_loss (to float precision: the file keeps 8 digits) and
// exactly the float of TrainResult's; eval/val_loss equals TrainResult's val_loss; every other
// train/ and perf/ tag is there at every log step; expert_load has a tag per MoE layer and expert
// whose shares sum to 1 per layer and step. A resumed run adds a second file and the two
// together hold each log step once; only world rank 0 writes; with the key off no file is
// written.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "../common/tfrecord_reader.h"
#include "common/files.h"
#include "config/config.h"
#include "parallel/groups.h"
#include "parallel/inproc_comm.h"
#include "train/trainer.h"
#include "temp_folder.h"

namespace sy {
namespace {

using sy::testing::TempFolder;

using Points = std::vector<std::pair<int64_t, double>>;  // (step, value)

constexpr int64_t kSteps = 12, kLogInterval = 4, kEvalInterval = 6;
constexpr int64_t kMoeLayers = 2, kExperts = 4;

// Two MoE blocks of four experts on the embedded synthetic corpus: log steps 4, 8, 12; eval at
// 0, 6 and 12.
Config tb_config(const std::string& out_dir, bool tensorboard) {
  return load_config_from_string(
      "model: {n_layers: 2, d_model: 16, n_heads: 2, d_ff: 32, block_size: 8, dropout: 0.0}\n"
      "moe: {num_experts: 4, top_k: 2, router: topk, capacity_factor: 1.0, every: 1}\n"
      "data: {batch_size: 4, synthetic_chars: 20000}\n"
      "train: {max_steps: 12, log_interval: 4, eval_interval: 6, eval_iters: 2, warmup_steps: 2,\n"
      "        seed: 3, device: cpu, out_dir: '" +
          out_dir + "', tensorboard: " + (tensorboard ? "true" : "false") + "}\n",
      "tensorboard_test");
}

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

// The number after "key": in a one-line JSON object (NaN when absent).
double json_number(const std::string& line, const std::string& key) {
  const std::string tag = "\"" + key + "\": ";
  const size_t at = line.find(tag);
  if (at == std::string::npos) return std::nan("");
  return std::stod(line.substr(at + tag.size()));
}

// metrics.jsonl's (step, key) points, in file order.
Points metrics_points(const std::string& dir, const std::string& key) {
  std::ifstream in(dir + "/metrics.jsonl");
  Points points;
  std::string line;
  while (std::getline(in, line)) {
    const double v = json_number(line, key);
    if (!std::isnan(v)) points.emplace_back(static_cast<int64_t>(json_number(line, "step")), v);
  }
  return points;
}

// Every scalar of the folder's events files (in name order, as TensorBoard reads them), by tag.
std::map<std::string, std::vector<tfrecord::Scalar>> read_scalars(const std::string& dir) {
  std::map<std::string, std::vector<tfrecord::Scalar>> by_tag;
  for (const std::string& file : tfrecord::events_files(dir)) {
    const std::vector<tfrecord::Event> events = tfrecord::read_events(file);
    if (events.empty()) {
      ADD_FAILURE() << "no events in " << file;
      continue;
    }
    EXPECT_EQ(events[0].file_version, "brain.Event:2") << file;
    for (const tfrecord::Scalar& s : tfrecord::scalars(events)) by_tag[s.tag].push_back(s);
  }
  return by_tag;
}

std::vector<int64_t> steps_of(const std::vector<tfrecord::Scalar>& scalars) {
  std::vector<int64_t> steps;
  for (const tfrecord::Scalar& s : scalars) steps.push_back(s.step);
  return steps;
}

// The events' points of a tag against a metrics.jsonl key: the same steps, values equal to float
// precision (metrics.jsonl keeps 8 significant digits, one fewer than a float round trip needs).
void expect_matches_metrics(const std::vector<tfrecord::Scalar>& got, const Points& metrics,
                            const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_EQ(got.size(), metrics.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].step, metrics[i].first);
    EXPECT_FLOAT_EQ(got[i].value, static_cast<float>(metrics[i].second)) << "step " << got[i].step;
  }
}

// ... and against TrainResult's entries: exactly their float.
void expect_equals_result(const std::vector<tfrecord::Scalar>& got, const Points& result,
                          const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_EQ(got.size(), result.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].step, result[i].first);
    EXPECT_EQ(got[i].value, static_cast<float>(result[i].second)) << "step " << got[i].step;
  }
}

TEST(Tensorboard, EventsMatchMetricsAndResult) {
  const TempFolder folder("tb_on");
  const std::string& dir = folder.path();
  const TrainResult result = train_on(1, tb_config(dir, true));
  const std::vector<std::string> files = tfrecord::events_files(dir);
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0].rfind(dir + "/events.out.tfevents.", 0), 0u) << files[0];

  auto scalars = read_scalars(dir);
  const std::vector<int64_t> log_steps = {4, 8, 12}, eval_steps = {0, 6, 12};
  ASSERT_EQ(result.train_loss.size(), log_steps.size());
  ASSERT_EQ(result.val_loss.size(), eval_steps.size());

  expect_matches_metrics(scalars["train/loss"], metrics_points(dir, "train_loss"), "train/loss");
  expect_equals_result(scalars["train/loss"], result.train_loss, "train/loss");
  expect_matches_metrics(scalars["eval/val_loss"], metrics_points(dir, "val_loss"),
                         "eval/val_loss");
  expect_equals_result(scalars["eval/val_loss"], result.val_loss, "eval/val_loss");
  expect_matches_metrics(scalars["eval/train_loss"], metrics_points(dir, "eval_train_loss"),
                         "eval/train_loss");
  const std::vector<std::pair<std::string, std::string>> train_tags = {
      {"train/aux_loss", "aux_loss"},
      {"train/z_loss", "z_loss"},
      {"train/drop_fraction", "drop_fraction"},
      {"train/grad_norm", "grad_norm"},
      {"train/lr", "lr"},
      {"perf/tokens_per_s", "tokens_per_s"},
      {"perf/ms_per_step", "ms_per_step"}};
  for (const auto& [tag, key] : train_tags) {
    expect_matches_metrics(scalars[tag], metrics_points(dir, key), tag);
    EXPECT_EQ(steps_of(scalars[tag]), log_steps) << tag;
  }
  EXPECT_GT(scalars["train/aux_loss"].at(0).value, 0.0f);
  EXPECT_GT(scalars["perf/tokens_per_s"].at(0).value, 0.0f);

  // expert_load/layer<l>/expert<e> (one digit each here: 2 layers, 4 experts): every tag at
  // every log step, shares in [0, 1] summing to 1 per layer.
  for (int64_t l = 0; l < kMoeLayers; ++l) {
    for (size_t i = 0; i < log_steps.size(); ++i) {
      double sum = 0;
      for (int64_t e = 0; e < kExperts; ++e) {
        const std::string tag =
            "expert_load/layer" + std::to_string(l) + "/expert" + std::to_string(e);
        const std::vector<tfrecord::Scalar>& points = scalars[tag];
        ASSERT_EQ(steps_of(points), log_steps) << tag;
        EXPECT_GE(points[i].value, 0.0f) << tag;
        EXPECT_LE(points[i].value, 1.0f) << tag;
        sum += points[i].value;
      }
      EXPECT_NEAR(sum, 1.0, 1e-6) << "layer " << l << " step " << log_steps[i];
    }
  }
  // Nothing else: 8 train/perf tags, 2 eval tags and the expert loads.
  EXPECT_EQ(scalars.size(), 8u + 2u + static_cast<size_t>(kMoeLayers * kExperts));
}

TEST(Tensorboard, ResumedRunAddsAFileAndEachStepIsLoggedOnce) {
  const TempFolder folder("tb_resume");
  const std::string& dir = folder.path();
  Config stopped = tb_config(dir, true);
  stopped.train.stop_at_step = 8;
  const TrainResult first = train_on(1, stopped);
  ASSERT_EQ(first.steps, 8);
  const TrainResult second = train_on(1, tb_config(dir, true), "auto");
  ASSERT_EQ(second.start_step, 8);
  ASSERT_EQ(tfrecord::events_files(dir).size(), 2u);
  auto scalars = read_scalars(dir);
  // The two files in name order hold the log steps once each, matching metrics.jsonl (which
  // the resumed run continued).
  EXPECT_EQ(steps_of(scalars["train/loss"]), (std::vector<int64_t>{4, 8, 12}));
  expect_matches_metrics(scalars["train/loss"], metrics_points(dir, "train_loss"), "train/loss");
  expect_matches_metrics(scalars["eval/val_loss"], metrics_points(dir, "val_loss"),
                         "eval/val_loss");
}

TEST(Tensorboard, OnlyRankZeroWrites) {
  const TempFolder folder("tb_ranks");
  const std::string& dir = folder.path();
  const TrainResult result = train_on(2, tb_config(dir, true));
  ASSERT_EQ(tfrecord::events_files(dir).size(), 1u);
  auto scalars = read_scalars(dir);
  expect_equals_result(scalars["train/loss"], result.train_loss, "train/loss");
  for (int64_t e = 0; e < kExperts; ++e) {
    EXPECT_EQ(scalars["expert_load/layer1/expert" + std::to_string(e)].size(), 3u) << e;
  }
}

TEST(Tensorboard, OffWritesNoEventsFile) {
  const TempFolder folder("tb_off");
  const std::string& dir = folder.path();
  train_on(1, tb_config(dir, false));
  EXPECT_TRUE(tfrecord::events_files(dir).empty());
  EXPECT_FALSE(metrics_points(dir, "train_loss").empty());  // the run did write its folder
}

}  // namespace
}  // namespace sy
