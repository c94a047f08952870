// Helpers for the command-line tests: run the built switchyard binary in a temporary folder with
// stdout and stderr captured, and read what a run leaves behind (metrics.jsonl).
//
// The binary runs through /bin/sh under `timeout` (when present), so a hang becomes a failure
// (exit 124) instead of a stuck ctest. A crash shows up as a signal: either the wait status says
// so or the shell reports 128 + the signal number; both count as "crashed" below.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "common/files.h"
#include "temp_folder.h"

namespace sy::cli {

inline const std::string kBinary = SWITCHYARD_BINARY;
inline const std::string kSourceDir = SWITCHYARD_SOURCE_DIR;
inline const std::string kDebugConfig = kSourceDir + "/configs/debug-cpu.yaml";

// A small, fast debug-cpu run (d_model 32, d_ff 64, block 16, batch 4, no evaluation) of `steps`
// steps with a log line and a checkpoint every `interval` steps, into out_dir (empty: the
// default), then the arguments `more`.
inline std::vector<std::string> small_run_args(const std::string& out_dir, int steps, int interval,
                                               const std::vector<std::string>& more = {}) {
  std::vector<std::string> args = {"train", "--config", kDebugConfig};
  for (const std::string& kv :
       {std::string("model.d_model=32"), std::string("model.d_ff=64"),
        std::string("model.block_size=16"), std::string("data.batch_size=4"),
        "train.max_steps=" + std::to_string(steps), std::string("train.eval_interval=0"),
        "train.log_interval=" + std::to_string(interval),
        "train.checkpoint_interval=" + std::to_string(interval)}) {
    args.insert(args.end(), {"--set", kv});
  }
  if (!out_dir.empty()) args.insert(args.end(), {"--set", "train.out_dir=" + out_dir});
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

inline std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// 'text' for /bin/sh, with embedded single quotes escaped.
inline std::string shell_quote(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

struct RunResult {
  int exit_code = -1;    // valid when !crashed
  bool crashed = false;  // ended by a signal (or a shell-reported 128 + signal)
  bool timed_out = false;
  std::string out, err;
  std::string describe() const {
    std::ostringstream s;
    s << "exit " << exit_code << (crashed ? " (signal)" : "") << (timed_out ? " (timed out)" : "")
      << "\n--- stdout ---\n"
      << out << "--- stderr ---\n"
      << err;
    return s.str();
  }
};

using TempFolder = sy::testing::TempFolder;

// Runs `switchyard args...` with `cwd` as the working directory.
inline RunResult run_switchyard(const std::string& cwd, const std::vector<std::string>& args,
                                int timeout_s = 300) {
  static const bool have_timeout = std::system("command -v timeout >/dev/null 2>&1") == 0;
  const std::string out_file = cwd + "/.stdout", err_file = cwd + "/.stderr";
  std::string cmd = "cd " + shell_quote(cwd) + " && ";
  if (have_timeout) cmd += "timeout -k 10 " + std::to_string(timeout_s) + " ";
  cmd += shell_quote(kBinary);
  for (const std::string& arg : args) cmd += " " + shell_quote(arg);
  cmd += " >" + shell_quote(out_file) + " 2>" + shell_quote(err_file) + " </dev/null";
  const int status = std::system(cmd.c_str());

  RunResult r;
  if (status == -1 || WIFSIGNALED(status)) {
    r.crashed = true;
  } else {
    r.exit_code = WEXITSTATUS(status);
    r.timed_out = have_timeout && r.exit_code == 124;
    r.crashed = r.exit_code > 128;  // the shell's (or timeout's) report of a child's signal
  }
  r.out = read_text(out_file);
  r.err = read_text(err_file);
  return r;
}

// A clean failure: a normal non-zero exit, and exactly one line tagged [error] on stderr, the
// last line, holding every string of `expected` (the key or file, and what was expected).
inline void expect_clean_error(const RunResult& r, const std::vector<std::string>& expected) {
  ASSERT_FALSE(r.crashed) << r.describe();
  ASSERT_FALSE(r.timed_out) << r.describe();
  EXPECT_NE(r.exit_code, 0) << r.describe();
  for (const char* crash_sign : {"terminate called", "Segmentation fault", "core dumped", "Aborted",
                                 "Exception raised from"}) {
    EXPECT_EQ(r.err.find(crash_sign), std::string::npos) << crash_sign << "\n" << r.describe();
  }
  std::vector<std::string> error_lines;
  const std::vector<std::string> lines = lines_of(r.err);
  for (const std::string& line : lines) {
    if (line.find("[error]") != std::string::npos) error_lines.push_back(line);
  }
  ASSERT_EQ(error_lines.size(), 1u) << "expected one [error] line\n" << r.describe();
  EXPECT_EQ(lines.back(), error_lines[0]) << "the error must be the last line\n" << r.describe();
  for (const std::string& part : expected) {
    EXPECT_NE(error_lines[0].find(part), std::string::npos)
        << "the error line lacks \"" << part << "\":\n  " << error_lines[0];
  }
}

// One line of metrics.jsonl: its step and its numeric fields ("train_loss" -> 3.89).
struct MetricsLine {
  int64_t step = -1;
  std::map<std::string, double> values;
};

// The lines of a metrics.jsonl; only scalar numeric fields are kept (expert_load is skipped).
inline std::vector<MetricsLine> read_metrics(const std::string& path) {
  static const std::regex field(R"re("([a-z_]+)": (-?[0-9][0-9.eE+-]*))re");
  std::vector<MetricsLine> result;
  for (const std::string& line : lines_of(read_text(path))) {
    MetricsLine m;
    for (auto it = std::sregex_iterator(line.begin(), line.end(), field);
         it != std::sregex_iterator(); ++it) {
      const std::string key = (*it)[1];
      const double value = std::stod((*it)[2]);
      if (key == "step") m.step = static_cast<int64_t>(value);
      else m.values[key] = value;
    }
    result.push_back(m);
  }
  return result;
}

// (step, value) of every line that has `key`, in file order.
inline std::vector<std::pair<int64_t, double>> series(const std::vector<MetricsLine>& metrics,
                                                      const std::string& key) {
  std::vector<std::pair<int64_t, double>> out;
  for (const MetricsLine& m : metrics) {
    const auto it = m.values.find(key);
    if (it != m.values.end()) out.emplace_back(m.step, it->second);
  }
  return out;
}

}  // namespace sy::cli
