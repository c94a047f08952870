// The sweep folder's table and report data (study/results.h, study/report.h), from run folders
// written by hand here: each cell against a value computed by hand from the files below.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "common/files.h"
#include "config/config_test_util.h"
#include "study/report.h"
#include "study/results.h"

namespace sy::study {
namespace {

using sy::testing::error_of;

// Three train lines (steps 5, 10, 15: 2 MoE layers x 4 experts each) and two val lines
// (steps 10 and 15), as the trainer writes them.
const char* const kMetrics =
    "{\"step\": 5, \"train_loss\": 3.5, \"aux_loss\": 1.1, \"z_loss\": 2.0, \"drop_fraction\": "
    "0.1, "
    "\"grad_norm\": 1.5, \"lr\": 0.001, \"tokens_per_s\": 20000, \"ms_per_step\": 50, "
    "\"expert_load\": [[0.4, 0.2, 0.2, 0.2], [0.25, 0.25, 0.25, 0.25]]}\n"
    "{\"step\": 10, \"train_loss\": 3.2, \"aux_loss\": 1.05, \"z_loss\": 1.9, \"drop_fraction\": "
    "0.2, \"grad_norm\": 1.4, \"lr\": 0.002, \"tokens_per_s\": 21000, \"ms_per_step\": 48, "
    "\"expert_load\": [[0.1, 0.5, 0.2, 0.2], [0.3, 0.3, 0.3, 0.1]]}\n"
    "{\"step\": 10, \"eval_train_loss\": 3.1, \"val_loss\": 3.3}\n"
    "{\"step\": 15, \"train_loss\": 3.0, \"aux_loss\": 1.02, \"z_loss\": 1.8, \"drop_fraction\": "
    "0.3, \"grad_norm\": 1.3, \"lr\": 0.003, \"tokens_per_s\": 22000, \"ms_per_step\": 46, "
    "\"expert_load\": [[0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]]}\n"
    "{\"step\": 15, \"eval_train_loss\": 2.9, \"val_loss\": 3.45}\n";
// By hand:
//   final val 3.45 (the last), best val 3.3 (the smallest), final train 3.0 (the last train line),
//   aux 1.02 and z 1.8 (the last train line's), drop (0.1 + 0.2 + 0.3) / 3 = 0.2,
//   imbalance = mean over 3 lines x 2 layers of max share x 4:
//     (0.4*4 + 0.25*4 + 0.5*4 + 0.3*4 + 0.25*4 + 0.7*4) / 6 = (1.6+1+2+1.2+1+2.8) / 6 = 1.6.
constexpr double kFinalVal = 3.45, kBestVal = 3.3, kFinalTrain = 3.0, kAux = 1.02, kZ = 1.8;
constexpr double kDrop = 0.2, kImbalance = 1.6;

const char* const kSummary =
    "{\"status\": \"complete\", \"steps\": 15, \"max_steps\": 15, \"tokens\": 15360, "
    "\"tokens_per_step\": 1024, \"world_size\": 1, \"params_total\": 177280, \"params_active\": "
    "110976, \"flops_per_token\": 709632, \"ms_per_step\": 37.5, \"tokens_per_s\": 27000.5, "
    "\"peak_mib\": 203.5, \"peak_memory\": \"cpu_rss\", \"mfu\": null, \"final_val_loss\": 3.45}\n";
// train_flops = 15360 tokens x 709632 FLOPs per token = 10899947520.
constexpr double kTrainFlops = 10899947520.0;

std::string status_json(const std::string& status, const std::string& error, double seconds) {
  std::ostringstream s;
  s << "{\"status\": \"" << status << "\", \"exit_code\": " << (status == "done" ? 0 : 1)
    << ", \"attempts\": 1, \"seconds\": " << seconds << ", \"error\": \"" << error
    << "\", \"command\": \"sy train --config c.yaml\"}\n";
  return s.str();
}

class Results : public sy::testing::ConfigFiles {
 protected:
  // A run folder `name` under the temp folder with the given files ("" : not written).
  std::string run_folder(const std::string& name, const std::string& metrics,
                         const std::string& summary, const std::string& status) {
    const std::string dir = dir_ + "/" + name;
    make_directories(dir);
    if (!metrics.empty()) write(name + "/metrics.jsonl", metrics);
    if (!summary.empty()) write(name + "/summary.json", summary);
    if (!status.empty()) write(name + "/status.json", status);
    return dir;
  }
};

// The cell's JSON text as a number (fails the test when it is not one).
double num(const ResultRow& row, const std::string& column) {
  const std::string text = row.json(column);
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  EXPECT_TRUE(!text.empty() && *end == '\0') << column << " is not a number: " << text;
  return v;
}

std::vector<std::string> columns_of(const ResultRow& row) {
  std::vector<std::string> cols;
  for (const auto& [c, v] : row.cells) cols.push_back(c);
  return cols;
}

TEST(ResultColumns, RunVariedThenTheFixedColumns) {
  EXPECT_EQ(result_columns({"moe.num_experts", "train.seed"}),
            std::vector<std::string>({"run",
                                      "moe.num_experts",
                                      "train.seed",
                                      "status",
                                      "final_val_loss",
                                      "best_val_loss",
                                      "final_train_loss",
                                      "steps",
                                      "tokens",
                                      "params_total",
                                      "params_active",
                                      "flops_per_token",
                                      "train_flops",
                                      "tokens_per_s",
                                      "ms_per_step",
                                      "peak_mib",
                                      "drop_fraction",
                                      "load_imbalance",
                                      "aux_loss",
                                      "z_loss",
                                      "seconds",
                                      "error"}));
}

TEST_F(Results, CompleteRunEveryCell) {
  const std::string dir = run_folder("r", kMetrics, kSummary, status_json("done", "", 2.5));
  const RunRecord run{"r",
                      {{"moe.num_experts", "4"}, {"moe.router", "topk"}, {"train.lr", "1e-3"}}};
  const std::vector<std::string> varied = {"moe.num_experts", "moe.router", "train.lr",
                                           "train.seed"};
  const ResultRow row = summarize_run(dir, run, varied);
  EXPECT_EQ(columns_of(row), result_columns(varied));
  EXPECT_EQ(row.json("run"), "\"r\"");
  EXPECT_EQ(row.json("moe.num_experts"), "4");
  EXPECT_EQ(row.json("moe.router"), "\"topk\"");
  EXPECT_EQ(row.json("train.lr"), "1e-3");
  EXPECT_EQ(row.json("train.seed"), "null");  // varied, but not in this run's values
  EXPECT_EQ(row.json("status"), "\"done\"");
  EXPECT_NEAR(num(row, "final_val_loss"), kFinalVal, 1e-7);
  EXPECT_NEAR(num(row, "best_val_loss"), kBestVal, 1e-7);
  EXPECT_NEAR(num(row, "final_train_loss"), kFinalTrain, 1e-7);
  EXPECT_EQ(num(row, "steps"), 15);
  EXPECT_EQ(num(row, "tokens"), 15360);
  EXPECT_EQ(num(row, "params_total"), 177280);
  EXPECT_EQ(num(row, "params_active"), 110976);
  EXPECT_EQ(num(row, "flops_per_token"), 709632);
  EXPECT_NEAR(num(row, "train_flops"), kTrainFlops, kTrainFlops * 1e-7);
  EXPECT_NEAR(num(row, "tokens_per_s"), 27000.5, 1e-6);
  EXPECT_NEAR(num(row, "ms_per_step"), 37.5, 1e-9);
  EXPECT_NEAR(num(row, "peak_mib"), 203.5, 1e-9);
  EXPECT_NEAR(num(row, "drop_fraction"), kDrop, 1e-7);
  EXPECT_NEAR(num(row, "load_imbalance"), kImbalance, 1e-7);
  EXPECT_NEAR(num(row, "aux_loss"), kAux, 1e-7);
  EXPECT_NEAR(num(row, "z_loss"), kZ, 1e-7);
  EXPECT_NEAR(num(row, "seconds"), 2.5, 1e-9);
  EXPECT_EQ(row.json("error"), "\"\"");
  EXPECT_EQ(row.json("no_such_column"), "null");
  // to_json: the cells in order as one object.
  EXPECT_EQ(
      row.to_json().rfind("{\"run\": \"r\", \"moe.num_experts\": 4, \"moe.router\": \"topk\", "
                          "\"train.lr\": 1e-3, \"train.seed\": null, \"status\": \"done\", ",
                          0),
      0u)
      << row.to_json();
}

TEST_F(Results, CompleteSummaryIsDoneWhateverStatusJsonSays) {
  // The sweep died after the trainer finished, before it wrote "done": the summary decides.
  const std::string dir =
      run_folder("r", kMetrics, kSummary, status_json("running", "old error", 1));
  const ResultRow row = summarize_run(dir, RunRecord{"r", {}}, {});
  EXPECT_EQ(row.json("status"), "\"done\"");
  EXPECT_EQ(row.json("error"), "\"\"");  // a done run shows no error
}

TEST_F(Results, FailedRunKeepsItsError) {
  const std::string dir = run_folder(
      "f", kMetrics, "", status_json("failed", "[error] rank 0: injected crash at step 7", 4.25));
  const ResultRow row = summarize_run(dir, RunRecord{"f", {}}, {});
  EXPECT_EQ(row.json("status"), "\"failed\"");
  EXPECT_EQ(row.json("error"), "\"[error] rank 0: injected crash at step 7\"");
  EXPECT_NEAR(num(row, "seconds"), 4.25, 1e-9);
  // Without a summary: steps from the last metrics line, the loss columns from the lines, the
  // summary's columns unknown.
  EXPECT_EQ(num(row, "steps"), 15);
  EXPECT_NEAR(num(row, "final_train_loss"), kFinalTrain, 1e-7);
  EXPECT_NEAR(num(row, "best_val_loss"), kBestVal, 1e-7);
  for (const char* c : {"tokens", "params_total", "params_active", "flops_per_token", "train_flops",
                        "tokens_per_s", "ms_per_step", "peak_mib"}) {
    EXPECT_EQ(row.json(c), "null") << c;
  }
}

TEST_F(Results, StatusMapping) {
  // No folder at all: pending, every measured cell null.
  const ResultRow pending = summarize_run(dir_ + "/none", RunRecord{"none", {}}, {});
  EXPECT_EQ(pending.json("status"), "\"pending\"");
  for (const char* c : {"final_val_loss", "best_val_loss", "final_train_loss", "steps", "tokens",
                        "drop_fraction", "load_imbalance", "aux_loss", "seconds"}) {
    EXPECT_EQ(pending.json(c), "null") << c;
  }
  EXPECT_EQ(pending.json("error"), "\"\"");
  // A folder without metrics or status: still pending.
  EXPECT_EQ(
      summarize_run(run_folder("empty", "", "", ""), RunRecord{"empty", {}}, {}).json("status"),
      "\"pending\"");
  // Metrics but no status.json (and no summary): incomplete.
  EXPECT_EQ(summarize_run(run_folder("m", kMetrics, "", ""), RunRecord{"m", {}}, {}).json("status"),
            "\"incomplete\"");
  // The command succeeded but the summary is not "complete" (train.stop_at_step): incomplete.
  EXPECT_EQ(summarize_run(run_folder("s", kMetrics, "{\"status\": \"stopped\", \"steps\": 15}\n",
                                     status_json("done", "", 1)),
                          RunRecord{"s", {}}, {})
                .json("status"),
            "\"incomplete\"");
  // interrupted as status.json says; running too while a sweep runs in the folder (live), and
  // interrupted without one (its sweep was killed outright).
  EXPECT_EQ(summarize_run(run_folder("i", kMetrics, "", status_json("interrupted", "sig", 1)),
                          RunRecord{"i", {}}, {})
                .json("status"),
            "\"interrupted\"");
  const std::string running = run_folder("g", "", "", status_json("running", "", 0));
  EXPECT_EQ(summarize_run(running, RunRecord{"g", {}}, {}, /*live=*/true).json("status"),
            "\"running\"");
  EXPECT_EQ(summarize_run(running, RunRecord{"g", {}}, {}, /*live=*/false).json("status"),
            "\"interrupted\"");
}

TEST_F(Results, DenseRunHasNoImbalance) {
  const std::string dir = run_folder(
      "d",
      "{\"step\": 5, \"train_loss\": 3.5, \"aux_loss\": 0, \"z_loss\": 0, \"drop_fraction\": 0}\n",
      "", "");
  const ResultRow row = summarize_run(dir, RunRecord{"d", {}}, {});
  EXPECT_EQ(row.json("load_imbalance"), "null");
  EXPECT_EQ(num(row, "drop_fraction"), 0);
  EXPECT_EQ(row.json("final_val_loss"), "null");
  EXPECT_EQ(row.json("best_val_loss"), "null");
}

TEST_F(Results, PartialLastLineIsSkipped) {
  // A run killed mid-write: the last line ends early (no newline, no closing brace).
  const std::string partial =
      std::string(kMetrics) + "{\"step\": 20, \"train_loss\": 0.5, \"aux_loss\": 9, \"drop_fr";
  const std::string dir = run_folder("p", partial, "", "");
  const std::vector<std::string> lines = metrics_lines(dir);
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_EQ(lines.back(), "{\"step\": 15, \"eval_train_loss\": 2.9, \"val_loss\": 3.45}");
  const ResultRow row = summarize_run(dir, RunRecord{"p", {}}, {});
  EXPECT_NEAR(num(row, "final_train_loss"), kFinalTrain, 1e-7);
  EXPECT_NEAR(num(row, "aux_loss"), kAux, 1e-7);
  EXPECT_EQ(num(row, "steps"), 15);
  // Lines that are not JSON objects are skipped too; a missing file has no lines.
  write("p/metrics.jsonl", "garbage\n{\"step\": 1, \"train_loss\": 2.0}\n{\"step\": \n\n");
  EXPECT_EQ(metrics_lines(dir), std::vector<std::string>({"{\"step\": 1, \"train_loss\": 2.0}"}));
  EXPECT_TRUE(metrics_lines(dir_ + "/none").empty());
}

// A damaged summary.json or status.json: the row says failed, naming the file and what it should
// hold; nothing throws, and the other rows are as ever.
TEST_F(Results, DamagedSummaryOrStatusIsAFailedRowNamingTheFile) {
  const std::string summary_says =
      "/summary.json: expected a JSON object with the run's totals "
      "(status, steps, tokens, ...), got ";
  const std::string status_says =
      "/status.json: expected a JSON object with the sweep's record "
      "of the run (status, exit_code, ...), got ";
  const std::string a = run_folder("a", kMetrics, "garbage\n", status_json("done", "", 2));
  const ResultRow row = summarize_run(a, RunRecord{"a", {}}, {});
  EXPECT_EQ(row.json("status"), "\"failed\"");
  EXPECT_EQ(row.json("error"), "\"" + a + summary_says + "'garbage'\"");
  EXPECT_EQ(num(row, "steps"), 15);  // from metrics.jsonl, as without a summary
  EXPECT_NEAR(num(row, "final_val_loss"), kFinalVal, 1e-7);
  EXPECT_EQ(row.json("tokens"), "null");
  EXPECT_FALSE(run_complete(a));

  const std::string b = run_folder("b", kMetrics, kSummary, "[1, 2]\n");
  std::string problem;
  const RunStatus fresh = read_status(b, &problem);
  EXPECT_EQ(problem, b + status_says + "a list");
  EXPECT_EQ(fresh.status, "");  // read as no attempt yet
  EXPECT_EQ(fresh.attempts, 0);
  // A complete summary decides, whatever status.json holds (as for a readable one).
  EXPECT_EQ(summarize_run(b, RunRecord{"b", {}}, {}).json("status"), "\"done\"");

  // Both damaged: both named. Text that is not JSON at all, control bytes shown as '?'.
  const std::string c = run_folder("c", "", "{\"status\": [\n", "\x01\x02 bytes\n");
  const std::string error = summarize_run(c, RunRecord{"c", {}}, {}).json("error");
  EXPECT_EQ(error.rfind("\"" + c + summary_says + "text that is not JSON (line ", 0), 0u) << error;
  EXPECT_CONTAINS(error, "; " + c + status_says + "'?? bytes'\"");

  // A sweep's table: the damaged run failed, the others as ever.
  SweepManifest m;
  m.runs = {RunRecord{"a", {}}, RunRecord{"b", {}}, RunRecord{"none", {}}};
  const std::vector<ResultRow> rows = write_results(dir_, m);
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0].json("status"), "\"failed\"");
  EXPECT_EQ(rows[1].json("status"), "\"done\"");
  EXPECT_EQ(rows[2].json("status"), "\"pending\"");
  EXPECT_CONTAINS(read_file(dir_ + "/results.csv"), a + summary_says + "'garbage'");
}

