// The command line of switchyard (apps/cli.h): the usage texts, and the arguments checked one by
// one so that a bad command line ends in one clear error before anything starts.
#include "cli.h"

#include <sys/resource.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "common/files.h"
#include "config/config.h"

namespace sy::app {
namespace {

const char* kUsage = R"(usage: switchyard <command> [options]

commands:
  train     train a model:     switchyard train --config F.yaml [--config G.yaml ...]
                                 [--set section.key=value ...] [--ranks N] [--log-all-ranks]
                                 [--resume DIR|auto | --overwrite]
  generate  sample text:       switchyard generate --run DIR [--prompt TEXT | --source TEXT]
                                 [--tokens N] [--temperature T] [--top-k K] [--seed S]
                                 [--task NAME] [--device cpu|cuda|auto]
  verify    check expert parallelism against the single-process layer:
                               switchyard verify --config F.yaml --ranks N [--set ...]
                               mpirun -np N switchyard verify --config F.yaml (MPI, or NCCL on GPUs)
  bench     measure against the hardware (docs/bench.md):
                               switchyard bench layer --config F.yaml [--set ...] [--reps N]
                                 [--warmup N] [--rounds N] [--ranks N] [--trace FILE]   (or under mpirun)
                               switchyard bench alltoall [--config F.yaml] [--min-bytes B]
                                 [--max-bytes B] [--reps N] [--ranks N]
  sweep     run a grid of configs: switchyard sweep --config F.yaml --grid G.yaml [--set ...]
                                 [--out DIR] [--parallel N] [--dry-run]
                               switchyard sweep --summarize DIR   (rebuild the results table)
  report    an HTML report:    switchyard report SWEEP_OR_RUN_DIR [-o report.html]
  params    list the parameters: switchyard params --config F.yaml [--set ...] [--ranks N]

Multi-rank training: `mpirun -np N switchyard train ...` (one rank per GPU or CPU process), or
`--ranks N` for N in-process ranks in one process (CPU; the debug mode of the distributed path).
`switchyard <command> --help` shows the options of one command; docs/ has the details.
)";

// An integer option: a clear word for text that is not one, and "too large" / "too small" with
// the limit for one beyond int (--ranks 4294967300 once wrapped round to 4 ranks).
int parse_int(const std::string& flag, const std::string& value) {
  const size_t digits = !value.empty() && (value[0] == '-' || value[0] == '+') ? 1 : 0;
  SY_CHECK(
      value.size() > digits && value.find_first_not_of("0123456789", digits) == std::string::npos,
      flag, " expects an integer, got '", value, "'");
  errno = 0;
  const long long v = std::strtoll(value.c_str(), nullptr, 10);
  constexpr int kMax = std::numeric_limits<int>::max(), kMin = std::numeric_limits<int>::min();
  SY_CHECK(!(errno == ERANGE && v > 0) && v <= kMax, flag, " expects an integer of at most ", kMax,
           ", got '", value, "': too large");
  SY_CHECK(!(errno == ERANGE && v < 0) && v >= kMin, flag, " expects an integer of at least ", kMin,
           ", got '", value, "': too small");
  return static_cast<int>(v);
}

// --ranks N runs N in-process ranks, a thread each (and LibTorch's threads beside them): at most
// limits::kRanks, and at most half of what RLIMIT_NPROC (ulimit -u, which counts the user's
// threads) allows, so that a mistyped count is refused instead of failing to start threads.
void check_rank_threads(int ranks) {
  SY_CHECK(ranks <= limits::kRanks, "--ranks (", ranks, ") is too large: at most ", limits::kRanks,
           " in-process ranks (one thread each); use mpirun -np N for more");
  struct rlimit lim {};
  if (::getrlimit(RLIMIT_NPROC, &lim) != 0 || lim.rlim_cur == RLIM_INFINITY) return;
  const auto allowed = static_cast<int64_t>(lim.rlim_cur / 2);
  SY_CHECK(ranks <= allowed, "--ranks (", ranks, ") is too large: at most ", allowed,
           " here, half of the ", static_cast<int64_t>(lim.rlim_cur),
           " processes and threads that RLIMIT_NPROC (ulimit -u) allows");
}

double parse_double(const std::string& flag, const std::string& value) {
  try {
    size_t pos = 0;
    const double v = std::stod(value, &pos);
    if (pos == value.size()) return v;
  } catch (const std::exception&) {
  }
  SY_THROW(flag, " expects a number, got '", value, "'");
}

// Where each option belongs, for the error on an option given to a command that does not take
// it (parse_args decides what each command takes).
const std::vector<std::pair<const char*, const char*>>& option_owners() {
  static const std::vector<std::pair<const char*, const char*>> owners = {
      {"--config", "train, verify, bench, sweep and params"},
      {"--set", "train, verify, bench, sweep and params"},
      {"--ranks", "train, verify, bench and params"},
      {"--log-all-ranks", "train, verify and bench"},
      {"--resume", "train"},
      {"--overwrite", "train"},
      {"--layouts", "verify"},
      {"--run", "generate"},
      {"--prompt", "generate"},
      {"--source", "generate"},
      {"--tokens", "generate"},
      {"--temperature", "generate"},
      {"--top-k", "generate"},
      {"--seed", "generate"},
      {"--task", "generate"},
      {"--device", "generate"},
      {"--reps", "bench"},
      {"--warmup", "bench"},
      {"--rounds", "bench"},
      {"--min-bytes", "bench"},
      {"--max-bytes", "bench"},
      {"--trace", "bench"},
      {"--grid", "sweep"},
      {"--out", "sweep and report"},
      {"--parallel", "sweep"},
      {"--dry-run", "sweep"},
      {"--summarize", "sweep"},
      {"-o", "report"},
  };
  return owners;
}

// `flag` is not an option of `command`: one line naming both (and the commands that take it).
[[noreturn]] void reject_option(const std::string& command, const std::string& flag) {
  const std::string help = "see switchyard " + command + " --help";
  for (const auto& [option, owners] : option_owners()) {
    if (flag == option) {
      SY_THROW("unknown option '", flag, "' for 'switchyard ", command, "': it is an option of ",
               owners, " (", help, ")");
    }
  }
  if (!flag.empty() && flag[0] == '-') {
    SY_THROW("unknown option '", flag, "' for 'switchyard ", command, "' (", help, ")");
  }
  SY_THROW("unexpected argument '", flag, "' for 'switchyard ", command,
           "': options start with - (", help, ")");
}

// Below this, --temperature samples greedily: dividing the logits by it would overflow.
constexpr double kGreedyTemperature = 1e-4;

}  // namespace

