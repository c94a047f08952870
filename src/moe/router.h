// Routers: map each token's hidden state to its top-k experts and gate weights, and compute the
// router's auxiliary losses. Always in fp32 (autocast is switched off inside).
//
// Variants (moe.router):
//   switch       softmax over all experts, top-1, weight = that probability (Switch Transformer)
//   topk         softmax over all experts, top-k, weights renormalised to sum 1 when
//                moe.renormalize (GShard top-2)
//   topk_logits  top-k of the logits, softmax over the kept ones (makeMoE, Mixtral)
//   noisy_topk   as topk_logits on logits + N(0,1) * softplus(x W_noise), noise only in
//                training (Shazeer et al. 2017, makeMoE)
//   dense        softmax over all experts, every expert sees every token (top_k = num_experts)
//   hash         k distinct experts from a hash of the token id, weights 1/k (Roller et al.)
//   random       k distinct uniformly random experts, weights 1/k (a baseline)
// moe.jitter_eps multiplies the router input by U(1-eps, 1+eps) in training (Switch).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <ATen/core/Generator.h>

#include "config/config.h"

namespace sy {

struct RouterOutput {
  at::Tensor topk_idx;      // [S, k] int64: chosen experts, best first
  at::Tensor topk_weights;  // [S, k] fp32 gate weights (differentiable)
  at::Tensor probs;         // [S, E] fp32 softmax of the clean logits (undefined for hash/random)
  at::Tensor aux_loss;      // scalar: E * sum_i f_i * P_i (Switch), f over all k choices
  at::Tensor z_loss;        // scalar: mean_s logsumexp(logits_s)^2 (ST-MoE)
};

class RouterImpl : public torch::nn::Module {
 public:
  // Weights drawn from N(0, init_std) with `init_gen` (Note [Sharding-independent init]).
  RouterImpl(const MoeConfig& cfg, int64_t d_model, double init_std, at::Generator& init_gen);

  // x: [S, H]. token_ids: [S] int64 (needed by "hash" only). gen: CPU generator for noise,
  // jitter and random routing on CPU tensors (CUDA tensors use the device's default generator).
  RouterOutput forward(const at::Tensor& x, const at::Tensor& token_ids, at::Generator* gen);

  int64_t top_k() const { return top_k_; }
  RouterKind kind() const { return kind_; }
  // Whether forward takes the fused kernel for x (Note [Fused MoE kernels]): moe.fused_kernels,
  // a CUDA input, a "switch" or "topk" router, top-k <= 8, and a build with the kernels.
  bool uses_fused_kernel(const at::Tensor& x) const;
  // Whether the logits come from the split-bf16 GEMM (Note [Split-bf16 router GEMM] in fused.h):
  // moe.fused_kernels, a bf16 CUDA input, a router with logits x W (not noisy_topk, hash,
  // random), no jitter in training, and a build with the kernels and LibTorch 2.9 or later.
  bool uses_split_gemm(const at::Tensor& x) const;

 private:
  RouterKind kind_;
  int64_t num_experts_;
  int64_t top_k_;
  bool renormalize_;
  double jitter_eps_;
  bool fused_kernels_;
  at::Tensor weight_;        // [H, E]
  at::Tensor noise_weight_;  // [H, E], noisy_topk only
};
TORCH_MODULE(Router);

// Switch load-balancing loss: E * sum_i f_i * P_i, f_i = share of the S*k choices that picked
// expert i (no gradient), P_i = mean router probability of expert i. 1.0 when balanced.
at::Tensor load_balancing_loss(const at::Tensor& probs, const at::Tensor& topk_idx);
// Router z-loss: mean over tokens of logsumexp(logits)^2.
at::Tensor router_z_loss(const at::Tensor& logits);

// Random helpers that honour an explicit CPU generator (so in-process ranks are reproducible)
// and fall back to the device's default generator for CUDA tensors.
at::Tensor randn_like_gen(const at::Tensor& like, at::Generator* gen);
at::Tensor rand_like_gen(const at::Tensor& like, at::Generator* gen);

}  // namespace sy
