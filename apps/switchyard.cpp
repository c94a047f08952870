// switchyard: the command-line entry point. Parses the subcommand (apps/cli.h), starts the runtime
// (MPI when launched by mpirun/srun, or N in-process ranks with --ranks), and hands over to the
// trainer, the sampler or the verifier. Errors are caught here, once: every rank prints one line and, in a
// multi-rank job, the communicators are aborted so that no peer hangs.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "cli.h"
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

using sy::app::Args;

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
    Args args = sy::app::parse_args(argc, argv);
    if (args.help) {
      std::cout << sy::app::command_usage(args.command);
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