// Only numbers (and null, and lists of them) reach the table and the report: a line with any
// other value is skipped whole, and counted.
TEST_F(Results, MetricsLinesWithOtherValuesAreSkippedAndCounted) {
  const std::string good =
      "{\"step\": 5, \"train_loss\": 3.5, \"grad_norm\": null, "
      "\"expert_load\": [[0.5, 0.5], [1, 0]]}";
  run_folder("m",
             good + "\n" +
                 "{\"step\": \"x\", \"train_loss\": 1}\n"  // a string step
                 "{\"step\": 6, \"train_loss\": \"2\"}\n"  // a quoted number is text
                 "{\"step\": 7, \"lr\": nan}\n"            // not a JSON number
                 "{\"step\": 8, \"lr\": true}\n"
                 "{\"step\": 9, \"lr\": {\"a\": 1}}\n"
                 "{\"step\": 10, \"lr\": [1, \"a\"]}\n"
                 "{\"train_loss\": 1.5}\n"  // no step
                 "{step: 11, lr: 0x10}\n"   // YAML, not JSON
                 "\xff\xfe\x01{}\n"
                 "\n"  // blank: not counted
                 "{\"step\": 12, \"val_loss\": 2.5}\n"
                 "{\"step\": 13, \"train_lo",  // being written: not counted
             "", "");
  size_t skipped = 0;
  EXPECT_EQ(metrics_lines(dir_ + "/m", &skipped),
            std::vector<std::string>({good, "{\"step\": 12, \"val_loss\": 2.5}"}));
  EXPECT_EQ(skipped, 9u);
  const ResultRow row = summarize_run(dir_ + "/m", RunRecord{"m", {}}, {});
  EXPECT_EQ(num(row, "steps"), 12);
  EXPECT_NEAR(num(row, "final_train_loss"), 3.5, 1e-12);
  EXPECT_NEAR(num(row, "final_val_loss"), 2.5, 1e-12);
}

