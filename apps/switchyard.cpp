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

Multi-rank training: `mpirun -np N switchyard train ...` (one rank per GPU or CPU process), or
`--ranks N` for N in-process ranks in one process (CPU; the debug mode of the distributed path).
`switchyard <command> --help` shows the options of one command; docs/ has the details.
)";

struct Args {
  std::string command;
  std::vector<std::string> configs, sets;
  int ranks = 1;
  bool log_all_ranks = false;
  bool help = false;
  std::string resume;  // train --resume DIR|auto
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
  SY_CHECK(argc >= 2, "no command given: expected train, generate or verify (see switchyard --help)");
  a.command = argv[1];
  if (a.command == "--help" || a.command == "-h" || a.command == "help") {
    a.help = true;
    return a;
  }
  SY_CHECK(a.command == "train" || a.command == "generate" || a.command == "verify",
           "unknown command '", a.command, "': expected train, generate or verify (see --help)");
  for (int i = 2; i < argc; ++i) {
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
    else SY_THROW("unknown option '", flag, "' for 'switchyard ", a.command, "' (see switchyard ", a.command, " --help)");
  }
  if (a.help) return a;
  SY_CHECK(a.ranks >= 1, "--ranks must be >= 1, got ", a.ranks);
  if (a.command == "generate") {
    SY_CHECK(!a.gen.run_dir.empty(), "switchyard generate needs --run DIR (a train.out_dir)");
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

int run_train(const Args& a, sy::MpiRuntime& runtime) {
  const sy::Config cfg = sy::load_config(a.configs, a.sets);
  if (a.ranks > 1) {
    SY_CHECK(runtime.world_size() == 1, "--ranks ", a.ranks, " runs in-process ranks in one process; ",
             "do not combine it with mpirun (world size ", runtime.world_size(), ")");
    sy::validate(cfg, a.ranks);
    SY_CHECK(sy::resolve_device(cfg.train.device) == "cpu",
             "--ranks runs in-process ranks on the CPU: set train.device to cpu");
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
  sy::validate(cfg, runtime.world_size());
  share_cpu_threads(runtime.local_size());
  sy::CommPtr world = runtime.world();
  c10::Device device = at::kCPU;
#ifdef SWITCHYARD_CUDA
  if (sy::resolve_device(cfg.train.device) == "cuda") {
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(runtime.local_rank()));
    if (runtime.world_size() > 1) world = sy::make_nccl_communicator(world);
    device = sy::current_cuda_device();
  }
#endif
  const sy::VerifyReport report = sy::verify_expert_parallel(cfg, world, device);
  if (runtime.world_rank() == 0) sy::print_verify_report(cfg, report, world->backend());
  return report.ok() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::unique_ptr<sy::MpiRuntime> runtime;
  try {
    Args args = parse_args(argc, argv);
    if (args.help) {
      std::cout << kUsage;
      return 0;
    }
    sy::set_log_all_ranks(args.log_all_ranks);
    runtime = std::make_unique<sy::MpiRuntime>(&argc, &argv);
    sy::set_log_rank(runtime->world_rank(), runtime->world_size());
    if (args.command == "train") return run_train(args, *runtime);
    if (args.command == "verify") return run_verify(args, *runtime);
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
