#include "moe/alltoall.h"

#include <numeric>

#include <torch/torch.h>

#include "common/error.h"
#include "parallel/watchdog.h"

namespace sy {
namespace {

at::Tensor exchange(const at::Tensor& x, Communicator& comm, const std::vector<int64_t>& send,
                    const std::vector<int64_t>& recv) {
  at::Tensor input = x.contiguous();
  int64_t rows = input.size(0);
  if (!recv.empty()) {
    rows = std::accumulate(recv.begin(), recv.end(), int64_t{0});
  }
  std::vector<int64_t> shape = input.sizes().vec();
  shape[0] = rows;
  at::Tensor output = at::empty(shape, input.options());
  comm.all_to_all_single(output, input, send, recv);
  return output;
}

class AllToAllFunction : public torch::autograd::Function<AllToAllFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            Communicator* comm, const std::vector<int64_t>& send,
                            const std::vector<int64_t>& recv) {
    // The communicator outlives the graph (it is owned by the model's process groups); the
    // pointer is kept as an integer because saved_data holds IValues.
    ctx->saved_data["comm"] = reinterpret_cast<int64_t>(comm);
    ctx->saved_data["send"] = send;
    ctx->saved_data["recv"] = recv;
    // Backward may run on another thread (autograd's device threads on CUDA), where the
    // caller's thread-local label is not set: carry it over for the watchdog's dump.
    ctx->saved_data["label"] = current_collective_label();
    return exchange(x, *comm, send, recv);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* comm = reinterpret_cast<Communicator*>(ctx->saved_data["comm"].toInt());
    const std::vector<int64_t> send = ctx->saved_data["send"].toIntVector();
    const std::vector<int64_t> recv = ctx->saved_data["recv"].toIntVector();
    const std::string label = ctx->saved_data["label"].toStringRef();
    CollectiveLabel scope(label.empty() ? std::string() : label + " (backward)");
    // Reverse exchange: what we received, we send back.
    at::Tensor grad_in = exchange(grads[0], *comm, recv, send);
    return {grad_in, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor all_to_all(const at::Tensor& x, Communicator& comm,
                      const std::vector<int64_t>& send_splits,
                      const std::vector<int64_t>& recv_splits) {
  SY_CHECK(send_splits.size() == recv_splits.size(),
           "all_to_all: send and recv split lists differ in length");
  return AllToAllFunction::apply(x, &comm, send_splits, recv_splits);
}

}  // namespace sy
