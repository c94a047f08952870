// Note [Fused MoE kernels]
// On CUDA (moe.fused_kernels, on by default) the MoE layer replaces chains of small LibTorch ops
// with one kernel each (src/moe/kernels/moe_kernels.cu), each with a hand-written backward:
//   - router: softmax, top-k, renormalisation and the log-sum-exp of the z-loss, one warp per
//     token ("switch" and "topk" routers, k <= 8);
//   - plan: each choice's arrival slot and the per-expert counts, one block per expert scanning
//     the choices in processing order (exact integers, the same as arrival_slots' two ways), then
//     the dispatch indices below in one pass over the choices;
//   - permute: the padded [E * C, H] buffer written row by row from x (a warp a row), cast on
//     the fly, zeros in empty slots (no zero fill, no scatter); its backward sums each token's k
//     rows (no atomics);
//   - combine: out[t] = sum over kept choices of gate weight * expert row, accumulated in fp32
//     and written in the output dtype; on one EP rank it also adds the experts' second bias (the
//     experts then skip it); each token's k rows and bias groups are looked up once. Backward,
//     one pass over the buffer rows (a warp a row): each row's gradient by the inverse map and,
//     from the same reads, the gate weight's gradient as one dot product; the second bias's
//     gradient from the gate matrix (Note [Output-bias gradient from the gate matrix]) or, for
//     fp32/fp16 outputs, as column sums over row chunks (the bias + activation backward's
//     sum-only mode);
//   - experts: bias + activation (gelu, relu) after a plain bmm, instead of baddbmm's broadcast
//     copy of the bias and a separate activation; with the grouped GEMM (moe.expert_gemm
//     grouped), bias + activation per group of rows, which also zeroes the padding rows the
//     grouped GEMM leaves unwritten, and the bias gradient as one sum per group (no atomics).
// Dispatch indices are token-major: dest[t, c] is the buffer row of token t's c-th choice, or R
// (the row count) when dropped; src[r] = t * k + c is the choice that fills row r, or -1.
// Everything else (GEMMs, all-to-all, losses from the fused outputs) stays LibTorch. Each fused
// path is compared with the plain one in tests/moe/fused_cuda_test.cpp.
#pragma once

#include <cstdint>
#include <initializer_list>

#include <ATen/core/Tensor.h>

#include "moe/kernels/moe_kernels.h"
#include "moe/plan.h"

