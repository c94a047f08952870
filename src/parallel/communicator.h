// The one communication interface the rest of Switchyard sees (Note [Communicators] in
// docs/design.md). Three implementations, each computing real results:
//   - MpiCommunicator     (CPU tensors; parallel/mpi_comm.h)
//   - NcclCommunicator    (CUDA tensors on LibTorch's current stream; parallel/nccl_comm.h,
//                          compiled only when LibTorch has CUDA)
//   - in-process ranks    (N threads meeting at a rendezvous; parallel/inproc_comm.h), so that
//                          multi-rank code runs under plain ctest and `--ranks N`.
// All calls are collective over the communicator's ranks and must be issued in the same order
// on every rank. Tensors must be contiguous; results are written into caller-allocated outputs.
//
// The public collectives are not virtual: they check their arguments (the same checks, with the
// same sentences, for every backend) and then call a protected do_* method, which a backend
// implements knowing its arguments are well formed, e.g. split lists already resolved. A mistake
// found here throws on the rank that made it, before any communication; mismatches between
// ranks cannot be seen locally (the in-process backend and parallel.check_splits look for them).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

namespace sy {

enum class ReduceOp { kSum, kMax, kMin };

class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  const std::string& backend() const { return backend_; }  // "mpi" | "nccl" | "inproc" | "self"

  // Exchanges rows (dim 0) of `input`: the first send_splits[0] rows go to rank 0, the next
  // send_splits[1] rows to rank 1, ...; `output` receives recv_splits[r] rows from each rank r,
  // in rank order. Empty split vectors mean equal splits (dim 0 divisible by size()).
  // output.size(0) must equal the sum of recv_splits; row shapes and dtypes must match; output
  // must not be input (unless one of them is empty).
  void all_to_all_single(at::Tensor& output, const at::Tensor& input,
                         const std::vector<int64_t>& send_splits,
                         const std::vector<int64_t>& recv_splits);

  // In place. Every rank ends with bitwise identical values.
  void all_reduce(at::Tensor& tensor, ReduceOp op = ReduceOp::kSum);

  // output: [size() * input.size(0), ...], rank r's input at rows [r * n, (r + 1) * n).
  void all_gather(at::Tensor& output, const at::Tensor& input);

  // In place, from `root`.
  void broadcast(at::Tensor& tensor, int root);

  // Returns once every rank has called it: a one-element all_reduce whose result the host reads
  // back, so the host waits for the device on NCCL too. To the watchdog, and to the in-process
  // backend's out-of-step check, it is an all_reduce.
  void barrier();

  // Collective: ranks passing the same color (>= 0) form a new communicator, ordered by
  // (key, rank).
  std::shared_ptr<Communicator> split(int color, int key);

  // Best-effort, non-blocking teardown after a fatal error, so that peers blocked in a
  // collective are released (ncclCommAbort / MPI_Abort / waking in-process peers with an error).
  virtual void abort(const std::string& reason) = 0;

 protected:
  // `barrier_device`: where barrier() puts its one-element tensor, a device whose tensors this
  // communicator takes (NCCL's CUDA device; the CPU for every other backend).
  Communicator(int rank, int size, std::string backend, c10::Device barrier_device = c10::kCPU);

  // Called by the public collectives after their checks: tensors defined and contiguous, row
  // shapes and dtypes matching, outputs of the right number of rows, `root` a rank, `color`
  // >= 0. The split lists are resolved: one entry per rank, none negative, summing to the rows of
  // `input` and `output`. Left to the backend: its device and dtype rules, and whether the ranks'
  // splits pair up (what a sends b is what b expects from a), which it checks as far as it can see
  // (the in-process backend: every pair; the others: a rank's own pair, detail::check_self_splits).
  virtual void do_all_to_all(at::Tensor& output, const at::Tensor& input,
                             const std::vector<int64_t>& send_splits,
                             const std::vector<int64_t>& recv_splits) = 0;
  // The exchange whose caller passed empty split lists, which every rank must do together: equal
  // splits on every rank, so each rank knows its peers' splits without asking (the lists given
  // here are resolved). Default: do_all_to_all. Decorators forward the promise; the two-level
  // exchange uses it to skip gathering its node's split lists.
  virtual void do_all_to_all_equal(at::Tensor& output, const at::Tensor& input,
                                   const std::vector<int64_t>& send_splits,
                                   const std::vector<int64_t>& recv_splits) {
    do_all_to_all(output, input, send_splits, recv_splits);
  }
  virtual void do_all_reduce(at::Tensor& tensor, ReduceOp op) = 0;
  virtual void do_all_gather(at::Tensor& output, const at::Tensor& input) = 0;
  virtual void do_broadcast(at::Tensor& tensor, int root) = 0;
  virtual std::shared_ptr<Communicator> do_split(int color, int key) = 0;

  // For communicators that wrap another one (a watched communicator).
  static c10::Device barrier_device_of(const Communicator& c) { return c.barrier_device_; }

 private:
  const int rank_;
  const int size_;
  const std::string backend_;
  const c10::Device barrier_device_;
};

using CommPtr = std::shared_ptr<Communicator>;

// A world of one: every collective is the identity. Used by single-process runs.
CommPtr make_self_communicator();

}  // namespace sy
