// The MPI backend of the communicator (Note [Communicators]): CPU tensors over an MPI_Comm. It is
// also the bootstrap of the NCCL backend (the NCCL unique id travels by MPI_Bcast on mpi_comm()).
//
// Every MPI call goes through SY_MPI, which throws a sy::Error naming the call and MPI's own
// error string; the communicator sets MPI_ERRORS_RETURN on its MPI_Comm so that errors reach it
// instead of aborting the job silently.
#pragma once

// The C API only: skipping the deprecated C++ bindings saves compile time and their warnings.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <utility>

#include "parallel/communicator.h"

namespace sy {

[[noreturn]] void throw_mpi_error(const char* call, int code, const char* file, int line);

}  // namespace sy

#define SY_MPI(call)                                                \
  do {                                                              \
    const int sy_mpi_rc_ = (call);                                  \
    if (sy_mpi_rc_ != MPI_SUCCESS) {                                \
      ::sy::throw_mpi_error(#call, sy_mpi_rc_, __FILE__, __LINE__); \
    }                                                               \
  } while (0)

namespace sy {

class MpiCommunicator final : public Communicator {
 public:
  // Owns `comm` (MPI_Comm_free in the destructor, unless MPI is already finalized) unless it is
  // MPI_COMM_WORLD. MPI must be initialized (see MpiRuntime).
  explicit MpiCommunicator(MPI_Comm comm);
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  // Logs the reason and calls MPI_Abort(comm, 1): ends the whole job.
  void abort(const std::string& reason) override;

  MPI_Comm mpi_comm() const { return comm_; }

 protected:
  // MPI_Alltoallv with a derived datatype of one row: counts and displacements are in rows, so
  // messages past 2 GiB do not overflow MPI's int counts (rows per rank must fit an int).
  void do_all_to_all(at::Tensor& output, const at::Tensor& input,
                     const std::vector<int64_t>& send_splits,
                     const std::vector<int64_t>& recv_splits) override;
  // MPI_Allreduce in place; float32, float64, int64 and int32 (reduce bf16/f16 in float32).
  // Open MPI's algorithms give every rank the same bits (tested by tests/mpi).
  void do_all_reduce(at::Tensor& tensor, ReduceOp op) override;
  void do_all_gather(at::Tensor& output, const at::Tensor& input) override;
  void do_broadcast(at::Tensor& tensor, int root) override;
  // MPI_Comm_split; the new communicator owns its MPI_Comm.
  std::shared_ptr<Communicator> do_split(int color, int key) override;

 private:
  // `rank_size`: this rank and the size of `comm`, queried by the public constructor.
  MpiCommunicator(MPI_Comm comm, std::pair<int, int> rank_size);

  MPI_Comm comm_;
};

}  // namespace sy
