// start_beside and join for builds without CUDA (side_stream_cuda.cpp otherwise): in place.
#include "moe/side_stream.h"

#ifndef SWITCHYARD_CUDA
namespace sy {

ForkPoint fork_point(const at::Tensor& input) { return ForkPoint{input, nullptr}; }

Pending start_beside(ForkPoint fork, SideStream stream,
                     const std::function<at::Tensor(const at::Tensor&)>& fn) {
  (void)stream;
  return Pending{fn(fork.input), at::Tensor(), nullptr};
}

at::Tensor join(Pending&& pending) { return std::move(pending.value); }

}  // namespace sy
#endif
