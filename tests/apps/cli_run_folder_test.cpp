// Run folders through the command line (Note [Run folders] in src/train/run_folder.h,
// docs/checkpoints.md#run-folders): `train` without --resume into a folder that holds a run is
// refused and leaves it untouched; --overwrite starts over without the old run's newer
// checkpoints, and removes nothing when the new run fails to load its data or model; --resume auto continues; a folder a live job holds (its .lock) is refused naming
// the holder, a stale lock is taken over; an out_dir inside a checkpoint is refused; `~` is the
// home folder; the default out_dir is runs/<config name>. Also the command line's options
// (issue 19 item 6): greedy sampling below a tiny temperature.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "apps/cli_util.h"

namespace sy::cli {
namespace {

namespace fs = std::filesystem;

// A small, fast run: a checkpoint every 2 steps, every checkpoint kept.
std::vector<std::string> train_args(const std::string& out_dir, int steps,
                                    const std::vector<std::string>& more = {}) {
  std::vector<std::string> extra = {"--set", "train.keep_checkpoints=0"};
  extra.insert(extra.end(), more.begin(), more.end());
  return small_run_args(out_dir, steps, /*interval=*/2, extra);
}

bool exists(const std::string& path) { return fs::exists(fs::symlink_status(path)); }

// `path` as the binary names folders it resolved ("/tmp//x/../y" -> "/tmp/y").
std::string normal(const std::string& path) {
  std::string p = fs::path(path).lexically_normal().string();
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

// Every file below `dir` (relative path -> contents): what "nothing changed" compares.
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file()) {
      files[fs::relative(entry.path(), dir).string()] = read_text(entry.path().string());
    }
  }
  return files;
}

std::vector<std::string> checkpoints_of(const std::string& run) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(run + "/checkpoints"))
    names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

std::string host_name() {
  char buf[HOST_NAME_MAX + 1] = {};
  gethostname(buf, sizeof(buf) - 1);
  return buf;
}

void write_lock(const std::string& run, long pid) {
  fs::create_directories(run);
  write_text(run + "/.lock",
             "{\"host\": \"" + host_name() + "\", \"pid\": " + std::to_string(pid) + "}\n");
}

// Sets an environment variable for the scope (nullptr: unset), then restores it.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    had_ = old != nullptr;
    if (had_) old_ = old;
    if (value != nullptr) setenv(name, value, 1);
    else unsetenv(name);
  }
  ~ScopedEnv() {
    if (had_) setenv(name_.c_str(), old_.c_str(), 1);
    else unsetenv(name_.c_str());
  }

 private:
  std::string name_, old_;
  bool had_ = false;
};

TEST(CliRunFolder, ExistingRunIsRefusedAndLeftUnchanged) {
  TempFolder dir;
  const std::string run = dir / "run";
  const RunResult first = run_switchyard(dir.path(), train_args(run, 4));
  ASSERT_EQ(first.exit_code, 0) << first.describe();
  const auto before = snapshot(run);
  ASSERT_TRUE(before.count("checkpoints/step_4/manifest.json"));
  ASSERT_TRUE(before.count("model.pt"));
  EXPECT_FALSE(exists(run + "/.lock")) << "the lock goes when the run ends";

  const RunResult again = run_switchyard(dir.path(), train_args(run, 4));
  expect_clean_error(
      again, {"train.out_dir '" + run + "' already holds a run", "config.yaml", "metrics.jsonl",
              "model.pt", "checkpoints/step_2..step_4", "--resume auto", "--overwrite"});
  EXPECT_TRUE(snapshot(run) == before) << "a refused run changed the folder";
  EXPECT_FALSE(exists(run + "/.lock"));
}

TEST(CliRunFolder, OverwriteStartsOverWithoutTheOldCheckpoints) {
  TempFolder dir;
  const std::string run = dir / "run";
  const RunResult first = run_switchyard(dir.path(), train_args(run, 8));
  ASSERT_EQ(first.exit_code, 0) << first.describe();
  EXPECT_EQ(checkpoints_of(run),
            (std::vector<std::string>{"step_2", "step_4", "step_6", "step_8"}));

  expect_clean_error(
      run_switchyard(dir.path(), train_args(run, 4, {"--overwrite", "--resume", "auto"})),
      {"--overwrite", "--resume", "give one of them"});

  const RunResult over = run_switchyard(dir.path(), train_args(run, 4, {"--overwrite"}));
  ASSERT_EQ(over.exit_code, 0) << over.describe();
  EXPECT_NE(over.err.find("--overwrite: removed the earlier run in " + run), std::string::npos)
      << over.describe();
  // The old run's newer checkpoints are gone: rotation cannot keep them, --resume auto cannot
  // pick them.
  EXPECT_EQ(checkpoints_of(run), (std::vector<std::string>{"step_2", "step_4"}));
  const std::vector<MetricsLine> metrics = read_metrics(run + "/metrics.jsonl");
  ASSERT_FALSE(metrics.empty());
  EXPECT_EQ(metrics.back().step, 4) << "metrics.jsonl holds the new run only";
  for (const MetricsLine& m : metrics) EXPECT_LE(m.step, 4);
  EXPECT_NE(read_text(run + "/summary.json").find("\"steps\": 4"), std::string::npos)
      << read_text(run + "/summary.json");

  const RunResult resumed = run_switchyard(dir.path(), train_args(run, 6, {"--resume", "auto"}));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.describe();
  EXPECT_NE(resumed.err.find("resumed from " + run + "/checkpoints/step_4 at step 4"),
            std::string::npos)
      << resumed.describe();
}

