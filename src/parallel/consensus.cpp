#include "parallel/consensus.h"

#include <vector>

#include <ATen/ATen.h>

#include "common/error.h"

namespace sy {

void agree_or_throw(Communicator& comm, const std::string& local_error, const c10::Device& device) {
  const auto opts = at::TensorOptions().dtype(at::kLong).device(device);
  const int n = comm.size();
  // The lowest failing rank (n when none), then its message, one character per int64 so that
  // every backend (MPI, NCCL, in-process) carries it.
  at::Tensor first = at::full({1}, local_error.empty() ? n : comm.rank(), opts);
  comm.all_reduce(first, ReduceOp::kMin);
  const int failed = static_cast<int>(first.to(at::kCPU).item<int64_t>());
  if (failed == n) return;
  const bool mine = comm.rank() == failed;
  at::Tensor length = at::full({1}, mine ? static_cast<int64_t>(local_error.size()) : 0, opts);
  comm.broadcast(length, failed);
  const int64_t size = length.to(at::kCPU).item<int64_t>();
  at::Tensor chars = at::zeros({size}, at::TensorOptions().dtype(at::kLong));
  if (mine) {
    for (int64_t i = 0; i < size; ++i)
      chars[i] = static_cast<int64_t>(static_cast<unsigned char>(local_error[i]));
  }
  chars = chars.to(device);
  comm.broadcast(chars, failed);
  chars = chars.to(at::kCPU).contiguous();
  std::string message(static_cast<size_t>(size), ' ');
  const int64_t* p = chars.data_ptr<int64_t>();
  for (int64_t i = 0; i < size; ++i) message[i] = static_cast<char>(p[i]);
  SY_THROW("rank ", failed, ": ", message);
}

}  // namespace sy
