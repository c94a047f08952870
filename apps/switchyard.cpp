// switchyard: the command-line entry point. Parses the subcommand, starts the runtime (MPI when
// launched by mpirun/srun, or N in-process ranks with --ranks), and hands over to the trainer,
// the sampler or the verifier. Errors are caught here, once: every rank prints one line and, in a
// multi-rank job, the communicators are aborted so that no peer hangs.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "common/log.h"
#include "config/config.h"
#include "parallel/groups.h"
#include "parallel/inproc_comm.h"
#include "parallel/runtime.h"
#include "train/generate.h"
#include "train/trainer.h"
#include "bench/bench.h"
#include "verify/verify.h"
#ifdef SWITCHYARD_CUDA
#include <c10/cuda/CUDAFunctions.h>
#include "parallel/nccl_comm.h"
#endif

namespace {

const char* kUsage = R"(usage: switchyard <command> [options]

commands:
  train     train a model:     switchyard train --config F.yaml [--config G.yaml ...]
                                 [--set section.key=value ...] [--ranks N] [--log-all-ranks]
                                 [--resume DIR|auto]
  generate  sample text:       switchyard generate --run DIR [--prompt TEXT] [--tokens N]
                                 [--temperature T] [--top-k K] [--seed S] [--device cpu|cuda|auto]
  verify    check expert parallelism against the single-process layer:
                               switchyard verify --config F.yaml --ranks N [--set ...]
                               mpirun -np N switchyard verify --config F.yaml (MPI, or NCCL on GPUs)
  bench     measure against the hardware (docs/bench.md):
                               switchyard bench layer --config F.yaml [--set ...] [--reps N]
                                 [--warmup N] [--ranks N]   (or under mpirun)
                               switchyard bench alltoall [--config F.yaml] [--min-bytes B]
                                 [--max-bytes B] [--reps N] [--ranks N]

Multi-rank training: `mpirun -np N switchyard train ...` (one rank per GPU or CPU process), or
`--ranks N` for N in-process ranks in one process (CPU; the debug mode of the distributed path).
`switchyard <command> --help` shows the options of one command; docs/ has the details.
)";

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
  --seed S           sampling seed (default 0)
  --device D         cpu, cuda or auto (default cpu)
)";
  }
  if (command == "verify") {
    return R"(usage: switchyard verify --config F.yaml --ranks N [--set K=V ...]
       mpirun -np N switchyard verify --config F.yaml [--set K=V ...]
Runs the config's MoE layer on N ranks (parallel.ep_size of them per EP group) and checks
outputs, gradients, losses, dropped sets and one optimizer step against the single-process
layer; exits non-zero on any mismatch (docs/parallel.md).
  --config F, --set K=V   as for train
  --ranks N               N in-process ranks (CPU); under mpirun, the MPI ranks
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
  return kUsage;
}

struct Args {
  std::string command;
  std::vector<std::string> configs, sets;
  int ranks = 1;
  bool log_all_ranks = false;
  bool help = false;
  std::string resume;  // train --resume DIR|auto
  std::string bench_what;  // bench layer | alltoall
  sy::BenchOptions bench;
  sy::GenerateOptions gen;
};

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