TEST(ValueJson, NumbersAsNumbersElseStrings) {
  EXPECT_EQ(value_json("8"), "8");
  EXPECT_EQ(value_json("-2.5"), "-2.5");
  EXPECT_EQ(value_json("1e-3"), "1e-3");
  EXPECT_EQ(std::strtod(value_json("1e-3").c_str(), nullptr), 0.001);
  EXPECT_EQ(value_json("3.0E+2"), "3.0E+2");
  EXPECT_EQ(value_json("topk"), "\"topk\"");
  EXPECT_EQ(value_json(""), "\"\"");
  EXPECT_EQ(value_json("8 experts"), "\"8 experts\"");
  EXPECT_EQ(value_json("0x10"), "\"0x10\"");  // hex: strtod would read it, JSON has no hex
  EXPECT_EQ(value_json("nan"), "\"nan\"");
  EXPECT_EQ(value_json("inf"), "\"inf\"");
  EXPECT_EQ(value_json("1e999"), "\"1e999\"");  // overflows to inf
  EXPECT_EQ(value_json("a \"b\" \\c"), "\"a \\\"b\\\" \\\\c\"");
}

// Texts that strtod reads as numbers but JSON's grammar does not: bare, they would make
// results.jsonl invalid JSON, and in the report page (a sloppy-mode script literal) "010" would be
// the octal 8. They are quoted.
TEST(ValueJson, OnlyJsonNumbersAreBare) {
  static const std::regex json_number(R"(-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?)");
  for (const char* text : {".5", "5.", "+1", "007", "010", "1.e3", "-", "1e", "0x10"}) {
    const std::string json = value_json(text);
    EXPECT_TRUE(json.front() == '"' || std::regex_match(json, json_number))
        << text << " -> " << json;
  }
}

