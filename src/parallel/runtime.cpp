// MpiRuntime (runtime.h): MPI initialization, world and node topology, finalization; the
// process's device.
#include "parallel/runtime.h"

#include <cstdlib>
#include <string>

#include <torch/cuda.h>
#include <torch/version.h>
#ifdef SWITCHYARD_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

#include "common/error.h"
#include "common/log.h"
#include "parallel/mpi_comm.h"

namespace sy {
namespace {

bool env_set(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0';
}

}  // namespace

bool MpiRuntime::launched_by_mpi() {
  if (env_set("OMPI_COMM_WORLD_SIZE") || env_set("PMI_SIZE") || env_set("PMIX_RANK") ||
      env_set("MV2_COMM_WORLD_SIZE")) {
    return true;
  }
  if (env_set("SLURM_PROCID") && env_set("SLURM_NTASKS")) {
    return std::atoi(std::getenv("SLURM_NTASKS")) > 1;
  }
  return false;
}

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
  int initialized = 0;
  SY_MPI(MPI_Initialized(&initialized));
  if (!initialized && launched_by_mpi()) {
    // Serialized: the trainer calls MPI from one thread at a time (autograd runs CPU backward
    // work on the calling thread), and NCCL uses MPI only while communicators are created.
    int provided = MPI_THREAD_SINGLE;
    SY_MPI(MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided));
    owns_mpi_ = true;
    initialized = 1;
    if (provided < MPI_THREAD_SERIALIZED) {
      SY_LOG_ALL("mpi", "warning: MPI provides thread level ", provided,
                 " (< MPI_THREAD_SERIALIZED); call MPI from the main thread only");
    }
  }
  active_ = initialized != 0;
  if (!active_) {
    world_ = make_self_communicator();
    return;
  }
  auto world = std::make_shared<MpiCommunicator>(MPI_COMM_WORLD);
  world_rank_ = world->rank();
  world_size_ = world->size();
  // The ranks sharing memory with us are the ranks of this node.
  MPI_Comm node = MPI_COMM_NULL;
  SY_MPI(
      MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_rank_, MPI_INFO_NULL, &node));
  SY_MPI(MPI_Comm_rank(node, &local_rank_));
  SY_MPI(MPI_Comm_size(node, &local_size_));
  SY_MPI(MPI_Comm_free(&node));
  // A world of one needs no MPI, and a self communicator also takes CUDA tensors.
  world_ = world_size_ == 1 ? make_self_communicator() : CommPtr(world);
}

MpiRuntime::~MpiRuntime() {
  world_.reset();
  if (!owns_mpi_ || aborted_) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void MpiRuntime::abort(int code) {
  if (!active_) return;
  aborted_ = true;
  MPI_Abort(MPI_COMM_WORLD, code);
}

DeviceKind resolve_device(DeviceKind requested) {
  const bool has_cuda = torch::cuda::is_available();
  if (requested == DeviceKind::kAuto) return has_cuda ? DeviceKind::kCuda : DeviceKind::kCpu;
  SY_CHECK(requested != DeviceKind::kCuda || has_cuda,
           "train.device is 'cuda' but no CUDA device is available to this build (LibTorch ",
           TORCH_VERSION, has_cuda ? "" : ", CPU only or no GPU visible", "); use cpu or auto");
  return requested;
}

c10::Device current_cuda_device() {
#ifdef SWITCHYARD_CUDA
  // The launcher picked this rank's GPU (apps/launch.cpp: device = node-local rank).
  return c10::Device(c10::kCUDA, c10::cuda::current_device());
#else
  SY_THROW("this build of Switchyard has no CUDA support (LibTorch ", TORCH_VERSION,
           " is CPU only)");
#endif
}

}  // namespace sy
