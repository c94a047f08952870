// The Mixture-of-Experts FFN layer with expert parallelism:
//
//   router -> plan (slots, drops) -> permute into [E, C, H] -> all-to-all over the EP group
//   -> local experts on [E_local, ep_size * C, H] -> all-to-all back -> unpermute + combine.
//
// Tokens are permuted in the experts' compute dtype (bf16 under autocast), so the dispatch moves
// half the bytes; the router and the combine weights stay fp32. On one EP rank with
// moe.expert_gemm grouped the experts see only the kept rows, packed by expert, in one grouped
// GEMM (no padding to the capacity); with moe.expert_gemm trimmed (and auto's choice on one EP
// rank) the padded buffer is cut each step to the largest kept load (Note [Trimmed expert buffer]
// in moe_layer.cpp). On CUDA the router's softmax/top-k, the slot count, the
// permute, the combine and the experts' bias + activation are fused kernels (Note [Fused MoE
// kernels] in moe/fused.h; moe.fused_kernels).
//
// With capacity_factor <= 0 (dropless) counts are exchanged first and both all-to-alls use
// variable splits. With one EP rank the exchanges are skipped. Note [EP invariance]: on N EP
// ranks the layer equals, for each rank's tokens, the same layer on one process holding all
// experts (outputs, gradients, losses and dropped choices); tests/moe and `switchyard verify`
// check this.
//
// Note [Padding out of routing] (forward's `routed`; moe.route_padding false in encoder-decoder
// models): the tokens whose flag is false (PAD positions) keep their router scores and top-k
// choices, shapes stay static, but they are left out of everything the routing decides: their
// choices take no slot (Note [Slot order] counts the routed tokens' choices only) and are never
// kept, so no expert computes them and their routed output is zero (the shared experts still
// run on every token); they are not counted as dropped, nor in tokens_per_expert (the load, the
// score-bias update and the global-batch counts), nor in the aux and z losses, whose means run
// over the routed tokens (per sequence: a sequence without one is left out). The capacity is
// still computed from all S tokens of the micro-batch (the buffer's static shape). Expert-choice
// routing gives them score 0: an expert takes one only when it has room beyond every routed
// token it scores above 0, and with weight 0. The same layer on the routed tokens alone gives
// their outputs when nothing is dropped (tests/moe/padding_test.cpp).
#pragma once

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "config/config.h"
#include "moe/experts.h"
#include "moe/init.h"
#include "moe/plan.h"
#include "moe/router.h"
#include "parallel/communicator.h"