TEST_F(Results, ManifestRoundTrip) {
  SweepManifest m;
  m.command = "switchyard sweep --config 'a b.yaml' --set \"x=1\" --out d";
  m.base_files = {"configs/debug-cpu.yaml", "/abs path/extra.yaml"};
  m.grid_file = "configs/sweeps/g.yaml";
  m.launch = "mpirun -np {ranks} {switchyard} train --config {config} # \"q\" 'p'";
  m.varied = {"moe.num_experts", "moe.router", "data.path"};
  m.runs = {
      RunRecord{"num_experts=4_router=topk_path=a_b",
                {{"moe.num_experts", "4"}, {"moe.router", "topk"}, {"data.path", "a: b # c"}}},
      RunRecord{"num_experts=8_router=x_path=q",
                {{"moe.num_experts", "8"}, {"moe.router", "[x]"}, {"data.path", "\"q\""}}}};
  EXPECT_FALSE(is_sweep_dir(dir_));
  write_manifest(dir_, m);
  EXPECT_TRUE(is_sweep_dir(dir_));
  const SweepManifest back = read_manifest(dir_);
  EXPECT_EQ(back.command, m.command);
  EXPECT_EQ(back.base_files, m.base_files);
  EXPECT_EQ(back.grid_file, m.grid_file);
  EXPECT_EQ(back.launch, m.launch);
  EXPECT_EQ(back.varied, m.varied);
  ASSERT_EQ(back.runs.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(back.runs[i].name, m.runs[i].name);
    EXPECT_EQ(back.runs[i].values, m.runs[i].values);
  }
}

