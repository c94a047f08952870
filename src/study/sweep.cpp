// Running a sweep: see sweep.h, Note [Sweep processes].
#include "study/sweep.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <iostream>
#include <thread>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "common/log.h"
#include "config/config.h"
#include "study/grid.h"
#include "study/results.h"

namespace sy::study {
namespace {

volatile std::sig_atomic_t g_stop_signal = 0;   // the last stop signal received
volatile std::sig_atomic_t g_stop_signals = 0;  // how many

extern "C" void on_stop_signal(int signal) {
  g_stop_signal = signal;
  g_stop_signals = g_stop_signals + 1;
}

// Seconds the runs get to end after SIGTERM before SIGKILL.
constexpr double kStopGrace_s = 30;

// Handlers without SA_RESTART, restored when the sweep ends.
class StopSignals {
 public:
  StopSignals() {
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < 3; ++i) sigaction(kSignals[i], &sa, &previous_[i]);
  }
  ~StopSignals() {
    for (int i = 0; i < 3; ++i) sigaction(kSignals[i], &previous_[i], nullptr);
  }

 private:
  static constexpr int kSignals[3] = {SIGINT, SIGTERM, SIGHUP};
  struct sigaction previous_[3];
};

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

std::string self_path() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  SY_CHECK(n > 0, "sweep: cannot find the switchyard binary (/proc/self/exe)");
  return std::string(buf, static_cast<size_t>(n));
}

std::string file_stem(const std::string& path) {
  std::string name = path.substr(path.find_last_of('/') + 1);
  const size_t dot = name.rfind('.');
  return dot == std::string::npos || dot == 0 ? name : name.substr(0, dot);
}

// The last line of RUN/train.log that reports an error, else its last non-empty line.
std::string error_line(const std::string& log_path) {
  std::ifstream in(log_path);
  std::string line, last, last_error;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    last = line;
    if (line.find("[error]") != std::string::npos || line.find("rror:") != std::string::npos) {
      last_error = line;
    }
  }
  std::string e = last_error.empty() ? last : last_error;
  if (e.size() > 400) e = e.substr(0, 400) + "...";
  return e;
}

// "train.max_steps: 300, now 500": the first key whose value differs between two to_yaml() texts.
std::string first_difference(const std::string& before, const std::string& after) {
  std::istringstream a(before), b(after);
  std::string la, lb, section;
  while (true) {
    const bool more_a = static_cast<bool>(std::getline(a, la));
    const bool more_b = static_cast<bool>(std::getline(b, lb));
    if (!more_a && !more_b) return "";
    if (more_b && !lb.empty() && lb[0] != ' ') section = lb.substr(0, lb.find(':'));
    if (more_a != more_b || la != lb) {
      const std::string& line = more_b ? lb : la;
      const size_t colon = line.find(':');
      const std::string key =
          section + "." +
          line.substr(line.find_first_not_of(' '), colon - line.find_first_not_of(' '));
      auto value = [](const std::string& l) {
        const size_t c = l.find(':');
        return c == std::string::npos ? std::string("(none)") : l.substr(c + 2);
      };
      return key + ": " + (more_a ? value(la) : "(none)") + ", now " +
             (more_b ? value(lb) : "(none)");
    }
  }
}

struct Child {
  pid_t pid = -1;
  size_t point = 0;
  int slot = 0;
  std::chrono::steady_clock::time_point start;
  RunStatus status;
};

// A simple command (no ; & | ( ) ` or newline) gets an `exec` after its leading VAR=value words,
// so that the shell becomes the command: PR_SET_PDEATHSIG, set on the shell, then reaches the
// command itself (POSIX sh forks for the last command of `sh -c` unless told to exec it).
std::string exec_form(const std::string& command) {
  if (command.find_first_of(";&|()`\n\"'") != std::string::npos) return command;
  size_t at = command.find_first_not_of(' ');
  while (at != std::string::npos) {
    const size_t end = std::min(command.find(' ', at), command.size());
    const std::string word = command.substr(at, end - at);
    const size_t eq = word.find('=');
    const bool assignment =
        eq != std::string::npos && eq > 0 &&
        word.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_") ==
            eq &&
        !(word[0] >= '0' && word[0] <= '9');
    if (!assignment) return command.substr(0, at) + "exec " + command.substr(at);
    at = command.find_first_not_of(' ', end);
  }
  return command;
}