// The earlier run goes only once this run's data and model have loaded: a run that fails
// before (a missing data file, a model file of another shape for train.init_from) leaves it
// byte for byte; train.init_from may read the earlier run's own model.pt.
TEST(CliRunFolder, OverwriteThatFailsToLoadLeavesTheEarlierRun) {
  TempFolder dir;
  const std::string run = dir / "run";
  const RunResult first = run_switchyard(dir.path(), train_args(run, 4));
  ASSERT_EQ(first.exit_code, 0) << first.describe();
  const auto before = snapshot(run);

  const std::string missing = dir / "typo.txt";
  expect_clean_error(
      run_switchyard(dir.path(),
                     train_args(run, 4, {"--overwrite", "--set", "data.path=" + missing})),
      {missing});
  EXPECT_TRUE(snapshot(run) == before) << "a run that failed to load its data changed the folder";
  expect_clean_error(
      run_switchyard(dir.path(), train_args(run, 4,
                                            {"--overwrite", "--set", "model.d_model=48", "--set",
                                             "train.init_from=" + run})),
      {"train.init_from"});
  EXPECT_TRUE(snapshot(run) == before) << "a run that failed to load init_from changed the folder";
  EXPECT_FALSE(exists(run + "/.lock"));

  const RunResult over = run_switchyard(
      dir.path(), train_args(run, 2, {"--overwrite", "--set", "train.init_from=" + run}));
  ASSERT_EQ(over.exit_code, 0) << over.describe();
  EXPECT_NE(over.err.find("--overwrite: removed the earlier run in " + run), std::string::npos)
      << over.describe();
  EXPECT_EQ(checkpoints_of(run), (std::vector<std::string>{"step_2"}));
}

// An out_dir that cannot be a run's folder is refused naming train.out_dir: blank, a file, a
// folder below a file.
TEST(CliRunFolder, OutDirThatCannotBeAFolderIsNamed) {
  TempFolder dir;
  write_text(dir / "file", "not a folder\n");
  write_text(dir / "blank.yaml", "train:\n  out_dir: \"  \"\n");
  expect_clean_error(
      run_switchyard(dir.path(), train_args("", 2, {"--config", dir / "blank.yaml"})),
      {"train.out_dir is blank ('  ')"});
  EXPECT_FALSE(exists(dir / "  "));
  expect_clean_error(run_switchyard(dir.path(), train_args(dir / "file", 2)),
                     {"train.out_dir: '" + (dir / "file") + "' exists and is not a folder"});
  expect_clean_error(run_switchyard(dir.path(), train_args(dir / "file/run", 2)),
                     {"train.out_dir: cannot create folder '" + (dir / "file/run") + "'"});
  EXPECT_EQ(read_text(dir / "file"), "not a folder\n");
}

TEST(CliRunFolder, ResumeAutoContinuesTheRunInTheFolder) {
  TempFolder dir;
  const std::string run = dir / "run";
  const RunResult first = run_switchyard(dir.path(), train_args(run, 4));
  ASSERT_EQ(first.exit_code, 0) << first.describe();
  const RunResult more = run_switchyard(dir.path(), train_args(run, 6, {"--resume", "auto"}));
  ASSERT_EQ(more.exit_code, 0) << more.describe();
  EXPECT_NE(more.err.find("resumed from " + run + "/checkpoints/step_4 at step 4"),
            std::string::npos)
      << more.describe();
  EXPECT_EQ(checkpoints_of(run), (std::vector<std::string>{"step_2", "step_4", "step_6"}));
  EXPECT_FALSE(exists(run + "/.lock"));
}

TEST(CliRunFolder, FolderOfALiveJobIsRefusedNamingTheHolder) {
  TempFolder dir;
  const std::string run = dir / "run";
  const long holder = static_cast<long>(getpid());  // this test: alive
  write_lock(run, holder);
  const auto before = snapshot(run);
  const RunResult r = run_switchyard(dir.path(), train_args(run, 2));
  expect_clean_error(
      r, {"train.out_dir '" + run + "' is in use by another job",
          "process " + std::to_string(holder) + " on host " + host_name(), run + "/.lock"});
  EXPECT_TRUE(snapshot(run) == before) << "the refused job changed the folder or its lock";
  // --resume auto and --overwrite are refused alike.
  expect_clean_error(run_switchyard(dir.path(), train_args(run, 2, {"--overwrite"})),
                     {"in use by another job", "process " + std::to_string(holder)});
  EXPECT_TRUE(snapshot(run) == before);
}