TEST_F(Results, ReadManifestErrorsNameTheFile) {
  EXPECT_CONTAINS(error_of([&] { read_manifest(dir_); }), "'" + dir_ + "' is not a sweep folder");
  write("sweep.yaml", "command: [unclosed\n");
  EXPECT_CONTAINS(error_of([&] { read_manifest(dir_); }),
                  dir_ + "/sweep.yaml: not a sweep manifest");
  write("sweep.yaml", "command: x\nruns: []\n");
  EXPECT_CONTAINS(error_of([&] { read_manifest(dir_); }),
                  dir_ + "/sweep.yaml: the manifest lists no runs");
}

// RFC 4180 fields of one CSV record (no newlines inside fields here).
std::vector<std::string> csv_fields(const std::string& line) {
  std::vector<std::string> fields(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        fields.back() += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        fields.back() += c;
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      fields.emplace_back();
    } else {
      fields.back() += c;
    }
  }
  return fields;
}

std::vector<std::string> file_lines(const std::string& path) {
  std::vector<std::string> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST_F(Results, WriteResultsCsvAndJsonl) {
  run_folder("done", kMetrics, kSummary, status_json("done", "", 2.5));
  // JSON escapes of the error as status.json holds it: bad value, "quoted"
  run_folder("failed", "", "", status_json("failed", "bad value, \\\"quoted\\\"", 1.5));
  SweepManifest m;
  m.command = "sweep";
  m.varied = {"moe.num_experts", "data.path"};
  m.runs = {RunRecord{"done", {{"moe.num_experts", "4"}, {"data.path", "a,b"}}},
            RunRecord{"failed", {{"moe.num_experts", "8"}, {"data.path", "plain"}}},
            RunRecord{"pending", {{"moe.num_experts", "16"}, {"data.path", "p"}}}};
  const std::vector<ResultRow> rows = write_results(dir_, m);
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0].json("status"), "\"done\"");
  EXPECT_EQ(rows[1].json("status"), "\"failed\"");
  EXPECT_EQ(rows[2].json("status"), "\"pending\"");

  const std::vector<std::string> cols = result_columns(m.varied);
  const std::vector<std::string> csv = file_lines(dir_ + "/results.csv");
  ASSERT_EQ(csv.size(), 4u);
  std::string header;
  for (size_t i = 0; i < cols.size(); ++i) header += (i ? "," : "") + cols[i];
  EXPECT_EQ(csv[0], header);
  auto col = [&](const std::string& name) {
    return static_cast<size_t>(std::find(cols.begin(), cols.end(), name) - cols.begin());
  };
  std::vector<std::vector<std::string>> table;
  for (size_t r = 1; r < csv.size(); ++r) {
    table.push_back(csv_fields(csv[r]));
    ASSERT_EQ(table.back().size(), cols.size()) << csv[r];
  }
  EXPECT_EQ(table[0][col("run")], "done");
  EXPECT_EQ(table[0][col("moe.num_experts")], "4");
  EXPECT_EQ(table[0][col("data.path")], "a,b");
  EXPECT_EQ(table[0][col("status")], "done");
  EXPECT_NEAR(std::stod(table[0][col("load_imbalance")]), kImbalance, 1e-7);
  EXPECT_NEAR(std::stod(table[0][col("train_flops")]), kTrainFlops, kTrainFlops * 1e-7);
  EXPECT_EQ(table[0][col("error")], "");
  EXPECT_EQ(table[1][col("status")], "failed");
  EXPECT_EQ(table[1][col("error")], "bad value, \"quoted\"");
  EXPECT_EQ(table[1][col("final_val_loss")], "");  // null: an empty cell
  EXPECT_EQ(table[2][col("run")], "pending");
  EXPECT_EQ(table[2][col("status")], "pending");
  // The quoting itself: a comma quotes the field, a quote doubles.
  EXPECT_EQ(csv[1].rfind("done,4,\"a,b\",done,", 0), 0u) << csv[1];
  EXPECT_EQ(csv[2].substr(csv[2].size() - 24), ",\"bad value, \"\"quoted\"\"\"") << csv[2];

  const std::vector<std::string> jsonl = file_lines(dir_ + "/results.jsonl");
  ASSERT_EQ(jsonl.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(jsonl[i], rows[i].to_json());
    const YAML::Node n = YAML::Load(jsonl[i]);
    ASSERT_TRUE(n.IsMap()) << jsonl[i];
    EXPECT_EQ(n["run"].as<std::string>(), m.runs[i].name);
    EXPECT_EQ(n.size(), cols.size());
  }
  EXPECT_EQ(YAML::Load(jsonl[1])["error"].as<std::string>(), "bad value, \"quoted\"");
  EXPECT_EQ(YAML::Load(jsonl[0])["moe.num_experts"].as<int>(), 4);
  EXPECT_TRUE(YAML::Load(jsonl[2])["final_val_loss"].IsNull());
}