namespace sy::fused {

// Whether this build has the kernels (a CUDA build). Every function below needs CUDA tensors.
bool available();
// Whether the current stream of `on`'s CUDA device is capturing a CUDA graph (so the layer may
// not read device values on the host); false on the CPU and in builds without the kernels.
bool capturing(const at::Tensor& on);
// The storage dtypes the permute, combine and bias + activation kernels take: float32, bfloat16
// and float16 (not float64: the layer keeps LibTorch ops for it).
inline bool supports(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}
// The row widths the permute and combine kernels are used for: multiples of 4, whose rows move
// in packs of 4 or 8 elements; the layer keeps LibTorch ops for other model widths.
inline bool supports_width(int64_t hidden) { return hidden % 4 == 0; }

// arrival_slots (plan.h) by the plan kernel.
ArrivalSlots arrival_slots(const at::Tensor& expert, int64_t num_experts);

struct RouterTopK {
  at::Tensor probs;     // [S, E] softmax of the logits
  at::Tensor topk_w;    // [S, k] the k largest probabilities (renormalised when asked)
  at::Tensor topk_idx;  // [S, k] int64, descending by probability
  at::Tensor lse;       // [S] log-sum-exp of each token's logits
};
// Differentiable in probs, topk_w and lse; logits [S, E] fp32.
RouterTopK router_topk(const at::Tensor& logits, int64_t k, bool renorm);

// The aux and z losses (router.h) from router_topk's probs, lse and topk_idx, S > 0 and E <=
// kernels::kMaxLossExperts (the router uses LibTorch ops above), by two kernels
// (kernels::router_losses) instead of about ten LibTorch ops; differentiable in probs (its
// gradient is one [E] row broadcast over the tokens, which the router's backward reads as such)
// and lse.
struct RouterLosses {
  at::Tensor aux, z;  // fp32 scalars
};
RouterLosses router_losses(const at::Tensor& probs, const at::Tensor& lse,
                           const at::Tensor& topk_idx);

// Note [Split-bf16 router GEMM]
// The router's logits are fp32 (Note [Router precision] in router.cpp), but an fp32 GEMM runs
// on the CUDA cores, a tenth of the tensor cores' rate: for C2 the router's three fp32 GEMMs took
// 0.2 ms of a 2.4 ms layer. When x is bf16 the product needs no fp32 GEMM to be exact to fp32:
// w = hi + mid + lo exactly with three bf16 parts (kernels::split_bf16), each product of a bf16
// x and a bf16 part is exact in fp32, and tensor cores accumulate in fp32, so
//   logits = x @ [hi | mid | lo]  (one bf16 GEMM with an fp32 output, N = 3E), summed by thirds,
// is the fp32 GEMM up to the order of the fp32 additions. Backward splits the fp32 gradient g
// the same way: grad_w = x^T @ [g_hi | g_mid | g_lo] (exact products again), and grad_x, which is
// bf16 like x, = g_hi w_hi + g_hi w_mid + g_mid w_hi + g_lo w_hi as one GEMM with K = 4E (the
// terms left out are below 2^-16 of sum |g w|, far under bf16's rounding). tests/moe/
// fused_cuda_test.cpp compares all three with fp64 references.

// Note [Output-bias gradient from the gate matrix]
// The combine adds the second expert bias b[g] to every row of group g (expert g) before it
// weights the rows, so grad_b[g] = sum over the rows r of group g of w[s(r)] grad_out[t(r)].
// Summing grad_y's rows per group reads all S * k rows again (C3 on an H100: 80 + 12 us, and up
// to twice that beside the shared experts' GEMMs). The same sum is a GEMM over grad_out alone:
// with the gate matrix M [S, G], M[t, g] = the weight of token t's choice of expert g (0 where
// it has none or it was dropped; kernels::gate_matrix), grad_b = M^T grad_out. With a bf16
// grad_out the layer computes it as grad_out^T [hi | mid | lo] of M's three bf16 parts (as in
// Note [Split-bf16 router GEMM] above): every product exact in fp32, fp32 sums, so it is the
// exact gradient up to the order of fp32 additions (the column sums added bf16-rounded rows of
// grad_y). It does so where G * S <= 16 * R (R buffer rows): the GEMM reads S rows where the sums
// read R, but at a skinny GEMM's rate (C3, top-6 of 64: the GEMM; C2, top-1 of 64: the sums).
// fp32 and fp16 outputs keep the column sums. tests/moe/fused_cuda_test.cpp compares both with
// the LibTorch layer's gradient and with fp64 sums.

// v [rows, cols] (converted to fp32) as [rows, n * cols] bf16 whose column block j holds part
// parts[j]: 0 hi, 1 mid, 2 lo (kernels::split_bf16); n <= 4.
at::Tensor split_bf16(const at::Tensor& v, std::initializer_list<int> parts);
// Whether router_logits is available: this build has the kernels and LibTorch's GEMM with an
// fp32 output for bf16 inputs (2.9 or later).
bool router_gemm_available();
// x [S, H] bf16 times w [H, E] fp32 as above; differentiable in both.
at::Tensor router_logits(const at::Tensor& x, const at::Tensor& w);

// The token-major dispatch indices from the plan's choice-major ones: dest_by_choice [S * k] in
// the plan's processing order (plan.token), R for dropped choices. LibTorch ops on any device:
// the reference for dispatch_rows below (the layer uses that kernel), checked against hand
// tables in tests/moe/plan_test.cpp.
struct DispatchIndex {
  at::Tensor dest;  // [S, k] int64
  at::Tensor src;   // [R] int64
};
DispatchIndex dispatch_index(const DispatchPlan& plan, const at::Tensor& dest_by_choice,
                             int64_t num_tokens, int64_t rows);

// The same indices by one kernel, straight from the plan (CUDA): a kept choice's row is
// expert * plan.capacity + slot, or, with `starts` [E] (rows packed by expert), starts[expert] +
// slot; dropped choices get `rows`. Without starts, a plan.capacity below the capacity the plan
// was made with (a buffer of fewer rows an expert) leaves the kept choices of later slots out
// too: they get `rows`, as dropped ones. tests/moe/fused_cuda_test.cpp compares it with
// dispatch_index.
DispatchIndex dispatch_rows(const DispatchPlan& plan, int64_t num_tokens, int64_t rows,
                            const at::Tensor& starts = {});

// buffer [R, H] in `dtype` from x [S, H] (any float dtype); differentiable in x.
at::Tensor permute(const at::Tensor& x, const DispatchIndex& index, at::ScalarType dtype);

// The first `rows_per_expert` (C_b) rows of each expert's B in `rows` ([E * B, H]: permute() of
// x by the dispatch index of B rows an expert, made without autograd) as an [E, C_b, H] tensor
// over the same memory, no copy: batches B rows apart, which the bmm reads as they are.
// Differentiable in x as permute() is, by `index`, the dispatch index of E * C_b rows. C_b <= B
// and every kept slot below C_b: both indices put each kept choice at the same row of its
// expert. Note [Permute beside the host sync] in moe_layer.cpp.
at::Tensor trim_rows(const at::Tensor& x, const at::Tensor& rows, int64_t rows_per_expert,
                     const DispatchIndex& index);

// out [S, H] in out_dtype from expert rows y [R, H] and gate weights [S, k] (fp32);
// differentiable in y and weights. With `bias` [G, H] (the experts' output bias, which they then
// leave out), row r of group g gets bias[g] added first: groups of R / G rows, or, with `ends`
// [G], rows [ends[g-1], ends[g]); differentiable in the bias too. With `residual` [S, H] (the
// shared experts' output), out = residual + the combine, in the same pass; differentiable in it.
at::Tensor combine(const at::Tensor& y, const DispatchIndex& index, const at::Tensor& weights,
                   at::ScalarType out_dtype, const at::Tensor& bias = {},
                   const at::Tensor& ends = {}, const at::Tensor& residual = {});

// act(h + b) for h [G, rows, F] and b [G, F] of h's dtype; differentiable in both.
at::Tensor bias_act(const at::Tensor& h, const at::Tensor& b, kernels::Act act);
// The same over rows grouped by ends (moe.expert_gemm grouped): h [N, F], b [G, F], ends [G]
// int64; rows past ends[G-1] come out as zeros with no gradient (act kNone: a bias add).
at::Tensor grouped_bias_act(const at::Tensor& h, const at::Tensor& b, const at::Tensor& ends,
                            kernels::Act act);

}  // namespace sy::fused
