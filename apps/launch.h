// How the ranks of a switchyard job start, for train, verify and bench. A job runs one of two ways:
//   - in-process ranks (`--ranks N`, N > 1): N threads of this one process, on the CPU, joined by
//     in-process communicators; never combined with mpirun;
//   - the ranks of an mpirun/srun job, or one plain process: this process is one rank of the MPI
//     world (a world of one without a launcher); on CUDA it drives the GPU of its node-local rank
//     and, with peers, talks through NCCL.
// Either way the config is validated against the number of ranks first, and the node's CPU cores
// are shared among the ranks on it.
#pragma once

#include <exception>
#include <functional>

#include <c10/core/Device.h>

#include "config/config.h"
#include "parallel/communicator.h"
#include "parallel/runtime.h"

namespace sy::app {

// What one rank runs: its world communicator and its device (the CPU, or this rank's GPU).
using RankBody = std::function<void(const CommPtr& world, c10::Device device)>;

struct LaunchOptions {
  bool log_config = false;  // log the resolved config once it is validated (train does)
  // Runs once, on world rank 0, after the config is validated and before any rank's body (train:
  // the run folder's checks and lock, Note [Run folders]); its error becomes every rank's error,
  // the same line on each, before anything else collective.
  std::function<void()> on_rank0;
};

// Runs `body` on every rank of the job: on `inproc_ranks` in-process ranks when that is > 1,
// else once, as this process's rank of `runtime`'s world. An in-process rank that fails prints
// its own [error] line (as every process does under mpirun) and then AlreadyReported is thrown;
// any other error is thrown as it is.
void run_ranks(int inproc_ranks, const Config& cfg, MpiRuntime& runtime, const RankBody& body,
               const LaunchOptions& options = {});

// Thrown when every failing in-process rank has printed its own [error] line already.
struct AlreadyReported {};

// The error as one [error] line under the calling thread's rank prefix.
void log_error(const std::exception_ptr& error);

// Parts of run_ranks, for a command that starts its in-process ranks itself (verify --ranks N).
// --ranks N is refused under mpirun (a world of more than one process).
void check_not_under_mpirun(int inproc_ranks, const MpiRuntime& runtime);
// Intra-op threads: the cores of this node shared among the ranks on it.
void share_cpu_threads(int ranks_on_node);

}  // namespace sy::app