// ---- report data ----

TEST_F(Results, ReportDataOfARunFolder) {
  const std::string dir = run_folder("myrun", kMetrics, kSummary, "");
  const YAML::Node d = YAML::Load(report_data(dir));
  ASSERT_TRUE(d.IsMap());
  EXPECT_EQ(d["kind"].as<std::string>(), "run");
  EXPECT_EQ(d["title"].as<std::string>(), "run myrun");
  EXPECT_EQ(d["command"].as<std::string>(), "");
  EXPECT_EQ(d["varied"].size(), 0u);
  ASSERT_EQ(d["columns"].size(), result_columns({}).size());
  EXPECT_EQ(d["columns"][0].as<std::string>(), "run");
  ASSERT_EQ(d["runs"].size(), 1u);
  const YAML::Node run = d["runs"][0];
  EXPECT_EQ(run["name"].as<std::string>(), "myrun");
  EXPECT_EQ(run["row"]["status"].as<std::string>(), "done");
  EXPECT_NEAR(run["row"]["load_imbalance"].as<double>(), kImbalance, 1e-7);
  // The metrics lines, embedded as objects, in file order.
  ASSERT_EQ(run["metrics"].size(), 5u);
  EXPECT_EQ(run["metrics"][0]["step"].as<int>(), 5);
  EXPECT_NEAR(run["metrics"][0]["train_loss"].as<double>(), 3.5, 1e-12);
  EXPECT_NEAR(run["metrics"][0]["expert_load"][0][0].as<double>(), 0.4, 1e-12);
  EXPECT_NEAR(run["metrics"][0]["expert_load"][1][3].as<double>(), 0.25, 1e-12);
  EXPECT_NEAR(run["metrics"][4]["val_loss"].as<double>(), 3.45, 1e-12);
  // A trailing slash names the same folder.
  EXPECT_EQ(YAML::Load(report_data(dir + "/"))["title"].as<std::string>(), "run myrun");
}

