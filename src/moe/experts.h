// The local experts of one MoE layer as one batched FFN: weights [E_local, H, F]. Two ways to run
// them (moe.expert_gemm, docs/bench.md#expert-gemms-batched-grouped-or-trimmed):
//   - forward: one bmm over a padded [E_local, C, H] buffer (capacity mode);
//   - forward_grouped: over [N, H] rows grouped by expert, only the routed rows: one grouped GEMM
//     (at::_grouped_mm, bf16 on CUDA with LibTorch >= 2.8) or, elsewhere, one matmul per expert.
// Experts only ever see the tokens dispatched to them.
#pragma once

#include <functional>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "config/config.h"
#include "moe/init.h"

namespace sy {

class ExpertsImpl : public torch::nn::Module {
 public:
  // Holds global experts [first_expert, first_expert + num_local); each is initialised from its
  // own generator (Note [Sharding-independent init]).
  ExpertsImpl(Activation activation, int64_t d_model, int64_t d_ff, bool bias, int64_t first_expert,
              int64_t num_local, const InitSpec& init, int64_t layer_index);

  // x: [E_local, C, H] -> [E_local, C, H]. output_bias false: without the second bias b2 (the
  // fused combine adds it, Note [Fused MoE kernels]).
  at::Tensor forward(const at::Tensor& x, bool output_bias = true);
  // x: [N, H], rows grouped by local expert, counts[e] rows for expert e -> [N, H].
  at::Tensor forward_grouped(const at::Tensor& x, const std::vector<int64_t>& counts,
                             bool output_bias = true);
  // The same with the group ends on the device: ends[e] = rows of experts 0..e (int64, [E_local],
  // non-decreasing, ends[-1] <= N). Rows past ends[-1] are padding: their outputs are zero (left
  // unwritten by the fused grouped path without the output bias) and they receive no gradient.
  // No host sync on the grouped-GEMM path; the fallback copies the ends to the host.
  at::Tensor forward_grouped(const at::Tensor& x, const at::Tensor& ends, bool output_bias = true);

  // Whether forward_grouped runs as one grouped GEMM for inputs like `x` under the current
  // autocast state (else it loops over the experts). False after set_grouped_kernel(false).
  bool grouped_gemm_available(const at::Tensor& x) const;
  void set_grouped_kernel(bool allowed) { grouped_kernel_ = allowed; }
  // forward on CUDA with a bias and gelu or relu: a plain bmm, then bias + activation in one
  // kernel (Note [Fused MoE kernels]). moe.fused_kernels.
  void set_fused_kernels(bool allowed) { fused_kernels_ = allowed; }

  // train.activation_checkpointing moe: forward and forward_grouped keep only their input rows
  // and recompute the hidden activations in the backward (Note [Activation checkpointing] in
  // common/recompute.h).
  void set_recompute(bool on) { recompute_ = on; }

  int64_t first_expert() const { return first_expert_; }
  int64_t num_local() const { return num_local_; }

  at::Tensor w1, b1, w2,
      b2;  // [El, H, F'], [El, 1, F'], [El, F, H], [El, 1, H]; F' = 2F for SwiGLU

 private:
  at::Tensor activate(const at::Tensor& h) const;
  // Whether a call should go through checkpoint(): on, with grad, and not already inside one.
  bool checkpointing() const;
  // run(x) through checkpoint(), the experts' parameters differentiated in the recomputation.
  at::Tensor recomputed(std::function<at::Tensor(const at::Tensor&)> run, const at::Tensor& x);
  Activation activation_;
  int64_t first_expert_;
  int64_t num_local_;
  bool bias_;
  bool grouped_kernel_ = true;
  bool fused_kernels_ = false;
  bool recompute_ = false;
  bool inside_checkpoint_ = false;
};
TORCH_MODULE(Experts);

// The dtype that matmuls on `x` compute in under the current autocast state (bf16 inside
// train.dtype bf16 on CUDA), else x's own dtype.
at::ScalarType autocast_matmul_dtype(const at::Tensor& x);

}  // namespace sy
