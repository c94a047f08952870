// `switchyard sweep` end to end (src/study/sweep.h, docs/experiments.md): a small grid trains one
// run per point and tabulates them; --dry-run and --summarize; a failing point is recorded and
// the others go on; a sweep interrupted by SIGTERM continues where it stopped when run again,
// without training its finished runs again; a locked folder and a bad grid are refused cleanly.
//
// Kept small for shared CI cores: a model of one layer, d_model 32, block 16, a few steps.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "cli_util.h"

namespace sy::cli {
namespace {

namespace fs = std::filesystem;

// The grid's `set` for a tiny, fast run (before any point's own values).
const char* const kTinySet =
    "set:\n"
    "  model.n_layers: 1\n"
    "  model.d_model: 32\n"
    "  model.d_ff: 64\n"
    "  model.block_size: 16\n"
    "  data.batch_size: 4\n"
    "  train.warmup_steps: 2\n"
    "  train.eval_iters: 2\n"
    "  train.keep_checkpoints: 1\n";

std::vector<std::string> sweep_args(const std::string& grid, const std::string& out,
                                    const std::vector<std::string>& more = {}) {
  std::vector<std::string> args = {"sweep", "--config", kDebugConfig, "--grid", grid, "--out", out};
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

// RFC 4180 fields of one CSV record (no newlines inside fields).
std::vector<std::string> csv_fields(const std::string& line) {
  std::vector<std::string> fields(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted && c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
      fields.back() += '"';
      ++i;
    } else if (c == '"') {
      quoted = !quoted;
    } else if (c == ',' && !quoted) {
      fields.emplace_back();
    } else {
      fields.back() += c;
    }
  }
  return fields;
}

// results.csv as rows of column -> text.
struct Table {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  std::string cell(size_t row, const std::string& column) const {
    for (size_t c = 0; c < header.size(); ++c) {
      if (header[c] == column) return rows.at(row).at(c);
    }
    ADD_FAILURE() << "no column " << column;
    return "";
  }
};

Table read_table(const std::string& sweep_dir) {
  Table t;
  const std::vector<std::string> lines = lines_of(read_text(sweep_dir + "/results.csv"));
  if (lines.empty()) return t;
  t.header = csv_fields(lines[0]);
  for (size_t i = 1; i < lines.size(); ++i) {
    t.rows.push_back(csv_fields(lines[i]));
    EXPECT_EQ(t.rows.back().size(), t.header.size()) << lines[i];
  }
  return t;
}

size_t count_of(const std::string& text, const std::string& part) {
  size_t n = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// The mean of a metrics.jsonl field over the lines that have it.
double mean_of(const std::string& metrics_path, const std::string& key) {
  const auto s = series(read_metrics(metrics_path), key);
  double sum = 0;
  for (const auto& [step, v] : s) sum += v;
  return s.empty() ? NAN : sum / static_cast<double>(s.size());
}

TEST(CliSweep, RunsEveryPointAndTabulatesThem) {
  TempFolder dir;
  ASSERT_FALSE(dir.path().empty()) << "no temporary folder";
  const std::string grid = dir / "grid.yaml", out = dir / "sweep";
  write_text(grid, std::string("grid:\n  zip:\n    moe.num_experts: [2, 4, 4]\n"
                               "    moe.top_k: [1, 1, 2]\n") +
                       kTinySet +
                       "  train.max_steps: 8\n  train.eval_interval: 4\n  train.log_interval: 2\n"
                       "  train.checkpoint_interval: 4\n");
  const std::vector<std::string> names = {"num_experts=2_top_k=1", "num_experts=4_top_k=1",
                                          "num_experts=4_top_k=2"};
  // --set after the grid's set: train.seed for every run.
  const RunResult r = run_switchyard(
      dir.path(), sweep_args(grid, out, {"--set", "train.seed=7", "--parallel", "2"}));
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_TRUE(contains(r.out, "3 runs in " + out + ": 0 done before, 3 to run, 2 at a time"))
      << r.out;
  EXPECT_TRUE(contains(r.out, "started in slot 1")) << r.out;
  EXPECT_TRUE(contains(r.out, "3 runs, 0 failed")) << r.out;

  const Table t = read_table(out);
  ASSERT_EQ(t.rows.size(), 3u) << read_text(out + "/results.csv");
  ASSERT_GE(t.header.size(), 4u);
  EXPECT_EQ(t.header[0], "run");
  EXPECT_EQ(t.header[1], "moe.num_experts");
  EXPECT_EQ(t.header[2], "moe.top_k");
  EXPECT_EQ(t.header[3], "status");
  const std::vector<std::string> experts = {"2", "4", "4"}, top_k = {"1", "1", "2"};
  for (size_t i = 0; i < 3; ++i) {
    SCOPED_TRACE(names[i]);
    EXPECT_EQ(t.cell(i, "run"), names[i]);
    EXPECT_EQ(t.cell(i, "moe.num_experts"), experts[i]);
    EXPECT_EQ(t.cell(i, "moe.top_k"), top_k[i]);
    EXPECT_EQ(t.cell(i, "status"), "done");
    EXPECT_EQ(t.cell(i, "error"), "");
    EXPECT_EQ(t.cell(i, "steps"), "8");
    EXPECT_EQ(t.cell(i, "tokens"), "512");  // 8 steps x 4 sequences x 16 tokens
    const std::string run = out + "/" + names[i];
    // The table's losses are the metrics' own: the last val_loss line and the mean drop.
    const auto val = series(read_metrics(run + "/metrics.jsonl"), "val_loss");
    ASSERT_FALSE(val.empty());
    EXPECT_EQ(val.back().first, 8);
    EXPECT_NEAR(std::stod(t.cell(i, "final_val_loss")), val.back().second, 1e-6);
    EXPECT_NEAR(std::stod(t.cell(i, "drop_fraction")),
                mean_of(run + "/metrics.jsonl", "drop_fraction"), 1e-6);
    EXPECT_NEAR(std::stod(t.cell(i, "train_flops")), 512 * std::stod(t.cell(i, "flops_per_token")),
                1e-6 * std::stod(t.cell(i, "train_flops")));
    // The run folder: its config with the point's values (and the command line's --set).
    for (const char* file :
         {"config.yaml", "metrics.jsonl", "summary.json", "status.json", "train.log"}) {
      EXPECT_TRUE(fs::is_regular_file(run + "/" + file)) << file;
    }
    const std::string config = read_text(run + "/config.yaml");
    EXPECT_TRUE(contains(config, "  num_experts: " + experts[i] + "\n")) << config;
    EXPECT_TRUE(contains(config, "  top_k: " + top_k[i] + "\n")) << config;
    EXPECT_TRUE(contains(config, "  n_layers: 1\n")) << config;
    EXPECT_TRUE(contains(config, "  seed: 7\n")) << config;
    bool out_dir_is_run = false;
    for (const std::string& line : lines_of(config)) {
      if (line.rfind("  out_dir: ", 0) == 0) out_dir_is_run = contains(line, run);
    }
    EXPECT_TRUE(out_dir_is_run) << config;
    EXPECT_TRUE(contains(read_text(run + "/summary.json"), "\"status\": \"complete\""));
    const std::string status = read_text(run + "/status.json");
    EXPECT_TRUE(contains(status, "\"status\": \"done\"")) << status;
    EXPECT_TRUE(contains(status, "\"attempts\": 1,")) << status;
    EXPECT_EQ(count_of(read_text(run + "/train.log"), "[sweep] attempt "), 1u);
  }
  // More experts: more parameters in all; top-2 of 4: more active per token than top-1 of 4.
  EXPECT_LT(std::stod(t.cell(0, "params_total")), std::stod(t.cell(1, "params_total")));
  EXPECT_EQ(t.cell(1, "params_total"), t.cell(2, "params_total"));
  EXPECT_LT(std::stod(t.cell(1, "params_active")), std::stod(t.cell(2, "params_active")));
  EXPECT_EQ(lines_of(read_text(out + "/results.jsonl")).size(), 3u);
  EXPECT_TRUE(contains(read_text(out + "/sweep.yaml"), "name: " + names[2]));

  // --summarize rebuilds the same table from the run folders.
  const std::string csv = read_text(out + "/results.csv"),
                    jsonl = read_text(out + "/results.jsonl");
  fs::remove(out + "/results.csv");
  fs::remove(out + "/results.jsonl");
  const RunResult s = run_switchyard(dir.path(), {"sweep", "--summarize", out}, 120);
  ASSERT_EQ(s.exit_code, 0) << s.describe();
  EXPECT_EQ(read_text(out + "/results.csv"), csv);
  EXPECT_EQ(read_text(out + "/results.jsonl"), jsonl);
  for (const std::string& name : names) EXPECT_TRUE(contains(s.out, name)) << s.out;
  EXPECT_EQ(count_of(s.out, " done "), 3u) << s.out;

  // The report of the sweep folder: one page beside the table.
  const RunResult rep = run_switchyard(dir.path(), {"report", out}, 120);
  ASSERT_EQ(rep.exit_code, 0) << rep.describe();
  EXPECT_TRUE(contains(rep.out, "report: " + out + "/report.html")) << rep.out;
  const std::string page = read_text(out + "/report.html");
  EXPECT_TRUE(contains(page, "\"kind\": \"sweep\"")) << page.size();
  for (const std::string& name : names) EXPECT_TRUE(contains(page, name));
}

TEST(CliSweep, DryRunListsTheRunsAndWritesNothing) {
  TempFolder dir;
  ASSERT_FALSE(dir.path().empty()) << "no temporary folder";
  const std::string grid = dir / "grid.yaml", out = dir / "dry";
  write_text(grid,
             std::string("grid:\n  moe.num_experts: [2, 4]\n  train.seed: [1, 2, 3]\n") + kTinySet);
  const RunResult r = run_switchyard(dir.path(), sweep_args(grid, out, {"--dry-run"}), 120);
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_TRUE(contains(r.out, "6 runs into " + out + ", 1 at a time (dry run: nothing is written)"))
      << r.out;
  EXPECT_TRUE(contains(r.out, "[1/6] num_experts=2_seed=1: moe.num_experts=2 train.seed=1"))
      << r.out;
  EXPECT_TRUE(contains(r.out, "[6/6] num_experts=4_seed=3: moe.num_experts=4 train.seed=3"))
      << r.out;
  EXPECT_TRUE(contains(r.out, kBinary + " train --config " + out +
                                  "/num_experts=4_seed=2/config.yaml --resume auto"))
      << r.out;
  EXPECT_EQ(count_of(r.out, " train --config "), 6u);
  EXPECT_FALSE(fs::exists(out));
}

TEST(CliSweep, FailedRunIsRecordedAndTheOthersGoOn) {
  TempFolder dir;
  ASSERT_FALSE(dir.path().empty()) << "no temporary folder";
  const std::string grid = dir / "grid.yaml", out = dir / "sweep";
  // The first point fails in its 4th step (debug.crash_step 3 on rank 0); the second is normal.
  write_text(grid, std::string("grid:\n  debug.crash_step: [3, -1]\n") + kTinySet +
                       "  debug.crash_rank: 0\n  train.max_steps: 6\n  train.eval_interval: 0\n"
                       "  train.log_interval: 2\n");
  const RunResult r = run_switchyard(dir.path(), sweep_args(grid, out));
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_FALSE(r.crashed) << r.describe();
  EXPECT_TRUE(contains(r.out, "2 runs, 1 failed")) << r.out;
  const Table t = read_table(out);
  ASSERT_EQ(t.rows.size(), 2u);
  EXPECT_EQ(t.cell(0, "run"), "crash_step=3");
  EXPECT_EQ(t.cell(0, "debug.crash_step"), "3");
  EXPECT_EQ(t.cell(0, "status"), "failed");
  EXPECT_TRUE(contains(t.cell(0, "error"), "injected crash at step 3")) << t.cell(0, "error");
  EXPECT_EQ(t.cell(1, "run"), "crash_step=-1");
  EXPECT_EQ(t.cell(1, "status"), "done");
  EXPECT_EQ(t.cell(1, "steps"), "6");
  EXPECT_EQ(t.cell(1, "error"), "");
  const std::string status = read_text(out + "/crash_step=3/status.json");
  EXPECT_TRUE(contains(status, "\"status\": \"failed\"")) << status;
  EXPECT_FALSE(contains(status, "\"exit_code\": 0,")) << status;
  EXPECT_TRUE(contains(status, "injected crash at step 3")) << status;
  EXPECT_FALSE(fs::exists(out + "/crash_step=3/summary.json"));
}

// A process started in the background (fork + exec), ended and reaped by the test.
class Background {
 public:
  Background(const std::string& cwd, const std::vector<std::string>& args, const std::string& log) {
    std::vector<std::string> argv_s = {kBinary};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_ = fork();
    if (pid_ == 0) {
      const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd < 0 || chdir(cwd.c_str()) != 0) _exit(126);
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
      const int null_fd = open("/dev/null", O_RDONLY);
      if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
      execv(argv[0], argv.data());
      _exit(127);
    }
  }
  ~Background() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  pid_t pid() const { return pid_; }
  // Whether it has exited (then status() is its wait status).
  bool exited() {
    if (!exited_ && pid_ > 0 && waitpid(pid_, &status_, WNOHANG) == pid_) exited_ = true;
    return exited_;
  }
  bool wait_exit(double seconds) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (!exited() && std::chrono::steady_clock::now() < end) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return exited_;
  }
  int status() const { return status_; }

