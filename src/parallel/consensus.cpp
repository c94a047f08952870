#include "parallel/consensus.h"

#include <vector>

#include <ATen/ATen.h>

#include "common/error.h"

namespace sy {

std::string broadcast_text(Communicator& comm, const std::string& text, int root,
                           const c10::Device& device) {
  const auto opts = at::TensorOptions().dtype(at::kLong).device(device);
  const bool mine = comm.rank() == root;
  at::Tensor length = at::full({1}, mine ? static_cast<int64_t>(text.size()) : 0, opts);
  comm.broadcast(length, root);
  const int64_t size = length.to(at::kCPU).item<int64_t>();
  at::Tensor chars = at::zeros({size}, at::TensorOptions().dtype(at::kLong));
  if (mine) {
    int64_t* p = chars.data_ptr<int64_t>();
    for (int64_t i = 0; i < size; ++i) p[i] = static_cast<unsigned char>(text[i]);
  }
  chars = chars.to(device);
  comm.broadcast(chars, root);
  chars = chars.to(at::kCPU).contiguous();
  std::string out(static_cast<size_t>(size), ' ');
  const int64_t* p = chars.data_ptr<int64_t>();
  for (int64_t i = 0; i < size; ++i) out[i] = static_cast<char>(p[i]);
  return out;
}

void agree_or_throw(Communicator& comm, const std::string& local_error, const c10::Device& device) {
  const auto opts = at::TensorOptions().dtype(at::kLong).device(device);
  const int n = comm.size();
  // The lowest failing rank (n when none), then its message.
  at::Tensor first = at::full({1}, local_error.empty() ? n : comm.rank(), opts);
  comm.all_reduce(first, ReduceOp::kMin);
  const int failed = static_cast<int>(first.to(at::kCPU).item<int64_t>());
  if (failed == n) return;
  SY_THROW("rank ", failed, ": ", broadcast_text(comm, local_error, failed, device));
}

}  // namespace sy
