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
//   expert_choice  each expert takes its C best tokens by softmax score, C the capacity of k
//                choices per token (Zhou et al. 2022); the layer does the choosing. It looks
//                across all tokens of a micro-batch, later positions included, so in a causal
//                LM it is for study, not generation (`generate` refuses it)
// moe.jitter_eps multiplies the router input by U(1-eps, 1+eps) in training (Switch).
//
// The switch and topk routers also take (docs/moe.md):
//   moe.score sigmoid    scores sigmoid(logits) instead of softmax; the kept k renormalized to
//                        sum 1 (moe.renormalize, k > 1); P of the aux loss is scores / their sum
//   moe.route_scale      gate weights multiplied by it, after renormalization
//   moe.balance bias     a per-expert bias (buffer "score_bias") added to the scores for the
//                        choice of experts only, never to the gate weights (DeepSeek-V3);
//                        moved after each optimizer step by update_score_biases()
//   moe.route_groups     experts in G equal groups; a token chooses from the route_group_limit
//                        groups whose two best (biased) scores sum highest
// The aux loss (moe.aux_loss, moe.aux_loss_scope) is balance_loss() below.
//
// Note [Task masks] (data.tasks experts, moe.task_masks; docs/tasks.md): with task ids [S] a
// token's scores are limited to its task's experts before the top-k. Fixed masks add -inf to
// the logits of the other experts (softmax scores renormalise over the allowed ones; sigmoid
// scores of the others are 0) and keep them out of the choice even with a score bias or group
// limit, so no choice ever names an expert outside the mask; the aux loss is then counted per
// task (micro_batch scope) or per sequence, each group over its own m allowed experts with m in
// place of E (so it is 1 when balanced within the mask), weighted by its share of the tokens
// (masked_balance_loss()). Learned masks: a parameter task_gate [tasks, E], started at +4 for a
// task's experts and -4 for the others (every expert +4 for a task without a list), adds
// log sigmoid(gate) to the logits (multiplies sigmoid scores by sigmoid(gate)), a soft mask that
// trains; the aux loss is then the plain one. The fused router kernel is not used with masks.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <ATen/core/Generator.h>

#include <vector>

#include "config/config.h"

namespace sy {

struct RouterOutput {
  at::Tensor topk_idx;      // [S, k] int64: chosen experts, best first
  at::Tensor topk_weights;  // [S, k] fp32 gate weights (differentiable)
  // [S, E] fp32: each token's scores normalized to sum 1 (the softmax of the clean logits, or
  // sigmoid scores over their sum); the P of the aux loss. Undefined for hash/random.
  at::Tensor probs;
  at::Tensor aux_loss;  // scalar: balance_loss() (Switch: E * sum_i f_i * P_i)
  at::Tensor z_loss;    // scalar: mean_s logsumexp(logits_s)^2 (ST-MoE)
};

class RouterImpl : public torch::nn::Module {
 public:
  // Weights drawn from N(0, init_std) with `init_gen` (Note [Sharding-independent init]).
  RouterImpl(const MoeConfig& cfg, int64_t d_model, double init_std, at::Generator& init_gen);

  // x: [S, H]. token_ids: [S] int64 (needed by "hash" only). gen: CPU generator for noise,
  // jitter and random routing on CPU tensors (CUDA tensors use the device's default generator).
  // seq_len: tokens per sequence, for moe.aux_loss_scope sequence (0: S, one sequence).
  // task_ids: [S] int64, each token's task (Note [Task masks]); undefined: no task masks.
  // routed: [S] bool, the tokens that count (Note [Padding out of routing] in moe_layer.h):
  // the aux and z losses are taken over them alone; undefined: every token.
  RouterOutput forward(const at::Tensor& x, const at::Tensor& token_ids, at::Generator* gen,
                       int64_t seq_len = 0, const at::Tensor& task_ids = {},
                       const at::Tensor& routed = {});

  // data.tasks: the experts each task may use (empty: all). Fixed masks that allow every expert
  // to every task change nothing and are dropped; learned ones register the parameter
  // task_gate. Call before the optimizer is built.
  void set_task_masks(const std::vector<std::vector<int64_t>>& experts, TaskMaskKind kind);
  bool has_task_masks() const { return task_allowed_.defined() || task_gate_.defined(); }