TEST_F(Results, ReportDataOfASweepFolder) {
  run_folder("a", kMetrics, kSummary, status_json("done", "", 2));
  SweepManifest m;
  m.command = "switchyard sweep --grid g.yaml";
  m.grid_file = "g.yaml";
  m.varied = {"train.seed"};
  m.runs = {RunRecord{"a", {{"train.seed", "1"}}}, RunRecord{"b", {{"train.seed", "2"}}}};
  write_manifest(dir_, m);
  const YAML::Node d = YAML::Load(report_data(dir_));
  EXPECT_EQ(d["kind"].as<std::string>(), "sweep");
  EXPECT_EQ(d["command"].as<std::string>(), m.command);
  ASSERT_EQ(d["varied"].size(), 1u);
  EXPECT_EQ(d["varied"][0].as<std::string>(), "train.seed");
  EXPECT_EQ(d["columns"].size(), result_columns(m.varied).size());
  ASSERT_EQ(d["runs"].size(), 2u);
  EXPECT_EQ(d["runs"][0]["name"].as<std::string>(), "a");
  EXPECT_EQ(d["runs"][0]["row"]["train.seed"].as<int>(), 1);
  EXPECT_EQ(d["runs"][0]["metrics"].size(), 5u);
  EXPECT_EQ(d["runs"][1]["name"].as<std::string>(), "b");
  EXPECT_EQ(d["runs"][1]["row"]["status"].as<std::string>(), "pending");
  EXPECT_EQ(d["runs"][1]["metrics"].size(), 0u);
}

TEST_F(Results, ReportOfNeitherFolderNamesIt) {
  const std::string e = error_of([&] { report_data(dir_); });
  EXPECT_CONTAINS(e, "'" + dir_ + "' is neither a sweep folder (sweep.yaml) nor a run folder");
  EXPECT_CONTAINS(error_of([&] { write_report(dir_ + "/nope", ""); }), dir_ + "/nope");
}

