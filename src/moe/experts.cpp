#include "moe/experts.h"

#include <torch/torch.h>

#include "common/error.h"

namespace sy {

Activation parse_activation(const std::string& name) {
  if (name == "gelu") return Activation::kGelu;
  if (name == "relu") return Activation::kRelu;
  if (name == "swiglu") return Activation::kSwiGlu;
  SY_THROW("unknown moe.activation '", name, "': expected gelu, relu or swiglu");
}

ExpertsImpl::ExpertsImpl(Activation activation, int64_t d_model, int64_t d_ff, bool bias,
                         int64_t first_expert, int64_t num_local, const InitSpec& init,
                         int64_t layer_index)
    : activation_(activation), first_expert_(first_expert), num_local_(num_local), bias_(bias) {
  const int64_t d_in = activation == Activation::kSwiGlu ? 2 * d_ff : d_ff;
  torch::NoGradGuard no_grad;
  at::Tensor w1_all = at::empty({num_local, d_model, d_in}, at::kFloat);
  at::Tensor w2_all = at::empty({num_local, d_ff, d_model}, at::kFloat);
  for (int64_t e = 0; e < num_local; ++e) {
    const auto global = static_cast<uint64_t>(first_expert + e);
    at::Generator gen =
        make_cpu_generator(mix_seed(init.seed, /*a=*/0xE7, static_cast<uint64_t>(layer_index), global));
    w1_all[e].normal_(0.0, init_std(init, d_model), gen);
    w2_all[e].normal_(0.0, init_std(init, d_ff), gen);
  }
  w1 = register_parameter("w1", w1_all);
  w2 = register_parameter("w2", w2_all);
  if (bias_) {
    b1 = register_parameter("b1", at::zeros({num_local, 1, d_in}, at::kFloat));
    b2 = register_parameter("b2", at::zeros({num_local, 1, d_model}, at::kFloat));
  }
}

at::Tensor ExpertsImpl::activate(const at::Tensor& h) const {
  switch (activation_) {
    case Activation::kGelu:
      return at::gelu(h);
    case Activation::kRelu:
      return at::relu(h);
    case Activation::kSwiGlu: {
      auto parts = h.chunk(2, /*dim=*/-1);  // [gate, up]
      return at::silu(parts[0]) * parts[1];
    }
  }
  SY_THROW("unreachable activation");
}

at::Tensor ExpertsImpl::forward(const at::Tensor& x) {
  // x: [El, C, H]
  SY_CHECK(x.dim() == 3 && x.size(0) == num_local_, "experts: expected [", num_local_,
           ", C, H] input, got ", x.sizes());
  at::Tensor h = bias_ ? at::baddbmm(b1, x, w1) : at::bmm(x, w1);
  h = activate(h);
  return bias_ ? at::baddbmm(b2, h, w2) : at::bmm(h, w2);
}

at::Tensor ExpertsImpl::forward_grouped(const at::Tensor& x, const std::vector<int64_t>& counts) {
  SY_CHECK(static_cast<int64_t>(counts.size()) == num_local_, "experts: ", counts.size(),
           " group counts for ", num_local_, " local experts");
  std::vector<at::Tensor> outs;
  outs.reserve(counts.size());
  auto groups = x.split_with_sizes(counts, /*dim=*/0);
  for (int64_t e = 0; e < num_local_; ++e) {
    const at::Tensor& xe = groups[e];  // [n_e, H]
    at::Tensor h = xe.matmul(w1[e]);
    if (bias_) h = h + b1[e];
    h = activate(h).matmul(w2[e]);
    if (bias_) h = h + b2[e];
    outs.push_back(h);
  }
  return at::cat(outs, /*dim=*/0);
}

}  // namespace sy
