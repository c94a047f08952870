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

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }

  // ncclSend/ncclRecv per peer (byte-typed, zero counts skipped) inside one NCCL group; the
  // rows a rank keeps are copied on the stream.
  void all_to_all_single(at::Tensor& output, const at::Tensor& input,
                         const std::vector<int64_t>& send_splits,
                         const std::vector<int64_t>& recv_splits) override;
  // ncclAllReduce in place: float32/64, float16, bfloat16, int32/64, uint8, int8.
  void all_reduce(at::Tensor& tensor, ReduceOp op = ReduceOp::kSum) override;
  void all_gather(at::Tensor& output, const at::Tensor& input) override;
  void broadcast(at::Tensor& tensor, int root) override;
  // A one-element all-reduce, then the host waits for the stream.
  void barrier() override;
  // MPI_Comm_split of the bootstrap, then a new NcclCommunicator on it.
  std::shared_ptr<Communicator> split(int color, int key) override;
  // ncclCommAbort: non-blocking, releases peers' pending operations with an error. May be called
  // from another thread (the watchdog) while this rank's thread is in a collective.
  void abort(const std::string& reason) override;

  int device() const { return device_; }

 private:
  void check_device(const at::Tensor& t, const std::string& what) const;

  std::shared_ptr<MpiCommunicator> bootstrap_;
  ncclComm* comm_ = nullptr;
  int rank_ = 0, size_ = 1, device_ = 0;
  std::atomic<bool> aborted_{false};
};

// An NcclCommunicator over the ranks of `bootstrap`, which must be an MpiCommunicator.
CommPtr make_nccl_communicator(const CommPtr& bootstrap);

}  // namespace sy