TEST_F(Results, WriteReportEmbedsTheDataSafely) {
  run_folder("a", kMetrics, kSummary, "");
  SweepManifest m;
  m.command = "sweep </script><b>x <!--<script>";
  m.runs = {RunRecord{"a", {}}};
  write_manifest(dir_, m);
  const std::string path = write_report(dir_, "");
  EXPECT_EQ(path, dir_ + "/report.html");
  const std::string page = read_file(path);
  EXPECT_EQ(page.find("/*SWITCHYARD_REPORT_DATA*/null"), std::string::npos);
  // Every '<' of the data is \u003c: neither "</script" nor "<!--" reaches the page's parser.
  EXPECT_NE(page.find("sweep \\u003c/script>\\u003cb>x \\u003c!--\\u003cscript>"),
            std::string::npos);
  EXPECT_EQ(page.find("sweep </script>"), std::string::npos);
  EXPECT_EQ(page.find("<!--<script>"), std::string::npos);
  EXPECT_NE(page.find("\"kind\": \"sweep\""), std::string::npos);
  // -o elsewhere.
  EXPECT_EQ(write_report(dir_, dir_ + "/other.html"), dir_ + "/other.html");
  EXPECT_EQ(read_file(dir_ + "/other.html").size(), page.size());
}

// A run's report with malformed metrics lines: they are left out of the page (with a warning);
// with no usable line at all it is an error naming the file.
TEST_F(Results, ReportOfMalformedMetrics) {
  const std::string dir = run_folder(
      "r", std::string(kMetrics) + "{\"step\": \"x\", \"train_loss\": \"</b>\"}\n", kSummary, "");
  ::testing::internal::CaptureStderr();
  const std::string data = report_data(dir);
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(err, "[r00/01] [report] warning: " + dir +
                     "/metrics.jsonl: 1 malformed line(s) skipped (each line must be a JSON object "
                     "of numbers (or null, or lists of them) with a \"step\"); 5 used\n");
  const YAML::Node d = YAML::Load(data);
  EXPECT_EQ(d["runs"][0]["metrics"].size(), 5u);
  EXPECT_EQ(data.find("\"x\""), std::string::npos);
  EXPECT_EQ(data.find("</b>"), std::string::npos);

  write("r/metrics.jsonl", "\x8f\x03garbage\n{\"step\": \"x\"}\n{\"lr\": 1}\n");
  EXPECT_EQ(error_of([&] { report_data(dir); }),
            dir +
                "/metrics.jsonl: no usable line: 3 line(s), none a JSON object of numbers (or "
                "null, or lists of them) with a \"step\"");
  EXPECT_EQ(error_of([&] { write_report(dir, ""); }).rfind(dir + "/metrics.jsonl: no usable", 0),
            0u);
  struct stat st {};
  EXPECT_NE(stat((dir + "/report.html").c_str(), &st), 0);
}

// The page's path: a folder is refused before anything is written, and a write that fails leaves
// neither the page nor write_file_atomic's temporary file.
TEST_F(Results, WriteReportLeavesNothingBehindOnFailure) {
  run_folder("a", kMetrics, kSummary, "");
  make_directories(dir_ + "/a/folder.html");
  EXPECT_EQ(error_of([&] { write_report(dir_ + "/a", dir_ + "/a/folder.html"); }),
            "switchyard report: the output '" + dir_ +
                "/a/folder.html' is a folder; expected the HTML file to write (-o FILE, e.g. -o " +
                dir_ + "/a/folder.html/report.html)");
  struct stat st {};
  EXPECT_NE(stat((dir_ + "/a/folder.html.tmp").c_str(), &st), 0);
  setenv("SWITCHYARD_TEST_FAIL_WRITE", "full.html", 1);
  const std::string e = error_of([&] { write_report(dir_ + "/a", dir_ + "/full.html"); });
  unsetenv("SWITCHYARD_TEST_FAIL_WRITE");
  EXPECT_CONTAINS(e, "cannot write '" + dir_ + "/full.html.tmp': No space left on device");
  EXPECT_NE(stat((dir_ + "/full.html.tmp").c_str(), &st), 0);
  EXPECT_NE(stat((dir_ + "/full.html").c_str(), &st), 0);
}

}  // namespace
}  // namespace sy::study
