// Router math. See router.h for the variants; Note [Router precision]: logits, softmax and both
// losses are computed in fp32 with autocast excluded, whatever the model's dtype.
#include "moe/router.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

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
      fused_kernels_(cfg.fused_kernels),
      score_(cfg.score),
      route_scale_(cfg.route_scale),
      route_groups_(cfg.route_groups > 1 ? cfg.route_groups : 0),
      route_group_limit_(cfg.route_group_limit),
      aux_kind_(cfg.aux_loss),
      aux_scope_(cfg.aux_loss_scope) {
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
  if (uses_score_bias(cfg.balance)) {
    score_bias_ = register_buffer("score_bias", at::zeros({num_experts_}, at::kFloat));
  }
}

namespace {

// The aux loss over `groups` equal groups of the tokens, counting only the routed ones (weight
// m [S], 1 or 0; Note [Padding out of routing]): per group g with n_g > 0 routed tokens,
//   switch    E * sum_i f_gi P_gi, f_gi = share of its routed tokens' choices on i, P_gi = their
//             mean probability of i
//   variance  sum_i (c_gi - mean c_g)^2 / E, c_gi = sum over its routed tokens of i's gate weight
// averaged over the groups with a routed token (0 when there is none).
at::Tensor routed_balance_loss(AuxLossKind kind, const at::Tensor& probs,
                               const at::Tensor& topk_idx, const at::Tensor& topk_weights,
                               int64_t groups, const at::Tensor& routed) {
  const int64_t num_tokens = topk_idx.size(0), k = topk_idx.size(1), E = probs.size(1);
  if (topk_idx.numel() == 0) return at::zeros({}, probs.options());
  const int64_t per = num_tokens / groups;
  const at::Tensor m = routed.to(probs.scalar_type()).reshape({groups, per});
  const at::Tensor n = m.sum(/*dim=*/1);  // routed tokens per group
  const at::Tensor has = n.gt(0).to(probs.scalar_type());
  at::Tensor per_group;
  if (kind == AuxLossKind::kSwitch) {
    const at::Tensor counts =
        at::zeros({groups, E}, probs.options())
            .scatter_add_(1, topk_idx.reshape({groups, per * k}),
                          m.unsqueeze(-1).expand({groups, per, k}).reshape({groups, per * k}));
    const at::Tensor n_safe = n.clamp_min(1.0).unsqueeze(1);
    const at::Tensor f = counts / (n_safe * static_cast<double>(k));
    const at::Tensor p =
        (probs.reshape({groups, per, E}) * m.unsqueeze(-1)).sum(/*dim=*/1) / n_safe;
    per_group = (f * p).sum(/*dim=*/-1) * static_cast<double>(E);
  } else {
    const at::Tensor gates = at::zeros({num_tokens, E}, topk_weights.options())
                                 .scatter(1, topk_idx, topk_weights)
                                 .reshape({groups, per, E});
    const at::Tensor c = (gates * m.unsqueeze(-1).to(gates.scalar_type())).sum(/*dim=*/1);
    const at::Tensor dev = c - c.mean(/*dim=*/-1, /*keepdim=*/true);
    per_group = (dev * dev).sum(/*dim=*/-1) / static_cast<double>(E);
  }
  return (per_group * has).sum() / has.sum().clamp_min(1.0);
}

}  // namespace

