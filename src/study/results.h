// The sweep folder and its results table (docs/experiments.md#the-results-table).
//
//   SWEEP/sweep.yaml       the manifest: the command, base configs, grid, varied keys, and each
//                          run's name and values (written before the first run starts)
//   SWEEP/<run>/           one run folder per point: the trainer's config.yaml, metrics.jsonl,
//                          summary.json (src/train/summary.h), checkpoints/, plus the sweep's
//                          train.log (the run's output) and status.json (below)
//   SWEEP/results.csv      one row per run, columns result_columns()
//   SWEEP/results.jsonl    the same rows as JSON objects (numbers as numbers, null when unknown)
//
// status.json, written by the sweep around each attempt of a run: {"status": "running" | "done"
// | "failed" | "interrupted", "exit_code": N, "attempts": N, "seconds": wall seconds over all
// attempts, "error": the last error line of train.log, "command": the launch command}. A run is
// done when its summary.json says "complete"; everything else is run (again) by the next sweep.
// A summary.json or status.json that is no JSON object (a damaged file) fails no command: its
// run's row says "failed", with the file and what it holds in the error column, the other rows
// are as ever, and the next sweep runs it again (writing status.json anew).
//
// A row is built from the run folder alone, so `switchyard sweep --summarize DIR` rebuilds the
// table at any time, while the sweep runs or after it.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace sy::study {

struct RunRecord {
  std::string name;
  std::vector<std::pair<std::string, std::string>> values;  // the point's (key, value)
};

struct SweepManifest {
  std::string command;                  // the sweep's command line
  std::vector<std::string> base_files;  // --config
  std::string grid_file;
  std::string launch;               // the launch template
  std::vector<std::string> varied;  // varied keys, axis order
  std::vector<RunRecord> runs;
};

void write_manifest(const std::string& sweep_dir, const SweepManifest& manifest);
// Throws naming SWEEP/sweep.yaml when it is missing or malformed.
SweepManifest read_manifest(const std::string& sweep_dir);
bool is_sweep_dir(const std::string& dir);  // has sweep.yaml

// RUN/status.json (above), read back with a JSON reader; a missing or unreadable file reads as
// no attempt yet, an unreadable one adding to *problem (when given) the file and what was wrong:
// "RUN/status.json: expected a JSON object with ..., got 'garbage'".
struct RunStatus {
  std::string status, error, command;
  int exit_code = 0, attempts = 0;
  double seconds = 0;  // over every attempt
};
RunStatus read_status(const std::string& run_dir, std::string* problem = nullptr);
void write_status(const std::string& run_dir, const RunStatus& status);

// RUN/summary.json says "complete": the run reached train.max_steps.
bool run_complete(const std::string& run_dir);

// A row: (column, value as JSON text: a number, a quoted string, or null), in column order.
struct ResultRow {
  std::vector<std::pair<std::string, std::string>> cells;
  // The cell's JSON text; "null" when the column is absent.
  std::string json(const std::string& column) const;
  std::string to_json() const;  // {"run": ..., ...}
};

// "run", the varied keys, then: status, final_val_loss, best_val_loss, final_train_loss, steps,
// tokens, params_total, params_active, flops_per_token, train_flops (flops_per_token x tokens),
// tokens_per_s, ms_per_step, peak_mib, drop_fraction (mean over the log lines),
// load_imbalance (max / mean tokens per expert, averaged over log lines and MoE layers),
// aux_loss, z_loss (the last log line's), seconds, error.
std::vector<std::string> result_columns(const std::vector<std::string>& varied);

// One run folder's row. `run_dir` need not exist yet (a pending run). `live`: a sweep is running
// in the folder now; without one, a run whose status.json still says "running" (its sweep was
// killed outright) is shown as interrupted.
ResultRow summarize_run(const std::string& run_dir, const RunRecord& run,
                        const std::vector<std::string>& varied, bool live = false);

// The rows of every run in the manifest, written to SWEEP/results.csv and SWEEP/results.jsonl
// (each replaced atomically); returns them.
std::vector<ResultRow> write_results(const std::string& sweep_dir, const SweepManifest& manifest,
                                     bool live = false);

// The usable lines of RUN/metrics.jsonl, each written anew as JSON: an object whose values are
// all JSON numbers, null or lists of them (expert_load), "step" a number. Other lines are
// skipped, and counted in *skipped (when given), except blank lines and a last line without its
// newline (a run killed mid-write may leave one, a running one may be writing it).
std::vector<std::string> metrics_lines(const std::string& run_dir, size_t* skipped = nullptr);

// A value of the grid as JSON: a number when the text is a JSON number ("8", "1e-3", "-0.5"),
// else a string ("topk", "010", ".5").
std::string value_json(const std::string& text);

}  // namespace sy::study
