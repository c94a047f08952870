// The NCCL backend of the communicator (Note [Communicators]): CUDA tensors of the current device,
// every operation enqueued on LibTorch's current CUDA stream of that device, so it orders with
// the surrounding LibTorch kernels and with autograd like any other op. The NCCL unique id is
// created by rank 0 and sent with MPI_Bcast over a bootstrap MpiCommunicator, which also makes
// split() possible (MPI split, then a new NCCL communicator).
//
// Compiled only in CUDA builds (Note [Two toolchains]; CMake skips *nccl*.cpp otherwise), so
// this header refuses to be included elsewhere rather than failing at link time.
#pragma once

#ifndef SWITCHYARD_CUDA
#error "parallel/nccl_comm.h is only for CUDA builds (SWITCHYARD_CUDA); guard the #include"
#endif

#include <atomic>
#include <memory>

#include "parallel/communicator.h"
#include "parallel/mpi_comm.h"

struct ncclComm;  // nccl.h: typedef struct ncclComm* ncclComm_t;

namespace sy {

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `bootstrap`'s ranks. Uses the current CUDA device (set it first, e.g. from
  // MpiRuntime::local_rank()); every tensor passed later must live on that device.
  explicit NcclCommunicator(std::shared_ptr<MpiCommunicator> bootstrap);
  // ncclCommDestroy, unless abort() was called; ncclCommAbort instead while an exception
  // propagates (a peer may be stuck in a collective with us, and ncclCommDestroy would wait).
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  // ncclCommAbort: non-blocking, releases peers' pending operations with an error. May be called
  // from another thread (the watchdog) while this rank's thread is in a collective.
  void abort(const std::string& reason) override;

  int device() const { return device_; }

 protected:
  // ncclSend/ncclRecv per peer (byte-typed, zero counts skipped) inside one NCCL group; the
  // rows a rank keeps are copied on the stream.
  void do_all_to_all(at::Tensor& output, const at::Tensor& input,
                     const std::vector<int64_t>& send_splits,
                     const std::vector<int64_t>& recv_splits) override;
  // ncclAllReduce in place: float32/64, float16, bfloat16, int32/64, uint8, int8.
  void do_all_reduce(at::Tensor& tensor, ReduceOp op) override;
  void do_all_gather(at::Tensor& output, const at::Tensor& input) override;
  void do_broadcast(at::Tensor& tensor, int root) override;
  // MPI_Comm_split of the bootstrap, then a new NcclCommunicator on it.
  std::shared_ptr<Communicator> do_split(int color, int key) override;

 private:
  // Tensors on this communicator's device, and the communicator not aborted.
  void check_device(const at::Tensor& t, const std::string& what) const;

  std::shared_ptr<MpiCommunicator> bootstrap_;
  ncclComm* comm_ = nullptr;
  int device_ = 0;
  std::atomic<bool> aborted_{false};
};

// An NcclCommunicator over the ranks of `bootstrap`, which must be an MpiCommunicator.
CommPtr make_nccl_communicator(const CommPtr& bootstrap);

}  // namespace sy