// fork + exec of /bin/sh -c `command` in its own process group, output appended to `log_path`.
pid_t spawn(const std::string& command, const std::string& log_path) {
  const int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  SY_CHECK(log_fd >= 0, "sweep: cannot write '", log_path, "'");
  const std::string shell_command = exec_form(command);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec.
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(128 + SIGTERM);  // the sweep died before prctl
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    const int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
    execl("/bin/sh", "sh", "-c", shell_command.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(log_fd);
  SY_CHECK(pid > 0, "sweep: fork failed starting '", command, "'");
  setpgid(pid, pid);  // also from this side, so the group exists before any kill below
  return pid;
}

// The text table printed at the end and by --summarize.
void print_table(const std::vector<ResultRow>& rows) {
  std::printf("%-40s %-12s %10s %10s %12s %12s %8s %9s\n", "run", "status", "val_loss", "best_val",
              "params_act", "tokens/s", "drop", "imbalance");
  auto num = [](const std::string& json, const char* fmt) {
    if (json == "null") return std::string("-");
    char buf[32];
    std::snprintf(buf, sizeof(buf), fmt, std::atof(json.c_str()));
    return std::string(buf);
  };
  for (const ResultRow& r : rows) {
    std::string name = r.json("run"), status = r.json("status");
    name = name.substr(1, name.size() - 2);
    status = status.substr(1, status.size() - 2);
    std::printf(
        "%-40s %-12s %10s %10s %12s %12s %8s %9s\n", name.c_str(), status.c_str(),
        num(r.json("final_val_loss"), "%.4f").c_str(), num(r.json("best_val_loss"), "%.4f").c_str(),
        num(r.json("params_active"), "%.0f").c_str(), num(r.json("tokens_per_s"), "%.0f").c_str(),
        num(r.json("drop_fraction"), "%.4f").c_str(),
        num(r.json("load_imbalance"), "%.3f").c_str());
  }
  std::fflush(stdout);
}

void say(const std::string& line) { std::cout << "[sweep] " << line << std::endl; }

}  // namespace