// `switchyard <command> --help`.
const char* command_usage(const std::string& command) {
  if (command == "train") {
    return R"(usage: switchyard train --config F.yaml [--config G.yaml ...] [options]
  --config F        a YAML config; later files override earlier ones (docs/config.md)
  --set K=V         override one key, e.g. --set train.max_steps=100 (repeatable)
  --resume DIR|auto continue from a checkpoint folder, or from the newest complete one under
                    <train.out_dir>/checkpoints (docs/checkpoints.md)
  --overwrite       start over in a train.out_dir that holds an earlier run: its checkpoints,
                    metrics.jsonl, summary.json, model.pt and event files are deleted first
                    (without --resume or --overwrite such a folder is refused)
  --ranks N         N in-process ranks in one process (CPU), instead of mpirun (default 1)
  --log-all-ranks   every rank logs, not only rank 0
Under mpirun (`mpirun -np N switchyard train ...`) each process is one rank. The run folder is
train.out_dir (default runs/<name of the last --config file>); one job at a time holds it (the
lock <out_dir>/.lock). Paths may start with ~ (the home folder).
)";
  }
  if (command == "generate") {
    return R"(usage: switchyard generate --run DIR [options]
  --run DIR          a finished training run's folder (config.yaml, vocab.json, model.pt)
  --prompt TEXT      the start of the text (default: a newline if the vocabulary has one, else
                     its first character)
  --source TEXT      an encoder_decoder run: the sequence to translate (the output is its
                     target, decoded up to the end token or model.block_size - 1 characters)
  --tokens N         characters to sample (default 200)
  --temperature T    softmax temperature, finite and >= 0; 0 (or below 1e-4) is greedy
                     (default 1.0)
  --top-k K          sample among the K most likely characters; 0: all (default 0)
  --task NAME        a run trained with data.tasks: the task whose expert mask and head to use
  --seed S           sampling seed (default 0)
  --device D         cpu, cuda or auto (default cpu)
)";
  }
  if (command == "verify") {
    return R"(usage: switchyard verify --config F.yaml --ranks N [--set K=V ...]
       mpirun -np N switchyard verify --config F.yaml [--set K=V ...]
       switchyard verify --layouts --config F.yaml [--set K=V ...]
Runs the config's MoE layer on N ranks (parallel.ep_size of them per EP group) and checks
outputs, gradients, losses, dropped sets and one optimizer step against the single-process
layer; exits non-zero on any mismatch (docs/parallel.md). N must be at least 2 on the CPU (one
rank would compare the layer with itself); with train.device cuda one rank checks the GPU
against the CPU reference.
  --config F, --set K=V   as for train
  --ranks N               N in-process ranks (CPU); under mpirun, the MPI ranks
  --layouts               instead: train the model 3 steps on one global batch of 4
                          micro-batches as ep 4, ep 2 x dp 2, 1 rank with grad_accum 4 and
                          ep 2 with grad_accum 2 (in-process, CPU), and compare the losses and
                          final weights (docs/moe.md#layout-invariance)
)";
  }
  if (command == "bench") {
    return R"(usage: switchyard bench layer --config F.yaml [options]
       switchyard bench alltoall [--config F.yaml] [options]
Both also run under mpirun, one rank per GPU (docs/bench.md).
  --config F, --set K=V   as for train (layer: the MoE layer, tokens per rank and dtype)
  --reps N                timed repetitions, median reported (default 20)
  --warmup N              untimed repetitions first (default 5)
  --rounds N              layer: rounds of repetitions that time the step and the floor in
                          turn; the round of the median efficiency is printed, with the
                          spread over all rounds (default 3)
  --ranks N               N in-process ranks (CPU)
  --min-bytes B           alltoall: smallest per-rank buffer (default 1048576)
  --max-bytes B           alltoall: largest per-rank buffer, sizes doubling (default 1073741824)
  --trace FILE            layer: a Chrome trace of 3 more steps (host operators, CUDA kernels)
                          to FILE, from rank 0; scripts/trace_summary.py sums its kernels
)";
  }
  if (command == "sweep") {
    return R"(usage: switchyard sweep --config F.yaml --grid G.yaml [options]
       switchyard sweep --summarize DIR
Trains one run per point of the grid (docs/experiments.md), each in its own folder under the
sweep folder, and keeps DIR/results.csv and DIR/results.jsonl current. Running the same command
again skips the finished runs and continues the others from their last checkpoint.
  --config F        the base config (repeatable, later files override earlier ones)
  --grid G          the grid file: axes (config keys and their values), zip groups, fixed
                    overrides (set), the launch template, ranks, parallel
  --set K=V         override a key in every run, after the grid's set (repeatable)
  --out DIR         the sweep folder (default sweeps/<grid file name>)
  --parallel N      runs at a time (default: the grid's parallel, else 1); on the CPU they share
                    the cores, on GPUs use {slot} in the launch template
  --dry-run         list the runs and their commands; start nothing, write nothing
  --summarize DIR   rebuild DIR's results table from its run folders and print it
)";
  }
  if (command == "params") {
    return R"(usage: switchyard params --config F.yaml [--set K=V ...] [--ranks N]
Lists the model's parameters by name (the names train.init_from maps), with shapes and element
counts, and which EP rank holds which routed experts on N ranks (parallel.ep_size of them per EP
group). Nothing is trained.
)";
  }
  if (command == "report") {
    return R"(usage: switchyard report DIR [-o FILE]
Writes one self-contained HTML page (no network needed) for a sweep folder or a run folder: loss
curves, scaling plots, throughput, expert-load heatmaps, drop and aux-loss curves and the results
table (docs/experiments.md#the-report).
  DIR            a sweep folder (sweep.yaml) or a run folder (metrics.jsonl)
  -o, --out FILE where to write the page (default DIR/report.html)
)";
  }
  return kUsage;
}

