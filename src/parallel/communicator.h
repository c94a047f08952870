// The one communication interface the rest of Switchyard sees (Note [Communicators] in
// docs/design.md). Three implementations, each computing real results:
//   - MpiCommunicator     (CPU tensors; parallel/mpi_comm.h)
//   - NcclCommunicator    (CUDA tensors on LibTorch's current stream; parallel/nccl_comm.h,
//                          compiled only when LibTorch has CUDA)
//   - in-process ranks    (N threads meeting at a rendezvous; parallel/inproc_comm.h), so that
//                          multi-rank code runs under plain ctest and `--ranks N`.
// All calls are collective over the communicator's ranks and must be issued in the same order
// on every rank. Tensors must be contiguous; results are written into caller-allocated outputs.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace sy {

enum class ReduceOp { kSum, kMax, kMin };

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "mpi" | "nccl" | "inproc"

  // Exchanges rows (dim 0) of `input`: the first send_splits[0] rows go to rank 0, the next
  // send_splits[1] rows to rank 1, ...; `output` receives recv_splits[r] rows from each rank r,
  // in rank order. Empty split vectors mean equal splits (dim 0 divisible by size()).
  // output.size(0) must equal the sum of recv_splits; row shapes and dtypes must match.
  virtual void all_to_all_single(at::Tensor& output, const at::Tensor& input,
                                 const std::vector<int64_t>& send_splits,
                                 const std::vector<int64_t>& recv_splits) = 0;

  // In place. Every rank ends with bitwise identical values.
  virtual void all_reduce(at::Tensor& tensor, ReduceOp op = ReduceOp::kSum) = 0;

  // output: [size() * input.size(0), ...], rank r's input at rows [r * n, (r + 1) * n).
  virtual void all_gather(at::Tensor& output, const at::Tensor& input) = 0;

  // In place, from `root`.
  virtual void broadcast(at::Tensor& tensor, int root) = 0;

  virtual void barrier() = 0;

  // Collective: ranks passing the same color form a new communicator, ordered by (key, rank).
  virtual std::shared_ptr<Communicator> split(int color, int key) = 0;

  // Best-effort, non-blocking teardown after a fatal error, so that peers blocked in a
  // collective are released (ncclCommAbort / MPI_Abort / waking in-process peers with an error).
  virtual void abort(const std::string& reason) = 0;
};

using CommPtr = std::shared_ptr<Communicator>;

// A world of one: every collective is the identity. Used by single-process runs.
CommPtr make_self_communicator();

}  // namespace sy
