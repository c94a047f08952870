#include "train/throughput.h"

#include <algorithm>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "common/device_timing.h"

namespace sy {

double model_flops_per_token(const Config& cfg, int64_t vocab, int64_t num_moe) {
  const double d = static_cast<double>(cfg.model.d_model);
  const double T = static_cast<double>(cfg.model.block_size);
  const double L = static_cast<double>(cfg.model.n_layers);
  const double dense_blocks = L - static_cast<double>(num_moe);
  const double f = static_cast<double>(cfg.model.d_ff);
  const double fe = static_cast<double>(cfg.moe.d_ff > 0 ? cfg.moe.d_ff : cfg.model.d_ff);
  const double expert_mats = cfg.moe.activation == Activation::kSwiGlu ? 3.0 : 2.0;
  const double k = cfg.moe.router == RouterKind::kDense ? static_cast<double>(cfg.moe.num_experts)
                                                        : static_cast<double>(cfg.moe.top_k);
  const double attention = 8.0 * d * d + 4.0 * T * d;
  const double dense_ffn = 2.0 * 2.0 * d * f;  // the dense blocks' GELU FFN
  // Shared experts: every token through their summed width.
  const double shared_ff =
      static_cast<double>(cfg.moe.shared_experts) *
      (cfg.moe.shared_d_ff > 0 ? static_cast<double>(cfg.moe.shared_d_ff) : fe);
  const double moe_ffn = 2.0 * d * static_cast<double>(cfg.moe.num_experts) +
                         (k * fe + shared_ff) * 2.0 * expert_mats * d;
  const double head = 2.0 * d * static_cast<double>(vocab);
  if (cfg.model.kind == ModelKind::kEncoderDecoder) {
    // num_moe counts both stacks' MoE blocks; the blocks of the two stacks average out.
    const double blocks = 2.0 * L;
    const double cross = L * attention;
    const double both = blocks * attention + cross +
                        (blocks - static_cast<double>(num_moe)) * dense_ffn +
                        static_cast<double>(num_moe) * moe_ffn + head;
    return 3.0 * both / 2.0;
  }
  const double forward =
      L * attention + dense_blocks * dense_ffn + static_cast<double>(num_moe) * moe_ffn + head;
  return 3.0 * forward;
}

GemmRate measure_dense_gemm_rate(const Config& cfg, c10::Device device) {
  GemmRate r;
  const int64_t tokens = cfg.data.batch_size * cfg.model.block_size;
  r.m = std::max<int64_t>(1024, std::min<int64_t>(tokens, 16384));
  r.k = cfg.model.d_model;
  r.n = cfg.model.d_ff;
  const auto opts = at::TensorOptions().device(device).dtype(
      cfg.train.dtype == Precision::kBf16 ? at::kBFloat16 : at::kFloat);
  torch::NoGradGuard no_grad;
  // Random operands from a generator of its own: the run's generators (saved in checkpoints)
  // are left untouched.
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(12345);
  const at::Tensor a = at::randn({r.m, r.k}, gen, at::kFloat).to(opts);
  const at::Tensor b = at::randn({r.k, r.n}, gen, at::kFloat).to(opts);
  at::Tensor c = at::empty({r.m, r.n}, opts);
  const double s = median_seconds(device, 5, 20, [&] { at::mm_out(c, a, b); });
  r.tflops = 2.0 * static_cast<double>(r.m) * static_cast<double>(r.k) * static_cast<double>(r.n) /
             s / 1e12;
  return r;
}

}  // namespace sy