Args parse_args(int argc, char** argv) {
  Args a;
  // One line like every other error; the usage is one `switchyard --help` away.
  SY_CHECK(argc >= 2, "no command given: expected train, generate, verify or bench (see switchyard --help)");
  a.command = argv[1];
  if (a.command == "--help" || a.command == "-h" || a.command == "help") {
    a.help = true;
    return a;
  }
  SY_CHECK(a.command == "train" || a.command == "generate" || a.command == "verify" ||
               a.command == "bench",
           "unknown command '", a.command, "': expected train, generate, verify or bench (see --help)");
  int first_option = 2;
  if (a.command == "bench" && argc >= 3 && argv[2][0] != '-') {
    a.bench_what = argv[2];
    first_option = 3;
    SY_CHECK(a.bench_what == "layer" || a.bench_what == "alltoall", "unknown benchmark '",
             a.bench_what, "': expected switchyard bench layer or switchyard bench alltoall");
  }
  for (int i = first_option; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      SY_CHECK(i + 1 < argc, flag, " expects a value");
      return argv[++i];
    };
    if (flag == "--help" || flag == "-h") a.help = true;
    else if (flag == "--config" && a.command != "generate") a.configs.push_back(value());
    else if (flag == "--set" && a.command != "generate") a.sets.push_back(value());
    else if (flag == "--ranks" && a.command != "generate") a.ranks = parse_int(flag, value());
    else if (flag == "--log-all-ranks") a.log_all_ranks = true;
    else if (flag == "--resume" && a.command == "train") a.resume = value();
    else if (flag == "--run" && a.command == "generate") a.gen.run_dir = value();
    else if (flag == "--prompt" && a.command == "generate") a.gen.prompt = value();
    else if (flag == "--tokens" && a.command == "generate") a.gen.num_tokens = parse_int(flag, value());
    else if (flag == "--temperature" && a.command == "generate") a.gen.temperature = parse_double(flag, value());
    else if (flag == "--top-k" && a.command == "generate") a.gen.top_k = parse_int(flag, value());
    else if (flag == "--seed" && a.command == "generate") a.gen.seed = parse_int(flag, value());
    else if (flag == "--device" && a.command == "generate") a.gen.device = value();
    else if (flag == "--reps" && a.command == "bench") a.bench.reps = parse_int(flag, value());
    else if (flag == "--warmup" && a.command == "bench") a.bench.warmup = parse_int(flag, value());
    else if (flag == "--min-bytes" && a.command == "bench") a.bench.min_bytes = parse_int(flag, value());
    else if (flag == "--max-bytes" && a.command == "bench") a.bench.max_bytes = parse_int(flag, value());
    else SY_THROW("unknown option '", flag, "' for 'switchyard ", a.command, "' (see switchyard ", a.command, " --help)");
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
    SY_CHECK(a.bench_what == "alltoall" || !a.configs.empty(), "switchyard bench layer needs --config FILE");
  } else {
    SY_CHECK(!a.configs.empty(), "switchyard ", a.command, " needs at least one --config FILE");
  }
  return a;
}

// The error of one rank as one [error] line under the calling thread's rank prefix.
void log_error(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const sy::Error& e) {
    SY_LOG_ALL("error", e.message());
  } catch (const c10::Error& e) {
    SY_LOG_ALL("error", "LibTorch: ", e.what_without_backtrace());
  } catch (const std::exception& e) {
    SY_LOG_ALL("error", e.what());
  } catch (...) {
    SY_LOG_ALL("error", "unknown exception");
  }
}

// Thrown when every failing in-process rank has printed its own [error] line already.
struct AlreadyReported {};

// parallel.timeout_s and parallel.check_splits (docs/parallel.md#faults).
sy::WatchOptions watch_options(const sy::Config& cfg) {
  return sy::WatchOptions{cfg.parallel.timeout_s, cfg.parallel.check_splits};
}

// Intra-op threads: the cores of this node shared among the ranks on it.
void share_cpu_threads(int ranks_on_node) {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  torch::set_num_threads(std::max(1, cores / std::max(1, ranks_on_node)));
}

// --ranks N: in-process ranks in one process, on the CPU, not under mpirun.
void check_inproc_launch(const Args& a, const sy::Config& cfg, const sy::MpiRuntime& runtime) {
  SY_CHECK(runtime.world_size() == 1, "--ranks ", a.ranks, " runs in-process ranks in one process; ",
           "do not combine it with mpirun (world size ", runtime.world_size(), ")");
  sy::validate(cfg, a.ranks);
  SY_CHECK(sy::resolve_device(cfg.train.device) == "cpu",
           "--ranks runs in-process ranks on the CPU: set train.device to cpu");
}

int run_train(const Args& a, sy::MpiRuntime& runtime) {
  const sy::Config cfg = sy::load_config(a.configs, a.sets);
  if (a.ranks > 1) {
    check_inproc_launch(a, cfg, runtime);
    if (sy::log_enabled()) std::cerr << "resolved config:\n" << sy::to_yaml(cfg);
    share_cpu_threads(a.ranks);
    std::atomic<bool> reported{false};
    try {
      sy::run_inproc_ranks(a.ranks, [&](sy::CommPtr world) {
        try {
          sy::train(cfg, sy::make_groups(world, cfg.parallel.ep_size, watch_options(cfg)),
                    sy::TrainOptions{a.resume});
        } catch (...) {
          // Every rank's own error under its own prefix, as every process prints under mpirun:
          // the failing rank's cause, then its peers' "aborted in <collective>: ..." lines.
          log_error(std::current_exception());
          reported = true;
          throw;
        }
      });
    } catch (...) {
      if (reported) throw AlreadyReported();
      throw;
    }
    return 0;
  }
  sy::validate(cfg, runtime.world_size());
  if (sy::log_enabled()) std::cerr << "resolved config:\n" << sy::to_yaml(cfg);
  share_cpu_threads(runtime.local_size());
  sy::CommPtr world = runtime.world();
#ifdef SWITCHYARD_CUDA
  if (sy::resolve_device(cfg.train.device) == "cuda") {
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(runtime.local_rank()));
    if (runtime.world_size() > 1) world = sy::make_nccl_communicator(world);
  }
