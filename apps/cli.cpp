// The command line of switchyard (apps/cli.h): the usage texts, and the arguments checked one by
// one so that a bad command line ends in one clear error before anything starts.
#include "cli.h"

#include <exception>
#include <limits>
#include <string>

#include "common/error.h"

namespace sy::app {
namespace {

const char* kUsage = R"(usage: switchyard <command> [options]

commands:
  train     train a model:     switchyard train --config F.yaml [--config G.yaml ...]
                                 [--set section.key=value ...] [--ranks N] [--log-all-ranks]
                                 [--resume DIR|auto]
  generate  sample text:       switchyard generate --run DIR [--prompt TEXT] [--tokens N]
                                 [--temperature T] [--top-k K] [--seed S] [--task NAME] [--device cpu|cuda|auto]
  verify    check expert parallelism against the single-process layer:
                               switchyard verify --config F.yaml --ranks N [--set ...]
                               mpirun -np N switchyard verify --config F.yaml (MPI, or NCCL on GPUs)
  bench     measure against the hardware (docs/bench.md):
                               switchyard bench layer --config F.yaml [--set ...] [--reps N]
                                 [--warmup N] [--ranks N]   (or under mpirun)
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

int parse_int(const std::string& flag, const std::string& value) {
  try {
    size_t pos = 0;
    const long v = std::stol(value, &pos);
    // Out of int range would wrap silently (--ranks 4294967300 ran 4 ranks).
    if (pos == value.size() && v >= std::numeric_limits<int>::min() &&
        v <= std::numeric_limits<int>::max()) {
      return static_cast<int>(v);
    }
  } catch (const std::exception&) {
  }
  SY_THROW(flag, " expects an integer, got '", value, "'");
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

}  // namespace

// `switchyard <command> --help`.
const char* command_usage(const std::string& command) {
  if (command == "train") {
    return R"(usage: switchyard train --config F.yaml [--config G.yaml ...] [options]
  --config F        a YAML config; later files override earlier ones (docs/config.md)
  --set K=V         override one key, e.g. --set train.max_steps=100 (repeatable)
  --resume DIR|auto continue from a checkpoint folder, or from the newest complete one under
                    <train.out_dir>/checkpoints (docs/checkpoints.md)
  --ranks N         N in-process ranks in one process (CPU), instead of mpirun (default 1)
  --log-all-ranks   every rank logs, not only rank 0
Under mpirun (`mpirun -np N switchyard train ...`) each process is one rank.
)";
  }
  if (command == "generate") {
    return R"(usage: switchyard generate --run DIR [options]
  --run DIR          a finished training run's folder (config.yaml, vocab.json, model.pt)
  --prompt TEXT      the start of the text (default: a newline if the vocabulary has one, else
                     its first character)
  --tokens N         characters to sample (default 200)
  --temperature T    softmax temperature; 0 is greedy (default 1.0)
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
layer; exits non-zero on any mismatch (docs/parallel.md).
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
  --ranks N               N in-process ranks (CPU)
  --min-bytes B           alltoall: smallest per-rank buffer (default 1048576)
  --max-bytes B           alltoall: largest per-rank buffer, sizes doubling (default 1073741824)
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
table (docs/experiments.md#report).
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
    a.report_dir = argv[2];
    first_option = 3;
  }
  for (int i = first_option; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      SY_CHECK(i + 1 < argc, flag, " expects a value");
      return argv[++i];
    };
    if (flag == "--help" || flag == "-h") a.help = true;
    else if (flag == "--config" && a.command != "generate" && a.command != "report")
      a.configs.push_back(value());
    else if (flag == "--set" && a.command != "generate" && a.command != "report")
      a.sets.push_back(value());
    else if (flag == "--ranks" && a.command != "generate" && a.command != "sweep")
      a.ranks = parse_int(flag, value());
    else if (flag == "--log-all-ranks") a.log_all_ranks = true;
    else if (flag == "--resume" && a.command == "train") a.resume = value();
    else if (flag == "--layouts" && a.command == "verify") a.layouts = true;
    else if (flag == "--run" && a.command == "generate") a.gen.run_dir = value();
    else if (flag == "--prompt" && a.command == "generate") a.gen.prompt = value();
    else if (flag == "--tokens" && a.command == "generate")
      a.gen.num_tokens = parse_int(flag, value());
    else if (flag == "--temperature" && a.command == "generate")
      a.gen.temperature = parse_double(flag, value());
    else if (flag == "--top-k" && a.command == "generate") a.gen.top_k = parse_int(flag, value());
    else if (flag == "--seed" && a.command == "generate") a.gen.seed = parse_int(flag, value());
    else if (flag == "--task" && a.command == "generate") a.gen.task = value();
    else if (flag == "--device" && a.command == "generate")
      a.gen.device = parse_choice_or_throw<DeviceKind>(value(), "--device");
    else if (flag == "--reps" && a.command == "bench") a.bench.reps = parse_int(flag, value());
    else if (flag == "--warmup" && a.command == "bench") a.bench.warmup = parse_int(flag, value());
    else if (flag == "--min-bytes" && a.command == "bench")
      a.bench.min_bytes = parse_int(flag, value());
    else if (flag == "--max-bytes" && a.command == "bench")
      a.bench.max_bytes = parse_int(flag, value());
    else if (flag == "--grid" && a.command == "sweep") a.sweep.grid_file = value();
    else if (flag == "--out" && a.command == "sweep") a.sweep.out_dir = value();
    else if (flag == "--parallel" && a.command == "sweep") {
      a.sweep.parallel = parse_int(flag, value());
      SY_CHECK(a.sweep.parallel >= 1, "--parallel must be >= 1, got ", a.sweep.parallel);
    } else if (flag == "--dry-run" && a.command == "sweep") a.sweep.dry_run = true;
    else if (flag == "--summarize" && a.command == "sweep") a.summarize = value();
    else if ((flag == "-o" || flag == "--out") && a.command == "report") a.report_out = value();
    else
      SY_THROW("unknown option '", flag, "' for 'switchyard ", a.command, "' (see switchyard ",
               a.command, " --help)");
  }
  if (a.help) return a;
  SY_CHECK(a.ranks >= 1, "--ranks must be >= 1, got ", a.ranks);
  if (a.command == "generate") {
    SY_CHECK(!a.gen.run_dir.empty(), "switchyard generate needs --run DIR (a train.out_dir)");
    SY_CHECK(a.gen.num_tokens >= 0, "--tokens must be >= 0, got ", a.gen.num_tokens);
  } else if (a.command == "bench") {
    SY_CHECK(!a.bench_what.empty(), "switchyard bench needs what to measure: layer or alltoall");
    SY_CHECK(a.bench.reps >= 1, "--reps must be >= 1, got ", a.bench.reps);
    SY_CHECK(a.bench.warmup >= 0, "--warmup must be >= 0, got ", a.bench.warmup);
    SY_CHECK(a.bench.min_bytes >= 4 && a.bench.max_bytes >= a.bench.min_bytes,
             "--min-bytes and --max-bytes must satisfy 4 <= min <= max, got ", a.bench.min_bytes,
             " and ", a.bench.max_bytes);
    SY_CHECK(a.bench_what == "alltoall" || !a.configs.empty(),
             "switchyard bench layer needs --config FILE");
  } else if (a.command == "sweep") {
    if (a.summarize.empty()) {
      SY_CHECK(!a.configs.empty(), "switchyard sweep needs --config FILE (the base config)");
      SY_CHECK(!a.sweep.grid_file.empty(), "switchyard sweep needs --grid FILE (the grid)");
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