TEST(CliRunFolder, StaleLockIsTakenOver) {
  TempFolder dir;
  const std::string run = dir / "run";
  const pid_t child = fork();
  if (child == 0) _exit(0);
  ASSERT_GT(child, 0);
  waitpid(child, nullptr, 0);  // gone: its pid names no process
  write_lock(run, child);
  const RunResult r = run_switchyard(dir.path(), train_args(run, 2));
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_NE(r.err.find("took over the stale lock " + run + "/.lock of process " +
                       std::to_string(child) + " on " + host_name()),
            std::string::npos)
      << r.describe();
  EXPECT_TRUE(exists(run + "/model.pt"));
  EXPECT_FALSE(exists(run + "/.lock")) << "released at the end";
}

TEST(CliRunFolder, LockIsReleasedWhenTheRunFails) {
  TempFolder dir;
  const std::string run = dir / "run";
  expect_clean_error(
      run_switchyard(dir.path(), train_args(run, 2, {"--set", "data.path=no_such_corpus.txt"})),
      {"no_such_corpus.txt"});
  EXPECT_FALSE(exists(run)) << "the folder this job made is removed again while empty";
  fs::create_directories(run);
  write_text(run + "/notes.txt", "mine");
  expect_clean_error(
      run_switchyard(dir.path(), train_args(run, 2, {"--set", "data.path=no_such_corpus.txt"})),
      {"no_such_corpus.txt"});
  EXPECT_FALSE(exists(run + "/.lock"));
  EXPECT_EQ(read_text(run + "/notes.txt"), "mine");
}

TEST(CliRunFolder, OutDirInsideACheckpointIsRefused) {
  TempFolder dir;
  const std::string run = dir / "run";
  const RunResult first = run_switchyard(dir.path(), train_args(run, 2));
  ASSERT_EQ(first.exit_code, 0) << first.describe();
  const std::string step = run + "/checkpoints/step_2";
  const auto before = snapshot(run);
  expect_clean_error(
      run_switchyard(dir.path(), train_args(step + "/inner", 2)),
      {"train.out_dir '" + step + "/inner' is inside the checkpoint '" + normal(step) + "'",
       "checkpoint rotation"});
  expect_clean_error(run_switchyard(dir.path(), train_args(step, 2)),
                     {"train.out_dir '" + step + "' is the checkpoint '" + normal(step) + "'"});
  // Relative and through "..": the same folder.
  expect_clean_error(run_switchyard(dir.path(), train_args("run/checkpoints/x/../step_2/inner", 2)),
                     {"is inside the checkpoint '" + normal(step) + "'"});
  EXPECT_TRUE(snapshot(run) == before) << "a refused run changed the checkpoint";
  EXPECT_FALSE(exists(step + "/inner"));
  // A checkpoint copied elsewhere is still one: its manifest.json says so.
  fs::copy(step, dir / "saved", fs::copy_options::recursive);
  expect_clean_error(run_switchyard(dir.path(), train_args(dir / "saved/run", 2)),
                     {"is inside the checkpoint '" + normal(dir / "saved") + "'", "manifest.json"});
  EXPECT_FALSE(exists(dir / "saved/run"));
}

TEST(CliRunFolder, TildeIsTheHomeFolder) {
  TempFolder dir;
  fs::create_directories(dir / "home");
  fs::copy_file(kDebugConfig, dir / "home/cfg.yaml");
  {
    const ScopedEnv home("HOME", (dir / "home").c_str());
    std::vector<std::string> args = train_args("~/x", 2);
    args[2] = "~/cfg.yaml";  // --config
    const RunResult r = run_switchyard(dir.path(), args);
    ASSERT_EQ(r.exit_code, 0) << r.describe();
    EXPECT_TRUE(exists(dir / "home/x/model.pt")) << r.describe();
    EXPECT_NE(read_text(dir / "home/x/config.yaml").find("out_dir: " + dir / "home/x\n"),
              std::string::npos);
    // generate --run ~/x reads the same run.
    const RunResult g =
        run_switchyard(dir.path(), {"generate", "--run", "~/x", "--tokens", "5"}, 120);
    EXPECT_EQ(g.exit_code, 0) << g.describe();
  }
  EXPECT_FALSE(exists(dir / "~")) << "a folder named ~ was made";
  {
    const ScopedEnv no_home("HOME", nullptr);
    expect_clean_error(run_switchyard(dir.path(), train_args("~/y", 2)),
                       {"train.out_dir '~/y'", "HOME is not set"});
    expect_clean_error(run_switchyard(dir.path(), {"generate", "--run", "~/x"}),
                       {"--run '~/x'", "HOME is not set"});
  }
  expect_clean_error(run_switchyard(dir.path(), train_args("~nobody/y", 2)),
                     {"train.out_dir '~nobody/y'", "not ~user"});
  EXPECT_FALSE(exists(dir / "~"));
  EXPECT_FALSE(exists(dir / "~nobody"));
}

