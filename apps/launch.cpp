// The ranks of a switchyard job (apps/launch.h): in-process ranks for --ranks N, else this
// process's rank of the MPI world, with its GPU and NCCL on CUDA.
#include "launch.h"

#include <algorithm>
#include <atomic>
#include <iostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>
#include <thread>

#include <torch/torch.h>

#include "common/error.h"
#include "common/log.h"
#include "common/oom.h"
#include "parallel/consensus.h"
#include "parallel/inproc_comm.h"
#ifdef SWITCHYARD_CUDA
#include <c10/cuda/CUDAFunctions.h>
#include "parallel/nccl_comm.h"
#endif

namespace sy::app {
namespace {

// Note [Ranks agree on the config]: the ranks of an mpirun job each load the config themselves,
// from files and --set flags that a launch script may give them differently (or files that
// differ between nodes). Before anything else collective, rank 0's resolved config goes to every
// rank; a rank whose own differs names the first keys that differ, and every rank stops with
// that line (the lowest such rank's), instead of training apart or failing later in a
// collective whose shapes disagree.
std::string config_difference(const std::string& mine, const std::string& rank0) {
  const auto a = flatten_config_yaml(mine), b = flatten_config_yaml(rank0);
  std::string diff;
  int total = 0;
  for (const auto& [key, value] : a) {
    std::string theirs = "(absent)";
    for (const auto& [k, v] : b) {
      if (k == key) theirs = v;
    }
    if (theirs == value) continue;
    if (++total <= 3)
      diff += str(diff.empty() ? "" : "; ", key, " is ", value, " here, ", theirs, " on rank 0");
  }
  if (total == 0) return "its config text differs from rank 0's";
  if (total > 3) diff += str(" (and ", total - 3, " more key(s))");
  return "started with another config than rank 0: " + diff +
         "; every rank must be given the same --config files and --set flags";
}

void check_same_config(Communicator& world, const Config& cfg) {
  if (world.size() == 1) return;
  const std::string mine = to_yaml(cfg);
  const std::string rank0 = broadcast_text(world, mine, 0, at::kCPU);
  agree_or_throw(world, mine == rank0 ? "" : config_difference(mine, rank0), at::kCPU);
}

// LaunchOptions::on_rank0 on world rank 0; its error, broadcast, thrown by every rank.
void run_on_rank0(MpiRuntime& runtime, const LaunchOptions& options) {
  if (!options.on_rank0) return;
  if (runtime.world_size() == 1) {
    options.on_rank0();
    return;
  }
  const std::string mine = runtime.world_rank() == 0 ? error_of(options.on_rank0) : "";
  const std::string error = broadcast_text(*runtime.world(), mine, 0, at::kCPU);
  SY_CHECK(error.empty(), error);
}

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
  if (options.on_rank0) options.on_rank0();  // this process is world rank 0
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
  check_same_config(*runtime.world(), cfg);  // Note [Ranks agree on the config]
  validate(cfg, runtime.world_size());
  run_on_rank0(runtime, options);
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

// An allocation failure that no phase of the run named (the phases in src/train/run.cpp do):
// one that happened in the steps.
const char* const kOutOfMemoryInSteps =
    "out of memory in the steps (forward, backward or the optimizer state): their size comes "
    "from data.batch_size, model.block_size, train.grad_accum, model.d_model, moe.top_k, "
    "moe.capacity_factor and the model's size; lower them or run on more ranks "
    "(docs/config.md#memory-estimate)";

void log_error(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const Error& e) {
    SY_LOG_ALL("error", e.message());
  } catch (const std::bad_alloc&) {
    SY_LOG_ALL("error", kOutOfMemoryInSteps);
  } catch (const c10::Error& e) {
    if (is_out_of_memory_text(e.what_without_backtrace())) {
      SY_LOG_ALL("error", kOutOfMemoryInSteps);
      return;
    }
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
