// start_beside and join for builds without CUDA (side_stream_cuda.cpp otherwise): in place.
#include "moe/side_stream.h"

#ifndef SWITCHYARD_CUDA
namespace sy {

Pending start_beside(const at::Tensor& input, SideStream stream,
                     const std::function<at::Tensor(const at::Tensor&)>& fn) {
  (void)stream;
  return Pending{fn(input), at::Tensor(), nullptr};
}

at::Tensor join(Pending&& pending) { return std::move(pending.value); }

}  // namespace sy
#endif