TEST(CliRunFolder, DefaultOutDirIsNamedAfterTheConfig) {
  TempFolder dir;
  // debug-cpu.yaml without its train.out_dir line.
  std::string config;
  for (const std::string& line : lines_of(read_text(kDebugConfig))) {
    if (line.find("out_dir:") == std::string::npos) config += line + "\n";
  }
  write_text(dir / "tiny-run.yaml", config);
  std::vector<std::string> args = train_args("", 2);
  args[2] = "tiny-run.yaml";
  const RunResult r = run_switchyard(dir.path(), args);
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_TRUE(exists(dir / "runs/tiny-run/model.pt")) << r.describe();
  EXPECT_FALSE(exists(dir / "runs/default"));
  EXPECT_NE(r.err.find("run folder runs/tiny-run"), std::string::npos) << r.describe();
  // A later file or --set that sets it wins; a file setting it is used as it is.
  args.insert(args.end(), {"--set", "train.out_dir=elsewhere"});
  const RunResult set = run_switchyard(dir.path(), args);
  ASSERT_EQ(set.exit_code, 0) << set.describe();
  EXPECT_TRUE(exists(dir / "elsewhere/model.pt"));
  write_text(dir / "named.yaml", "train:\n  out_dir: runs/chosen\n");
  args = train_args("", 2);
  args.insert(args.begin() + 3, {"--config", dir / "named.yaml"});
  const RunResult named = run_switchyard(dir.path(), args);
  ASSERT_EQ(named.exit_code, 0) << named.describe();
  EXPECT_TRUE(exists(dir / "runs/chosen/model.pt"));
  EXPECT_FALSE(exists(dir / "runs/named"));
}

// generate: a temperature below 1e-4 samples greedily (as 0 does) instead of overflowing; a
// prompt character outside the run's vocabulary is named with --prompt.
TEST(CliGenerate, TinyTemperatureIsGreedy) {
  TempFolder dir;
  const RunResult train = run_switchyard(dir.path(), train_args(dir / "run", 4));
  ASSERT_EQ(train.exit_code, 0) << train.describe();
  std::vector<std::string> outputs;
  for (const char* t : {"0", "1e-9", "0.00001"}) {
    for (const char* seed : {"1", "2"}) {
      const RunResult g = run_switchyard(
          dir.path(),
          {"generate", "--run", dir / "run", "--tokens", "40", "--temperature", t, "--seed", seed},
          120);
      ASSERT_EQ(g.exit_code, 0) << t << "\n" << g.describe();
      outputs.push_back(g.out);
    }
  }
  for (const std::string& out : outputs) EXPECT_EQ(out, outputs[0]);
  expect_clean_error(
      run_switchyard(dir.path(), {"generate", "--run", dir / "run", "--prompt", "a\x01"}),
      {"--prompt: character", "at position 1 is not in the vocabulary",
       "of run folder '" + (dir / "run") + "'"});
  for (const char* bad : {"nan", "inf", "-inf", "-0.5", "1e999", "x"}) {
    expect_clean_error(
        run_switchyard(dir.path(), {"generate", "--run", dir / "run", "--temperature", bad}),
        {"--temperature expects a finite number >= 0", std::string("'") + bad + "'"});
  }
}

// generate on a run folder without model.pt says why there is none.
TEST(CliGenerate, FolderWithoutModelSaysWhy) {
  TempFolder dir;
  const RunResult none = run_switchyard(
      dir.path(), train_args(dir / "none", 2, {"--set", "train.checkpoint_interval=-1"}));
  ASSERT_EQ(none.exit_code, 0) << none.describe();
  expect_clean_error(
      run_switchyard(dir.path(), {"generate", "--run", dir / "none"}),
      {"run folder '" + (dir / "none") + "' has no model.pt", "train.checkpoint_interval -1"});
  const RunResult cut = run_switchyard(dir.path(), train_args(dir / "cut", 4));
  ASSERT_EQ(cut.exit_code, 0) << cut.describe();
  fs::remove(dir / "cut/model.pt");  // as a run stopped before its end leaves it
  expect_clean_error(run_switchyard(dir.path(), {"generate", "--run", dir / "cut"}),
                     {"has no model.pt", "--resume auto"});
}

}  // namespace
}  // namespace sy::cli
