// The process's MPI lifetime: constructed once at the top of main(), it initializes MPI when the
// process was started by an MPI launcher and finalizes it on destruction. It knows the world and
// the node (local rank = which GPU this rank drives). Also which device a process trains on.
//
// Not under a launcher (plain `switchyard ...`, `--ranks N`, tests), MPI is not initialized at
// all: the world is a self communicator of size 1. Open MPI can initialize a singleton without
// mpirun, but that starts helper daemons and can fail in containers, so we do not rely on it.
#pragma once

#include <string>

#include <c10/core/Device.h>

#include "common/device_kind.h"
#include "parallel/communicator.h"

namespace sy {

class MpiRuntime {
 public:
  // MPI_Init_thread(MPI_THREAD_SERIALIZED) when launched_by_mpi() (and MPI is not initialized yet).
  MpiRuntime(int* argc, char*** argv);
  // MPI_Finalize if this object initialized MPI and abort() was not called.
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  // True when the environment names an MPI launch: Open MPI (OMPI_COMM_WORLD_SIZE), MPICH/Hydra
  // and Intel MPI (PMI_SIZE), PMIx (PMIX_RANK), MVAPICH (MV2_COMM_WORLD_SIZE), or Slurm's srun
  // with more than one task (SLURM_PROCID with SLURM_NTASKS > 1).
  static bool launched_by_mpi();

  bool mpi_active() const { return active_; }  // MPI is initialized and usable
  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }
  int local_rank() const { return local_rank_; }  // rank among the ranks of this node
  int local_size() const { return local_size_; }

  // An MpiCommunicator on MPI_COMM_WORLD; a self communicator (any device) when MPI is not
  // active or the world has one rank.
  CommPtr world() const { return world_; }

  // MPI_Abort(MPI_COMM_WORLD, code): ends every rank of the job. Does nothing without MPI.
  void abort(int code);

 private:
  bool active_ = false;    // MPI initialized (by us or before us)
  bool owns_mpi_ = false;  // we called MPI_Init_thread, so we finalize
  bool aborted_ = false;
  int world_rank_ = 0, world_size_ = 1, local_rank_ = 0, local_size_ = 1;
  CommPtr world_;
};

// cpu, cuda or auto -> cpu or cuda, the device kind for this process (the CUDA device is the
// node-local rank's). Asking for cuda without one is an error naming train.device.
DeviceKind resolve_device(DeviceKind requested);

// The CUDA device this process drives (the current device, set from the node-local rank by the
// launcher code); an error in builds without CUDA.
c10::Device current_cuda_device();

}  // namespace sy