  int64_t top_k() const { return top_k_; }
  RouterKind kind() const { return kind_; }
  // [E] fp32, moe.balance bias or aux+bias only (else undefined): added to the scores for the
  // choice of experts. A buffer: saved in checkpoints and model files, equal on every rank.
  const at::Tensor& score_bias() const { return score_bias_; }
  // moe.aux_loss_scope global_batch (Note [Global-batch aux loss] in src/train/balance.h): the
  // choices per expert [E] counted over the step's global batch, which f of the aux loss is
  // then taken from in training. Copied into a tensor the router keeps (a captured CUDA graph
  // reads the new counts); undefined `counts` forgets them (f from the micro-batch again).
  void set_global_counts(const at::Tensor& counts);
  // Whether forward takes the fused kernel for x (Note [Fused MoE kernels]): moe.fused_kernels,
  // a CUDA input, a "switch" or "topk" router with softmax scores and neither a score bias nor
  // route groups, top-k <= 8, and a build with the kernels.
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
  ScoreKind score_;
  double route_scale_;
  int64_t route_groups_, route_group_limit_;
  AuxLossKind aux_kind_;
  AuxScope aux_scope_;
  at::Tensor score_bias_;  // [E], bias balancing only
  at::Tensor global_f_;    // [E] fp32, share of the global batch's choices (global_batch scope)
  bool has_global_f_ = false;

  at::Tensor task_allowed_;  // [tasks, E] bool, fixed masks that limit some task
  at::Tensor task_gate_;     // [tasks, E] fp32 parameter, learned masks

  void scale_weights(RouterOutput& out) const;  // moe.route_scale, after the aux loss
  at::Tensor weight_;                           // [H, E]
  at::Tensor noise_weight_;                     // [H, E], noisy_topk only
};
TORCH_MODULE(Router);

// Switch load-balancing loss: E * sum_i f_i * P_i, f_i = share of the S*k choices that picked
// expert i (no gradient), P_i = mean router probability of expert i. 1.0 when balanced.
// The losses below take an optional `routed` [S] bool: only those tokens count (their choices in
// f, their probabilities in P, their number in every mean), as if the others were not there; a
// sequence without one is left out of the mean over sequences. Undefined: every token.
at::Tensor load_balancing_loss(const at::Tensor& probs, const at::Tensor& topk_idx,
                               const at::Tensor& routed = {});

// The aux loss moe.aux_loss asks for, over groups of seq_len tokens (moe.aux_loss_scope
// sequence; 0: all S tokens are one group), averaged over the groups:
//   switch    E * sum_i f_i P_i per group (f: share of the group's choices, no gradient)
//   variance  sum_i (c_i - mean c)^2 / E, c_i = sum over the group's tokens of expert i's gate
//             weight (topk_weights scattered to [S, E])
// With one group, switch is load_balancing_loss(). global_f [E] (optional, switch only): f taken
// from it instead of the tokens' own choices (moe.aux_loss_scope global_batch).
at::Tensor balance_loss(AuxLossKind kind, const at::Tensor& probs, const at::Tensor& topk_idx,
                        const at::Tensor& topk_weights, int64_t seq_len,
                        const at::Tensor& global_f = {}, const at::Tensor& routed = {});

// The aux loss under fixed task masks (Note [Task masks]): tokens in groups (`group` [S] int64 in
// [0, num_groups)), group g with the experts allowed[g] ([G, E] bool, m_g of them). Per group,
// switch is m_g * sum_i f_i P_i and variance sum over allowed i of (c_i - mean c)^2 / m_g; the
// groups are weighted by their share of the S tokens. With one group allowing every expert these
// are balance_loss()'s.
at::Tensor masked_balance_loss(AuxLossKind kind, const at::Tensor& probs,
                               const at::Tensor& topk_idx, const at::Tensor& topk_weights,
                               const at::Tensor& group, const at::Tensor& allowed,
                               const at::Tensor& routed = {});

// Group-limited choice (moe.route_groups, moe.route_group_limit): `scores` [S, E] with the
// experts outside each token's `limit` best groups set to -inf. A group's rank is the sum of its
// two best scores (its best one for groups of one expert), leaving out -inf ones (experts a
// task mask excludes); a group with no finite score ranks last.
at::Tensor limit_to_groups(const at::Tensor& scores, int64_t groups, int64_t limit);
// Router z-loss: mean over tokens (the routed ones) of logsumexp(logits)^2.
at::Tensor router_z_loss(const at::Tensor& logits, const at::Tensor& routed = {});

// Random helpers that honour an explicit CPU generator (so in-process ranks are reproducible)
// and fall back to the device's default generator for CUDA tensors.
at::Tensor randn_like_gen(const at::Tensor& like, at::Generator* gen);
at::Tensor rand_like_gen(const at::Tensor& like, at::Generator* gen);

}  // namespace sy