namespace sy {

// How a forward runs the experts (choose_path() picks; Note [Fused MoE kernels] for the fused ones):
//   kPadded        LibTorch ops, the padded [E, C, H] capacity buffer (or trimmed), one bmm
//   kGrouped       LibTorch ops, only the kept rows packed by expert, grouped GEMM (one EP rank)
//   kDropless      LibTorch ops, exact counts exchanged, no capacity
//   kFusedPadded   fused permute/combine kernels around the padded (or trimmed) bmm
//   kFusedGrouped  fused kernels around the grouped GEMM (dropless, or capacity on one EP rank)
enum class MoePath { kPadded, kGrouped, kDropless, kFusedPadded, kFusedGrouped, kExpertChoice };
const char* path_name(MoePath path);  // "padded", "fused grouped", ...

// What choose_path() decides from: facts about this forward and the config.
struct PathFacts {
  // Fused kernels on, available, for the input and compute dtypes and the model width.
  bool fused_io = false;
  bool one_rank = true;  // the EP group has one rank
  int64_t capacity = 0;  // per expert; 0: dropless
  double factor = 1.0;   // the capacity factor in effect
  ExpertGemm expert_gemm = ExpertGemm::kAuto;
  bool grouped_gemm_available = false;  // LibTorch has a grouped GEMM for this device and dtype
  bool capturing = false;  // a CUDA graph is being captured: no host sync (static shapes)
  int64_t num_experts = 0;
  // From the step's loads, read when reads_loads() says so (Note [Trimmed expert buffer]): the
  // rows per expert of the trimmed buffer (the same on every rank of the EP group) and this
  // rank's kept choices; 0: not read.
  int64_t trimmed_capacity = 0;
  int64_t kept_rows = 0;
};
// Whether this forward reads its loads on the host (one sync) to size a trimmed buffer.
bool reads_loads(const PathFacts& facts);
MoePath choose_path(const PathFacts& facts);
// The rows per expert B of the buffer this forward permutes into before it reads the loads (Note
// [Permute beside the host sync]), for `choices` (S * k) routed or not; 0: none. Where it reads
// them, with the fused kernels, on one EP rank: kTrimmedRowsLimit times the mean load of the
// choices, rounded up to 8, and at most the capacity.
int64_t rows_beside_sync(const PathFacts& facts, int64_t choices);
// auto's choice between the trimmed bmm and the grouped GEMM: trimmed while its buffer holds at
// most this many times the kept rows (the grouped GEMM's rate over cuBLAS's batched one, about
// 582 against 696 TFLOP/s for C3's six GEMMs on an H200: docs/bench.md).
constexpr double kTrimmedRowsLimit = 1.2;

// What the last forward did on this rank: detached tensors, read without a host sync until
// someone asks for the values (at log intervals).
struct MoeStats {
  at::Tensor tokens_per_expert;     // [E] int64: choices routed to each expert, before drops
  at::Tensor dropped;               // [] int64: choices dropped
  int64_t num_choices = 0;          // S * k (routed or not: tokens_per_expert sums the routed)
  int64_t capacity = 0;             // per expert per source rank; 0 when dropless
  MoePath path = MoePath::kPadded;  // how the layer ran
  // Rows per expert of the padded buffer (padded paths): the capacity, or fewer when trimmed
  // (Note [Trimmed expert buffer]); 0 for the grouped and dropless paths.
  int64_t buffer_capacity = 0;
  at::Tensor aux_loss, z_loss;  // [] fp32
  // moe.dedup_dispatch: rows the last forward's dispatch sent to other nodes, and what the flat
  // exchange would have sent (Note [Node-deduplicated dispatch]); 0 and 0 otherwise.
  int64_t rows_across_nodes = 0, flat_rows_across_nodes = 0;
  // The plan, for checks of dropped sets: [S*k] each, in Note [Slot order] order.
  at::Tensor plan_token, plan_expert, plan_kept;
};

struct MoeOutput {
  at::Tensor y;         // [S, H]
  at::Tensor aux_loss;  // [] fp32, differentiable
  at::Tensor z_loss;    // [] fp32, differentiable
};

class MoELayerImpl : public torch::nn::Module {
 public:
  // ep_group: the expert-parallel group (size 1: all experts local). The layer holds experts
  // [ep_rank * E / ep_size, (ep_rank + 1) * E / ep_size). Router weights come from `dense_gen`.
  MoELayerImpl(const MoeConfig& cfg, int64_t d_model, int64_t d_ff, bool bias, const InitSpec& init,
               at::Generator& dense_gen, int64_t layer_index, CommPtr ep_group);

  // x: [S, H]; token_ids: [S] (for hash routing; may be undefined otherwise); gen: this rank's
  // CPU generator for routing noise (nullptr: default generators).
  // seq_len: tokens per sequence (x holds S / seq_len whole sequences), for the sequence-wise aux
  // loss (moe.aux_loss_scope sequence); 0: x is one sequence. task_ids: [S] int64, each token's
  // task for data.tasks expert masks (Note [Task masks] in router.h); undefined: none. The masks
  // act in the router, on the source rank, so the dispatch carries the choices they allowed.
  // routed: [S] bool, the tokens to route (Note [Padding out of routing]); undefined: all.
  MoeOutput forward(const at::Tensor& x, const at::Tensor& token_ids = {},
                    at::Generator* gen = nullptr, int64_t seq_len = 0,
                    const at::Tensor& task_ids = {}, const at::Tensor& routed = {});

  const MoeStats& last_stats() const { return stats_; }
  int64_t num_experts() const { return cfg_.num_experts; }
  int64_t layer_index() const { return layer_index_; }

  Router router{nullptr};
  Experts experts{nullptr};
  Experts shared{nullptr};  // moe.shared_experts > 0: one FFN of their summed width, replicated

