// Router math. See router.h for the variants; Note [Router precision]: logits, softmax and both
// losses are computed in fp32 with autocast excluded, whatever the model's dtype.
#include "moe/router.h"

#include <cmath>

#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/torch.h>

#include "common/error.h"
#include "moe/fused.h"

namespace sy {

at::Tensor randn_like_gen(const at::Tensor& like, at::Generator* gen) {
  if (gen != nullptr && like.is_cpu()) {
    return at::randn(like.sizes(), *gen, like.options());
  }
  return at::randn(like.sizes(), like.options());
}

at::Tensor rand_like_gen(const at::Tensor& like, at::Generator* gen) {
  if (gen != nullptr && like.is_cpu()) {
    return at::rand(like.sizes(), *gen, like.options());
  }
  return at::rand(like.sizes(), like.options());
}

RouterImpl::RouterImpl(const MoeConfig& cfg, int64_t d_model, double init_std,
                       at::Generator& init_gen)
    : kind_(cfg.router),
      num_experts_(cfg.num_experts),
      top_k_(kind_ == RouterKind::kDense ? cfg.num_experts : cfg.top_k),
      renormalize_(cfg.renormalize),
      jitter_eps_(cfg.jitter_eps),
      fused_kernels_(cfg.fused_kernels) {
  SY_CHECK(kind_ != RouterKind::kSwitch || top_k_ == 1,
           "moe.router 'switch' routes to one expert: moe.top_k must be 1, not ", top_k_);
  const double std = init_std;
  torch::NoGradGuard no_grad;
  weight_ = register_parameter(
      "weight", at::empty({d_model, num_experts_}, at::kFloat).normal_(0.0, std, init_gen));
  if (kind_ == RouterKind::kNoisyTopK) {
    noise_weight_ = register_parameter(
        "noise_weight", at::empty({d_model, num_experts_}, at::kFloat).normal_(0.0, std, init_gen));
  }
}

at::Tensor load_balancing_loss(const at::Tensor& probs, const at::Tensor& topk_idx) {
  const int64_t num_experts = probs.size(1);
  const int64_t num_choices = topk_idx.numel();
  if (num_choices == 0) return at::zeros({}, probs.options());
  at::Tensor counts =
      at::zeros({num_experts}, probs.options())
          .index_add_(0, topk_idx.reshape(-1), at::ones({num_choices}, probs.options()));
  at::Tensor f = counts / static_cast<double>(num_choices);  // no gradient: counts are constants
  at::Tensor p = probs.mean(/*dim=*/0);
  return (f * p).sum() * static_cast<double>(num_experts);
}

at::Tensor router_z_loss(const at::Tensor& logits) {
  if (logits.size(0) == 0) return at::zeros({}, logits.options());
  return at::logsumexp(logits, /*dim=*/-1).pow(2).mean();
}

bool RouterImpl::uses_fused_kernel(const at::Tensor& x) const {
  return fused_kernels_ && x.is_cuda() &&
         (kind_ == RouterKind::kSwitch || kind_ == RouterKind::kTopK) &&
         top_k_ <= kernels::kMaxTopK && fused::available();
}

bool RouterImpl::uses_split_gemm(const at::Tensor& x) const {
  return fused_kernels_ && x.is_cuda() && x.scalar_type() == at::kBFloat16 &&
         (kind_ == RouterKind::kSwitch || kind_ == RouterKind::kTopK ||
          kind_ == RouterKind::kTopKLogits || kind_ == RouterKind::kDense) &&
         !(is_training() && jitter_eps_ > 0) && fused::router_gemm_available();
}

RouterOutput RouterImpl::forward(const at::Tensor& x_in, const at::Tensor& token_ids,
                                 at::Generator* gen) {
  // Note [Router precision]: no autocast below; everything in fp32. A bf16 input on CUDA keeps its
  // dtype when the split-bf16 GEMM gives the fp32 logits (Note [Split-bf16 router GEMM]).
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const bool split_gemm = uses_split_gemm(x_in);
  at::Tensor x = split_gemm ? x_in : x_in.to(at::kFloat);
  const int64_t num_tokens = x.size(0);
  RouterOutput out;

  if (kind_ == RouterKind::kHash || kind_ == RouterKind::kRandom) {
    const auto idx_opts = x.options().dtype(at::kLong);
    if (kind_ == RouterKind::kHash) {
      SY_CHECK(token_ids.defined() && token_ids.numel() == num_tokens,
               "moe.router 'hash' needs the token ids of the layer's input");
      // Knuth's multiplicative hash, then k consecutive (hence distinct) experts.
      at::Tensor h = (token_ids.reshape({-1, 1}).to(at::kLong) * int64_t{2654435761})
                         .remainder(int64_t{1} << 32);
      at::Tensor offsets = at::arange(top_k_, idx_opts).reshape({1, -1});
      out.topk_idx = (h + offsets).remainder(num_experts_);
    } else {
      at::Tensor scores = rand_like_gen(at::empty({num_tokens, num_experts_}, x.options()), gen);
      out.topk_idx = std::get<1>(scores.topk(top_k_, /*dim=*/-1));
    }
    out.topk_weights =
        at::full({num_tokens, top_k_}, 1.0 / static_cast<double>(top_k_), x.options());
    out.aux_loss = at::zeros({}, x.options());
    out.z_loss = at::zeros({}, x.options());
    return out;
  }

  if (is_training() && jitter_eps_ > 0) {
    at::Tensor u = rand_like_gen(x, gen);
    x = x * (u * (2.0 * jitter_eps_) + (1.0 - jitter_eps_));
  }
  at::Tensor logits =
      split_gemm ? fused::router_logits(x, weight_) : x.matmul(weight_);  // [S, E] fp32
  if (uses_fused_kernel(x)) {
    // Softmax, top-k, renormalisation and the z-loss's log-sum-exp in one kernel, then both losses
    // by two more (LibTorch's below for no tokens or more experts than the loss kernels take).
    fused::RouterTopK r = fused::router_topk(
        logits, top_k_, kind_ == RouterKind::kTopK && renormalize_ && top_k_ > 1);
    out.probs = r.probs;
    out.topk_weights = r.topk_w;
    out.topk_idx = r.topk_idx;
    if (num_tokens > 0 && num_experts_ <= kernels::kMaxLossExperts) {
      fused::RouterLosses losses = fused::router_losses(r.probs, r.lse, r.topk_idx);
      out.aux_loss = losses.aux;
      out.z_loss = losses.z;
      return out;
    }
  } else {
    out.probs = at::softmax(logits, /*dim=*/-1);

    switch (kind_) {
      case RouterKind::kSwitch:
      case RouterKind::kTopK: {
        auto [w, idx] = out.probs.topk(top_k_, /*dim=*/-1);
        if (kind_ == RouterKind::kTopK && renormalize_ && top_k_ > 1) {
          w = w / w.sum(/*dim=*/-1, /*keepdim=*/true);
        }
        out.topk_weights = w;
        out.topk_idx = idx;
        break;
      }
      case RouterKind::kTopKLogits:
      case RouterKind::kNoisyTopK: {
        at::Tensor scores = logits;
        if (kind_ == RouterKind::kNoisyTopK && is_training()) {
          at::Tensor noise_scale = at::softplus(x.matmul(noise_weight_));
          scores = logits + randn_like_gen(logits, gen) * noise_scale;
        }
        auto [kept, idx] = scores.topk(top_k_, /*dim=*/-1);
        out.topk_weights = at::softmax(kept, /*dim=*/-1);
        out.topk_idx = idx;
        break;
      }
      case RouterKind::kDense:
        out.topk_weights = out.probs;
        out.topk_idx = at::arange(num_experts_, x.options().dtype(at::kLong))
                           .expand({num_tokens, num_experts_})
                           .contiguous();
        break;
      default: SY_THROW("unreachable router kind");
    }
  }
  out.aux_loss = load_balancing_loss(out.probs, out.topk_idx);
  out.z_loss = router_z_loss(logits);
  return out;
}

}  // namespace sy