 private:
  pid_t pid_ = -1;
  bool exited_ = false;
  int status_ = 0;
};

struct FileStamp {
  std::string bytes;
  int64_t mtime_ns = -1;
};

FileStamp stamp(const std::string& path) {
  struct stat st {};
  FileStamp s;
  if (stat(path.c_str(), &st) == 0) {
    s.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  }
  s.bytes = read_text(path);
  return s;
}

TEST(CliSweep, InterruptedSweepContinuesWhereItStopped) {
  TempFolder dir;
  ASSERT_FALSE(dir.path().empty()) << "no temporary folder";
  const std::string grid = dir / "grid.yaml", out = dir / "sweep";
  // A short first run, then a long second one, killed once it has saved a checkpoint.
  write_text(grid, std::string("grid:\n  train.max_steps: [4, 300]\n") + kTinySet +
                       "  train.eval_interval: 0\n  train.log_interval: 10\n"
                       "  train.checkpoint_interval: 5\n");
  const std::string first = out + "/max_steps=4", second = out + "/max_steps=300";
  const std::vector<std::string> args = sweep_args(grid, out);
  {
    Background sweep(dir.path(), args, dir / "sweep1.log");
    ASSERT_GT(sweep.pid(), 0);
    bool ready = false;
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(180);
    while (!ready && !sweep.exited() && std::chrono::steady_clock::now() < end) {
      ready = fs::exists(first + "/summary.json") &&
              contains(read_text(second + "/train.log"), "[checkpoint] step ");
      if (!ready) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_TRUE(ready) << "the second run did not reach its first checkpoint while the sweep ran\n"
                       << read_text(dir / "sweep1.log") << read_text(second + "/train.log");
    ASSERT_EQ(kill(sweep.pid(), SIGTERM), 0);
    ASSERT_TRUE(sweep.wait_exit(60)) << "the sweep did not end after SIGTERM";
    ASSERT_TRUE(WIFEXITED(sweep.status())) << "ended by signal " << WTERMSIG(sweep.status());
    EXPECT_EQ(WEXITSTATUS(sweep.status()), 130) << read_text(dir / "sweep1.log");
  }
  const std::string log1 = read_text(dir / "sweep1.log");
  EXPECT_TRUE(contains(log1, "interrupted (signal 15): 1 run(s) not done")) << log1;
  {
    const Table t = read_table(out);
    ASSERT_EQ(t.rows.size(), 2u);
    EXPECT_EQ(t.cell(0, "status"), "done");
    EXPECT_EQ(t.cell(1, "status"), "interrupted");
  }
  EXPECT_TRUE(contains(read_text(second + "/status.json"), "\"status\": \"interrupted\""));
  EXPECT_TRUE(contains(read_text(second + "/status.json"),
                       "interrupted: the sweep stopped it (signal 15 to the sweep"));
  // The run stopped cleanly on the sweep's SIGTERM (Note [Clean stop on a signal]): its summary
  // says stopped, not complete, so the sweep runs it again.
  EXPECT_TRUE(contains(read_text(second + "/summary.json"), "\"status\": \"stopped\""))
      << read_text(second + "/train.log");
  EXPECT_TRUE(contains(read_text(second + "/train.log"), "stopped by SIGTERM at step "))
      << read_text(second + "/train.log");
  const FileStamp summary_before = stamp(first + "/summary.json");
  const FileStamp status_before = stamp(first + "/status.json");
  ASSERT_FALSE(summary_before.bytes.empty());

  // The same command again: the first run is skipped, the second continues from its checkpoint.
  const RunResult again = run_switchyard(dir.path(), args);
  ASSERT_EQ(again.exit_code, 0) << again.describe();
  EXPECT_TRUE(contains(again.out, "2 runs in " + out + ": 1 done before, 1 to run")) << again.out;
  EXPECT_FALSE(contains(again.out, "[1/2] max_steps=4: started")) << again.out;
  const std::string log_first = read_text(first + "/train.log");
  EXPECT_EQ(count_of(log_first, "[sweep] attempt "), 1u) << log_first;
  const FileStamp summary_after = stamp(first + "/summary.json");
  EXPECT_EQ(summary_after.bytes, summary_before.bytes);
  EXPECT_EQ(summary_after.mtime_ns, summary_before.mtime_ns);
  EXPECT_EQ(stamp(first + "/status.json").mtime_ns, status_before.mtime_ns);

  const std::string log_second = read_text(second + "/train.log");
  EXPECT_EQ(count_of(log_second, "[sweep] attempt "), 2u) << log_second;
  EXPECT_TRUE(contains(log_second, "[sweep] attempt 2: ")) << log_second;
  EXPECT_TRUE(contains(log_second, "resumed from " + second + "/checkpoints/step_")) << log_second;
  const std::string status = read_text(second + "/status.json");
  EXPECT_TRUE(contains(status, "\"status\": \"done\"")) << status;
  EXPECT_TRUE(contains(status, "\"attempts\": 2,")) << status;
  EXPECT_TRUE(contains(read_text(second + "/summary.json"), "\"steps\": 300,"));
  const Table t = read_table(out);
  ASSERT_EQ(t.rows.size(), 2u);
  EXPECT_EQ(t.cell(0, "status"), "done");
  EXPECT_EQ(t.cell(1, "status"), "done");
  EXPECT_EQ(t.cell(1, "steps"), "300");
  // The resumed run's log lines continue without a step twice.
  const auto train_loss = series(read_metrics(second + "/metrics.jsonl"), "train_loss");
  ASSERT_EQ(train_loss.size(), 30u);  // every 10 steps
  for (size_t i = 0; i < train_loss.size(); ++i) {
    EXPECT_EQ(train_loss[i].first, static_cast<int64_t>(10 * (i + 1)));
  }

  // Everything done: a third sweep starts nothing.
  const RunResult third = run_switchyard(dir.path(), args, 120);
  ASSERT_EQ(third.exit_code, 0) << third.describe();
  EXPECT_TRUE(contains(third.out, "2 done before, 0 to run")) << third.out;
  EXPECT_EQ(count_of(read_text(second + "/train.log"), "[sweep] attempt "), 2u);

  // The same folder under another config: refused, naming the run and the key, nothing run.
  std::vector<std::string> changed = args;
  changed.insert(changed.end(), {"--set", "train.lr=0.005"});
  const RunResult drift = run_switchyard(dir.path(), changed, 120);
  expect_clean_error(
      drift, {"run 'max_steps=4'", "was made with another config", "train.lr: ", ", now 0.005"});
  EXPECT_EQ(count_of(read_text(first + "/train.log"), "[sweep] attempt "), 1u);
}

TEST(CliSweep, LockedFolderIsRefused) {
  TempFolder dir;
  ASSERT_FALSE(dir.path().empty()) << "no temporary folder";
  const std::string grid = dir / "grid.yaml", out = dir / "sweep";
  write_text(grid, std::string("grid:\n  train.seed: [1, 2]\n") + kTinySet);
  fs::create_directories(out);
  // Another holder of the sweep's lock: a shell that takes it and becomes `sleep`.
  const std::string pidfile = dir / "holder.pid", held = dir / "held";
  // (TempFolder's paths hold no quote or '$': sy_cli_XXXXXX under the test's temp dir.)
  const std::string cmd = "sh -c 'exec 9>\"" + out + "/.sweep.lock\"; flock 9 && touch \"" + held +
                          "\" && exec sleep 60' >/dev/null 2>&1 & echo $! > " +
                          shell_quote(pidfile);
  ASSERT_EQ(std::system(("command -v flock >/dev/null && " + cmd).c_str()), 0)
      << "flock(1) is needed for this test";
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!fs::exists(held) && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const pid_t holder = static_cast<pid_t>(std::atol(read_text(pidfile).c_str()));
  ASSERT_TRUE(fs::exists(held)) << "the lock holder did not start";
  const RunResult r = run_switchyard(dir.path(), sweep_args(grid, out), 120);
  if (holder > 0) kill(holder, SIGTERM);
  expect_clean_error(r, {"another switchyard sweep", "'" + out + "'", out + "/.sweep.lock"});
  EXPECT_FALSE(fs::exists(out + "/sweep.yaml"));
  EXPECT_FALSE(fs::exists(out + "/seed=1"));
}

TEST(CliSweep, BadGridIsRefusedBeforeAnythingStarts) {
  TempFolder dir;
  ASSERT_FALSE(dir.path().empty()) << "no temporary folder";
  const std::string grid = dir / "grid.yaml", out = dir / "sweep";
  write_text(grid, std::string("grid:\n  train.seed: [1, 2]\n  moe.nonsense: [3]\n") + kTinySet);
  const RunResult r = run_switchyard(dir.path(), sweep_args(grid, out), 120);
  expect_clean_error(r, {grid, "moe.nonsense", "unknown key"});
  EXPECT_FALSE(fs::exists(out));
  // A malformed grid file: the entry named with its line.
  write_text(grid, "grid:\n  train.seed: [1]\nparallell: 2\n");
  expect_clean_error(run_switchyard(dir.path(), sweep_args(grid, out), 120),
                     {grid + ":3", "unknown grid entry 'parallell'"});
  EXPECT_FALSE(fs::exists(out));
  // --summarize of a folder that is no sweep.
  expect_clean_error(run_switchyard(dir.path(), {"sweep", "--summarize", dir.path()}, 120),
                     {"'" + dir.path() + "' is not a sweep folder"});
  // --parallel 0 is no number of runs at a time.
  write_text(grid, "grid:\n  train.seed: [1]\n");
  expect_clean_error(run_switchyard(dir.path(), sweep_args(grid, out, {"--parallel", "0"}), 120),
                     {"--parallel must be >= 1, got 0"});
  EXPECT_FALSE(fs::exists(out));
}

// A damaged summary.json or status.json (the file below each run folder): --summarize and the
// report record the run as failed with the reason, and the next sweep runs it again.
TEST(CliSweep, DamagedRunFilesAreFailedRowsAndRunAgain) {
  TempFolder dir;
  ASSERT_FALSE(dir.path().empty()) << "no temporary folder";
  const std::string grid = dir / "grid.yaml", out = dir / "sweep";
  write_text(grid, std::string("grid:\n  train.seed: [1, 2]\n") + kTinySet +
                       "  train.max_steps: 4\n  train.eval_interval: 0\n  train.log_interval: 2\n"
                       "  train.checkpoint_interval: 4\n");
  const RunResult first = run_switchyard(dir.path(), sweep_args(grid, out));
  ASSERT_EQ(first.exit_code, 0) << first.describe();
  const std::string run = out + "/seed=1";
  write_text(run + "/summary.json", "garbage\n");
  write_text(run + "/status.json", "\x01{\"status\": \n");
  const std::string summary_reason = run +
                                     "/summary.json: expected a JSON object with the run's totals "
                                     "(status, steps, tokens, ...), got 'garbage'";
  const std::string status_reason = run +
                                    "/status.json: expected a JSON object with the sweep's record "
                                    "of the run (status, exit_code, ...), got '?{\"status\": '";

  const RunResult s = run_switchyard(dir.path(), {"sweep", "--summarize", out}, 120);
  ASSERT_EQ(s.exit_code, 0) << s.describe();
  {
    const Table t = read_table(out);
    ASSERT_EQ(t.rows.size(), 2u);
    EXPECT_EQ(t.cell(0, "status"), "failed");
    EXPECT_EQ(t.cell(0, "error").rfind(summary_reason + "; " + status_reason, 0), 0u)
        << t.cell(0, "error");
    EXPECT_EQ(t.cell(0, "steps"), "4");  // from metrics.jsonl
    EXPECT_EQ(t.cell(1, "status"), "done");
    EXPECT_EQ(t.cell(1, "error"), "");
  }
  const RunResult rep = run_switchyard(dir.path(), {"report", out}, 120);
  ASSERT_EQ(rep.exit_code, 0) << rep.describe();
  EXPECT_TRUE(contains(read_text(out + "/report.html"), summary_reason));

  // The same sweep again: seed=1 runs again (continuing from its checkpoint), its status.json
  // written anew; seed=2 is skipped.
  const RunResult again = run_switchyard(dir.path(), sweep_args(grid, out));
  ASSERT_EQ(again.exit_code, 0) << again.describe();
  EXPECT_TRUE(contains(again.out, "2 runs in " + out + ": 1 done before, 1 to run")) << again.out;
  EXPECT_TRUE(contains(again.out, "[1/2] seed=1: " + status_reason)) << again.out;
  EXPECT_TRUE(contains(again.out, "; written anew")) << again.out;
  EXPECT_TRUE(contains(read_text(run + "/summary.json"), "\"status\": \"complete\""));
  EXPECT_TRUE(contains(read_text(run + "/status.json"), "\"attempts\": 1,"));
  EXPECT_EQ(count_of(read_text(run + "/train.log"), "[sweep] attempt "), 2u);
  EXPECT_EQ(count_of(read_text(out + "/seed=2/train.log"), "[sweep] attempt "), 1u);
  const Table t = read_table(out);
  EXPECT_EQ(t.cell(0, "status"), "done");
  EXPECT_EQ(t.cell(0, "error"), "");
}

// A launch template with an unknown placeholder: refused before anything is written, or, with
// --dry-run, printed.
TEST(CliSweep, BadLaunchTemplateIsRefusedBeforeAnythingIsWritten) {
  TempFolder dir;
  ASSERT_FALSE(dir.path().empty()) << "no temporary folder";
  const std::string grid = dir / "grid.yaml", out = dir / "sweep";
  write_text(grid, std::string("grid:\n  train.seed: [1, 2]\n") + kTinySet +
                       "launch: \"{switchyard} train --config {config} {bogus}\"\n");
  const std::vector<std::string> expected = {
      grid + ":12: launch template '{switchyard} train --config {config} {bogus}'",
      "unknown placeholder {bogus}: expected {switchyard}, {config}, {run_dir}, {name}, {ranks} "
      "or {slot}"};
  const RunResult r = run_switchyard(dir.path(), sweep_args(grid, out), 120);
  expect_clean_error(r, expected);
  EXPECT_EQ(r.out, "");
  EXPECT_FALSE(fs::exists(out));
  const RunResult dry = run_switchyard(dir.path(), sweep_args(grid, out, {"--dry-run"}), 120);
  expect_clean_error(dry, expected);
  EXPECT_EQ(dry.out, "");
  EXPECT_FALSE(fs::exists(out));
}

// A grid file is refused where a config file would be (a second document, a key twice, a YAML
// tag), and train.out_dir is the sweep's to set, in the grid or with --set.
TEST(CliSweep, GridIsCheckedAsStrictlyAsAConfigFile) {
  TempFolder dir;
  ASSERT_FALSE(dir.path().empty()) << "no temporary folder";
  const std::string grid = dir / "grid.yaml", out = dir / "sweep";
  const std::string why_out_dir =
      "train.out_dir cannot be set in a grid: the sweep sets each "
      "run's folder (SWEEP/<run name>); choose the sweep's folder "
      "with --out";
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"grid:\n  train.seed: [1]\n---\ngrid:\n  train.seed: [2]\n",
       {grid + ": holds 2 YAML documents; a grid file must hold one"}},
      {"grid:\n  train.seed: [1]\nset:\n  train.max_steps: 4\n  train.max_steps: 8\n",
       {grid + ":5: key 'train.max_steps' appears twice in 'set' (first on line 4)"}},
      {"grid:\n  moe.top_k: !!str [1, 2]\n",
       {grid + ":2: grid.moe.top_k: the YAML tag '!!str' is not allowed"}},
      {"grid:\n  train.out_dir: [a, b]\n", {grid + ":2: " + why_out_dir}},
      {"grid:\n  train.seed: [1]\nset:\n  train.out_dir: runs/x\n", {grid + ":4: " + why_out_dir}},
  };
  for (const auto& [text, expected] : cases) {
    SCOPED_TRACE(text);
    write_text(grid, text);
    expect_clean_error(run_switchyard(dir.path(), sweep_args(grid, out), 120), expected);
    EXPECT_FALSE(fs::exists(out));
  }
  write_text(grid, "grid:\n  train.seed: [1]\n");
  expect_clean_error(
      run_switchyard(dir.path(), sweep_args(grid, out, {"--set", "train.out_dir=runs/x"}), 120),
      {"--set train.out_dir=runs/x: the sweep sets each run's train.out_dir"});
  EXPECT_FALSE(fs::exists(out));
}

}  // namespace
}  // namespace sy::cli
