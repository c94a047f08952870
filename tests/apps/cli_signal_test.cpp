// Note [Clean stop on a signal] through the command line: a training process sent SIGTERM (or
// SIGINT) finishes its step, writes a checkpoint, says so and exits 75; --resume auto then ends
// with a model.pt byte for byte that of an uninterrupted run. With in-process ranks every rank
// stops after the same step, and a signal during an evaluation ends it. A second signal ends the
// process at once.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "apps/cli_util.h"
#include "common/stop_signal.h"

namespace sy::cli {
namespace {

// switchyard with `args` in `cwd`, stdout and stderr into cwd/.log; returns the pid.
pid_t start_switchyard(const std::string& cwd, const std::vector<std::string>& args) {
  const pid_t pid = fork();
  if (pid == 0) {
    const std::string log = cwd + "/.log";
    if (chdir(cwd.c_str()) != 0 || !freopen(log.c_str(), "w", stdout) ||
        dup2(fileno(stdout), 2) < 0) {
      _exit(120);
    }
    std::vector<char*> argv{const_cast<char*>(kBinary.c_str())};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(kBinary.c_str(), argv.data());
    _exit(121);
  }
  return pid;
}

// Waits (at most 120 s) until `path` holds `text`.
bool wait_for(const std::string& path, const std::string& text) {
  for (int i = 0; i < 1200; ++i) {
    if (read_text(path).find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

int wait_status(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

// Sends `signal` to the run and waits for it: it must exit with kExitStopped. Returns its log.
std::string stop_and_wait(pid_t pid, int signal, const std::string& log_path) {
  kill(pid, signal);
  const int status = wait_status(pid);
  const std::string log = read_text(log_path);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == kExitStopped)
      << "exit status " << status << "\n"
      << log;
  return log;
}

std::vector<std::string> train_args(const std::string& out_dir, int64_t steps, int ranks) {
  std::vector<std::string> args = {"train",
                                   "--config",
                                   kDebugConfig,
                                   "--set",
                                   "train.max_steps=" + std::to_string(steps),
                                   "--set",
                                   "train.eval_interval=0",
                                   "--set",
                                   "train.out_dir=" + out_dir};
  if (ranks > 1) {
    args.push_back("--ranks");
    args.push_back(std::to_string(ranks));
  }
  return args;
}

void stop_resume_and_compare(int signal, int ranks) {
  TempFolder dir;
  ASSERT_FALSE(dir.path().empty());
  const int64_t steps = 120;
  const pid_t pid = start_switchyard(dir.path(), train_args("stopped", steps, ranks));
  ASSERT_TRUE(wait_for(dir / "stopped/metrics.jsonl", "\"train_loss\"")) << read_text(dir / ".log");
  const std::string log = stop_and_wait(pid, signal, dir / ".log");
  const std::string said = std::string("stopped by ") + stop_signal_name(signal) + " at step ";
  const size_t at = log.find(said);
  ASSERT_NE(at, std::string::npos) << log;
  const int64_t stopped_at = std::stoll(log.substr(at + said.size()));
  EXPECT_LT(stopped_at, steps);
  EXPECT_TRUE(std::filesystem::exists(
      dir / ("stopped/checkpoints/step_" + std::to_string(stopped_at) + "/manifest.json")))
      << log;
  EXPECT_EQ(log.find("[error]"), std::string::npos) << log;
  EXPECT_FALSE(std::filesystem::exists(dir / "stopped/.lock")) << "the run folder's lock stays";

  std::vector<std::string> resume = train_args("stopped", steps, ranks);
  resume.push_back("--resume");
  resume.push_back("auto");
  const RunResult rest = run_switchyard(dir.path(), resume);
  ASSERT_EQ(rest.exit_code, 0) << rest.describe();
  const RunResult whole = run_switchyard(dir.path(), train_args("whole", steps, ranks));
  ASSERT_EQ(whole.exit_code, 0) << whole.describe();
  const std::string a = read_text(dir / "stopped/model.pt"), b = read_text(dir / "whole/model.pt");
  ASSERT_FALSE(a.empty());
  EXPECT_TRUE(a == b) << "the resumed run's model.pt differs from the uninterrupted run's";
}

TEST(CliSignal, SigtermStopsWithACheckpointAndResumesExactly) {
  stop_resume_and_compare(SIGTERM, 1);
}

TEST(CliSignal, SigintStopsEveryInProcessRankAtTheSameStep) { stop_resume_and_compare(SIGINT, 2); }

// A signal during an evaluation of 2^20 batches ends it (on both in-process ranks after the same
// batch, not logged), and the run stops after the next step with its checkpoint.
TEST(CliSignal, SignalDuringEvaluationEndsIt) {
  TempFolder dir;
  ASSERT_FALSE(dir.path().empty());
  std::vector<std::string> args = train_args("run", 20, 2);
  args.insert(args.end(), {"--set", "train.eval_interval=10", "--set", "train.eval_iters=1048576"});
  const pid_t pid = start_switchyard(dir.path(), args);
  // The evaluation at step 0 starts right after the model is built.
  ASSERT_TRUE(wait_for(dir / ".log", "memory estimate")) << read_text(dir / ".log");
  std::this_thread::sleep_for(std::chrono::seconds(3));
  const std::string log = stop_and_wait(pid, SIGTERM, dir / ".log");
  EXPECT_NE(log.find("evaluation at step 0 ended after "), std::string::npos) << log;
  EXPECT_NE(log.find(" of 1048576 batches by SIGTERM: not logged"), std::string::npos) << log;
  EXPECT_NE(log.find("stopped by SIGTERM at step 1"), std::string::npos) << log;
  EXPECT_TRUE(std::filesystem::exists(dir / "run/checkpoints/step_1/manifest.json")) << log;
  EXPECT_EQ(read_text(dir / "run/metrics.jsonl").find("val_loss"), std::string::npos)
      << "the evaluation that was cut short was logged";
}

// A signal during the final evaluation stops the run as a stopped run (exit 75, summary status
// "stopped"); --resume auto then runs that evaluation and completes.
TEST(CliSignal, SignalDuringTheFinalEvaluationLeavesItToTheResume) {
  TempFolder dir;
  ASSERT_FALSE(dir.path().empty());
  const RunResult trained = run_switchyard(dir.path(), train_args("run", 2, 1));
  ASSERT_EQ(trained.exit_code, 0) << trained.describe();
  auto resume_args = [](const char* eval_iters) {
    std::vector<std::string> args = train_args("run", 2, 1);
    args.insert(args.end(), {"--set", "train.eval_interval=2", "--set",
                             std::string("train.eval_iters=") + eval_iters, "--resume", "auto"});
    return args;
  };
  const pid_t pid = start_switchyard(dir.path(), resume_args("1048576"));
  ASSERT_TRUE(wait_for(dir / ".log", "resumed from")) << read_text(dir / ".log");
  std::this_thread::sleep_for(std::chrono::seconds(2));
  const std::string log = stop_and_wait(pid, SIGTERM, dir / ".log");
  EXPECT_NE(log.find("the final evaluation was ended by SIGTERM; resume with --resume auto"),
            std::string::npos)
      << log;
  EXPECT_NE(read_text(dir / "run/summary.json").find("\"status\": \"stopped\""), std::string::npos)
      << read_text(dir / "run/summary.json");
  const RunResult rest = run_switchyard(dir.path(), resume_args("2"));
  ASSERT_EQ(rest.exit_code, 0) << rest.describe();
  EXPECT_NE(read_text(dir / "run/metrics.jsonl").find("\"val_loss\""), std::string::npos);
  EXPECT_NE(read_text(dir / "run/summary.json").find("\"status\": \"complete\""), std::string::npos)
      << read_text(dir / "run/summary.json");
}

TEST(CliSignal, ASecondSignalEndsAtOnce) {
  TempFolder dir;
  ASSERT_FALSE(dir.path().empty());
  const pid_t pid = start_switchyard(dir.path(), train_args("run", 100000, 1));
  ASSERT_TRUE(wait_for(dir / "run/metrics.jsonl", "\"train_loss\"")) << read_text(dir / ".log");
  kill(pid, SIGTERM);
  ASSERT_TRUE(wait_for(dir / ".log", "stop requested")) << read_text(dir / ".log");
  kill(pid, SIGTERM);
  const int status = wait_status(pid);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM) << read_text(dir / ".log");
  // The run folder's lock goes with it (Note [Run folders]), so --resume auto can continue.
  EXPECT_FALSE(std::filesystem::exists(dir / "run/.lock"));
}

}  // namespace
}  // namespace sy::cli
