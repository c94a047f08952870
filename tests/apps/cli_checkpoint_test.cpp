// Checkpoints through the command line (docs/checkpoints.md): a save killed midway (injected with
// debug.kill_in_save_step) leaves the previous checkpoint loadable and `--resume auto` picks it;
// bad --resume arguments and a corrupt checkpoint end with one clear error.
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cli_util.h"

namespace sy::cli {
namespace {

// A small, fast run: 20 steps, a checkpoint every 5.
std::vector<std::string> train_args(const std::string& out_dir,
                                    const std::vector<std::string>& more = {}) {
  return small_run_args(out_dir, /*steps=*/20, /*interval=*/5, more);
}

bool exists(const std::string& path) { return std::filesystem::exists(path); }

TEST(CliCheckpoint, KilledSaveLeavesThePreviousCheckpointAndAutoResumesFromIt) {
  TempFolder dir;
  const std::string run = dir / "run", ckpts = dir / "run/checkpoints";
  const RunResult killed =
      run_switchyard(dir.path(), train_args(run, {"--set", "debug.kill_in_save_step=10"}));
  EXPECT_FALSE(killed.timed_out) << killed.describe();
  EXPECT_EQ(killed.exit_code, 17) << killed.describe();  // died (std::_Exit) inside the save
  EXPECT_NE(killed.err.find("dying in the middle of saving step 10"), std::string::npos)
      << killed.describe();
  EXPECT_TRUE(exists(ckpts + "/step_5/manifest.json"));
  EXPECT_TRUE(exists(ckpts + "/step_10.partial/dense.pt"));        // the files were written ...
  EXPECT_FALSE(exists(ckpts + "/step_10.partial/manifest.json"));  // ... but not the manifest
  EXPECT_FALSE(exists(ckpts + "/step_10"));

  const RunResult resumed = run_switchyard(dir.path(), train_args(run, {"--resume", "auto"}));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.describe();
  EXPECT_NE(resumed.err.find("resumed from " + ckpts + "/step_5 at step 5"), std::string::npos)
      << resumed.describe();
  EXPECT_FALSE(exists(ckpts + "/step_10.partial"));  // removed by the next save
  for (const char* kept : {"step_10", "step_15", "step_20"}) {
    EXPECT_TRUE(exists(ckpts + "/" + kept + "/manifest.json")) << kept;
  }
  EXPECT_FALSE(exists(ckpts + "/step_5"));  // train.keep_checkpoints: 3
  // metrics.jsonl: train lines 5 (first attempt), then 10..20 (resumed), none twice.
  std::vector<std::string> steps;
  for (const std::string& line : lines_of(read_text(run + "/metrics.jsonl"))) {
    if (line.find("\"train_loss\"") != std::string::npos)
      steps.push_back(line.substr(9, line.find(',') - 9));
  }
  EXPECT_EQ(steps, (std::vector<std::string>{"5", "10", "15", "20"}));

  // Resuming the finished run trains nothing more and says so cleanly.
  const RunResult again = run_switchyard(dir.path(), train_args(run, {"--resume", "auto"}));
  EXPECT_EQ(again.exit_code, 0) << again.describe();
  EXPECT_NE(again.err.find("at step 20"), std::string::npos) << again.describe();
}

TEST(CliCheckpoint, AutoWithoutCheckpointStartsFromStepZero) {
  TempFolder dir;
  const RunResult r = run_switchyard(
      dir.path(), train_args(dir / "run", {"--set", "train.max_steps=5", "--resume", "auto"}));
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_NE(r.err.find("no complete checkpoint under"), std::string::npos) << r.describe();
  EXPECT_TRUE(exists(dir / "run/checkpoints/step_5/manifest.json"));
}

TEST(CliCheckpoint, BadResumeArgumentsAndCorruptCheckpoint) {
  TempFolder dir;
  expect_clean_error(
      run_switchyard(dir.path(), train_args(dir / "run", {"--resume", dir / "nope"})),
      {dir / "nope", "does not exist"});
  expect_clean_error(run_switchyard(dir.path(), {"train", "--config", kDebugConfig, "--resume"}),
                     {"--resume expects a value"});
  expect_clean_error(
      run_switchyard(dir.path(), {"generate", "--run", dir.path(), "--resume", "auto"}),
      {"unknown option '--resume'"});

  const RunResult first =
      run_switchyard(dir.path(), train_args(dir / "run", {"--set", "train.max_steps=5"}));
  ASSERT_EQ(first.exit_code, 0) << first.describe();
  const std::string dense = dir / "run/checkpoints/step_5/dense.pt";
  std::string bytes = read_text(dense);
  bytes[bytes.size() / 3] ^= 0x20;
  write_text(dense, bytes);
  expect_clean_error(run_switchyard(dir.path(), train_args(dir / "run", {"--resume", "auto"})),
                     {dense, "CRC-32", "corrupt"});
  // Another model shape, named with the key and both values.
  expect_clean_error(
      run_switchyard(dir.path(), train_args(dir / "run", {"--set", "model.d_model=64", "--resume",
                                                          dir / "run/checkpoints/step_5"})),
      {"config.yaml", "model.d_model is 32, this run has 64"});
}

}  // namespace
}  // namespace sy::cli
