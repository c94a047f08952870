// switchyard: the command-line entry point. Parses the subcommand (apps/cli.h), starts the runtime
// (MPI when launched by mpirun/srun, or N in-process ranks with --ranks: apps/launch.h), and hands
// over to the trainer, the sampler, the verifier or the benchmarks; sweeps and reports
// (src/study) need no runtime. Errors are caught here, once:
// every rank prints one line and, in a multi-rank job, the communicators are aborted so that no
// peer hangs.
#include <atomic>
#include <iostream>
#include <memory>

#include <torch/cuda.h>

#include "cli.h"
#include "launch.h"

#include "bench/bench.h"
#include "common/cpu_runtime.h"
#include "common/log.h"
#include "common/stop_signal.h"
#include "config/config.h"
#include "parallel/groups.h"
#include "parallel/runtime.h"
#include "study/report.h"
#include "study/sweep.h"
#include "train/generate.h"
#include "train/params.h"
#include "train/run_folder.h"
#include "train/trainer.h"
#include "verify/verify.h"

namespace {

using sy::app::Args;

// parallel.timeout_s and parallel.check_splits, and the heartbeats of an MPI job's ranks in the
// run folder (docs/parallel.md#faults).
sy::WatchOptions watch_options(const sy::Config& cfg) {
  return sy::WatchOptions{cfg.parallel.timeout_s, cfg.parallel.check_splits,
                          cfg.train.out_dir + "/heartbeats"};
}

int run_train(const Args& a, sy::MpiRuntime& runtime) {
  sy::Config cfg = sy::load_config(a.configs, a.sets);
  sy::resolve_out_dir(cfg, a.configs, a.sets);  // runs/<config name>, ~ expanded
  // Rank 0's hold on the run folder (Note [Run folders]), released when this function ends, by
  // an error too (before main aborts the job).
  std::unique_ptr<sy::RunFolderLock> folder;
  sy::app::LaunchOptions launch;
  launch.log_config = true;
  launch.on_rank0 = [&] { folder = sy::claim_run_folder(cfg, a.resume, a.overwrite); };
  // SIGTERM, SIGINT, SIGHUP: stop after the step in flight, with a checkpoint, on every rank
  // (Note [Clean stop on a signal]); kExitStopped then says so to the launcher.
  sy::install_stop_handlers();
  std::atomic<int> stopped{0};
  // The trainer picks its device from the config (the launch set the current GPU).
  sy::app::run_ranks(
      a.ranks, cfg, runtime,
      [&](const sy::CommPtr& world, c10::Device) {
        const sy::TrainResult r =
            sy::train(cfg,
                      sy::make_groups(world, cfg.parallel.ep_size, watch_options(cfg),
                                      cfg.parallel.two_level_ranks()),
                      sy::TrainOptions{a.resume, [&] {
                                         if (folder) folder->clear_earlier_run();
                                       }});
        if (r.stop_signal != 0) stopped = r.stop_signal;
      },
      launch);
  sy::remove_stop_handlers();
  return stopped != 0 ? sy::kExitStopped : 0;
}

// In-process ranks (--ranks N), or the ranks of an mpirun job (MPI on the CPU, NCCL on GPUs).
int run_verify(const Args& a, sy::MpiRuntime& runtime) {
  const sy::Config cfg = sy::load_config(a.configs, a.sets);
  if (a.layouts) {
    sy::app::check_not_under_mpirun(4, runtime);
    sy::app::share_cpu_threads(4);
    const sy::LayoutReport report = sy::verify_layouts(cfg);
    std::cout << "switchyard verify --layouts: the same global batch (4 micro-batches of "
              << cfg.data.batch_size << " sequences) for " << report.rows[0].losses.size()
              << " steps\n"
              << report.table()
              << (report.ok() ? "PASS: every layout trains as the first (tolerance "
                              : "FAIL: a layout differs from the first (tolerance ")
              << report.tolerance << ")" << std::endl;
    return report.ok() ? 0 : 1;
  }
  // One rank on the CPU would compare the layer with itself (on a GPU, one rank checks the
  // GPU against the CPU reference).
  SY_CHECK(a.ranks > 1 || runtime.world_size() > 1 ||
               sy::resolve_device(cfg.train.device) == sy::DeviceKind::kCuda,
           "switchyard verify on one CPU rank would compare the MoE layer with itself: give "
           "--ranks N (N >= 2), run it under mpirun -np N (N >= 2), or use --layouts");
  if (a.ranks > 1) {
    // Not run_ranks: sy::run_verify starts the in-process ranks itself, because it also computes
    // the single-process reference they are compared against; it runs them on the CPU whatever
    // train.device says, so there is no device check here either.
    sy::app::check_not_under_mpirun(a.ranks, runtime);
    sy::validate(cfg, a.ranks);
    sy::app::share_cpu_threads(a.ranks);
    return sy::run_verify(cfg, a.ranks) ? 0 : 1;
  }
  bool ok = false;
  sy::app::run_ranks(a.ranks, cfg, runtime, [&](const sy::CommPtr& world, c10::Device device) {
    const sy::VerifyReport report = sy::verify_expert_parallel(cfg, world, device);
    if (runtime.world_rank() == 0) sy::print_verify_report(cfg, report, world->backend());
    ok = report.ok();
  });
  return ok ? 0 : 1;
}

// Benchmarks on in-process ranks (--ranks, CPU) or the ranks of an mpirun job (MPI on the CPU,
// NCCL on GPUs); rank 0 prints.
int run_bench(const Args& a, sy::MpiRuntime& runtime) {
  const sy::Config cfg = sy::load_config(a.configs, a.sets);
  sy::app::run_ranks(a.ranks, cfg, runtime, [&](const sy::CommPtr& world, c10::Device device) {
    const sy::ParallelGroups g =
        sy::make_groups(world, cfg.parallel.ep_size, {}, cfg.parallel.two_level_ranks());
    if (a.bench_what == "layer") {
      const sy::LayerBenchResult r = sy::bench_layer(cfg, g, device, a.bench);
      if (g.world_rank == 0) std::cout << sy::format_layer_result(cfg, g, r) << std::flush;
    } else {
      const auto rows = sy::bench_alltoall(g, device, a.bench);
      if (g.world_rank == 0) std::cout << sy::format_alltoall(g, rows) << std::flush;
    }
  });
  return 0;
}

int run_command(const Args& a, sy::MpiRuntime& runtime) {
  if (a.command == "train") return run_train(a, runtime);
  if (a.command == "verify") return run_verify(a, runtime);
  if (a.command == "bench") return run_bench(a, runtime);
  SY_CHECK(a.gen.device != sy::DeviceKind::kCuda || torch::cuda::is_available(),
           "--device cuda: no CUDA device is available to this build; use --device cpu or auto ",
           "(the choices: cpu, cuda, auto)");
  std::cout << sy::generate_text(a.gen) << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // May re-execute this program once, before MPI starts (Note [CPU thread waits]).
  sy::prefer_passive_openmp_wait(argv);
  sy::tune_cpu_allocator();
  std::unique_ptr<sy::MpiRuntime> runtime;
  try {
    const Args args = sy::app::parse_args(argc, argv);
    if (args.help) {
      std::cout << sy::app::command_usage(args.command);
      return 0;
    }
    // Sweeps and reports start no ranks: a sweep launches each run as a process of its own.
    if (args.command == "sweep") {
      if (!args.summarize.empty()) {
        sy::study::summarize_sweep(args.summarize);
        return 0;
      }
      return sy::study::run_sweep(args.sweep);
    }
    if (args.command == "params") {
      const sy::Config cfg = sy::load_config(args.configs, args.sets);
      sy::validate(cfg, args.ranks);
      std::cout << sy::describe_parameters(cfg, args.ranks) << std::flush;
      return 0;
    }
    if (args.command == "report") {
      const std::string page = sy::study::write_report(args.report_dir, args.report_out);
      std::cout << "report: " << page << std::endl;  // nothing on stdout when it fails
      return 0;
    }
    sy::set_log_all_ranks(args.log_all_ranks);
    runtime = std::make_unique<sy::MpiRuntime>(&argc, &argv);
    sy::set_log_rank(runtime->world_rank(), runtime->world_size());
    return run_command(args, *runtime);
  } catch (const sy::app::AlreadyReported&) {
  } catch (...) {
    sy::app::log_error(std::current_exception());
  }
  // Peers may be blocked in a collective: end the whole job rather than hang.
  if (runtime && runtime->world_size() > 1) runtime->abort(1);
  return 1;
}
