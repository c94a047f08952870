// The ranks of a switchyard job (apps/launch.h): in-process ranks for --ranks N, else this
// process's rank of the MPI world, with its GPU and NCCL on CUDA.
#include "launch.h"

#include <algorithm>
#include <atomic>
#include <iostream>
#include <thread>

#include <torch/torch.h>

#include "common/error.h"
#include "common/log.h"
#include "parallel/inproc_comm.h"
#ifdef SWITCHYARD_CUDA
#include <c10/cuda/CUDAFunctions.h>
#include "parallel/nccl_comm.h"
#endif

namespace sy::app {
namespace {

void log_resolved_config(const Config& cfg) {
  if (log_enabled()) std::cerr << "resolved config:\n" << to_yaml(cfg);
}

// --ranks N: N in-process ranks in this process, on the CPU, not under mpirun.
void run_inproc(int ranks, const Config& cfg, const MpiRuntime& runtime, const RankBody& body,
                const LaunchOptions& options) {
  check_not_under_mpirun(ranks, runtime);
  validate(cfg, ranks);
  SY_CHECK(resolve_device(cfg.train.device) == DeviceKind::kCpu,
           "--ranks runs in-process ranks on the CPU: set train.device to cpu");
  if (options.log_config) log_resolved_config(cfg);
  share_cpu_threads(ranks);
  std::atomic<bool> reported{false};
  try {
    run_inproc_ranks(ranks, [&](CommPtr world) {
      try {
        body(world, at::kCPU);
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
}

// This process's rank of an mpirun job (or the one rank of a plain process): validated against
// the world's size, CPU threads shared among the node's ranks, and on CUDA this rank's GPU (the
// node-local rank) with an NCCL communicator when there are peers.
void run_launched(const Config& cfg, MpiRuntime& runtime, const RankBody& body,
                  const LaunchOptions& options) {
  validate(cfg, runtime.world_size());
  if (options.log_config) log_resolved_config(cfg);
  share_cpu_threads(runtime.local_size());
  CommPtr world = runtime.world();
  c10::Device device = at::kCPU;
#ifdef SWITCHYARD_CUDA
  if (resolve_device(cfg.train.device) == DeviceKind::kCuda) {
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(runtime.local_rank()));
    if (runtime.world_size() > 1) world = make_nccl_communicator(world);
    device = current_cuda_device();
  }
#endif
  body(world, device);
}

}  // namespace

void run_ranks(int inproc_ranks, const Config& cfg, MpiRuntime& runtime, const RankBody& body,
               const LaunchOptions& options) {
  if (inproc_ranks > 1) {
    run_inproc(inproc_ranks, cfg, runtime, body, options);
  } else {
    run_launched(cfg, runtime, body, options);
  }
}

void log_error(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const Error& e) {
    SY_LOG_ALL("error", e.message());
  } catch (const c10::Error& e) {
    SY_LOG_ALL("error", "LibTorch: ", e.what_without_backtrace());
  } catch (const std::exception& e) {
    SY_LOG_ALL("error", e.what());
  } catch (...) {
    SY_LOG_ALL("error", "unknown exception");
  }
}

void check_not_under_mpirun(int inproc_ranks, const MpiRuntime& runtime) {
  SY_CHECK(runtime.world_size() == 1, "--ranks ", inproc_ranks,
           " runs in-process ranks in one process; ", "do not combine it with mpirun (world size ",
           runtime.world_size(), ")");
}

void share_cpu_threads(int ranks_on_node) {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  torch::set_num_threads(std::max(1, cores / std::max(1, ranks_on_node)));
}

}  // namespace sy::app