int run_sweep(const SweepOptions& o) {
  const Grid grid = load_grid(o.grid_file);
  const std::vector<SweepPoint> points = expand(grid);
  check_points(grid, points, o.configs, o.sets);
  const std::string sweep_dir = o.out_dir.empty() ? "sweeps/" + file_stem(o.grid_file) : o.out_dir;
  // A grid's own template was checked by load_grid().
  const std::string launch = grid.launch.empty() ? kDefaultLaunch : grid.launch;
  const int parallel = o.parallel > 0 ? o.parallel : (grid.parallel > 0 ? grid.parallel : 1);
  const std::string self = self_path();
  auto command_of = [&](size_t i, int slot) {
    const std::string run_dir = sweep_dir + "/" + points[i].name;
    return launch_command(launch, LaunchFields{self, run_dir + "/config.yaml", run_dir,
                                               points[i].name, grid.ranks, slot});
  };

  if (o.dry_run) {
    say(std::to_string(points.size()) + " runs into " + sweep_dir + ", " +
        std::to_string(parallel) + " at a time (dry run: nothing is written)");
    for (size_t i = 0; i < points.size(); ++i) {
      std::string values;
      for (const auto& [k, v] : points[i].values) values += " " + k + "=" + v;
      std::cout << "  [" << i + 1 << "/" << points.size() << "] " << points[i].name << ":" << values
                << "\n      " << command_of(i, static_cast<int>(i % parallel)) << "\n";
    }
    std::cout << std::flush;
    return 0;
  }

  make_directories(sweep_dir);
  const std::string lock_path = sweep_dir + "/.sweep.lock";
  // Not close-on-exec: the runs inherit the lock, so that a run that outlives its sweep (killed
  // outright, with a launch template the kernel's SIGTERM cannot reach) keeps the folder locked
  // until it ends, and no second sweep starts the same run beside it.
  const int lock_fd = open(lock_path.c_str(), O_RDWR | O_CREAT, 0644);
  SY_CHECK(lock_fd >= 0, "sweep: cannot create '", lock_path, "'");
  if (flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    close(lock_fd);
    SY_THROW("another switchyard sweep, or a run of one, is running in '", sweep_dir, "' (",
             lock_path, " is locked); wait for it or use another --out");
  }
  SweepManifest manifest{o.command_line, o.configs, o.grid_file, launch, varied_keys(grid), {}};
  for (const SweepPoint& p : points) manifest.runs.push_back(RunRecord{p.name, p.values});
  write_manifest(sweep_dir, manifest);
  write_results(sweep_dir, manifest, /*live=*/true);
  // N runs at a time on the CPU share its cores (each run's OpenMP threads otherwise take all).
  if (parallel > 1 && !std::getenv("OMP_NUM_THREADS")) {
    const long cores = sysconf(_SC_NPROCESSORS_ONLN);
    setenv("OMP_NUM_THREADS", std::to_string(std::max(1L, cores / parallel)).c_str(), 1);
  }

  // A run folder made by an earlier sweep must hold the same config as this one would give it:
  // a done run would be skipped, a partial one resumed, under a config that no longer applies.
  for (const SweepPoint& p : points) {
    const std::string run_dir = sweep_dir + "/" + p.name;
    std::ifstream saved_in(run_dir + "/config.yaml");
    if (!saved_in) continue;
    const std::string saved((std::istreambuf_iterator<char>(saved_in)),
                            std::istreambuf_iterator<char>());
    const std::string now = to_yaml(load_config(o.configs, point_sets(grid, p, o.sets, run_dir)));
    const std::string diff = first_difference(saved, now);
    SY_CHECK(diff.empty(), "run '", p.name, "' in ", sweep_dir, " was made with another config (",
             diff, "): use another --out, or remove ", run_dir, " to run it again");
  }
  std::vector<size_t> todo;
  for (size_t i = 0; i < points.size(); ++i) {
    if (!run_complete(sweep_dir + "/" + points[i].name)) todo.push_back(i);
  }
  say(std::to_string(points.size()) + " runs in " + sweep_dir + ": " +
      std::to_string(points.size() - todo.size()) + " done before, " + std::to_string(todo.size()) +
      " to run, " + std::to_string(parallel) + " at a time");

  const StopSignals signals;
  g_stop_signal = 0;
  g_stop_signals = 0;
  const auto sweep_start = std::chrono::steady_clock::now();
  std::vector<Child> running;
  std::vector<bool> slot_busy(static_cast<size_t>(parallel), false);
  size_t next = 0, finished = 0, failed = 0;
  bool stopping = false, killed = false;
  int stop_signals = 0;
  auto stop_start = std::chrono::steady_clock::now();
  double finished_seconds = 0;
  auto position = [&](size_t point) {
    return "[" + std::to_string(point + 1) + "/" + std::to_string(points.size()) + "] " +
           points[point].name;
  };

  while ((next < todo.size() && !g_stop_signal) || !running.empty()) {
    // Start runs into free slots.
    while (next < todo.size() && !g_stop_signal && static_cast<int>(running.size()) < parallel) {
      const size_t i = todo[next++];
      int slot = 0;
      while (slot_busy[static_cast<size_t>(slot)]) ++slot;
      slot_busy[static_cast<size_t>(slot)] = true;
      const std::string run_dir = sweep_dir + "/" + points[i].name;
      make_directories(run_dir);
      const Config cfg =
          load_config(o.configs, point_sets(grid, points[i], o.sets, run_dir));  // checked above
      write_file_atomic(run_dir + "/config.yaml", to_yaml(cfg));
      Child c;
      c.point = i;
      c.slot = slot;
      std::string unreadable;
      c.status = read_status(run_dir, &unreadable);
      if (!unreadable.empty()) say(position(i) + ": " + unreadable + "; written anew");
      c.status.attempts += 1;
      c.status.status = "running";
      c.status.command = command_of(i, slot);
      write_status(run_dir, c.status);
      std::ofstream(run_dir + "/train.log", std::ios::app)
          << "[sweep] attempt " << c.status.attempts << ": " << c.status.command << std::endl;
      c.start = std::chrono::steady_clock::now();
      c.pid = spawn(c.status.command, run_dir + "/train.log");
      say(position(i) + ": started" + (parallel > 1 ? " in slot " + std::to_string(slot) : "") +
          " (attempt " + std::to_string(c.status.attempts) + "; log " + run_dir + "/train.log)");
      running.push_back(std::move(c));
    }
    // On a stop signal: SIGTERM to each run's process group once, SIGKILL after kStopGrace_s (or
    // at a second signal) to what still runs.
    if (g_stop_signal) {
      if (!stopping) {
        stopping = true;
        stop_start = std::chrono::steady_clock::now();
        stop_signals = g_stop_signals;
        for (const Child& c : running) kill(-c.pid, SIGTERM);
      } else if (!killed &&
                 (seconds_since(stop_start) > kStopGrace_s || g_stop_signals > stop_signals)) {
        killed = true;
        for (const Child& c : running) kill(-c.pid, SIGKILL);
        say("runs still alive " +
            std::string(g_stop_signals > stop_signals ? "at a second signal"
                                                      : "after the grace period") +
            ": SIGKILL");
      }
    }
    // Reap what ended; poll, so that a signal is seen promptly.
    int wstatus = 0;
    const pid_t pid = waitpid(-1, &wstatus, WNOHANG);
    if (pid <= 0) {
      if (pid < 0 && errno != EINTR && errno != ECHILD) SY_THROW("sweep: waitpid failed");
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    auto it =
        std::find_if(running.begin(), running.end(), [&](const Child& c) { return c.pid == pid; });
    if (it == running.end()) continue;
    Child c = std::move(*it);
    running.erase(it);
    slot_busy[static_cast<size_t>(c.slot)] = false;
    const std::string run_dir = sweep_dir + "/" + points[c.point].name;
    const double took = seconds_since(c.start);
    c.status.seconds += took;
    c.status.exit_code = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
    const bool done = c.status.exit_code == 0 && run_complete(run_dir);
    c.status.status = done ? "done" : g_stop_signal ? "interrupted" : "failed";
    if (done) {
      c.status.error = "";
    } else if (g_stop_signal) {
      c.status.error = "interrupted: the sweep stopped it (signal " +
                       std::to_string(g_stop_signal) + " to the sweep; the run's exit " +
                       std::to_string(c.status.exit_code) +
                       "); the next sweep continues it from its last checkpoint";
    } else {
      c.status.error = error_line(run_dir + "/train.log");
    }
    if (!done && c.status.error.empty()) {
      c.status.error = "exit status " + std::to_string(c.status.exit_code);
    }
    write_status(run_dir, c.status);
    const std::vector<ResultRow> rows = write_results(sweep_dir, manifest, /*live=*/true);
    ++finished;
    failed += c.status.status == "failed";
    finished_seconds += took;
    const size_t left = todo.size() - finished;
    const double eta = finished_seconds / static_cast<double>(finished) *
                       static_cast<double>(left) / static_cast<double>(parallel);
    std::string what = c.status.status + " in " + format_duration(took);
    if (done) {
      const std::string val = rows[c.point].json("final_val_loss");
      if (val != "null") what += ", val loss " + val;
    } else {
      what += " (exit " + std::to_string(c.status.exit_code) + "): " + c.status.error;
    }
    say(position(c.point) + ": " + what + " | " + std::to_string(finished) + " of " +
        std::to_string(todo.size()) + " finished, elapsed " +
        format_duration(seconds_since(sweep_start)) +
        (left > 0 && !g_stop_signal ? ", ETA " + format_duration(eta) : ""));
  }

  const std::vector<ResultRow> rows = write_results(sweep_dir, manifest);
  print_table(rows);
  close(lock_fd);
  if (g_stop_signal) {
    size_t not_done = 0;
    for (const ResultRow& r : rows) not_done += r.json("status") != "\"done\"";
    say("interrupted (signal " + std::to_string(g_stop_signal) + "): " + std::to_string(not_done) +
        " run(s) not done; run the same command again to continue them");
    return 130;
  }
  say(std::to_string(points.size()) + " runs, " + std::to_string(failed) + " failed; table " +
      sweep_dir + "/results.csv; report: switchyard report " + sweep_dir);
  return failed > 0 ? 1 : 0;
}

void summarize_sweep(const std::string& sweep_dir) {
  const SweepManifest manifest = read_manifest(sweep_dir);
  // A sweep running in the folder holds its lock: then "running" is current, else stale.
  bool live = false;
  const int fd = open((sweep_dir + "/.sweep.lock").c_str(), O_RDWR | O_CLOEXEC);
  if (fd >= 0) {
    live = flock(fd, LOCK_EX | LOCK_NB) != 0;
    close(fd);
  }
  print_table(write_results(sweep_dir, manifest, live));
  say("table rebuilt: " + sweep_dir + "/results.csv, " + sweep_dir + "/results.jsonl");
}

}  // namespace sy::study