at::Tensor load_balancing_loss(const at::Tensor& probs, const at::Tensor& topk_idx,
                               const at::Tensor& routed) {
  if (routed.defined()) {
    return routed_balance_loss(AuxLossKind::kSwitch, probs, topk_idx, {}, /*groups=*/1, routed);
  }
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

at::Tensor balance_loss(AuxLossKind kind, const at::Tensor& probs, const at::Tensor& topk_idx,
                        const at::Tensor& topk_weights, int64_t seq_len, const at::Tensor& global_f,
                        const at::Tensor& routed) {
  const int64_t num_tokens = topk_idx.size(0);
  const int64_t k = topk_idx.size(1);
  const int64_t num_experts = probs.size(1);
  if (num_tokens == 0) return at::zeros({}, probs.options());
  if (global_f.defined()) {
    SY_CHECK(kind == AuxLossKind::kSwitch, "the global-batch aux loss is the switch loss");
    // P over the routed tokens (global_f counts only theirs).
    const at::Tensor p =
        routed.defined() ? (probs * routed.to(probs.scalar_type()).unsqueeze(1)).sum(/*dim=*/0) /
                               routed.sum().to(probs.scalar_type()).clamp_min(1.0)
                         : probs.mean(/*dim=*/0);
    return (global_f.to(probs.scalar_type()) * p).sum() * static_cast<double>(num_experts);
  }
  const int64_t per_group = seq_len > 0 ? seq_len : num_tokens;
  SY_CHECK(num_tokens % per_group == 0, "aux loss per sequence: ", num_tokens,
           " tokens are not a whole number of sequences of ", per_group);
  const int64_t groups = num_tokens / per_group;
  if (routed.defined()) {
    return routed_balance_loss(kind, probs, topk_idx, topk_weights, groups, routed);
  }
  if (kind == AuxLossKind::kSwitch) {
    if (groups == 1) return load_balancing_loss(probs, topk_idx);
    // f[g, i]: share of group g's choices that picked expert i (a constant); P: mean probability.
    at::Tensor counts = at::zeros({groups, num_experts}, probs.options())
                            .scatter_add_(1, topk_idx.reshape({groups, per_group * k}),
                                          at::ones({groups, per_group * k}, probs.options()));
    at::Tensor f = counts / static_cast<double>(per_group * k);
    at::Tensor p = probs.reshape({groups, per_group, num_experts}).mean(/*dim=*/1);
    return (f * p).sum(/*dim=*/-1).mean() * static_cast<double>(num_experts);
  }
  // variance: column sums of the [S, E] gate weights, per group.
  at::Tensor gates = at::zeros({num_tokens, num_experts}, topk_weights.options())
                         .scatter(1, topk_idx, topk_weights);
  at::Tensor c = gates.reshape({groups, per_group, num_experts}).sum(/*dim=*/1);
  at::Tensor dev = c - c.mean(/*dim=*/-1, /*keepdim=*/true);
  return (dev * dev).sum(/*dim=*/-1).mean() / static_cast<double>(num_experts);
}

at::Tensor masked_balance_loss(AuxLossKind kind, const at::Tensor& probs,
                               const at::Tensor& topk_idx, const at::Tensor& topk_weights,
                               const at::Tensor& group, const at::Tensor& allowed,
                               const at::Tensor& routed) {
  const int64_t num_tokens = topk_idx.size(0);
  const int64_t k = topk_idx.size(1);
  const int64_t num_groups = allowed.size(0);
  const int64_t num_experts = allowed.size(1);
  if (num_tokens == 0) return at::zeros({}, probs.options());
  const auto opts = probs.options();
  const at::Tensor allow = allowed.to(opts.dtype());  // [G, E] 0/1
  const at::Tensor m = allow.sum(/*dim=*/1);          // allowed experts per group
  // Each token's weight: 1, or 0 for a token left out of routing.
  const at::Tensor w = routed.defined() ? routed.to(opts.dtype()) : at::ones({num_tokens}, opts);
  const at::Tensor n = at::zeros({num_groups}, opts).index_add_(0, group, w);
  const at::Tensor share =
      routed.defined() ? n / n.sum().clamp_min(1.0) : n / static_cast<double>(num_tokens);
  const at::Tensor n_safe = n.clamp_min(1.0);  // an empty group adds 0
  if (kind == AuxLossKind::kSwitch) {
    // f[g, i]: share of group g's choices that picked i (a constant); P[g, i]: mean probability.
    const at::Tensor cell = (group.unsqueeze(1) * num_experts + topk_idx).reshape(-1);
    const at::Tensor counts =
        at::zeros({num_groups * num_experts}, opts)
            .index_add_(0, cell, w.unsqueeze(1).expand({num_tokens, k}).reshape(-1))
            .view({num_groups, num_experts});
    const at::Tensor f = counts / (n_safe * static_cast<double>(k)).unsqueeze(1);
    const at::Tensor p =
        at::zeros({num_groups, num_experts}, opts)
            .index_add_(0, group, routed.defined() ? probs * w.unsqueeze(1) : probs) /
        n_safe.unsqueeze(1);
    return (share * m * (f * p).sum(/*dim=*/1)).sum();
  }
  at::Tensor gates = at::zeros({num_tokens, num_experts}, topk_weights.options())
                         .scatter(1, topk_idx, topk_weights);
  if (routed.defined()) gates = gates * w.unsqueeze(1).to(gates.scalar_type());
  const at::Tensor c =
      at::zeros({num_groups, num_experts}, gates.options()).index_add_(0, group, gates);
  const at::Tensor mean = (c * allow).sum(/*dim=*/1, /*keepdim=*/true) / m.unsqueeze(1);
  const at::Tensor dev = (c - mean) * allow;
  return (share * (dev * dev).sum(/*dim=*/1) / m).sum();
}

at::Tensor limit_to_groups(const at::Tensor& scores, int64_t groups, int64_t limit) {
  const int64_t num_tokens = scores.size(0);
  const int64_t per_group = scores.size(1) / groups;
  at::Tensor grouped = scores.reshape({num_tokens, groups, per_group});
  // A group's rank: the sum of its (up to) two best scores that are not -inf (task masks set the
  // experts a token may not use to -inf); a group with none is ranked last.
  const at::Tensor best = std::get<0>(grouped.topk(std::min<int64_t>(2, per_group), /*dim=*/-1));
  const at::Tensor usable = at::isfinite(best);
  at::Tensor group_score = at::where(usable, best, at::zeros_like(best)).sum(/*dim=*/-1);
  group_score = group_score.masked_fill(usable.any(/*dim=*/-1).logical_not(),
                                        -std::numeric_limits<float>::infinity());
  at::Tensor chosen = std::get<1>(group_score.topk(limit, /*dim=*/-1));  // [S, limit]
  at::Tensor keep =
      at::zeros({num_tokens, groups}, scores.options().dtype(at::kBool)).scatter(1, chosen, true);
  return grouped
      .masked_fill(keep.logical_not().unsqueeze(-1), -std::numeric_limits<float>::infinity())
      .reshape({num_tokens, -1});
}

at::Tensor router_z_loss(const at::Tensor& logits, const at::Tensor& routed) {
  if (logits.size(0) == 0) return at::zeros({}, logits.options());
  const at::Tensor sq = at::logsumexp(logits, /*dim=*/-1).pow(2);
  if (!routed.defined()) return sq.mean();
  const at::Tensor m = routed.to(sq.scalar_type());
  return (sq * m).sum() / m.sum().clamp_min(1.0);
}

void RouterImpl::set_task_masks(const std::vector<std::vector<int64_t>>& experts,
                                TaskMaskKind kind) {
  const auto num_tasks = static_cast<int64_t>(experts.size());
  at::Tensor allowed = at::zeros({num_tasks, num_experts_}, at::kBool);
  bool limits = false;
  for (int64_t t = 0; t < num_tasks; ++t) {
    const auto& ids = experts[static_cast<size_t>(t)];
    limits = limits || !ids.empty();
    if (ids.empty()) allowed[t].fill_(true);
    for (int64_t id : ids) {
      SY_CHECK(id >= 0 && id < num_experts_, "task mask: expert ", id, " of ", num_experts_);
      allowed[t][id] = true;
    }
  }
  const at::Device device = weight_.device();
  if (kind == TaskMaskKind::kLearned) {
    torch::NoGradGuard no_grad;
    task_gate_ = register_parameter(
        "task_gate", (allowed.to(at::kFloat) * 8.0 - 4.0).to(device));  // +4 allowed, -4 not
  } else if (limits) {
    task_allowed_ = allowed.to(device);
  }
}

bool RouterImpl::uses_fused_kernel(const at::Tensor& x) const {
  return fused_kernels_ && x.is_cuda() && !has_task_masks() &&
         (kind_ == RouterKind::kSwitch || kind_ == RouterKind::kTopK) &&
         score_ == ScoreKind::kSoftmax && !score_bias_.defined() && route_groups_ == 0 &&
         top_k_ <= kernels::kMaxTopK && fused::available();
}

bool RouterImpl::uses_split_gemm(const at::Tensor& x) const {
  return fused_kernels_ && x.is_cuda() && x.scalar_type() == at::kBFloat16 &&
         (kind_ == RouterKind::kSwitch || kind_ == RouterKind::kTopK ||
          kind_ == RouterKind::kTopKLogits || kind_ == RouterKind::kDense) &&
         !(is_training() && jitter_eps_ > 0) && fused::router_gemm_available();
}

RouterOutput RouterImpl::forward(const at::Tensor& x_in, const at::Tensor& token_ids,
                                 at::Generator* gen, int64_t seq_len, const at::Tensor& task_ids,
                                 const at::Tensor& routed_in) {
  // Note [Router precision]: no autocast below; everything in fp32. A bf16 input on CUDA keeps its
  // dtype when the split-bf16 GEMM gives the fp32 logits (Note [Split-bf16 router GEMM]).
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const bool split_gemm = uses_split_gemm(x_in);
  at::Tensor x = split_gemm ? x_in : x_in.to(at::kFloat);
  const int64_t num_tokens = x.size(0);
  SY_CHECK(!routed_in.defined() || routed_in.numel() == num_tokens, "router: ", routed_in.numel(),
           " routed-token flags for ", num_tokens, " tokens");
  const at::Tensor routed =
      routed_in.defined() ? routed_in.reshape(-1).to(x.device(), at::kBool) : at::Tensor();
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
    scale_weights(out);
    return out;
  }

  if (is_training() && jitter_eps_ > 0) {
    at::Tensor u = rand_like_gen(x, gen);
    x = x * (u * (2.0 * jitter_eps_) + (1.0 - jitter_eps_));
  }
  at::Tensor logits =
      split_gemm ? fused::router_logits(x, weight_) : x.matmul(weight_);  // [S, E] fp32
  // Note [Task masks]: `allowed` [S, E] (fixed masks) or the learned gates' log sigmoid.
  at::Tensor allowed, task_log_gate;
  if (has_task_masks()) {
    SY_CHECK(task_ids.defined() && task_ids.numel() == num_tokens,
             "router: data.tasks expert masks need each token's task id");
    if (task_allowed_.defined()) {
      if (task_allowed_.device() != logits.device())
        task_allowed_ = task_allowed_.to(logits.device());
      allowed = task_allowed_.index_select(0, task_ids.reshape(-1));
      logits = logits.masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity());
    } else {
      // Softmax scores: + log sigmoid(gate) on the logits weighs each probability by
      // sigmoid(gate) (then renormalised); sigmoid scores are multiplied by it below.
      task_log_gate = at::log_sigmoid(task_gate_).index_select(0, task_ids.reshape(-1));
      if (score_ != ScoreKind::kSigmoid) logits = logits + task_log_gate;
    }
  }
  if (uses_fused_kernel(x)) {
    // Softmax, top-k, renormalisation and the z-loss's log-sum-exp in one kernel, then both losses
    // by two more (LibTorch's below for no tokens or more experts than the loss kernels take).
    fused::RouterTopK r = fused::router_topk(
        logits, top_k_, kind_ == RouterKind::kTopK && renormalize_ && top_k_ > 1);
    out.probs = r.probs;
    out.topk_weights = r.topk_w;
    out.topk_idx = r.topk_idx;
    if (num_tokens > 0 && num_experts_ <= kernels::kMaxLossExperts && !routed.defined() &&
        aux_kind_ == AuxLossKind::kSwitch &&
        (aux_scope_ == AuxScope::kMicroBatch ||
         (aux_scope_ == AuxScope::kGlobalBatch && !(has_global_f_ && is_training())))) {
      fused::RouterLosses losses = fused::router_losses(r.probs, r.lse, r.topk_idx);
      out.aux_loss = losses.aux;
      out.z_loss = losses.z;
      scale_weights(out);
      return out;
    }
  } else {
    // Sigmoid scores: P of the aux loss is each token's scores over their sum. (Masked logits
    // are -inf, so their sigmoid is 0; a learned gate multiplies by sigmoid(gate).)
    at::Tensor sig = score_ == ScoreKind::kSigmoid ? at::sigmoid(logits) : at::Tensor();
    if (sig.defined() && task_log_gate.defined()) sig = sig * at::exp(task_log_gate);
    out.probs = sig.defined() ? sig / sig.sum(/*dim=*/-1, /*keepdim=*/true)
                              : at::softmax(logits, /*dim=*/-1);

    switch (kind_) {
      case RouterKind::kSwitch:
      case RouterKind::kTopK: {
        const at::Tensor scores = sig.defined() ? sig : out.probs;
        at::Tensor w, idx;
        if (!score_bias_.defined() && route_groups_ == 0 && !allowed.defined()) {
          std::tie(w, idx) = scores.topk(top_k_, /*dim=*/-1);
        } else {
          // The bias and the group limit decide which experts, never how much they weigh.
          at::Tensor choice = scores.detach();
          if (score_bias_.defined()) choice = choice + score_bias_;
          if (allowed.defined()) {
            choice =
                choice.masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity());
          }
          if (route_groups_ > 0)
            choice = limit_to_groups(choice, route_groups_, route_group_limit_);
          idx = std::get<1>(choice.topk(top_k_, /*dim=*/-1));
          w = scores.gather(1, idx);
        }
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
      case RouterKind::kExpertChoice:
        // The experts choose (MoELayerImpl::forward_expert_choice): no per-token choices here.
        out.topk_idx = at::empty({num_tokens, 0}, x.options().dtype(at::kLong));
        out.topk_weights = at::empty({num_tokens, 0}, out.probs.options());
        break;
      case RouterKind::kDense:
        out.topk_weights = out.probs;
        out.topk_idx = at::arange(num_experts_, x.options().dtype(at::kLong))
                           .expand({num_tokens, num_experts_})
                           .contiguous();
        break;
      default: SY_THROW("unreachable router kind");
    }
  }
  // global_batch: f of the whole step's batch, in training once the counts are set.
  const bool global = aux_scope_ == AuxScope::kGlobalBatch && has_global_f_ && is_training();
  const bool plain =
      aux_kind_ == AuxLossKind::kSwitch && !global && aux_scope_ != AuxScope::kSequence;
  if (allowed.defined()) {
    // Per task (micro_batch) or per sequence, each over its allowed experts.
    const at::Tensor tasks = task_ids.reshape(-1);
    at::Tensor group, group_allowed;
    if (aux_scope_ == AuxScope::kSequence) {
      const int64_t per = seq_len > 0 ? seq_len : num_tokens;
      SY_CHECK(num_tokens % per == 0, "aux loss per sequence: ", num_tokens,
               " tokens are not a whole number of sequences of ", per);
      group = at::arange(num_tokens, tasks.options()).div(per, "floor");
      group_allowed = task_allowed_.index_select(0, tasks.view({-1, per}).select(1, 0));
    } else {
      group = tasks;
      group_allowed = task_allowed_;
    }
    out.aux_loss = masked_balance_loss(aux_kind_, out.probs, out.topk_idx, out.topk_weights, group,
                                       group_allowed, routed);
  } else {
    out.aux_loss = plain ? load_balancing_loss(out.probs, out.topk_idx, routed)
                         : balance_loss(aux_kind_, out.probs, out.topk_idx, out.topk_weights,
                                        aux_scope_ == AuxScope::kSequence ? seq_len : 0,
                                        global ? global_f_ : at::Tensor(), routed);
  }
  out.z_loss = router_z_loss(logits, routed);
  scale_weights(out);
  return out;
}

void RouterImpl::set_global_counts(const at::Tensor& counts) {
  if (!counts.defined()) {
    has_global_f_ = false;
    return;
  }
  SY_CHECK(counts.numel() == num_experts_, "router: expected ", num_experts_,
           " global counts, got ", counts.numel());
  const at::Tensor total = counts.to(at::kDouble);
  const at::Tensor f = (total / total.sum().clamp_min(1.0)).to(at::kFloat);
  if (!global_f_.defined() || global_f_.device() != weight_.device()) {
    global_f_ = at::empty({num_experts_}, weight_.options().dtype(at::kFloat));
  }
  global_f_.copy_(f);
  has_global_f_ = true;
}

void RouterImpl::scale_weights(RouterOutput& out) const {
  if (route_scale_ != 1.0) out.topk_weights = out.topk_weights * route_scale_;
}

}  // namespace sy
