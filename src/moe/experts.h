// The local experts of one MoE layer as one batched FFN: weights [E_local, H, F], so all
// experts run in one bmm over their dispatch buffers (capacity mode) or one matmul per expert
// over exactly its rows (dropless mode). Experts only ever see the tokens dispatched to them.
#pragma once

#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "config/config.h"
#include "moe/init.h"

namespace sy {

enum class Activation { kGelu, kRelu, kSwiGlu };
Activation parse_activation(const std::string& name);  // throws naming moe.activation

class ExpertsImpl : public torch::nn::Module {
 public:
  // Holds global experts [first_expert, first_expert + num_local); each is initialised from its
  // own generator (Note [Sharding-independent init]).
  ExpertsImpl(Activation activation, int64_t d_model, int64_t d_ff, bool bias,
              int64_t first_expert, int64_t num_local, const InitSpec& init, int64_t layer_index);

  // x: [E_local, C, H] -> [E_local, C, H].
  at::Tensor forward(const at::Tensor& x);
  // x: [N, H], rows grouped by local expert, counts[e] rows for expert e -> [N, H].
  at::Tensor forward_grouped(const at::Tensor& x, const std::vector<int64_t>& counts);

  int64_t first_expert() const { return first_expert_; }
  int64_t num_local() const { return num_local_; }

  at::Tensor w1, b1, w2, b2;  // [El, H, F'], [El, 1, F'], [El, F, H], [El, 1, H]; F' = 2F for SwiGLU

 private:
  at::Tensor activate(const at::Tensor& h) const;
  Activation activation_;
  int64_t first_expert_;
  int64_t num_local_;
  bool bias_;
};
TORCH_MODULE(Experts);

}  // namespace sy
