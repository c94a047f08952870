// The command line of switchyard: its usage texts and the parsing of its arguments. Pure argument
// handling: nothing here starts a runtime or reads a config file. A bad command line is an
// sy::Error of one line (main prints it like every other error).
#pragma once

#include <string>
#include <vector>

#include "bench/bench.h"
#include "study/sweep.h"
#include "train/generate.h"

namespace sy::app {

struct Args {
  std::string command;  // train | generate | verify | bench | sweep | report
  std::vector<std::string> configs, sets;
  int ranks = 1;  // --ranks N: in-process ranks
  bool log_all_ranks = false;
  bool help = false;
  std::string resume;      // train --resume DIR|auto
  bool overwrite = false;  // train --overwrite: start over in a folder that holds a run
  bool layouts = false;    // verify --layouts: the training-layout check
  std::string bench_what;  // bench layer | alltoall
  BenchOptions bench;
  GenerateOptions gen;
  study::SweepOptions sweep;  // sweep: --grid, --out, --parallel, --dry-run
  std::string summarize;      // sweep --summarize DIR
  std::string report_dir;     // report DIR
  std::string report_out;     // report -o FILE
};

// `switchyard <command> --help`: the options of one command; the general usage for anything
// else (`switchyard --help`).
const char* command_usage(const std::string& command);

// argv as given to main. With help set, nothing past the options themselves is checked.
Args parse_args(int argc, char** argv);

}  // namespace sy::app
