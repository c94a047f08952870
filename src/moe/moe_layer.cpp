#include "moe/moe_layer.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <tuple>

#include <torch/torch.h>

#include "common/error.h"
#include "moe/alltoall.h"
#include "moe/dedup_dispatch.h"
#include "moe/fused.h"
#include "moe/init.h"
#include "moe/phases.h"
#include "moe/side_stream.h"
#include "parallel/watchdog.h"

namespace sy {

const char* path_name(MoePath path) {
  switch (path) {
    case MoePath::kPadded: return "padded";
    case MoePath::kGrouped: return "grouped";
    case MoePath::kDropless: return "dropless";
    case MoePath::kFusedPadded: return "fused padded";
    case MoePath::kFusedGrouped: return "fused grouped";
    case MoePath::kExpertChoice: return "expert choice";
  }
  return "?";
}

// moe.expert_gemm auto, capacity mode: with the fused kernels and a capacity factor above 1 on
// one EP rank, the grouped GEMM over the kept rows (the padded buffer has `factor` times the
// routed rows); otherwise the padded bmm, which LibTorch's grouped GEMM does not beat at a
// factor of 1 (C2) nor without the fused kernels (bench/results). Dropless runs grouped where
// available (forward_grouped decides; experts->set_grouped_kernel follows the config). The
// fused kernels serve several EP ranks in capacity mode only (padded buffers).
// Note [Trimmed expert buffer] (moe.expert_gemm trimmed, and auto's choice on one EP rank): the
// padded paths size their [E, C, H] buffer by the capacity C, which the capacity factor puts
// above the mean load (C3: 960 rows an expert for a mean of 768), and the bmm computes every
// padding row. Each forward can instead read the kept loads on the host (one device sync; an
// all-reduce of the maximum over the EP group, so that every rank cuts the same buffer) and cut
// the buffer to C_b rows an expert, the largest kept load rounded up to a multiple of 8, at most
// C (dropless: no bound, so a dropless layer can run padded too). Every kept choice still has its
// slot (slot < kept load <= C_b), the rows past C_b held only zeros, and the plan, the drops and
// the losses do not change: only the GEMMs' and the exchanges' sizes do (as Tutel's capacity
// chosen per step). The outputs equal the untrimmed ones up to the GEMMs' float rounding.
// C3 on an H200: the six expert GEMMs over 832 rows an expert took 2.65 ms, over the kept rows
// by the grouped GEMM 2.92 ms, over C = 960 rows 3.27 ms (bench/results). So auto, on CUDA with
// the fused kernels and one EP rank, trims when its buffer holds at most kTrimmedRowsLimit times
// the kept rows and runs the grouped GEMM otherwise (skewed loads). It reads the loads only with
// a capacity factor above 1 or dropless (at a factor of 1 the largest load fills C), and never
// while a CUDA graph is captured (train.cuda_graph: static shapes, no host sync; validate()
// refuses trimmed with it).
// Note [Permute beside the host sync]
// Around the trimmed buffer's host sync the GPU runs out of work: between the router and the
// sync the host sets the pace (each operator it launches there is a kernel of a few
// microseconds), and after it the GPU waits until the woken host has launched the permute. So,
// with the fused kernels on one EP rank, the layer launches the permute before the sync, on the
// side stream (Note [Shared experts on a side stream]), for which the sync, a copy on the current
// stream, does not wait: into a buffer of B rows an expert, B = kTrimmedRowsLimit times the mean
// load rounded up to 8, at most C (rows_beside_sync()), by the dispatch index of B rows an
// expert, in which kept choices of slots >= B take no row. After the sync, when the trimmed
// buffer's C_b is at most B, the experts read the first C_b rows of each expert's B in place
// (fused::trim_rows: batches B rows apart, which cuBLAS's strided batched GEMM takes as they are),
// and the combine and the permute's backward use the dispatch index of the E * C_b rows: every
// kept slot is below C_b, so both buffers hold the same rows at the same place within each
// expert, and only the GEMM's stride between the experts differs. auto takes the trimmed buffer
// only where E * C_b <= kTrimmedRowsLimit * kept rows, so there (with the grouped GEMM
// available) C_b <= B always. Otherwise (the grouped GEMM after uneven loads, or a trimmed buffer
// asked for or without the grouped GEMM and a largest load above B) the buffer is dropped and the
// layer permutes again, one permute's time lost. The buffer keeps B rows an expert while
// autograd holds it (C3: B 928, C_b about 816 at random routing, 29 MB more a layer in bf16) and
// the permute also writes B - C_b zero rows an expert.
bool reads_loads(const PathFacts& f) {
  if (f.capturing) return false;
  if (f.expert_gemm == ExpertGemm::kTrimmed) return true;
  return f.expert_gemm == ExpertGemm::kAuto && f.fused_io && f.one_rank &&
         (f.capacity == 0 || f.factor > 1.0);
}

int64_t rows_beside_sync(const PathFacts& f, int64_t choices) {
  if (!reads_loads(f) || !f.fused_io || !f.one_rank || f.num_experts <= 0) return 0;
  const auto mean_bound = static_cast<int64_t>(std::ceil(
      kTrimmedRowsLimit * static_cast<double>(choices) / static_cast<double>(f.num_experts)));
  const int64_t rows = std::max<int64_t>(8, (mean_bound + 7) / 8 * 8);
  return f.capacity > 0 ? std::min(rows, f.capacity) : rows;
}

MoePath choose_path(const PathFacts& f) {
  const bool dropless = f.capacity == 0;
  if (f.trimmed_capacity > 0) {
    const bool trim = f.expert_gemm == ExpertGemm::kTrimmed || !f.grouped_gemm_available ||
                      static_cast<double>(f.num_experts * f.trimmed_capacity) <=
                          kTrimmedRowsLimit * static_cast<double>(f.kept_rows);
    if (trim) return f.fused_io ? MoePath::kFusedPadded : MoePath::kPadded;
    // auto, loads too skewed for the padded bmm: grouped, as below.
  }
  const bool auto_grouped = f.expert_gemm == ExpertGemm::kAuto && f.fused_io && f.factor > 1.0 &&
                            f.grouped_gemm_available;
  const bool grouped =
      dropless || (f.one_rank && (f.expert_gemm == ExpertGemm::kGrouped || auto_grouped));
  if (f.fused_io && (f.one_rank || !dropless)) {
    return grouped ? MoePath::kFusedGrouped : MoePath::kFusedPadded;
  }
  if (dropless) return MoePath::kDropless;
  return grouped ? MoePath::kGrouped : MoePath::kPadded;
}

MoELayerImpl::MoELayerImpl(const MoeConfig& cfg, int64_t d_model, int64_t d_ff, bool bias,
                           const InitSpec& init, at::Generator& dense_gen, int64_t layer_index,
                           CommPtr ep_group)
    : cfg_(cfg), layer_index_(layer_index), ep_(std::move(ep_group)) {
  if (!ep_) ep_ = make_self_communicator();
  const int64_t ep_size = ep_->size();
  SY_CHECK(cfg.num_experts % ep_size == 0, "moe.num_experts (", cfg.num_experts,
           ") must be divisible by parallel.ep_size (", ep_size, ")");
  num_local_ = cfg.num_experts / ep_size;
  router = register_module("router", Router(cfg, d_model, init_std(init, d_model), dense_gen));
  experts =
      register_module("experts", Experts(cfg.activation, d_model, d_ff, bias,
                                         ep_->rank() * num_local_, num_local_, init, layer_index));
  experts->set_grouped_kernel(cfg.expert_gemm != ExpertGemm::kBatched);
  experts->set_fused_kernels(cfg.fused_kernels);
  if (cfg.shared_experts > 0) {
    // The shared experts as one FFN of their summed width (as DeepSeekMoE implements them),
    // replicated: its weights come from the generator of global expert id num_experts, the same on
    // every rank and distinct from every routed expert's.
    const int64_t shared_ff = cfg.shared_experts * (cfg.shared_d_ff > 0 ? cfg.shared_d_ff : d_ff);
    shared = register_module(
        "shared", Experts(cfg.activation, d_model, shared_ff, bias,
                          /*first_expert=*/cfg.num_experts, /*num_local=*/1, init, layer_index));
    shared->set_grouped_kernel(false);
    shared->set_fused_kernels(cfg.fused_kernels);
  }
}

MoeOutput MoELayerImpl::forward(const at::Tensor& x, const at::Tensor& token_ids,
                                at::Generator* gen, int64_t seq_len, const at::Tensor& task_ids,
                                const at::Tensor& routed_in) {
  SY_CHECK(x.dim() == 2, "MoE layer: expected [S, H] input, got ", x.sizes());
  const int64_t num_tokens = x.size(0);
  SY_CHECK(!routed_in.defined() || routed_in.numel() == num_tokens,
           "MoE layer: ", routed_in.numel(), " routed-token flags for ", num_tokens, " tokens");
  // Note [Padding out of routing]: the tokens to route, on x's device.
  const at::Tensor routed =
      routed_in.defined() ? routed_in.reshape(-1).to(x.device(), at::kBool) : at::Tensor();
  // Every token through the shared experts, beside the routed path (Note [Shared experts on a
  // side stream]): forked from here, started and joined by add_shared() after the routed path.
  ForkPoint shared_fork;
  if (shared) shared_fork = fork_point(x);
  RouterOutput route = router->forward(x, token_ids, gen, seq_len, task_ids, routed);
  phase_mark("router");
  // The experts' compute dtype (the router above read x in fp32).
  auto compute_input = [&] { return x.to(autocast_matmul_dtype(x)); };
  // The shared experts' output in x's dtype, started beside the routed path and joined (undefined
  // without shared experts); called once, after the routed experts have been enqueued.
  auto shared_output = [&]() -> at::Tensor {
    if (!shared) return {};
    Pending shared_y =
        start_beside(std::move(shared_fork), SideStream::kCompute, [&](const at::Tensor& in) {
          const int64_t hidden = in.size(1);
          return shared->forward(in.to(autocast_matmul_dtype(in)).view({1, num_tokens, hidden}))
              .view({num_tokens, hidden});
        });
    phase_mark("shared experts");
    return join(std::move(shared_y)).to(x.scalar_type());
  };
  auto add_shared = [&](const at::Tensor& routed_y) {
    const at::Tensor y = routed_y.to(x.scalar_type());
    return shared ? y + shared_output() : y;
  };
  const double factor = is_training() ? cfg_.capacity_factor : cfg_.eval_capacity_factor;
  if (router->kind() == RouterKind::kExpertChoice) {
    // k choices per token on average: each expert takes the capacity of k * S choices, at most S.
    const int64_t capacity = std::min(
        num_tokens,
        compute_capacity(factor, cfg_.top_k, num_tokens, cfg_.num_experts, cfg_.min_capacity));
    MoeOutput out;
    out.y = add_shared(run_expert_choice(x, route.probs, capacity, routed));
    out.aux_loss = route.aux_loss;  // 0: every expert is full by construction
    out.z_loss = route.z_loss;
    stats_.path = MoePath::kExpertChoice;
    stats_.capacity = capacity;
    stats_.aux_loss = route.aux_loss.detach();
    stats_.z_loss = route.z_loss.detach();
    return out;
  }
  const int64_t top_k = route.topk_idx.size(1);
  const int64_t capacity =
      compute_capacity(factor, top_k, num_tokens, cfg_.num_experts, cfg_.min_capacity);
  const bool fused = cfg_.fused_kernels && x.is_cuda() && fused::available();
  DispatchPlan plan = make_plan(route.topk_idx, route.topk_weights, cfg_.num_experts, capacity,
                                cfg_.priority == SlotPriority::kScore, fused, routed);
  // Gate weight of each choice, in plan order: choice-major over the plan's token order (its
  // first S entries), a gather and a transpose.
  auto plan_weights = [&] {
    return route.topk_weights.index_select(0, plan.token.narrow(0, 0, num_tokens))
        .t()
        .reshape({-1});
  };
  // The fused permute and combine read and write the tokens in x's dtype.
  PathFacts facts;
  facts.fused_io = fused && fused::supports(x.scalar_type()) &&
                   fused::supports(autocast_matmul_dtype(x)) && fused::supports_width(x.size(1));
  facts.one_rank = ep_->size() == 1;
  facts.capacity = capacity;
  facts.factor = factor;
  facts.expert_gemm = cfg_.expert_gemm;
  facts.grouped_gemm_available = experts->grouped_gemm_available(x);
  facts.capturing = fused && fused::capturing(x);
  facts.num_experts = cfg_.num_experts;
  // Note [Permute beside the host sync]: a buffer of B rows an expert, written while the host
  // waits for the loads; the side stream reads beside_index until the join.
  Pending permuting;
  fused::DispatchIndex beside_index;
  // Joined by run_fused(), or here when it was not called or the forward unwinds: before
  // beside_index is freed.
  struct JoinAtExit {
    Pending& work;
    ~JoinAtExit() {
      if (!work.value.defined()) return;
      try {
        join(std::move(work));
      } catch (...) {  // a CUDA error: the next CUDA call reports it
      }
    }
  } join_at_exit{permuting};
  if (reads_loads(facts)) {
    const int64_t beside_rows = rows_beside_sync(facts, plan.expert.numel());
    if (beside_rows > 0) {
      DispatchPlan beside_plan = plan;
      beside_plan.capacity = beside_rows;  // kept choices of later slots get no row
      beside_index = fused::dispatch_rows(beside_plan, num_tokens, cfg_.num_experts * beside_rows);
      const at::ScalarType dtype = autocast_matmul_dtype(x);
      permuting = start_beside(x, SideStream::kCompute, [&](const at::Tensor& in) {
        torch::NoGradGuard no_grad;  // trim_rows() makes the autograd node
        return fused::permute(in.detach(), beside_index, dtype);
      });
    }
    std::tie(facts.trimmed_capacity, facts.kept_rows) = read_loads(plan);
  }
  auto permuted_beside = [&permuting]() -> at::Tensor {
    return permuting.value.defined() ? join(std::move(permuting)) : at::Tensor();
  };
  const MoePath path = choose_path(facts);
  // The padded paths' rows per expert: trimmed, else the capacity.
  const int64_t rows_per_expert = facts.trimmed_capacity > 0 ? facts.trimmed_capacity : capacity;
  const bool padded = path == MoePath::kFusedPadded || path == MoePath::kPadded;
  stats_.buffer_capacity = padded ? rows_per_expert : 0;
  MoeOutput out;
  switch (path) {
    case MoePath::kFusedPadded:
    case MoePath::kFusedGrouped:
      // The combine adds the shared experts' output in its pass.
      out.y = run_fused(x, plan, route.topk_weights, path == MoePath::kFusedGrouped,
                        rows_per_expert, shared_output, permuted_beside);
      break;
    case MoePath::kDropless: out.y = run_dropless(compute_input(), plan, plan_weights()); break;
    case MoePath::kGrouped:
      out.y = run_capacity_grouped(compute_input(), plan, plan_weights());
      break;
    case MoePath::kPadded:
      out.y = run_capacity(compute_input(), plan, plan_weights(), rows_per_expert);
      break;
    case MoePath::kExpertChoice:  // returned above: choose_path() never picks it
      SY_THROW("MoE layer: the expert-choice path is not chosen by choose_path()");
  }
  stats_.path = path;
  const bool fused_path = path == MoePath::kFusedPadded || path == MoePath::kFusedGrouped;
  if (!fused_path) out.y = add_shared(out.y);
  out.aux_loss = route.aux_loss;
  out.z_loss = route.z_loss;

  stats_.tokens_per_expert = plan.tokens_per_expert;
  // Routed choices that were not kept (a token left out of routing drops nothing).
  stats_.dropped = plan.tokens_per_expert.sum() - plan.kept.sum();
  stats_.num_choices = plan.expert.numel();
  stats_.capacity = capacity;
  stats_.aux_loss = route.aux_loss.detach();
  stats_.z_loss = route.z_loss.detach();
  stats_.plan_token = plan.token;
  stats_.plan_expert = plan.expert;
  stats_.plan_kept = plan.kept;
  return out;
}

at::Tensor MoELayerImpl::run_expert_choice(const at::Tensor& x, const at::Tensor& probs_in,
                                           int64_t capacity, const at::Tensor& routed) {
  const int64_t num_tokens = x.size(0), hidden = x.size(1), E = cfg_.num_experts;
  // Tokens left out of routing score 0: taken last, with weight 0.
  const at::Tensor probs =
      routed.defined() ? probs_in * routed.unsqueeze(1).to(probs_in.scalar_type()) : probs_in;
  const auto long_opts = probs.options().dtype(at::kLong);
  // [E, C]: expert e's best tokens, best first, and their probabilities (the gate weights).
  at::Tensor weight, token;
  if (capacity > 0) {
    std::tie(weight, token) = probs.t().topk(capacity, /*dim=*/1);
  } else {
    weight = at::empty({E, 0}, probs.options());
    token = at::empty({E, 0}, long_opts);
  }
  const at::Tensor rows = token.reshape({-1});  // expert-major: the padded buffer's order
  stats_.tokens_per_expert = at::full({E}, capacity, long_opts);
  stats_.dropped = at::zeros({}, long_opts);
  stats_.num_choices = E * capacity;
  stats_.plan_token = rows;
  stats_.plan_expert = at::arange(E, long_opts).repeat_interleave(capacity);
  stats_.plan_kept = at::ones({E * capacity}, probs.options().dtype(at::kBool));
  const at::Tensor xc = x.to(autocast_matmul_dtype(x));
  phase_mark("plan + permute");
  const at::Tensor out =
      run_experts_padded(xc.index_select(0, rows), /*output_bias=*/true,
                         dedups_dispatch() ? rows : at::Tensor(), num_tokens);  // [E*C, H]
  const at::Tensor weighted = out * weight.reshape({-1, 1}).to(out.scalar_type());
  at::Tensor y = at::zeros({num_tokens, hidden}, weighted.options()).index_add(0, rows, weighted);
  phase_mark("unpermute + combine");
  return y;
}

// Note [Chunked all-to-all] (moe.a2a_chunks = n > 1, EP group of several ranks): each exchange
// of the layer runs as n smaller ones, so that on CUDA the experts start on the first chunk while
// the next is still in flight, and each chunk's combine overlaps the next chunk's experts:
//
//   comm stream:  dispatch 0 | dispatch 1 | ... | dispatch n-1 | combine 0 | combine 1 | ...
//   main stream:              experts 0    | experts 1 | ...        | experts n-1 |
//
// With n > 1, all exchanges of the layer (the dropless count exchange too) are started on the
// device's one communication stream (side_stream.h), in the same order on every rank, so the
// collectives pair up as NCCL requires and never run beside each other; each waits for the main
// stream's work that produced its rows, and the main stream waits for each one before it reads
// the rows. With n = 1 they run on the current stream, where nothing could overlap them.
// Autograd runs each exchange's backward on the stream of its forward, so the backward overlaps
// in the same way. Without CUDA (CPU, in-process ranks) the chunks run in turn,
// which is how the tests compare them with one exchange.
//
// A chunk is a slice of every expert's rows, so every rank still sends to every rank in each
// chunk and no expert waits for all of the dispatch. Capacity mode: chunk j holds slots
// [C*j/n, C*(j+1)/n) of every expert's C (n is capped at C). Dropless: the block of rows this
// rank sends to each expert is cut the same way by its own count c, [c*j/n, c*(j+1)/n); the
// receiver cuts the counts it received by the same rule, so both sides agree on every chunk's
// splits without another exchange. Every row meets the same expert as without chunks, so the
// plans, drops and losses are the same; the outputs and gradients are equal up to float rounding
// (a GEMM over fewer rows may take another kernel path, and the expert weight gradients are
// summed chunk by chunk; tests/moe/alltoall_test.cpp, `switchyard verify`).

namespace {

// Rows [lo, hi) of chunk `j` of `n` cut from `count` rows.
int64_t chunk_start(int64_t count, int64_t j, int64_t n) { return count * j / n; }

// The label of chunk j of n of an exchange ("moe block 0: dispatch, chunk 2 of 4"; no suffix
// when there is one chunk, so one exchange reads as before).
std::string chunk_label(int64_t layer, const char* what, int64_t j, int64_t n) {
  return n == 1 ? str("moe block ", layer, ": ", what)
                : str("moe block ", layer, ": ", what, ", chunk ", j + 1, " of ", n);
}

}  // namespace

bool MoELayerImpl::dedups_dispatch() const {
  return cfg_.dedup_dispatch && two_level_groups(*ep_) != nullptr;
}

std::pair<int64_t, int64_t> MoELayerImpl::read_loads(const DispatchPlan& plan) {
  int64_t most = 0, kept_rows = 0;
  if (ep_->size() == 1) {
    // The E routed counts in one copy (the sync), capped and reduced on the host: the host
    // launches every operator before the sync while the GPU waits for them: one operator here
    // against seven (five kernels) for the reduction on the device.
    const at::Tensor host = plan.tokens_per_expert.to(at::kCPU, at::kLong).contiguous();
    const int64_t* count = host.data_ptr<int64_t>();
    for (int64_t e = 0; e < host.numel(); ++e) {
      const int64_t kept = plan.capacity > 0 ? std::min(count[e], plan.capacity) : count[e];
      most = std::max(most, kept);
      kept_rows += kept;
    }
  } else {
    const at::Tensor kept = kept_choices_per_expert(plan);
    at::Tensor largest =
        kept.numel() > 0 ? kept.max().reshape({1}) : at::zeros({1}, kept.options());
    ep_->all_reduce(largest, ReduceOp::kMax);
    const at::Tensor host = at::cat({largest, kept.sum().reshape({1})}).to(at::kCPU);  // the sync
    most = host[0].item<int64_t>();
    kept_rows = host[1].item<int64_t>();
  }
  int64_t rows = std::max<int64_t>(8, (most + 7) / 8 * 8);
  if (plan.capacity > 0) rows = std::min(rows, plan.capacity);
  return {rows, kept_rows};
}

at::Tensor MoELayerImpl::slot_tokens(const DispatchPlan& plan, int64_t rows_per_expert) const {
  if (!dedups_dispatch()) return {};
  const int64_t rows = cfg_.num_experts * rows_per_expert;
  // Dropped choices write the extra row `rows`, cut off below.
  const at::Tensor dest = at::where(plan.kept, plan.expert * rows_per_expert + plan.slot,
                                    at::full_like(plan.slot, rows));
  return at::full({rows + 1}, -1, plan.token.options())
      .index_copy_(0, dest, plan.token)
      .narrow(0, 0, rows);
}

at::Tensor MoELayerImpl::run_experts_padded(const at::Tensor& send, bool output_bias,
                                            const at::Tensor& row_token, int64_t num_tokens) {
  // send: [E * C, H], expert-major; experts [r * El, (r + 1) * El) live on EP rank r. On one EP
  // rank also [E, C, H], with any stride between the experts (fused::trim_rows).
  const int64_t ep_size = ep_->size();
  const int64_t hidden = send.size(-1);
  SY_CHECK(send.dim() == 2 || (send.dim() == 3 && ep_size == 1),
           "MoE layer: the experts' rows must be [E * C, H] with several EP ranks, got ",
           send.sizes());
  if (ep_size == 1) {
    phase_mark("plan + permute");
    const at::Tensor rows = send.dim() == 3 ? send : send.view({num_local_, -1, hidden});
    at::Tensor y = experts->forward(rows, output_bias).reshape({-1, hidden});
    phase_mark("experts");
    return y;
  }
  const int64_t E = cfg_.num_experts;
  const int64_t capacity = send.size(0) / E;
  const int64_t chunks = std::max<int64_t>(1, std::min(cfg_.a2a_chunks, capacity));
  // Chunk j: slots [start(j), start(j + 1)) of every expert, [E * c_j, H], expert-major.
  auto slots = [&](int64_t j) {
    return chunk_start(capacity, j + 1, chunks) - chunk_start(capacity, j, chunks);
  };
  // One exchange each way runs on the current stream, as it always has: nothing to overlap.
  const SideStream stream = chunks > 1 ? SideStream::kComm : SideStream::kCurrent;
  auto exchange = [&](const char* what, int64_t j) {
    return [this, what, j, chunks](const at::Tensor& rows) {
      CollectiveLabel label(chunk_label(layer_index_, what, j, chunks));
      return all_to_all(rows, *ep_, {}, {});
    };
  };
  // The dispatch of chunk j's rows, each token once per node where row_token is given.
  const TwoLevelGroups* two_level = row_token.defined() ? two_level_groups(*ep_) : nullptr;
  auto dispatch = [&](int64_t j) -> std::function<at::Tensor(const at::Tensor&)> {
    if (two_level == nullptr) return exchange("dispatch", j);
    const at::Tensor tokens = chunks == 1
                                  ? row_token
                                  : row_token.view({E, capacity})
                                        .narrow(1, chunk_start(capacity, j, chunks), slots(j))
                                        .reshape({-1});
    return [this, j, chunks, tokens, num_tokens, two_level](const at::Tensor& rows) {
      CollectiveLabel label(chunk_label(layer_index_, "dispatch", j, chunks));
      DedupStats counted;
      at::Tensor out = dedup_dispatch(rows, tokens, num_tokens, *two_level, &counted);
      stats_.rows_across_nodes += counted.rows_across;
      stats_.flat_rows_across_nodes += counted.flat_rows_across;
      return out;
    };
  };
  stats_.rows_across_nodes = stats_.flat_rows_across_nodes = 0;
  phase_mark("plan + permute");
  std::vector<Pending> arrived;  // [ep * El * c_j, H] each, source-major
  for (int64_t j = 0; j < chunks; ++j) {
    const at::Tensor part = chunks == 1 ? send
                                        : send.view({E, capacity, hidden})
                                              .narrow(1, chunk_start(capacity, j, chunks), slots(j))
                                              .reshape({-1, hidden});
    arrived.push_back(start_beside(part, stream, dispatch(j)));
  }
  phase_mark("all-to-all dispatch");
  std::vector<Pending> returned;  // [E * c_j, H] each, expert-major
  for (int64_t j = 0; j < chunks; ++j) {
    const int64_t c = slots(j);
    at::Tensor local = join(std::move(arrived[j]))
                           .view({ep_size, num_local_, c, hidden})
                           .transpose(0, 1)
                           .reshape({num_local_, ep_size * c, hidden});
    at::Tensor y = experts->forward(local);  // [El, ep * c, H]
    at::Tensor back = y.view({num_local_, ep_size, c, hidden})
                          .transpose(0, 1)
                          .reshape({-1, hidden});  // [ep * El * c, H], destination-major
    phase_mark("experts");
    returned.push_back(start_beside(back, stream, exchange("combine", j)));
  }
  std::vector<at::Tensor> parts;
  for (int64_t j = 0; j < chunks; ++j) {
    parts.push_back(join(std::move(returned[j])).view({E, slots(j), hidden}));
  }
  phase_mark("all-to-all combine");
  return chunks == 1 ? parts[0].view({-1, hidden}) : at::cat(parts, /*dim=*/1).view({-1, hidden});
}

at::Tensor MoELayerImpl::run_capacity(const at::Tensor& x, const DispatchPlan& plan,
                                      const at::Tensor& weights, int64_t rows_per_expert) {
  const int64_t hidden = x.size(1);
  const int64_t rows = cfg_.num_experts * rows_per_expert;
  // Dropped choices go to a trash row `rows`, which is never sent and reads back as zero, so
  // they contribute nothing and receive no gradient (no host sync to filter them out).
  at::Tensor dest = at::where(plan.kept, plan.expert * rows_per_expert + plan.slot,
                              at::full_like(plan.slot, rows));
  at::Tensor routed = gather_routed(x, plan);  // [S*k, H]
  // In place into a fresh buffer (autograd records the copy; no clone of the zeros).
  at::Tensor buffer = at::zeros({rows + 1, hidden}, x.options()).index_copy_(0, dest, routed);
  at::Tensor y = run_experts_padded(buffer.narrow(0, 0, rows), /*output_bias=*/true,
                                    slot_tokens(plan, rows_per_expert), x.size(0));  // [E*C, H]
  at::Tensor y_padded = at::constant_pad_nd(y, {0, 0, 0, 1});  // the trash row reads zero
  return combine(y_padded.index_select(0, dest), weights, plan.token, x.size(0),
                 plan.tokens_in_order);
}

at::Tensor MoELayerImpl::run_fused(const at::Tensor& x, const DispatchPlan& plan,
                                   const at::Tensor& topk_weights, bool grouped,
                                   int64_t rows_per_expert,
                                   const std::function<at::Tensor()>& residual,
                                   const std::function<at::Tensor()>& permuted_beside) {
  // The permute and the combine as one kernel each (Note [Fused MoE kernels]): x is read in its
  // own dtype and written to the buffer in the experts' one, and the output comes back in x's
  // dtype. Rows: the padded [E * C] buffer of run_capacity, or (grouped, one EP rank) the kept
  // choices packed by expert as in run_capacity_grouped, which in dropless mode are all of them.
  at::Tensor ends;
  fused::DispatchIndex index;
  at::Tensor written;  // [E * B, H] from beside the host sync, or undefined
  if (grouped) {
    permuted_beside();  // joined and dropped: the grouped GEMM reads packed rows, permuted below
    const at::Tensor kept_per_expert = kept_choices_per_expert(plan);
    ends = kept_per_expert.cumsum(0);
    index = fused::dispatch_rows(plan, x.size(0), plan.expert.numel(), ends - kept_per_expert);
  } else {
    // Expert e's rows start at e * C, or, in a trimmed buffer (Note [Trimmed expert buffer]),
    // at e * C_b: the same index with C_b for the capacity (every kept slot is below C_b).
    DispatchPlan rows_plan = plan;
    rows_plan.capacity = rows_per_expert;
    index = fused::dispatch_rows(rows_plan, x.size(0), cfg_.num_experts * rows_per_expert);
    // Joined after the index kernel, which need not wait for it; dropped when the largest load
    // is above B.
    written = permuted_beside();
    if (written.defined() && written.size(0) < index.src.numel()) written = at::Tensor();
  }
  // [R, H], or [E, C_b, H] over the buffer written beside the host sync.
  const at::Tensor buffer = written.defined() ? fused::trim_rows(x, written, rows_per_expert, index)
                                              : fused::permute(x, index, autocast_matmul_dtype(x));
  // On one EP rank the combine adds the experts' second bias (one pass fewer over their output).
  const bool bias_in_combine = ep_->size() == 1 && experts->b2.defined();
  at::Tensor y;
  if (grouped) {
    phase_mark("plan + permute");
    y = experts->forward_grouped(buffer, ends,
                                 !bias_in_combine);  // rows past the kept ones: never read
    phase_mark("experts");
  } else {
    y = run_experts_padded(buffer, !bias_in_combine, slot_tokens(plan, rows_per_expert), x.size(0));
  }
  at::Tensor out = fused::combine(y, index, topk_weights, x.scalar_type(),
                                  bias_in_combine ? experts->b2.squeeze(1) : at::Tensor(),
                                  grouped ? ends : at::Tensor(), residual());
  phase_mark("unpermute + combine");
  return out;
}

at::Tensor MoELayerImpl::run_capacity_grouped(const at::Tensor& x, const DispatchPlan& plan,
                                              const at::Tensor& weights) {
  const int64_t hidden = x.size(1);
  const int64_t n = plan.expert.numel();  // S*k: room for every choice, kept or not
  // Expert e's kept choices take rows [start_e, start_e + kept_e) in slot order; dropped choices
  // go to a trash row n that the experts never see. Rows from the kept total up to n are padding.
  const at::Tensor kept_per_expert = kept_choices_per_expert(plan);
  const at::Tensor ends = kept_per_expert.cumsum(0);
  const at::Tensor starts = ends - kept_per_expert;
  const at::Tensor dest = at::where(plan.kept, starts.index_select(0, plan.expert) + plan.slot,
                                    at::full_like(plan.slot, n));
  at::Tensor routed = gather_routed(x, plan);  // [S*k, H]
  at::Tensor buffer = at::zeros({n + 1, hidden}, x.options()).index_copy(0, dest, routed);
  phase_mark("plan + permute");
  at::Tensor y = experts->forward_grouped(buffer.narrow(0, 0, n), ends);  // [S*k, H]
  phase_mark("experts");
  // Dropped choices read a clamped row and are masked out.
  const at::Tensor rows = at::where(plan.kept.unsqueeze(1),
                                    y.index_select(0, dest.clamp_max(std::max<int64_t>(n - 1, 0))),
                                    at::zeros({}, y.options()));
  return combine(rows, weights, plan.token, x.size(0), plan.tokens_in_order);
}

// Unpermute and combine: out[t] = sum over t's choices of gate weight * expert output, in the
// gate weights' dtype (fp32); forward() casts to the input's dtype.
at::Tensor MoELayerImpl::combine(const at::Tensor& rows, const at::Tensor& weights,
                                 const at::Tensor& token, int64_t num_tokens,
                                 bool tokens_in_order) {
  at::Tensor contrib = rows * weights.unsqueeze(1);
  at::Tensor out;
  if (tokens_in_order && num_tokens > 0) {
    // rows are [k, S, H] choice-major: the sum over the k choices, with no scatter.
    const int64_t k = contrib.size(0) / num_tokens;
    out = k == 1 ? contrib : contrib.view({k, num_tokens, contrib.size(1)}).sum(/*dim=*/0);
  } else {
    out = at::zeros({num_tokens, rows.size(1)}, contrib.options()).index_add_(0, token, contrib);
  }
  phase_mark("unpermute + combine");
  return out;
}

at::Tensor MoELayerImpl::gather_routed(const at::Tensor& x, const DispatchPlan& plan) const {
  const int64_t num_tokens = x.size(0);
  if (!plan.tokens_in_order || num_tokens == 0) return x.index_select(0, plan.token);
  // A repeat, whose backward sums the k copies (index_select's backward scatter-adds).
  const int64_t k = plan.token.numel() / num_tokens;
  return k == 1 ? x : x.repeat({k, 1});
}

namespace {

// One exchange of the dropless layer over an EP group of `ep` ranks holding `num_local` experts
// each: chunk j of n (Note [Chunked all-to-all]) of the rows this rank sends to each global
// expert (`counts`, [ep * El]) and of those it receives from each (source, local expert)
// (`recv_counts`, [ep * El]).
struct DroplessChunk {
  std::vector<int64_t> send_splits, recv_splits;  // per rank
  std::vector<int64_t> rows;          // the rows of the expert-major send order this chunk sends
  std::vector<int64_t> regroup;       // received (source, local expert)-major -> (local, source)
  std::vector<int64_t> local_counts;  // rows per local expert, after the regroup
};

DroplessChunk dropless_chunk(const int64_t* counts, const int64_t* recv_counts, int64_t ep,
                             int64_t num_local, int64_t j, int64_t n) {
  auto piece = [&](int64_t c) { return chunk_start(c, j + 1, n) - chunk_start(c, j, n); };
  DroplessChunk ch;
  ch.send_splits.assign(ep, 0);
  ch.recv_splits.assign(ep, 0);
  ch.local_counts.assign(num_local, 0);
  int64_t start = 0;  // of expert g's block in the send order
  for (int64_t g = 0; g < ep * num_local; ++g) {
    const int64_t from = start + chunk_start(counts[g], j, n);
    for (int64_t i = 0; i < piece(counts[g]); ++i) ch.rows.push_back(from + i);
    ch.send_splits[g / num_local] += piece(counts[g]);
    ch.recv_splits[g / num_local] += piece(recv_counts[g]);
    start += counts[g];
  }
  std::vector<int64_t> block_start(ep * num_local);  // in this chunk's received rows
  int64_t offset = 0;
  for (int64_t i = 0; i < ep * num_local; ++i) {
    block_start[i] = offset;
    offset += piece(recv_counts[i]);
  }
  ch.regroup.reserve(offset);
  for (int64_t l = 0; l < num_local; ++l) {
    for (int64_t s = 0; s < ep; ++s) {
      const int64_t m = piece(recv_counts[s * num_local + l]);
      for (int64_t i = 0; i < m; ++i) ch.regroup.push_back(block_start[s * num_local + l] + i);
      ch.local_counts[l] += m;
    }
  }
  return ch;
}

at::Tensor index_tensor(const std::vector<int64_t>& v, const at::Device& device) {
  return at::tensor(v, at::TensorOptions().dtype(at::kLong)).to(device);
}

}  // namespace

at::Tensor MoELayerImpl::run_dropless(const at::Tensor& x, const DispatchPlan& plan,
                                      const at::Tensor& weights) {
  const int64_t ep_size = ep_->size();
  // Group the choices by expert, keeping their processing order within an expert; choices that
  // are not kept (tokens left out of routing: dropless keeps every other one) sort last, past
  // every expert's rows.
  const at::Tensor key =
      at::where(plan.kept, plan.expert, at::full_like(plan.expert, cfg_.num_experts));
  at::Tensor order = std::get<1>(key.sort(/*stable=*/true, /*dim=*/0, false));
  at::Tensor token = plan.token.index_select(0, order);  // expert-major

  at::Tensor y;  // [S*k, H], expert-major like `token`
  if (ep_size == 1) {
    at::Tensor routed = x.index_select(0, token);
    phase_mark("plan + permute");
    // Group ends on the device: no host sync with the grouped GEMM.
    y = experts->forward_grouped(routed, plan.tokens_per_expert.cumsum(0));
    phase_mark("experts");
  } else {
    // Dropless needs the counts on the host to size the exchange (one sync per layer).
    at::Tensor counts_cpu = plan.tokens_per_expert.to(at::kCPU);
    const int64_t* counts = counts_cpu.data_ptr<int64_t>();
    // 1. Exchange counts: recv_counts[s * El + l] = rows source s sends to local expert l.
    // With chunks, every exchange of the EP group goes through the communication stream, so
    // its NCCL calls keep one order on one stream (Note [Chunked all-to-all]).
    const int64_t chunks = cfg_.a2a_chunks;
    const SideStream stream = chunks > 1 ? SideStream::kComm : SideStream::kCurrent;
    const at::Tensor recv_counts_t =
        join(start_beside(plan.tokens_per_expert, stream, [&](const at::Tensor& counts_here) {
          CollectiveLabel label(str("moe block ", layer_index_, ": dispatch counts"));
          at::Tensor received = at::empty_like(counts_here);
          ep_->all_to_all_single(received, counts_here, {}, {});
          return received;
        }));
    at::Tensor recv_counts_cpu = recv_counts_t.to(at::kCPU);
    const int64_t* recv_counts = recv_counts_cpu.data_ptr<int64_t>();
    std::vector<DroplessChunk> plans;
    std::vector<int64_t> send_order;  // chunk-major: the rows of chunk 0, then chunk 1, ...
    for (int64_t j = 0; j < chunks; ++j) {
      plans.push_back(dropless_chunk(counts, recv_counts, ep_size, num_local_, j, chunks));
      if (chunks > 1) {
        send_order.insert(send_order.end(), plans[j].rows.begin(), plans[j].rows.end());
      }
    }
    const at::Tensor chunk_order =
        chunks == 1 ? at::Tensor() : index_tensor(send_order, x.device());
    // The kept rows lead `token` (the others sorted last): only they are sent.
    int64_t kept_rows = 0;
    for (int64_t g = 0; g < cfg_.num_experts; ++g) kept_rows += counts[g];
    at::Tensor routed = x.index_select(
        0, chunks == 1 ? token.narrow(0, 0, kept_rows) : token.index_select(0, chunk_order));
    phase_mark("plan + permute");
    // 2. Exchange rows, chunk by chunk: received rows are (source, local expert)-major.
    std::vector<Pending> arrived;
    int64_t offset = 0;
    for (int64_t j = 0; j < chunks; ++j) {
      const DroplessChunk& ch = plans[j];
      const int64_t rows = static_cast<int64_t>(ch.rows.size());
      arrived.push_back(
          start_beside(routed.narrow(0, offset, rows), stream, [&, j](const at::Tensor& part) {
            CollectiveLabel label(chunk_label(layer_index_, "dispatch", j, chunks));
            return all_to_all(part, *ep_, plans[j].send_splits, plans[j].recv_splits);
          }));
      offset += rows;
    }
    phase_mark("all-to-all dispatch");
    // 3. Regroup to (local expert, source)-major for the experts, and back afterwards; then the
    // combine exchange returns the rows in the order they were sent.
    std::vector<Pending> returned;
    for (int64_t j = 0; j < chunks; ++j) {
      const DroplessChunk& ch = plans[j];
      const at::Tensor regroup_idx = index_tensor(ch.regroup, x.device());
      const at::Tensor recv = join(std::move(arrived[j]));
      at::Tensor grouped =
          experts->forward_grouped(recv.index_select(0, regroup_idx), ch.local_counts);
      at::Tensor y_recv = at::zeros_like(grouped).index_copy(0, regroup_idx, grouped);
      phase_mark("experts");
      returned.push_back(start_beside(y_recv, stream, [&, j](const at::Tensor& part) {
        CollectiveLabel label(chunk_label(layer_index_, "combine", j, chunks));
        return all_to_all(part, *ep_, plans[j].recv_splits, plans[j].send_splits);
      }));
    }
    std::vector<at::Tensor> parts;
    for (Pending& p : returned) parts.push_back(join(std::move(p)));
    phase_mark("all-to-all combine");
    // Back in `token` order: row chunk_order[i] of the expert-major order is row i of the chunks;
    // rows past the kept ones are zero.
    if (chunks > 1) {
      y = at::zeros({token.size(0), x.size(1)}, parts[0].options())
              .index_copy(0, chunk_order, at::cat(parts, /*dim=*/0));
    } else {
      y = kept_rows == token.size(0)
              ? parts[0]
              : at::constant_pad_nd(parts[0], {0, 0, 0, token.size(0) - kept_rows});
    }
  }
  return combine(y, weights.index_select(0, order), token, x.size(0), /*tokens_in_order=*/false);
}

void update_score_biases(const std::vector<MoELayer>& layers, const at::Tensor& load,
                         Communicator& world, double rate) {
  if (layers.empty()) return;
  SY_CHECK(load.dim() == 2 && load.size(0) == static_cast<int64_t>(layers.size()),
           "update_score_biases: expected the loads of ", layers.size(), " layers, got ",
           load.sizes());
  at::Tensor total = load.to(at::kLong).contiguous();  // exact counts, whatever the world size
  if (world.size() > 1) {
    CollectiveLabel label("moe score bias: global load");
    world.all_reduce(total, ReduceOp::kSum);
  }
  const at::Tensor counts = total.to(at::kDouble);
  const at::Tensor delta =
      (rate * at::sign(counts.mean(/*dim=*/1, /*keepdim=*/true) - counts)).to(at::kFloat);
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < layers.size(); ++i) {
    const at::Tensor& bias = layers[i]->router->score_bias();
    SY_CHECK(bias.defined(), "update_score_biases: MoE layer ", layers[i]->layer_index(),
             " has no score bias (moe.balance is not bias or aux+bias)");
    bias.add_(delta[static_cast<int64_t>(i)].to(bias.device()));
  }
}

MoELayer make_moe_layer(const Config& cfg, CommPtr ep) {
  const auto seed = static_cast<uint64_t>(cfg.train.seed);
  at::Generator dense_gen = make_cpu_generator(mix_seed(seed, 0xD0));
  const int64_t d_ff = cfg.moe.d_ff > 0 ? cfg.moe.d_ff : cfg.model.d_ff;
  MoELayer layer(cfg.moe, cfg.model.d_model, d_ff, cfg.model.bias,
                 make_init_spec(cfg.model.init, seed), dense_gen, /*layer_index=*/0, std::move(ep));
  if (!cfg.data.tasks.empty())
    layer->router->set_task_masks(task_expert_lists(cfg), cfg.moe.task_masks);
  return layer;
}

std::vector<std::vector<int64_t>> task_expert_lists(const Config& cfg) {
  std::vector<std::vector<int64_t>> lists;
  for (const TaskConfig& t : cfg.data.tasks) lists.push_back(t.experts);
  return lists;
}

}  // namespace sy
