// Fused CUDA kernels of the MoE layer (Note [Fused MoE kernels] in src/moe/fused.h), behind a
// plain C++ interface: raw device pointers, a stream, and an error string that is empty on success.
// This header and moe_kernels.cu include no LibTorch header, so nvcc compiles them alone; the
// autograd wrappers in fused_cuda.cpp own the tensors.
#pragma once

#include <cstdint>
#include <string>

namespace sy::kernels {

enum class DType { kFloat32, kBFloat16, kFloat16 };
enum class Act { kGelu, kRelu, kNone };

// Each choice's arrival index at its expert: slot[i] = #{j < i : expert[j] == expert[i]}, and
// tokens_per_expert[e] = #{j : expert[j] == e}. One block per expert scans the n ids in order.
std::string plan_slots(const int64_t* expert, int64_t n, int64_t num_experts, int64_t* slot,
                       int64_t* tokens_per_expert, void* stream);

// The dispatch indices in one pass over the n = S * k choices in processing order (choice i is
// choice c = i / S of token t = order[i % S], or of token i % S when order is null): its row is
// starts[expert] + slot (starts non-null: rows packed by expert) or expert * capacity + slot
// when kept (and, without starts, slot < capacity: a buffer of fewer rows an expert than the
// plan's capacity leaves the later choices out, as dropped), else R; dest[t * k + c] = row, and
// src[row] = t * k + c for kept choices. src must hold -1 everywhere beforehand (dispatch_index
// does that).
std::string dispatch_index(const int64_t* expert, const int64_t* slot, const bool* kept,
                           const int64_t* order, const int64_t* starts, int64_t S, int k,
                           int64_t capacity, int64_t R, int64_t* dest, int64_t* src, void* stream);

// Softmax router with top-k over the probabilities, one warp per token (fp32; k <= kMaxTopK):
// probs [S, E], topk_w [S, k] (renormalised over the k when renorm), topk_idx [S, k] (descending,
// the lower expert first on ties), lse [S] = logsumexp of the logits.
constexpr int kMaxTopK = 8;
std::string router_forward(const float* logits, int64_t S, int64_t E, int k, bool renorm,
                           float* probs, float* topk_w, int64_t* topk_idx, float* lse,
                           void* stream);
// grad_logits [S, E] from the gradients of probs [S, E] (row r at grad_probs + r *
// grad_probs_row_stride: E, or 0 for one row broadcast to all), topk_w [S, k] and lse [S]; each of
// the three may be null (no gradient).
std::string router_backward(const float* probs, const int64_t* topk_idx, const float* topk_w,
                            const float* grad_probs, int64_t grad_probs_row_stride,
                            const float* grad_w, const float* grad_lse, int64_t S, int64_t E, int k,
                            bool renorm, float* grad_logits, void* stream);

// The router's auxiliary losses from the fused router's outputs, S > 0: aux = E sum_e f_e P_e with
// f_e = (choices of expert e) / (S k) and P_e = mean_s probs[s, e] (Switch), and z = mean_s
// lse[s]^2 (ST-MoE). Partial sums over fixed chunks of rows, then one block adds them in order
// (deterministic, no float atomics). workspace: router_losses_workspace(S, E) floats. Writes aux,
// z and f [E] (which the backward needs: d aux / d probs[s, e] = E f_e / S).
constexpr int64_t kMaxLossExperts = 12 * 1024;  // the counts live in shared memory
int64_t router_losses_workspace(int64_t S, int64_t E);
std::string router_losses(const float* probs, const float* lse, const int64_t* topk_idx, int64_t S,
                          int64_t E, int k, float* workspace, float* aux, float* z, float* f,
                          void* stream);

// Permute: buffer[r] = x[src[r] / k] cast to the buffer's dtype, or zeros where src[r] < 0.
// x [S, H], src [R] (token-major choice index t * k + c, or -1), buffer [R, H].
std::string permute_forward(const void* x, DType x_dtype, const int64_t* src, int64_t R, int64_t H,
                            int k, void* buffer, DType buffer_dtype, void* stream);
// grad_x[t] = sum over c of grad_buffer[dest[t, c]] (dest[t, c] >= R: dropped, nothing).
std::string permute_backward(const void* grad_buffer, DType buffer_dtype, const int64_t* dest,
                             int64_t S, int64_t R, int64_t H, int k, void* grad_x, DType x_dtype,
                             void* stream);

// Groups of buffer rows, for a per-group bias: uniform (rows_per_group rows each; ends null)
// or ending at ends[g] (non-decreasing; rows past ends[G-1] belong to no group).
struct RowGroups {
  int64_t G = 0;
  int64_t rows_per_group = 0;
  const int64_t* ends = nullptr;
};

// Combine: out[t] = residual[t] + sum over kept c of w[t, c] * (y[dest[t, c]] + bias[g]),
// accumulated in fp32 (from the residual, then the choices in order); bias [G, H] in y's dtype,
// or null (then groups is unused); residual [S, H] in out's dtype, or null (zeros).
std::string combine_forward(const void* y, DType y_dtype, const void* bias, RowGroups groups,
                            const int64_t* dest, const float* w, int64_t S, int64_t R, int64_t H,
                            int k, const void* residual, void* out, DType out_dtype, void* stream);
// grad_y[r] = w[s] * grad_out[s / k] for s = src[r] >= 0, else zeros; grad_w[s] =
// <grad_out[s / k], y[r] + bias> (0 for dropped choices); when grad_bias is not null, grad_bias
// [G, H] = the column sums of grad_y over each group, in `splits` row chunks as bias_act_backward
// sums them: workspace holds splits * G * H floats, splits = bias_act_backward_splits(G, rows)
// with rows R (groups with ends) or G * rows_per_group. (A null grad_bias with a bias: the caller
// computes the bias gradient otherwise, e.g. from gate_matrix.)
std::string combine_backward(const void* grad_out, DType out_dtype, const void* y, DType y_dtype,
                             const void* bias, RowGroups groups, const int64_t* src, const float* w,
                             int64_t S, int64_t R, int64_t H, int k, void* grad_y, float* grad_w,
                             void* grad_bias, float* workspace, int64_t splits, void* stream);

// The gate weights as a matrix: gate [S, G] fp32, gate[t, g] = the sum of w[s] over the buffer
// rows r of group g filled by a choice s = src[r] of token t (t = s / k); zeros elsewhere. Then
// grad_out^T gate, summed per group, is the combine's output-bias gradient (sum over the rows of
// group g of w[s] grad_out[t]) with no pass over grad_y.
std::string gate_matrix(const int64_t* src, const float* w, RowGroups groups, int64_t S, int64_t R,
                        int k, float* gate, void* stream);

// Bias and activation: a = act(h + b[g]) for b [G, F] (one dtype for all), over `rows` rows of F.
// Groups: without `ends`, rows / G consecutive rows each (h [G, rows / G, F]); with `ends` [G]
// (non-decreasing), rows [ends[g-1], ends[g]) form group g and rows from ends[G-1] on are padding,
// written as zeros (the grouped GEMM leaves them unwritten).
std::string bias_act_forward(const void* h, const void* b, DType dtype, int64_t G, int64_t rows,
                             int64_t F, const int64_t* ends, Act act, void* a, void* stream);
// grad_h = grad_a * act'(h + b[g]) (zeros on padding rows) and, in the same pass, the bias
// gradient grad_b[g] = sum of grad_h over group g's rows (fp32 sums, stored in dtype). Each group's
// rows are cut into `splits` chunks (bias_act_backward_splits), one block row each, whose column
// sums go to `workspace` (fp32, splits * G * F) and are then added in chunk order: deterministic.
// With act kNone, h and b may be null (unread), and grad_h null writes no grad_h: grad_b is then
// the per-group column sums of grad_a.
int64_t bias_act_backward_splits(int64_t G, int64_t rows);
std::string bias_act_backward(const void* grad_a, const void* h, const void* b, DType dtype,
                              int64_t G, int64_t rows, int64_t F, const int64_t* ends, Act act,
                              void* grad_h, void* grad_b, float* workspace, int64_t splits,
                              void* stream);

// Splits fp32 values into three bf16 parts with v = hi + mid + lo exactly (each rounds the rest
// of the one before to 8 significant bits, so 24 in all: Note [Split-bf16 router GEMM] in
// src/moe/fused.h). Row r of in [rows, cols] becomes row r of out [rows, n * cols] bf16, whose
// column block j holds part parts.part[j] (0 hi, 1 mid, 2 lo), n <= 4.
struct SplitParts {
  int n = 0;
  int part[4] = {0, 0, 0, 0};
};
std::string split_bf16(const float* in, int64_t rows, int64_t cols, SplitParts parts, void* out,
                       void* stream);
// out [rows, cols] = the sum of the n column blocks of in [rows, n * cols] (fp32), the last first.
std::string sum_blocks(const float* in, int64_t rows, int64_t cols, int n, float* out,
                       void* stream);

}  // namespace sy::kernels