#endif
  sy::train(cfg, sy::make_groups(world, cfg.parallel.ep_size, watch_options(cfg)),
            sy::TrainOptions{a.resume});
  return 0;
}

// The world of an mpirun job (or of one process) for verify and bench: validated against its
// size, CPU threads shared among the node's ranks, and on CUDA this rank's GPU (the node-local
// rank) with an NCCL communicator.
struct LaunchedWorld {
  sy::CommPtr world;
  c10::Device device = at::kCPU;
};

LaunchedWorld launched_world(const sy::Config& cfg, sy::MpiRuntime& runtime) {
  sy::validate(cfg, runtime.world_size());
  share_cpu_threads(runtime.local_size());
  LaunchedWorld w{runtime.world()};
#ifdef SWITCHYARD_CUDA
  if (sy::resolve_device(cfg.train.device) == "cuda") {
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(runtime.local_rank()));
    if (runtime.world_size() > 1) w.world = sy::make_nccl_communicator(w.world);
    w.device = sy::current_cuda_device();
  }
#endif
  return w;
}

// In-process ranks (--ranks N), or the ranks of an mpirun job (MPI on the CPU, NCCL on GPUs).
int run_verify(const Args& a, sy::MpiRuntime& runtime) {
  const sy::Config cfg = sy::load_config(a.configs, a.sets);
  if (a.ranks > 1) {
    SY_CHECK(runtime.world_size() == 1, "--ranks ", a.ranks, " runs in-process ranks in one process; ",
             "do not combine it with mpirun (world size ", runtime.world_size(), ")");
    sy::validate(cfg, a.ranks);
    share_cpu_threads(a.ranks);
    return sy::run_verify(cfg, a.ranks) ? 0 : 1;
  }
  const LaunchedWorld w = launched_world(cfg, runtime);
  const sy::VerifyReport report = sy::verify_expert_parallel(cfg, w.world, w.device);
  if (runtime.world_rank() == 0) sy::print_verify_report(cfg, report, w.world->backend());
  return report.ok() ? 0 : 1;
}

// Benchmarks on in-process ranks (--ranks, CPU) or the ranks of an mpirun job (MPI on the CPU,
// NCCL on GPUs); rank 0 prints.
int run_bench(const Args& a, sy::MpiRuntime& runtime) {
  const sy::Config cfg = sy::load_config(a.configs, a.sets);
  auto body = [&](const sy::CommPtr& world, const c10::Device& device) {
    const sy::ParallelGroups g = sy::make_groups(world, cfg.parallel.ep_size);
    if (a.bench_what == "layer") {
      const sy::LayerBenchResult r = sy::bench_layer(cfg, g, device, a.bench);
      if (g.world_rank == 0) std::cout << sy::format_layer_result(cfg, g, r) << std::flush;
    } else {
      const auto rows = sy::bench_alltoall(g, device, a.bench);
      if (g.world_rank == 0) std::cout << sy::format_alltoall(g, rows) << std::flush;
    }
  };
  if (a.ranks > 1) {
    check_inproc_launch(a, cfg, runtime);
    share_cpu_threads(a.ranks);
    sy::run_inproc_ranks(a.ranks, [&](sy::CommPtr world) { body(world, at::kCPU); });
    return 0;
  }
  const LaunchedWorld w = launched_world(cfg, runtime);
  body(w.world, w.device);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::unique_ptr<sy::MpiRuntime> runtime;
  try {
    Args args = parse_args(argc, argv);
    if (args.help) {
      std::cout << command_usage(args.command);
      return 0;
    }
    sy::set_log_all_ranks(args.log_all_ranks);
    runtime = std::make_unique<sy::MpiRuntime>(&argc, &argv);
    sy::set_log_rank(runtime->world_rank(), runtime->world_size());
    if (args.command == "train") return run_train(args, *runtime);
    if (args.command == "verify") return run_verify(args, *runtime);
    if (args.command == "bench") return run_bench(args, *runtime);
    std::cout << sy::generate_text(args.gen) << std::endl;
    return 0;
  } catch (const AlreadyReported&) {
  } catch (...) {
    log_error(std::current_exception());
  }
  // Peers may be blocked in a collective: end the whole job rather than hang.
  if (runtime && runtime->world_size() > 1) runtime->abort(1);
  return 1;
}