 private:
  // rows_per_expert: the padded buffer's rows per expert (the capacity, or a trimmed count).
  at::Tensor run_capacity(const at::Tensor& x, const DispatchPlan& plan, const at::Tensor& weights,
                          int64_t rows_per_expert);
  // moe.router expert_choice: expert e takes its `capacity` best tokens by probability.
  at::Tensor run_expert_choice(const at::Tensor& x, const at::Tensor& probs, int64_t capacity,
                               const at::Tensor& routed);
  at::Tensor run_dropless(const at::Tensor& x, const DispatchPlan& plan, const at::Tensor& weights);
  // Capacity mode on one EP rank with moe.expert_gemm grouped: only the kept rows, grouped.
  // The fused permute and combine (CUDA, moe.fused_kernels) around the padded bmm, or (grouped)
  // the grouped GEMM over the kept rows; x uncast. `residual`, called right before the combine,
  // gives a tensor [S, H] that the combine adds in its pass (the shared experts' output), or an
  // undefined one. `permuted_beside`, called once (it joins the side stream's work): the padded
  // buffer of B rows an expert, [E * B, H], written while the host read the loads (Note [Permute
  // beside the host sync]), or an undefined tensor.
  at::Tensor run_fused(const at::Tensor& x, const DispatchPlan& plan,
                       const at::Tensor& topk_weights, bool grouped, int64_t rows_per_expert,
                       const std::function<at::Tensor()>& residual,
                       const std::function<at::Tensor()>& permuted_beside);
  // The rows per expert of a trimmed buffer and the kept rows, from the plan's loads (one host
  // sync; an all-reduce over the EP group when it has several ranks).
  std::pair<int64_t, int64_t> read_loads(const DispatchPlan& plan);
  at::Tensor run_capacity_grouped(const at::Tensor& x, const DispatchPlan& plan,
                                  const at::Tensor& weights);
  // [E*C, H] -> [E*C, H]; output_bias false (one EP rank only): without the experts' b2. On one
  // EP rank `send` may also be [E, C, H] with any stride between the experts (fused::trim_rows).
  // row_token ([E*C], the token each row holds, -1 for an empty slot; see slot_tokens()) lets a
  // two-level EP group with moe.dedup_dispatch send each token once per node (Note
  // [Node-deduplicated dispatch]); undefined: every row is sent.
  at::Tensor run_experts_padded(const at::Tensor& send, bool output_bias = true,
                                const at::Tensor& row_token = {}, int64_t num_tokens = 0);
  // The token of each row of the padded [E * C] buffer, -1 for an empty slot, when the dispatch
  // is deduplicated (moe.dedup_dispatch on a two-level EP group); undefined otherwise.
  at::Tensor slot_tokens(const DispatchPlan& plan, int64_t rows_per_expert) const;
  // moe.dedup_dispatch on a two-level EP group (the capacity-mode paths pass row tokens).
  bool dedups_dispatch() const;
  // The plan's rows of x, choice-major (plan.token order).
  at::Tensor gather_routed(const at::Tensor& x, const DispatchPlan& plan) const;
  // tokens_in_order (DispatchPlan): rows are [k, S] choice-major over tokens in order, and the
  // combine is a sum over the k choices instead of a scatter-add.
  at::Tensor combine(const at::Tensor& rows, const at::Tensor& weights, const at::Tensor& token,
                     int64_t num_tokens, bool tokens_in_order);

  MoeConfig cfg_;
  int64_t layer_index_;
  CommPtr ep_;
  int64_t num_local_;
  MoeStats stats_;
};
TORCH_MODULE(MoELayer);

// Note [Score bias balancing] (moe.balance bias, aux+bias; DeepSeek-V3's aux-loss-free
// balancing): after each applied optimizer step, every layer's router bias b moves by
// rate * sign(mean_i load_i - load_i), where load [L, E] is this rank's count of choices per
// expert over the step's micro-batches (before drops), summed here over all ranks of `world` in
// one all-reduce. Every rank therefore sees the global batch's load and applies the same update,
// whatever the layout (EP, DP, gradient accumulation); the counts are integers, so the sum is
// exact.
void update_score_biases(const std::vector<MoELayer>& layers, const at::Tensor& load,
                         Communicator& world, double rate);

// The config's MoE layer (layer index 0) with `ep` as its expert-parallel group, its weights
// from train.seed whatever the sharding (Note [Sharding-independent init]), and the task masks
// of data.tasks; used by `switchyard verify` and `switchyard bench layer`.
MoELayer make_moe_layer(const Config& config, CommPtr ep);

// data.tasks' expert lists, one per task (empty: every expert), for Router::set_task_masks.
std::vector<std::vector<int64_t>> task_expert_lists(const Config& config);

}  // namespace sy
