// `switchyard sweep`: runs the points of a grid (study/grid.h) one after another or N at a time,
// each as its own process launched through a command template, records each run's outcome, and
// keeps the sweep folder's results table current (study/results.h). docs/experiments.md.
//
// Note [Sweep processes]: every run is a child process (`/bin/sh -c` of the launch template),
// started in its own process group with its output appended to RUN/train.log. A failed run is
// recorded (status.json, the table's error column) and the others go on. SIGINT/SIGTERM/SIGHUP
// to the sweep stop every running child (SIGTERM to its process group) and leave them
// "interrupted"; a child whose sweep dies without that (SIGKILL) gets SIGTERM from the kernel
// (PR_SET_PDEATHSIG on the shell, which execs a simple command). Running the sweep again skips
// the runs that are done and starts the others with `--resume auto` (the default template), so
// they continue from their newest checkpoint. One sweep at a time per folder: a second one is
// refused (a lock on SWEEP/.sweep.lock, inherited by the runs, so that one which outlives its
// sweep still holds it).
#pragma once

#include <string>
#include <vector>

namespace sy::study {

// The launch template used when the grid has none. Placeholders: {switchyard} (this binary),
// {config} (the run's resolved config.yaml), {run_dir}, {name}, {ranks} (the grid's ranks),
// {slot} (0 .. parallel-1: which of the concurrent runs this is, e.g. for CUDA_VISIBLE_DEVICES).
inline constexpr const char* kDefaultLaunch = "{switchyard} train --config {config} --resume auto";

struct SweepOptions {
  std::vector<std::string> configs;  // base config files
  std::vector<std::string> sets;     // --set, applied after the grid's set
  std::string grid_file;
  std::string out_dir;  // "" : sweeps/<grid file name without .yaml>
  int parallel = 0;     // runs at a time; 0: the grid's `parallel`, else 1
  bool dry_run = false;
  std::string command_line;  // recorded in the manifest
};

// Runs the sweep; returns the process exit status: 0 when every run is done, 1 when a run
// failed, 130 when interrupted. Bad grids and configs throw sy::Error before anything runs.
int run_sweep(const SweepOptions& options);

// `switchyard sweep --summarize DIR`: rebuilds results.csv/jsonl from the run folders and prints
// the table.
void summarize_sweep(const std::string& sweep_dir);

}  // namespace sy::study