Args parse_args(int argc, char** argv) {
  Args a;
  // One line like every other error; the usage is one `switchyard --help` away.
  SY_CHECK(argc >= 2,
           "no command given: expected train, generate, verify, bench, sweep, report or params ",
           "(see switchyard --help)");
  a.command = argv[1];
  if (a.command == "--help" || a.command == "-h" || a.command == "help") {
    a.help = true;
    return a;
  }
  SY_CHECK(a.command == "train" || a.command == "generate" || a.command == "verify" ||
               a.command == "bench" || a.command == "sweep" || a.command == "report" ||
               a.command == "params",
           "unknown command '", a.command,
           "': expected train, generate, verify, bench, sweep, report or params (see --help)");
  int first_option = 2;
  if (a.command == "bench" && argc >= 3 && argv[2][0] != '-') {
    a.bench_what = argv[2];
    first_option = 3;
    SY_CHECK(a.bench_what == "layer" || a.bench_what == "alltoall", "unknown benchmark '",
             a.bench_what, "': expected switchyard bench layer or switchyard bench alltoall");
  }
  if (a.command == "report" && argc >= 3 && argv[2][0] != '-') {
    a.report_dir = expand_home(argv[2], "the report folder");
    first_option = 3;
  }
  for (int i = first_option; i < argc; ++i) {
    const std::string flag = argv[i];
    const std::string& c = a.command;
    auto value = [&]() -> std::string {
      SY_CHECK(i + 1 < argc, flag, " expects a value");
      return argv[++i];
    };
    // A path: a leading ~ is the home folder (never a folder named ~).
    auto path = [&]() { return expand_home(value(), flag); };
    const bool runs_ranks = c == "train" || c == "verify" || c == "bench";
    if (flag == "--help" || flag == "-h") a.help = true;
    else if (flag == "--config" && (runs_ranks || c == "sweep" || c == "params"))
      a.configs.push_back(path());
    else if (flag == "--set" && (runs_ranks || c == "sweep" || c == "params"))
      a.sets.push_back(value());
    else if (flag == "--ranks" && (runs_ranks || c == "params")) a.ranks = parse_int(flag, value());
    else if (flag == "--log-all-ranks" && runs_ranks) a.log_all_ranks = true;
    else if (flag == "--resume" && c == "train") {
      a.resume = value();
      SY_CHECK(!a.resume.empty(), "--resume expects a checkpoint folder or auto, got ''");
      if (a.resume != "auto") a.resume = expand_home(a.resume, flag);
    } else if (flag == "--overwrite" && c == "train") a.overwrite = true;
    else if (flag == "--layouts" && c == "verify") a.layouts = true;
    else if (flag == "--run" && c == "generate") a.gen.run_dir = path();
    else if (flag == "--prompt" && c == "generate") a.gen.prompt = value();
    else if (flag == "--source" && c == "generate") a.gen.source = value();
    else if (flag == "--tokens" && c == "generate") a.gen.num_tokens = parse_int(flag, value());
    else if (flag == "--temperature" && c == "generate") {
      const std::string text = value();
      double t = -1;
      try {
        t = parse_double(flag, text);
      } catch (const Error&) {
      }
      SY_CHECK(std::isfinite(t) && t >= 0,
               "--temperature expects a finite number >= 0 (0: ", "greedy), got '", text, "'");
      a.gen.temperature = t < kGreedyTemperature ? 0.0 : t;
    } else if (flag == "--top-k" && c == "generate") a.gen.top_k = parse_int(flag, value());
    else if (flag == "--seed" && c == "generate") a.gen.seed = parse_int(flag, value());
    else if (flag == "--task" && c == "generate") a.gen.task = value();
    else if (flag == "--device" && c == "generate") {
      const std::string text = value();
      SY_CHECK(parse_choice(text, &a.gen.device), "--device expects cpu, cuda or auto, got '", text,
               "'");
    } else if (flag == "--reps" && c == "bench") a.bench.reps = parse_int(flag, value());
    else if (flag == "--warmup" && c == "bench") a.bench.warmup = parse_int(flag, value());
    else if (flag == "--rounds" && c == "bench") a.bench.rounds = parse_int(flag, value());
    else if (flag == "--min-bytes" && c == "bench") a.bench.min_bytes = parse_int(flag, value());
    else if (flag == "--max-bytes" && c == "bench") a.bench.max_bytes = parse_int(flag, value());
    else if (flag == "--trace" && c == "bench") a.bench.trace_path = path();
    else if (flag == "--grid" && c == "sweep") a.sweep.grid_file = path();
    else if (flag == "--out" && c == "sweep") a.sweep.out_dir = path();
    else if (flag == "--parallel" && c == "sweep") {
      a.sweep.parallel = parse_int(flag, value());
      SY_CHECK(a.sweep.parallel >= 1, "--parallel must be >= 1, got ", a.sweep.parallel);
    } else if (flag == "--dry-run" && c == "sweep") a.sweep.dry_run = true;
    else if (flag == "--summarize" && c == "sweep") a.summarize = path();
    else if ((flag == "-o" || flag == "--out") && c == "report") a.report_out = path();
    else reject_option(c, flag);
  }
  if (a.help) return a;
  SY_CHECK(a.ranks >= 1, "--ranks must be >= 1, got ", a.ranks);
  check_rank_threads(a.ranks);
  SY_CHECK(!(a.overwrite && !a.resume.empty()), "--overwrite starts the run over and --resume ",
           "continues it: give one of them");
  SY_CHECK(!a.layouts || a.ranks == 1, "verify --layouts trains its layouts (ep 4, ep 2 x dp 2, ",
           "grad_accum 4, ep 2 x grad_accum 2) on 4 in-process ranks of its own: it takes no ",
           "--ranks");
  if (a.command == "generate") {
    SY_CHECK(!a.gen.run_dir.empty(), "switchyard generate needs --run DIR (a train.out_dir)");
    SY_CHECK(a.gen.num_tokens >= 0, "--tokens must be >= 0, got ", a.gen.num_tokens);
  } else if (a.command == "bench") {
    SY_CHECK(!a.bench_what.empty(), "switchyard bench needs what to measure: layer or alltoall");
    SY_CHECK(a.bench.reps >= 1, "--reps must be >= 1, got ", a.bench.reps);
    SY_CHECK(a.bench.warmup >= 0, "--warmup must be >= 0, got ", a.bench.warmup);
    SY_CHECK(a.bench.rounds >= 1, "--rounds must be >= 1, got ", a.bench.rounds);
    for (const auto& [flag, n] : {std::pair<const char*, int>{"--reps", a.bench.reps},
                                  {"--warmup", a.bench.warmup},
                                  {"--rounds", a.bench.rounds}}) {
      SY_CHECK(n <= limits::kBenchReps, flag, " (", n, ") is too large: at most ",
               limits::kBenchReps);
    }
    SY_CHECK(a.bench.min_bytes >= 4 && a.bench.max_bytes >= a.bench.min_bytes,
             "--min-bytes and --max-bytes must satisfy 4 <= min <= max, got ", a.bench.min_bytes,
             " and ", a.bench.max_bytes);
    SY_CHECK(a.bench_what == "alltoall" || !a.configs.empty(),
             "switchyard bench layer needs --config FILE");
    SY_CHECK(a.bench_what == "layer" || a.bench.trace_path.empty(),
             "--trace is an option of switchyard bench layer, not of bench ", a.bench_what);
  } else if (a.command == "sweep") {
    if (a.summarize.empty()) {
      SY_CHECK(!a.configs.empty(), "switchyard sweep needs --config FILE (the base config)");
      SY_CHECK(!a.sweep.grid_file.empty(), "switchyard sweep needs --grid FILE (the grid)");
    } else {
      // The table comes from the run folders alone: an option that would shape a sweep is a
      // mistake, not something to ignore.
      for (const auto& [flag, given] :
           {std::pair<const char*, bool>{"--config", !a.configs.empty()},
            {"--grid", !a.sweep.grid_file.empty()},
            {"--set", !a.sets.empty()},
            {"--out", !a.sweep.out_dir.empty()},
            {"--parallel", a.sweep.parallel != 0},
            {"--dry-run", a.sweep.dry_run}}) {
        SY_CHECK(!given, "--summarize DIR rebuilds DIR's results table from its run folders and ",
                 "takes no ", flag);
      }
    }
    a.sweep.configs = a.configs;
    a.sweep.sets = a.sets;
    for (int i = 0; i < argc; ++i) a.sweep.command_line += (i ? " " : "") + std::string(argv[i]);
  } else if (a.command == "report") {
    SY_CHECK(!a.report_dir.empty(),
             "switchyard report needs a sweep or run folder: ", "switchyard report DIR [-o FILE]");
  } else {
    SY_CHECK(!a.configs.empty(), "switchyard ", a.command, " needs at least one --config FILE");
  }
  return a;
}

}  // namespace sy::app
