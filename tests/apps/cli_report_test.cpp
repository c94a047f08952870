// `switchyard report` end to end on damaged folders (src/study/report.h, docs/experiments.md):
// malformed metrics lines are skipped with one warning and never reach the page, a metrics file
// with no usable line is an error naming it, a damaged summary.json or status.json is a failed
// row naming the file, and an -o that is a folder is refused before anything is written.
//
// The run and sweep folders are written by hand: nothing is trained.
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cli_util.h"

namespace sy::cli {
namespace {

namespace fs = std::filesystem;

// Two log lines and an evaluation, as the trainer writes them.
const char* const kMetrics =
    "{\"step\": 2, \"train_loss\": 3.5, \"aux_loss\": 1.1, \"z_loss\": 2.0, \"drop_fraction\": "
    "0.1, \"expert_load\": [[0.5, 0.5]]}\n"
    "{\"step\": 4, \"train_loss\": 3.25, \"aux_loss\": 1.05, \"z_loss\": 1.9, \"drop_fraction\": "
    "0.2, \"expert_load\": [[0.75, 0.25]]}\n"
    "{\"step\": 4, \"eval_train_loss\": 3.1, \"val_loss\": 3.375}\n";
const char* const kSummary = "{\"status\": \"complete\", \"steps\": 4, \"tokens\": 256}\n";

std::string run_folder(const std::string& dir, const std::string& metrics,
                       const std::string& summary) {
  fs::create_directories(dir);
  write_text(dir + "/metrics.jsonl", metrics);
  if (!summary.empty()) write_text(dir + "/summary.json", summary);
  return dir;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::vector<std::string> lines_with(const std::string& text, const std::string& part) {
  std::vector<std::string> out;
  for (const std::string& line : lines_of(text)) {
    if (contains(line, part)) out.push_back(line);
  }
  return out;
}

TEST(CliReport, MalformedMetricsLinesAreSkippedWithOneWarning) {
  TempFolder dir;
  ASSERT_FALSE(dir.path().empty()) << "no temporary folder";
  const std::string run =
      run_folder(dir / "run",
                 std::string(kMetrics) + "{\"step\": \"x\", \"train_loss\": 1}\n" +
                     "{\"step\": 6, \"train_loss\": \"<b>bold</b>\"}\n",
                 kSummary);
  const RunResult r = run_switchyard(dir.path(), {"report", run}, 120);
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_EQ(r.out, "report: " + run + "/report.html\n");
  const std::vector<std::string> warnings = lines_with(r.err, "warning");
  ASSERT_EQ(warnings.size(), 1u) << r.err;
  EXPECT_TRUE(contains(warnings[0], run + "/metrics.jsonl: 2 malformed line(s) skipped"))
      << warnings[0];
  EXPECT_TRUE(contains(warnings[0], "; 3 used")) << warnings[0];
  const std::string page = read_text(run + "/report.html");
  EXPECT_TRUE(contains(page, "{\"step\": 4, \"eval_train_loss\": 3.1, \"val_loss\": 3.375}"));
  EXPECT_FALSE(contains(page, "\"x\""));
  EXPECT_FALSE(contains(page, "bold"));
}

TEST(CliReport, MetricsWithNoUsableLineAreAnError) {
  TempFolder dir;
  ASSERT_FALSE(dir.path().empty()) << "no temporary folder";
  std::mt19937 random(7);
  std::string bytes(4096, '\0');
  for (char& c : bytes) c = static_cast<char>(random() & 0xff);
  const std::string run = run_folder(dir / "run", bytes + "\n", "");
  const RunResult r = run_switchyard(dir.path(), {"report", run}, 120);
  expect_clean_error(r, {run + "/metrics.jsonl: no usable line: ",
                         "none a JSON object of numbers (or null, or lists of them) with a "
                         "\"step\""});
  EXPECT_FALSE(fs::exists(run + "/report.html"));
  EXPECT_FALSE(fs::exists(run + "/report.html.tmp"));
  // String values only: the same.
  write_text(run + "/metrics.jsonl", "{\"step\": \"x\"}\n{\"step\": \"1\", \"lr\": 2}\n");
  expect_clean_error(run_switchyard(dir.path(), {"report", run}, 120),
                     {run + "/metrics.jsonl: no usable line: 2 line(s), none a JSON object"});
  EXPECT_FALSE(fs::exists(run + "/report.html"));
}

TEST(CliReport, OutputThatIsAFolderIsRefusedBeforeWriting) {
  TempFolder dir;
  ASSERT_FALSE(dir.path().empty()) << "no temporary folder";
  const std::string run = run_folder(dir / "run", kMetrics, kSummary);
  const std::string folder = dir / "pages";
  fs::create_directories(folder);
  write_text(folder + "/keep.txt", "kept");
  for (const char* flag : {"-o", "--out"}) {
    SCOPED_TRACE(flag);
    const RunResult r = run_switchyard(dir.path(), {"report", run, flag, folder}, 120);
    expect_clean_error(
        r, {"the output '" + folder + "' is a folder",
            "expected the HTML file to write (-o FILE, e.g. -o " + folder + "/report.html)"});
    EXPECT_EQ(r.out, "");
    EXPECT_FALSE(fs::exists(folder + ".tmp"));
    EXPECT_FALSE(fs::exists(run + "/report.html"));
    EXPECT_EQ(read_text(folder + "/keep.txt"), "kept");
    EXPECT_EQ(std::distance(fs::directory_iterator(folder), fs::directory_iterator()), 1);
  }
}

// A run's damaged summary.json or status.json: its row says failed, naming the file and what it
// should hold; the other runs are tabulated as ever, and neither command fails.
TEST(CliReport, DamagedRunFilesOfASweepAreFailedRows) {
  TempFolder dir;
  ASSERT_FALSE(dir.path().empty()) << "no temporary folder";
  const std::string sweep = dir / "sweep";
  fs::create_directories(sweep);
  write_text(sweep + "/sweep.yaml",
             "command: \"switchyard sweep\"\nbase: [base.yaml]\ngrid: grid.yaml\n"
             "launch: \"{switchyard} train --config {config}\"\nvaried: [moe.top_k]\nruns:\n"
             "  - {name: top_k=1, values: {moe.top_k: \"1\"}}\n"
             "  - {name: top_k=2, values: {moe.top_k: \"2\"}}\n");
  run_folder(sweep + "/top_k=1", kMetrics, "garbage\n");
  run_folder(sweep + "/top_k=2", kMetrics, kSummary);
  write_text(sweep + "/top_k=2/status.json", "[not, an, object]\n");
  const std::string reason = sweep +
                             "/top_k=1/summary.json: expected a JSON object with the run's "
                             "totals (status, steps, tokens, ...), got 'garbage'";

  const RunResult s = run_switchyard(dir.path(), {"sweep", "--summarize", sweep}, 120);
  ASSERT_EQ(s.exit_code, 0) << s.describe();
  const std::vector<std::string> csv = lines_of(read_text(sweep + "/results.csv"));
  ASSERT_EQ(csv.size(), 3u);
  EXPECT_EQ(csv[1].rfind("top_k=1,1,failed,3.375,", 0), 0u) << csv[1];
  EXPECT_TRUE(contains(csv[1], ",\"" + reason + "\"")) << csv[1];
  // top_k=2's summary says complete: done, whatever its status.json holds.
  EXPECT_EQ(csv[2].rfind("top_k=2,2,done,3.375,", 0), 0u) << csv[2];

  const RunResult r = run_switchyard(dir.path(), {"report", sweep}, 120);
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_TRUE(contains(read_text(sweep + "/report.html"), reason));
}

// A failed report prints its error and nothing on stdout ("report: PATH" comes only after the
// page is written).
TEST(CliReport, FailurePrintsNothingOnStdout) {
  TempFolder dir;
  ASSERT_FALSE(dir.path().empty()) << "no temporary folder";
  const RunResult r = run_switchyard(dir.path(), {"report", dir / "nothing"}, 120);
  expect_clean_error(r, {dir / "nothing", "is neither a sweep folder"});
  EXPECT_EQ(r.out, "");
}

}  // namespace
}  // namespace sy::cli
