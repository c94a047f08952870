// Fused CUDA kernels of the MoE layer; see moe_kernels.h for what each computes and
// Note [Fused MoE kernels] in src/moe/fused.h for where the layer uses them. Arithmetic is in
// fp32 whatever the storage dtype; rows move in packs of up to 16 bytes where alignment allows.
#include "moe/kernels/moe_kernels.h"

#include <cfloat>
#include <climits>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace sy::kernels {
namespace {

constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
template <class T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half(v); }

// W consecutive elements in one load or store (W = 1: one element).
template <int W, class T> struct alignas(W * sizeof(T)) PackW { T v[W]; };
template <int W, class T> __device__ __forceinline__ void loadw(const T* p, float (&out)[W]) {
  if constexpr (W == 1) {
    out[0] = to_f(p[0]);
  } else {
    const PackW<W, T> pk = *reinterpret_cast<const PackW<W, T>*>(p);
#pragma unroll
    for (int j = 0; j < W; ++j) out[j] = to_f(pk.v[j]);
  }
}
template <int W, class T> __device__ __forceinline__ void storew(T* p, const float (&in)[W]) {
  if constexpr (W == 1) {
    p[0] = from_f<T>(in[0]);
  } else {
    PackW<W, T> pk;
#pragma unroll
    for (int j = 0; j < W; ++j) pk.v[j] = from_f<T>(in[j]);
    *reinterpret_cast<PackW<W, T>*>(p) = pk;
  }
}

// The same for rows read or written once: ld.global.cs / st.global.cs mark their lines evict-first,
// so that a kernel streaming through them keeps in L2 the rows it reads more than once (a
// token's row, read once for each of its k choices: Note [Rows read k times]).
// 16 or 8 bytes moved as one int4 or int2 (the types __ldcs and __stcs take), else nothing.
template <int W, class T>
using RawPack = std::conditional_t<W * sizeof(T) == 16, int4,
                                   std::conditional_t<W * sizeof(T) == 8, int2, void>>;
template <int W, class T> __device__ __forceinline__ void loadw_once(const T* p, float (&out)[W]) {
  using Raw = RawPack<W, T>;
  if constexpr (std::is_void_v<Raw>) {
    loadw<W>(p, out);
  } else {
    const Raw raw = __ldcs(reinterpret_cast<const Raw*>(p));
    PackW<W, T> pk;
    memcpy(&pk, &raw, sizeof raw);
#pragma unroll
    for (int j = 0; j < W; ++j) out[j] = to_f(pk.v[j]);
  }
}
template <int W, class T> __device__ __forceinline__ void storew_once(T* p, const float (&in)[W]) {
  using Raw = RawPack<W, T>;
  if constexpr (std::is_void_v<Raw>) {
    storew<W>(p, in);
  } else {
    PackW<W, T> pk;
#pragma unroll
    for (int j = 0; j < W; ++j) pk.v[j] = from_f<T>(in[j]);
    Raw raw;
    memcpy(&raw, &pk, sizeof raw);
    __stcs(reinterpret_cast<Raw*>(p), raw);
  }
}

template <class T> struct Tag { using type = T; };

template <class F> void with_dtype(DType d, F&& f) {
  switch (d) {
    case DType::kFloat32: f(Tag<float>{}); break;
    case DType::kBFloat16: f(Tag<__nv_bfloat16>{}); break;
    case DType::kFloat16: f(Tag<__half>{}); break;
  }
}

// The activation as a compile-time constant, so each kernel has one activation's code.
template <Act A> struct ActTag { static constexpr Act value = A; };
template <class F> void with_dtype_act(DType d, Act act, F&& f) {
  with_dtype(d, [&](auto tag) {
    switch (act) {
      case Act::kGelu: f(tag, ActTag<Act::kGelu>{}); break;
      case Act::kRelu: f(tag, ActTag<Act::kRelu>{}); break;
      case Act::kNone: f(tag, ActTag<Act::kNone>{}); break;
    }
  });
}

size_t dtype_size(DType d) { return d == DType::kFloat32 ? 4 : 2; }

// The widest pack of elements a row kernel can move in one load or store: 8 (16 bytes, every
// type 2 bytes wide), 4 or 1, such that every row and pointer starts on a pack boundary.
int pack_width(int64_t H, std::initializer_list<std::pair<const void*, DType>> ptrs) {
  bool narrow = true;
  for (const auto& [p, d] : ptrs) narrow = narrow && (p == nullptr || dtype_size(d) == 2);
  for (const int w : {8, 4}) {
    if ((w == 8 && !narrow) || H % w != 0) continue;
    bool aligned = true;
    for (const auto& [p, d] : ptrs) {
      aligned =
          aligned && (p == nullptr || reinterpret_cast<uintptr_t>(p) % (w * dtype_size(d)) == 0);
    }
    if (aligned) return w;
  }
  return 1;
}

// f(std::integral_constant<int, W>{}) for the pack width w (8, 4 or 1).
template <class F> void with_width(int w, F&& f) {
  switch (w) {
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    default: f(std::integral_constant<int, 1>{}); break;
  }
}

std::string launched(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return {};
  return std::string(what) + ": " + cudaGetErrorString(e);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

// Sum over a block of blockDim.x (a multiple of 32, at most 1024) threads; every thread gets it.
__device__ float block_sum(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  float t = lane < warps ? partial[lane] : 0.f;
  return warp_sum(t);
}

// ---- plan ----------------------------------------------------------------------------------

constexpr int kPlanThreads = 256;
constexpr int kPlanItems = 8;

__global__ void plan_slots_kernel(const int64_t* __restrict__ expert, int64_t n,
                                  int64_t* __restrict__ slot,
                                  int64_t* __restrict__ tokens_per_expert) {
  const int64_t e = blockIdx.x;
  __shared__ long long warp_total[kPlanThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  constexpr int warps = kPlanThreads / 32;
  long long carry = 0;
  for (int64_t base = 0; base < n; base += int64_t{kPlanThreads} * kPlanItems) {
    const int64_t start = base + int64_t{threadIdx.x} * kPlanItems;
    bool match[kPlanItems];
    int count = 0;
#pragma unroll
    for (int i = 0; i < kPlanItems; ++i) {
      match[i] = start + i < n && expert[start + i] == e;
      count += match[i];
    }
    int inclusive = count;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int t = __shfl_up_sync(kFull, inclusive, o);
      if (lane >= o) inclusive += t;
    }
    if (lane == 31) warp_total[warp] = inclusive;
    __syncthreads();
    if (warp == 0) {
      long long w = lane < warps ? warp_total[lane] : 0;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const long long t = __shfl_up_sync(kFull, w, o);
        if (lane >= o) w += t;
      }
      if (lane < warps) warp_total[lane] = w;  // inclusive over warps
    }
    __syncthreads();
    long long next = carry + (warp > 0 ? warp_total[warp - 1] : 0) + inclusive - count;
#pragma unroll
    for (int i = 0; i < kPlanItems; ++i) {
      if (match[i]) slot[start + i] = next++;
    }
    carry += warp_total[warps - 1];
    __syncthreads();  // warp_total is rewritten by the next chunk
  }
  if (threadIdx.x == 0) tokens_per_expert[e] = carry;
}

// ---- dispatch indices ----------------------------------------------------------------------

__global__ void dispatch_index_kernel(const int64_t* __restrict__ expert,
                                      const int64_t* __restrict__ slot,
                                      const bool* __restrict__ kept,
                                      const int64_t* __restrict__ order,
                                      const int64_t* __restrict__ starts, int64_t S, int k,
                                      int64_t capacity, int64_t R, int64_t* __restrict__ dest,
                                      int64_t* __restrict__ src) {
  const int64_t n = S * k;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t c = i / S, j = i - c * S;
    const int64_t t = order != nullptr ? order[j] : j;
    int64_t row = R;
    if (starts != nullptr) {
      if (kept[i]) row = starts[expert[i]] + slot[i];
    } else if (kept[i] && slot[i] < capacity) {
      row = expert[i] * capacity + slot[i];
    }
    dest[t * k + c] = row;
    if (row < R) src[row] = t * k + c;
  }
}

// ---- router --------------------------------------------------------------------------------

constexpr int kRouterWarps = 4;

__global__ void router_forward_kernel(const float* __restrict__ logits, int64_t S, int E, int k,
                                      bool renorm, float* __restrict__ probs,
                                      float* __restrict__ topk_w, int64_t* __restrict__ topk_idx,
                                      float* __restrict__ lse) {
  const int64_t row = int64_t{blockIdx.x} * kRouterWarps + (threadIdx.x >> 5);
  if (row >= S) return;
  const int lane = threadIdx.x & 31;
  const float* l = logits + row * E;
  float* p = probs + row * E;
  float mx = -INFINITY;
  for (int e = lane; e < E; e += 32) mx = fmaxf(mx, l[e]);
  mx = warp_max(mx);
  float sum = 0.f;
  for (int e = lane; e < E; e += 32) sum += expf(l[e] - mx);
  sum = warp_sum(sum);
  for (int e = lane; e < E; e += 32) p[e] = expf(l[e] - mx) / sum;  // each lane reads back its own
  float w[kMaxTopK];
  int idx[kMaxTopK];
  for (int c = 0; c < k; ++c) {
    float best = -INFINITY;
    int best_e = INT_MAX;
    for (int e = lane; e < E; e += 32) {
      bool taken = false;
      for (int d = 0; d < c; ++d) taken |= idx[d] == e;
      const float v = p[e];
      if (!taken && (v > best || (v == best && e < best_e))) {
        best = v;
        best_e = e;
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(kFull, best, o);
      const int oe = __shfl_xor_sync(kFull, best_e, o);
      if (ov > best || (ov == best && oe < best_e)) {
        best = ov;
        best_e = oe;
      }
    }
    if (best_e == INT_MAX) {
      // Only NaN left (non-finite logits): take the lowest free expert, so every index stays in
      // range and the NaN weight reaches the loss, where the trainer's finiteness check sees it.
      best_e = 0;
      for (bool clash = true; clash;) {
        clash = false;
        for (int d = 0; d < c; ++d) clash |= idx[d] == best_e;
        if (clash) ++best_e;
      }
      best = NAN;
    }
    w[c] = best;
    idx[c] = best_e;
  }
  if (lane == 0) {
    float s = 0.f;
    for (int c = 0; c < k; ++c) s += w[c];
    for (int c = 0; c < k; ++c) {
      topk_w[row * k + c] = renorm ? w[c] / s : w[c];
      topk_idx[row * k + c] = idx[c];
    }
    lse[row] = mx + logf(sum);
  }
}

__global__ void router_backward_kernel(const float* __restrict__ probs,
                                       const int64_t* __restrict__ topk_idx,
                                       const float* __restrict__ topk_w,
                                       const float* __restrict__ grad_probs,
                                       int64_t grad_probs_row_stride,
                                       const float* __restrict__ grad_w,
                                       const float* __restrict__ grad_lse, int64_t S, int E, int k,
                                       bool renorm, float* __restrict__ grad_logits) {
  const int64_t row = int64_t{blockIdx.x} * kRouterWarps + (threadIdx.x >> 5);
  if (row >= S) return;
  const int lane = threadIdx.x & 31;
  const float* p = probs + row * E;
  // Gradient reaching each selected probability through the top-k weights.
  int idx[kMaxTopK];
  float g_sel[kMaxTopK];
  float sel_sum = 0.f, gw_dot_w = 0.f;
  for (int c = 0; c < k; ++c) {
    idx[c] = static_cast<int>(topk_idx[row * k + c]);
    g_sel[c] = grad_w != nullptr ? grad_w[row * k + c] : 0.f;
    sel_sum += p[idx[c]];
    gw_dot_w += g_sel[c] * topk_w[row * k + c];
  }
  if (renorm) {
    // w_c = p_c / sum_d p_d:  dL/dp_c = (g_c - sum_d g_d w_d) / sum_d p_d.
    for (int c = 0; c < k; ++c) g_sel[c] = (g_sel[c] - gw_dot_w) / sel_sum;
  }
  auto grad_p = [&](int e) {
    float g = grad_probs != nullptr ? grad_probs[row * grad_probs_row_stride + e] : 0.f;
    for (int c = 0; c < k; ++c) g += idx[c] == e ? g_sel[c] : 0.f;
    return g;
  };
  float dot = 0.f;
  for (int e = lane; e < E; e += 32) dot += p[e] * grad_p(e);
  dot = warp_sum(dot);
  const float g_lse = grad_lse != nullptr ? grad_lse[row] : 0.f;
  for (int e = lane; e < E; e += 32) {
    // Softmax backward, plus d lse / d logit = p.
    grad_logits[row * E + e] = p[e] * (grad_p(e) - dot) + g_lse * p[e];
  }
}

// ---- router losses -------------------------------------------------------------------------

constexpr int kLossRows = 128;  // rows of one partial sum
constexpr int kLossThreads = 256;

// Column sums of a [rows, E] block of fp32 values (row stride E), E <= blockDim, by all the
// block's threads: G = blockDim / E thread groups take every G-th row of their column, and their
// sums are added in group order (deterministic); scratch holds blockDim floats. Thread e < E
// returns column e's sum, the others 0. Every thread of the block must call it.
__device__ float column_sum(const float* __restrict__ m, int64_t rows, int E, float* scratch) {
  const int groups = static_cast<int>(blockDim.x) / E;
  float acc = 0.f;
  if (groups == 1) {
    if (static_cast<int>(threadIdx.x) < E) {
#pragma unroll 4
      for (int64_t r = 0; r < rows; ++r) acc += m[r * E + threadIdx.x];
    }
    return acc;
  }
  const int e = threadIdx.x % E, g = threadIdx.x / E;
  if (g < groups) {
#pragma unroll 4
    for (int64_t r = g; r < rows; r += groups) acc += m[r * E + e];
  }
  scratch[threadIdx.x] = acc;
  __syncthreads();
  acc = 0.f;
  if (static_cast<int>(threadIdx.x) < E) {
    for (int j = 0; j < groups; ++j) acc += scratch[j * E + threadIdx.x];
  }
  __syncthreads();
  return acc;
}

// Block b, rows [b * kLossRows, ...): partial[b] = [sum of probs[:, e] (E), choices of e (E),
// sum of lse^2 (1)]. Dynamic shared memory: E ints (counts), then kLossThreads floats.
__global__ void router_losses_partial_kernel(const float* __restrict__ probs,
                                             const float* __restrict__ lse,
                                             const int64_t* __restrict__ topk_idx, int64_t S, int E,
                                             int k, float* __restrict__ partial) {
  extern __shared__ int counts[];
  float* scratch = reinterpret_cast<float*>(counts + E);
  const int64_t begin = int64_t{blockIdx.x} * kLossRows;
  const int64_t end = begin + kLossRows < S ? begin + kLossRows : S;
  float* out = partial + int64_t{blockIdx.x} * (2 * E + 1);
  for (int e = threadIdx.x; e < E; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  for (int64_t i = begin * k + threadIdx.x; i < end * k; i += blockDim.x) {
    const int64_t e = topk_idx[i];
    if (e >= 0 && e < E) atomicAdd(&counts[e], 1);  // integers: the same sum in any order
  }
  if (E <= static_cast<int>(blockDim.x)) {
    const float sum = column_sum(probs + begin * E, end - begin, E, scratch);
    if (static_cast<int>(threadIdx.x) < E) out[threadIdx.x] = sum;
  } else {
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
      float acc = 0.f;
      for (int64_t r = begin; r < end; ++r) acc += probs[r * E + e];
      out[e] = acc;
    }
  }
  float sq = 0.f;
  for (int64_t r = begin + threadIdx.x; r < end; r += blockDim.x) sq += lse[r] * lse[r];
  sq = block_sum(sq);  // its barriers also complete the counts
  for (int e = threadIdx.x; e < E; e += blockDim.x) out[E + e] = static_cast<float>(counts[e]);
  if (threadIdx.x == 0) out[2 * E] = sq;
}

// One block: the partial sums added in block order, then aux, z and f. Shared: kLossThreads floats.
__global__ void router_losses_final_kernel(const float* __restrict__ partial, int64_t blocks,
                                           int64_t S, int E, int k, float* __restrict__ aux,
                                           float* __restrict__ z, float* __restrict__ f) {
  __shared__ float scratch[kLossThreads];
  const int width = 2 * E + 1;
  // Columns 0..2E of the [blocks, 2E + 1] partials; each thread ends with its columns' totals.
  float term = 0.f;
  if (2 * E + 1 <= kLossThreads) {
    const float total = column_sum(partial, blocks, width, scratch);  // thread j: column j
    if (static_cast<int>(threadIdx.x) < width) scratch[threadIdx.x] = total;
    __syncthreads();
    if (static_cast<int>(threadIdx.x) < E) {
      const float fe = scratch[E + threadIdx.x] / static_cast<float>(S * k);
      f[threadIdx.x] = fe;
      term = fe * (scratch[threadIdx.x] / static_cast<float>(S));
    }
  } else {
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
      float p_sum = 0.f, count = 0.f;
      for (int64_t b = 0; b < blocks; ++b) {
        p_sum += partial[b * width + e];
        count += partial[b * width + E + e];
      }
      const float fe = count / static_cast<float>(S * k);
      f[e] = fe;
      term += fe * (p_sum / static_cast<float>(S));
    }
  }
  term = block_sum(term);
  float sq = 0.f;
  for (int64_t b = threadIdx.x; b < blocks; b += blockDim.x) sq += partial[b * width + 2 * E];
  sq = block_sum(sq);
  if (threadIdx.x == 0) {
    *aux = term * static_cast<float>(E);
    *z = sq / static_cast<float>(S);
  }
}

// ---- permute and combine -------------------------------------------------------------------

constexpr int kRowThreads = 128;
// The kernels that give each row a warp (permute forward, combine backward): rows a block, and
// packs a lane loaded before any is stored (C3's 2048 bf16 columns: 8 packs a lane, 4 at a time).
// A block of 128 threads per row moved one or two packs a thread and took 118 us (permute) and
// 196 us (combine backward, with a block-wide sum) for C3 on an H100, about 1.5x their traffic.
constexpr int kRowWarps = 8;
constexpr int kAhead = 4;

// Note [Rows read k times]: the permute forward reads token t's row of x, and the combine
// backward its row of grad_out, once for each of t's k kept choices, whose buffer rows lie in k
// experts' groups. The kernels walk the buffer in row order (expert by expert); within an expert
// the slots follow Note [Slot order] in src/moe/plan.h (choice-major: first choices in token
// order, then second choices, ...), so a token's k reads come far apart, and for C3 (32 MiB of
// token rows) mostly from memory again. The rows that these kernels and the combine forward and
// permute backward read or write only once are loaded and stored evict-first (loadw_once,
// storew_once), which keeps more of the re-read rows in L2: C3's permute forward 126 to 118 us
// and combine forward 102 to 95 us in a traced step on an H100. Measured and not kept: a warp
// per token, its row read once and stored to its k rows (writes scattered a row at a time: 531
// us for the permute), and a walk over chunks of 32 rows of every expert in turn, which gains
// only where slots follow token order (token-major slots: permute 94 us, combine backward 189),
// but under the layer's choice-major slots reads the token rows from memory all the same: 139
// and 224 us in a traced step against 118 and 204 in row order.

template <int W, class TX, class TB>
__global__ void permute_forward_kernel(const TX* __restrict__ x, const int64_t* __restrict__ src,
                                       int64_t R, int64_t H, int k, TB* __restrict__ buffer) {
  const int64_t r = int64_t{blockIdx.x} * kRowWarps + (threadIdx.x >> 5);
  if (r >= R) return;  // the whole warp: no block-wide barrier follows
  const int lane = threadIdx.x & 31;
  const int64_t s = src[r];
  TB* out = buffer + r * H;
  const TX* in = s >= 0 ? x + (s / k) * H : nullptr;
  for (int64_t h0 = int64_t{lane} * W; h0 < H; h0 += int64_t{32} * W * kAhead) {
    float v[kAhead][W];
#pragma unroll
    for (int u = 0; u < kAhead; ++u) {
      const int64_t h = h0 + int64_t{u} * 32 * W;
      if (in != nullptr && h < H) {
        loadw<W>(in + h, v[u]);
      } else {
#pragma unroll
        for (int j = 0; j < W; ++j) v[u][j] = 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < kAhead; ++u) {
      const int64_t h = h0 + int64_t{u} * 32 * W;
      if (h < H) storew_once<W>(out + h, v[u]);
    }
  }
}

template <int W, class TB, class TX>
__global__ void permute_backward_kernel(const TB* __restrict__ grad_buffer,
                                        const int64_t* __restrict__ dest, int64_t R, int64_t H,
                                        int k, TX* __restrict__ grad_x) {
  const int64_t t = blockIdx.x;
  const int64_t* d = dest + t * k;
  for (int64_t h = int64_t{threadIdx.x} * W; h < H; h += int64_t{blockDim.x} * W) {
    float acc[W];
#pragma unroll
    for (int j = 0; j < W; ++j) acc[j] = 0.f;
    for (int c = 0; c < k; ++c) {
      const int64_t r = d[c];
      if (r >= R) continue;
      float v[W];
      loadw_once<W>(grad_buffer + r * H + h, v);
#pragma unroll
      for (int j = 0; j < W; ++j) acc[j] += v[j];
    }
    storew<W>(grad_x + t * H + h, acc);
  }
}

// The group of `row`: uniform groups of rows_per_group rows, or the first g with row < ends[g]
// (G for padding rows past the last end).
__device__ __forceinline__ int64_t group_of(int64_t row, int64_t rows_per_group,
                                            const int64_t* ends, int64_t G) {
  if (ends == nullptr) return row / rows_per_group;
  int64_t lo = 0, hi = G;  // first g in [0, G) with row < ends[g], else G
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (row < ends[mid]) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

// The group ends in shared memory (`smem`, G int64) for group_of, loaded by the whole block, or
// `ends` itself where there are none (uniform groups) or too many (kSharedEndsMax). A search
// through global memory is a chain of dependent loads (6 for 64 groups, about 3 us): a kernel
// that searched once per row before it moved the row ran at half the memory bandwidth.
constexpr int64_t kSharedEndsMax = 2048;
__device__ __forceinline__ const int64_t* ends_in_shared(const int64_t* ends, int64_t G,
                                                         int64_t* smem) {
  if (ends == nullptr || G > kSharedEndsMax) return ends;
  for (int64_t i = threadIdx.x; i < G; i += blockDim.x) smem[i] = ends[i];
  __syncthreads();
  return smem;
}
size_t shared_ends_bytes(const int64_t* ends, int64_t G) {
  return ends != nullptr && G <= kSharedEndsMax ? static_cast<size_t>(G) * sizeof(int64_t) : 0;
}

// Combine, with an optional output bias [G, H] added to each expert row (the second expert bias,
// when the experts leave it to the combine): out[t] = sum over kept c of w * (y[r] + bias[g(r)]).
// One block per token; its k choices' rows, weights and bias rows are looked up once, into
// dynamic shared memory (2k int64 + k floats), before the threads walk the columns W at a time.
// (A lookup per column pack took 234 us for C3 on an H100, about 3x the kernel's traffic.)
template <int W, class TY, class TO>
__global__ void combine_forward_kernel(const TY* __restrict__ y, const TY* __restrict__ bias,
                                       int64_t G, int64_t rows_per_group,
                                       const int64_t* __restrict__ ends,
                                       const int64_t* __restrict__ dest,
                                       const float* __restrict__ w, int64_t R, int64_t H, int k,
                                       const TO* __restrict__ residual, TO* __restrict__ out) {
  extern __shared__ int64_t choice_row[];  // [k] rows (-1: dropped), then [k] bias rows, [k] w
  int64_t* bias_row = choice_row + k;
  float* weight = reinterpret_cast<float*>(bias_row + k);
  const int64_t t = blockIdx.x;
  for (int c = threadIdx.x; c < k; c += blockDim.x) {
    const int64_t r = dest[t * k + c];
    const bool kept = r < R;
    choice_row[c] = kept ? r : -1;
    bias_row[c] = kept && bias != nullptr ? group_of(r, rows_per_group, ends, G) : -1;
    weight[c] = kept ? w[t * k + c] : 0.f;
  }
  __syncthreads();
  for (int64_t h = int64_t{threadIdx.x} * W; h < H; h += int64_t{blockDim.x} * W) {
    float acc[W];
    if (residual != nullptr) {
      loadw<W>(residual + t * H + h, acc);
    } else {
#pragma unroll
      for (int j = 0; j < W; ++j) acc[j] = 0.f;
    }
    for (int c = 0; c < k; ++c) {
      const int64_t r = choice_row[c];
      if (r < 0) continue;
      const float wc = weight[c];
      float v[W];
      loadw_once<W>(y + r * H + h, v);
      if (bias_row[c] >= 0) {
        float bv[W];
        loadw<W>(bias + bias_row[c] * H + h, bv);
#pragma unroll
        for (int j = 0; j < W; ++j) v[j] += bv[j];
      }
#pragma unroll
      for (int j = 0; j < W; ++j) acc[j] += wc * v[j];
    }
    storew<W>(out + t * H + h, acc);
  }
}

// Backward, one warp per buffer row r: grad_y[r] = w[s] * grad_out[t] for the choice s = src[r]
// of token t (zeros where no choice fills r), and in the same pass grad_w[s] = <grad_out[t],
// y[r] + bias>, summed over the warp. Every kept choice fills exactly one row, so each grad_w
// entry has one writer; dropped choices keep the zeros the caller wrote.
template <int W, class TO, class TY>
__global__ void combine_backward_kernel(const TO* __restrict__ grad_out, const TY* __restrict__ y,
                                        const TY* __restrict__ bias, int64_t G,
                                        int64_t rows_per_group, const int64_t* __restrict__ ends,
                                        const int64_t* __restrict__ src,
                                        const float* __restrict__ w, int64_t R, int64_t H, int k,
                                        TY* __restrict__ grad_y, float* __restrict__ grad_w) {
  constexpr int U = kAhead / 2;  // three loads a pack
  extern __shared__ int64_t ends_smem[];
  if (bias != nullptr) ends = ends_in_shared(ends, G, ends_smem);
  const int64_t r = int64_t{blockIdx.x} * kRowWarps + (threadIdx.x >> 5);
  if (r >= R) return;  // the whole warp: no barrier follows
  const int lane = threadIdx.x & 31;
  const int64_t s = src[r];
  TY* gy = grad_y + r * H;
  if (s < 0) {
    float zero[W];
#pragma unroll
    for (int j = 0; j < W; ++j) zero[j] = 0.f;
    for (int64_t h = int64_t{lane} * W; h < H; h += int64_t{32} * W) storew_once<W>(gy + h, zero);
    return;  // the whole warp: s is the row's
  }
  const float ws = w[s];
  const TO* g = grad_out + (s / k) * H;
  const TY* yr = y + r * H;
  const TY* b = bias != nullptr ? bias + group_of(r, rows_per_group, ends, G) * H : nullptr;
  float partial = 0.f;
  for (int64_t h0 = int64_t{lane} * W; h0 < H; h0 += int64_t{32} * W * U) {
    float gv[U][W], yv[U][W];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t h = h0 + int64_t{u} * 32 * W;
      if (h < H) {
        loadw<W>(g + h, gv[u]);
        loadw_once<W>(yr + h, yv[u]);
        if (b != nullptr) {
          float bv[W];
          loadw<W>(b + h, bv);
#pragma unroll
          for (int j = 0; j < W; ++j) yv[u][j] += bv[j];
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t h = h0 + int64_t{u} * 32 * W;
      if (h >= H) continue;
      float out[W];
#pragma unroll
      for (int j = 0; j < W; ++j) {
        partial += gv[u][j] * yv[u][j];
        out[j] = ws * gv[u][j];
      }
      storew_once<W>(gy + h, out);
    }
  }
  partial = warp_sum(partial);
  if (lane == 0) grad_w[s] = partial;
}

// gate[t, g] += w[s] for every buffer row r filled by choice s = src[r] of token t = s / k, g the
// row's group: the gate weights as a [S, G] matrix, whose product with grad_out is the output
// bias's gradient. A token's choices are distinct experts, so each entry has one writer (the
// atomic only keeps a repeated expert correct).
__global__ void gate_matrix_kernel(const int64_t* __restrict__ src, const float* __restrict__ w,
                                   int64_t R, int k, int64_t G, int64_t rows_per_group,
                                   const int64_t* __restrict__ ends, float* __restrict__ gate) {
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t r = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; r < R; r += stride) {
    const int64_t s = src[r];
    if (s < 0) continue;
    const int64_t g = group_of(r, rows_per_group, ends, G);
    if (g < G) atomicAdd(gate + (s / k) * G + g, w[s]);
  }
}

// ---- bias and activation -------------------------------------------------------------------

__device__ __forceinline__ float act_forward(float v, Act act) {
  if (act == Act::kNone) return v;
  if (act == Act::kRelu) return v > 0.f ? v : 0.f;
  return 0.5f * v * (1.f + erff(v * static_cast<float>(M_SQRT1_2)));
}
// gelu'(v) = Phi(v) + v phi(v); phi by the hardware exponential (__expf, a few ulp).
__device__ __forceinline__ float gelu_derivative(float v) {
  const float cdf = 0.5f * (1.f + erff(v * static_cast<float>(M_SQRT1_2)));
  const float pdf = __expf(-0.5f * v * v) * static_cast<float>(0.5 * M_2_SQRTPI * M_SQRT1_2);
  return cdf + v * pdf;
}
__device__ __forceinline__ float act_derivative(float v, Act act) {
  if (act == Act::kNone) return 1.f;
  if (act == Act::kRelu) return v > 0.f ? 1.f : 0.f;
  return gelu_derivative(v);
}

// Bias + activation moves W elements per thread step where rows and pointers allow, else 1: 16
// bytes forward (4 fp32, 8 bf16/fp16), 4 elements backward (16 or 8 bytes). Backward reads two
// arrays and keeps W column sums a thread: with 8 bf16 a step it took 182 and 404 us for C2's and
// C1's gelu on an H100, with 4 177 and 347 us (the forward: 97 and 191 us, as fast as a copy).
// Blocks walk the rows (grid-stride), threads the F columns of a row, W at a time: no division
// per element, and each row's group is looked up once. The block is sized to a row (C3's 1408
// bf16 columns: 176 packs, 192 threads) and the grid to a few blocks an SM: one block per row of
// 256 threads left 31% of the threads idle and took 183 us on C3's routed rows on an H100, about
// twice the traffic time; one row at a time, 158 us, most of it each row's search of the group
// ends in global memory before its loads (the ends now sit in shared memory).
template <int W, Act act, class T>
__global__ void bias_act_forward_kernel(const T* __restrict__ h, const T* __restrict__ b,
                                        int64_t rows, int64_t rows_per_group, int64_t F,
                                        const int64_t* __restrict__ ends_in, int64_t G,
                                        T* __restrict__ a) {
  extern __shared__ int64_t ends_smem[];
  const int64_t* ends = ends_in_shared(ends_in, G, ends_smem);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t g = group_of(row, rows_per_group, ends, G);
    const T* in = h + row * F;
    T* out = a + row * F;
    const T* bias = b + (g < G ? g : 0) * F;
    for (int64_t f = int64_t{threadIdx.x} * W; f < F; f += int64_t{blockDim.x} * W) {
      float v[W];
      if (g < G) {
        float bv[W];
        loadw<W>(in + f, v);
        loadw<W>(bias + f, bv);
#pragma unroll
        for (int j = 0; j < W; ++j) v[j] = act_forward(v[j] + bv[j], act);
      } else {
#pragma unroll
        for (int j = 0; j < W; ++j) v[j] = 0.f;
      }
      storew<W>(out + f, v);
    }
  }
}

// Backward of bias + activation with the bias gradient in the same pass: a block owns 32 * W
// columns of one chunk (blockIdx.z of gridDim.z) of one group's rows; its 8 row lanes take every
// 8th row of the chunk, write grad_h and keep column sums, which are added in a fixed lane order
// and stored per chunk in `partial_b` [chunks, G, F] (deterministic, no atomics, grad_h not read
// back); sum_chunks_kernel then adds the chunks in order. Without chunks a group of thousands of
// rows (a shared expert's 8192 tokens: one group) left most of the GPU idle: 22 blocks for C3's
// shared experts, 0.68 ms a call on an H100 where the memory traffic takes about 0.1 ms. Block
// row G (with ends) zeroes the padding rows. With act kNone (h and b unread) and grad_h null it
// is the per-group column sums alone: the combine's output-bias gradient.
// Each lane takes rows_per_step(act) rows a step, all their loads issued before any is used:
// C3's routed gelu backward took 206 us with one row, 182 with two and 261 with four on an H100,
// and relu's, whose derivative is a compare, 172 to 175 us with one row and 184 to 187 with two
// (bench/moe_kernels_bench.cu). A lane visits the same rows in the same order either way, so the
// bias gradient's sums do not change.
constexpr int kBwdCols = 32, kBwdLanes = 8;
__host__ __device__ constexpr int rows_per_step(Act act) { return act == Act::kRelu ? 1 : 2; }
template <int W, Act act, class T>
__global__ void bias_act_backward_kernel(const T* __restrict__ grad_a, const T* __restrict__ h,
                                         const T* __restrict__ b, int64_t rows,
                                         int64_t rows_per_group, int64_t F,
                                         const int64_t* __restrict__ ends, int64_t G,
                                         T* __restrict__ grad_h, float* __restrict__ partial_b) {
  constexpr int kRows = rows_per_step(act);
  __shared__ float partial[kBwdLanes][kBwdCols * W];
  const int64_t g = blockIdx.y;
  const int64_t f = (int64_t{blockIdx.x} * kBwdCols + threadIdx.x) * W;
  int64_t begin, end;
  if (ends == nullptr) {
    begin = g * rows_per_group;
    end = begin + rows_per_group;
  } else {
    begin = g > 0 ? ends[g - 1] : 0;
    end = g < G ? ends[g] : rows;
  }
  {  // this block's chunk of the group's rows
    const int64_t n = end > begin ? end - begin : 0, chunks = gridDim.z;
    const int64_t per = (n + chunks - 1) / chunks;
    const int64_t from = per * blockIdx.z, to = per * (blockIdx.z + 1);
    const int64_t lo = begin + (from < n ? from : n);
    end = begin + (to < n ? to : n);
    begin = lo;
  }
  const bool padding = g >= G;
  float bv[W], acc[W];
#pragma unroll
  for (int j = 0; j < W; ++j) bv[j] = acc[j] = 0.f;
  if constexpr (act != Act::kNone) {
    if (f < F && !padding) loadw<W>(b + g * F + f, bv);
  }
  if (f < F) {
    // kRows rows a step (every kBwdLanes-th of the chunk), their loads in flight together.
    for (int64_t r0 = begin + threadIdx.y; r0 < end; r0 += int64_t{kBwdLanes} * kRows) {
      float gr[kRows][W], v[kRows][W];
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const int64_t r = r0 + int64_t{i} * kBwdLanes;
        if (r < end && !padding) {
          loadw<W>(grad_a + r * F + f, gr[i]);
          if constexpr (act != Act::kNone) loadw<W>(h + r * F + f, v[i]);
        }
      }
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const int64_t r = r0 + int64_t{i} * kBwdLanes;
        if (r >= end) continue;
        if (!padding) {
          if constexpr (act != Act::kNone) {
#pragma unroll
            for (int j = 0; j < W; ++j) gr[i][j] *= act_derivative(v[i][j] + bv[j], act);
          }
#pragma unroll
          for (int j = 0; j < W; ++j) acc[j] += gr[i][j];
        } else {
#pragma unroll
          for (int j = 0; j < W; ++j) gr[i][j] = 0.f;
        }
        if (grad_h != nullptr) storew<W>(grad_h + r * F + f, gr[i]);
      }
    }
  }
  if (padding) return;  // uniform per block: no thread of it reaches the barrier
#pragma unroll
  for (int j = 0; j < W; ++j) partial[threadIdx.y][threadIdx.x * W + j] = acc[j];
  __syncthreads();
  if (threadIdx.y == 0 && f < F) {
    float* out = partial_b + (int64_t{blockIdx.z} * G + g) * F + f;
#pragma unroll
    for (int j = 0; j < W; ++j) {
      float total = 0.f;
      for (int l = 0; l < kBwdLanes; ++l) total += partial[l][threadIdx.x * W + j];
      out[j] = total;
    }
  }
}

// out[i] = sum over chunks c (in order) of partial[c * n + i], stored in T.
template <class T>
__global__ void sum_chunks_kernel(const float* __restrict__ partial, int64_t chunks, int64_t n,
                                  T* __restrict__ out) {
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride) {
    float acc = 0.f;
    for (int64_t c = 0; c < chunks; ++c) acc += partial[c * n + i];
    out[i] = from_f<T>(acc);
  }
}

// ---- split-bf16 parts ----------------------------------------------------------------------

// I: the index type, 32-bit when the element count allows (a 64-bit division is slow).
template <class I>
__global__ void split_bf16_kernel(const float* __restrict__ in, I rows, I cols, SplitParts parts,
                                  __nv_bfloat16* __restrict__ out) {
  const I n = rows * cols;
  for (I i = I{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += I{gridDim.x} * blockDim.x) {
    const I r = i / cols, c = i - r * cols;
    const float v = in[i];
    __nv_bfloat16 p[3];
    p[0] = __float2bfloat16_rn(v);
    const float rest = v - __bfloat162float(p[0]);  // exact: v and p[0] share the leading bits
    p[1] = __float2bfloat16_rn(rest);
    p[2] = __float2bfloat16_rn(rest - __bfloat162float(p[1]));  // at most 8 bits are left: exact
    __nv_bfloat16* o = out + r * parts.n * cols + c;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (j < parts.n) o[j * cols] = p[parts.part[j]];
    }
  }
}

// out[r, c] = sum over j of in[r, j * cols + c], the last block first (the smallest parts).
template <class I>
__global__ void sum_blocks_kernel(const float* __restrict__ in, I rows, I cols, int n,
                                  float* __restrict__ out) {
  const I total = rows * cols;
  for (I i = I{blockIdx.x} * blockDim.x + threadIdx.x; i < total; i += I{gridDim.x} * blockDim.x) {
    const I r = i / cols, c = i - r * cols;
    const float* row = in + r * n * cols + c;
    float acc = row[(n - 1) * cols];
    for (int j = n - 2; j >= 0; --j) acc += row[j * cols];
    out[i] = acc;
  }
}

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

}  // namespace

std::string plan_slots(const int64_t* expert, int64_t n, int64_t num_experts, int64_t* slot,
                       int64_t* tokens_per_expert, void* stream) {
  if (num_experts == 0) return {};
  plan_slots_kernel<<<static_cast<unsigned>(num_experts), kPlanThreads, 0, as_stream(stream)>>>(
      expert, n, slot, tokens_per_expert);
  return launched("plan_slots");
}

std::string dispatch_index(const int64_t* expert, const int64_t* slot, const bool* kept,
                           const int64_t* order, const int64_t* starts, int64_t S, int k,
                           int64_t capacity, int64_t R, int64_t* dest, int64_t* src, void* stream) {
  if (R > 0 && cudaMemsetAsync(src, 0xff, sizeof(int64_t) * R, as_stream(stream)) != cudaSuccess) {
    return launched("dispatch_index (filling src with -1)");
  }
  const int64_t n = S * k;
  if (n == 0) return launched("dispatch_index");
  constexpr int threads = 256;
  const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, 4096);
  dispatch_index_kernel<<<static_cast<unsigned>(blocks), threads, 0, as_stream(stream)>>>(
      expert, slot, kept, order, starts, S, k, capacity, R, dest, src);
  return launched("dispatch_index");
}

std::string router_forward(const float* logits, int64_t S, int64_t E, int k, bool renorm,
                           float* probs, float* topk_w, int64_t* topk_idx, float* lse,
                           void* stream) {
  if (k < 1 || k > kMaxTopK || k > E) return "router_forward: top-k must be in [1, min(E, 8)]";
  if (S == 0) return {};
  const auto blocks = static_cast<unsigned>((S + kRouterWarps - 1) / kRouterWarps);
  router_forward_kernel<<<blocks, kRouterWarps * 32, 0, as_stream(stream)>>>(
      logits, S, static_cast<int>(E), k, renorm, probs, topk_w, topk_idx, lse);
  return launched("router_forward");
}

std::string router_backward(const float* probs, const int64_t* topk_idx, const float* topk_w,
                            const float* grad_probs, int64_t grad_probs_row_stride,
                            const float* grad_w, const float* grad_lse, int64_t S, int64_t E, int k,
                            bool renorm, float* grad_logits, void* stream) {
  if (k < 1 || k > kMaxTopK) return "router_backward: top-k must be in [1, 8]";
  if (S == 0) return {};
  const auto blocks = static_cast<unsigned>((S + kRouterWarps - 1) / kRouterWarps);
  router_backward_kernel<<<blocks, kRouterWarps * 32, 0, as_stream(stream)>>>(
      probs, topk_idx, topk_w, grad_probs, grad_probs_row_stride, grad_w, grad_lse, S,
      static_cast<int>(E), k, renorm, grad_logits);
  return launched("router_backward");
}

int64_t router_losses_workspace(int64_t S, int64_t E) {
  return (S + kLossRows - 1) / kLossRows * (2 * E + 1);
}

std::string router_losses(const float* probs, const float* lse, const int64_t* topk_idx, int64_t S,
                          int64_t E, int k, float* workspace, float* aux, float* z, float* f,
                          void* stream) {
  if (S <= 0 || E <= 0 || k <= 0) return "router_losses: needs tokens, experts and choices";
  if (E > kMaxLossExperts)
    return "router_losses: at most 12288 experts (their counts live in shared memory)";
  const int64_t blocks = (S + kLossRows - 1) / kLossRows;
  const size_t shared = E * sizeof(int) + kLossThreads * sizeof(float);
  router_losses_partial_kernel<<<static_cast<unsigned>(blocks), kLossThreads, shared,
                                 as_stream(stream)>>>(probs, lse, topk_idx, S, static_cast<int>(E),
                                                      k, workspace);
  router_losses_final_kernel<<<1, kLossThreads, 0, as_stream(stream)>>>(
      workspace, blocks, S, static_cast<int>(E), k, aux, z, f);
  return launched("router_losses");
}

// Packs of per_pack elements: every row and pointer on a pack boundary.
bool packable_by(int64_t per_pack, int64_t F, DType dtype,
                 std::initializer_list<const void*> ptrs) {
  if (F % per_pack != 0) return false;
  const uintptr_t bytes = static_cast<uintptr_t>(per_pack) * dtype_size(dtype);
  for (const void* p : ptrs) {
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % bytes != 0) return false;
  }
  return true;
}

std::string permute_forward(const void* x, DType x_dtype, const int64_t* src, int64_t R, int64_t H,
                            int k, void* buffer, DType buffer_dtype, void* stream) {
  if (R == 0 || H == 0) return {};
  const int width = pack_width(H, {{x, x_dtype}, {buffer, buffer_dtype}});
  with_dtype(x_dtype, [&](auto tx) {
    using TX = typename decltype(tx)::type;
    with_dtype(buffer_dtype, [&](auto tb) {
      using TB = typename decltype(tb)::type;
      with_width(width, [&](auto w) {
        permute_forward_kernel<decltype(w)::value, TX, TB>
            <<<static_cast<unsigned>((R + kRowWarps - 1) / kRowWarps), kRowWarps * 32, 0,
               as_stream(stream)>>>(static_cast<const TX*>(x), src, R, H, k,
                                    static_cast<TB*>(buffer));
      });
    });
  });
  return launched("permute_forward");
}

std::string permute_backward(const void* grad_buffer, DType buffer_dtype, const int64_t* dest,
                             int64_t S, int64_t R, int64_t H, int k, void* grad_x, DType x_dtype,
                             void* stream) {
  if (S == 0 || H == 0) return {};
  const int width = pack_width(H, {{grad_buffer, buffer_dtype}, {grad_x, x_dtype}});
  with_dtype(buffer_dtype, [&](auto tb) {
    using TB = typename decltype(tb)::type;
    with_dtype(x_dtype, [&](auto tx) {
      using TX = typename decltype(tx)::type;
      with_width(width, [&](auto w) {
        permute_backward_kernel<decltype(w)::value, TB, TX>
            <<<static_cast<unsigned>(S), kRowThreads, 0, as_stream(stream)>>>(
                static_cast<const TB*>(grad_buffer), dest, R, H, k, static_cast<TX*>(grad_x));
      });
    });
  });
  return launched("permute_backward");
}

std::string combine_forward(const void* y, DType y_dtype, const void* bias, RowGroups groups,
                            const int64_t* dest, const float* w, int64_t S, int64_t R, int64_t H,
                            int k, const void* residual, void* out, DType out_dtype, void* stream) {
  if (S == 0 || H == 0) return {};
  if (k < 1 || k > 1024) return "combine_forward: 1 to 1024 choices a token";
  const size_t shared = static_cast<size_t>(k) * (2 * sizeof(int64_t) + sizeof(float));
  const int width =
      pack_width(H, {{y, y_dtype}, {bias, y_dtype}, {residual, out_dtype}, {out, out_dtype}});
  with_dtype(y_dtype, [&](auto ty) {
    using TY = typename decltype(ty)::type;
    with_dtype(out_dtype, [&](auto to) {
      using TO = typename decltype(to)::type;
      with_width(width, [&](auto wv) {
        combine_forward_kernel<decltype(wv)::value, TY, TO>
            <<<static_cast<unsigned>(S), kRowThreads, shared, as_stream(stream)>>>(
                static_cast<const TY*>(y), static_cast<const TY*>(bias), groups.G,
                groups.rows_per_group, groups.ends, dest, w, R, H, k,
                static_cast<const TO*>(residual), static_cast<TO*>(out));
      });
    });
  });
  return launched("combine_forward");
}

std::string combine_backward(const void* grad_out, DType out_dtype, const void* y, DType y_dtype,
                             const void* bias, RowGroups groups, const int64_t* src, const float* w,
                             int64_t S, int64_t R, int64_t H, int k, void* grad_y, float* grad_w,
                             void* grad_bias, float* workspace, int64_t splits, void* stream) {
  if (H == 0) return {};
  const int width =
      pack_width(H, {{grad_out, out_dtype}, {y, y_dtype}, {bias, y_dtype}, {grad_y, y_dtype}});
  if (S > 0 &&
      cudaMemsetAsync(grad_w, 0, sizeof(float) * S * k, as_stream(stream)) != cudaSuccess) {
    return launched("combine_backward (zeroing the gate gradients)");
  }
  with_dtype(out_dtype, [&](auto to) {
    using TO = typename decltype(to)::type;
    with_dtype(y_dtype, [&](auto ty) {
      using TY = typename decltype(ty)::type;
      if (R > 0) {
        with_width(width, [&](auto wv) {
          combine_backward_kernel<decltype(wv)::value, TO, TY>
              <<<static_cast<unsigned>((R + kRowWarps - 1) / kRowWarps), kRowWarps * 32,
                 bias != nullptr ? shared_ends_bytes(groups.ends, groups.G) : 0,
                 as_stream(stream)>>>(static_cast<const TO*>(grad_out), static_cast<const TY*>(y),
                                      static_cast<const TY*>(bias), groups.G, groups.rows_per_group,
                                      groups.ends, src, w, R, H, k, static_cast<TY*>(grad_y),
                                      grad_w);
        });
      }
    });
  });
  if (std::string e = launched("combine_backward"); !e.empty()) return e;
  if (grad_bias != nullptr && groups.G > 0) {
    // The output bias's gradient: grad_y's column sums over each group, in row chunks.
    const int64_t rows = groups.ends != nullptr ? R : groups.G * groups.rows_per_group;
    return bias_act_backward(grad_y, nullptr, nullptr, y_dtype, groups.G, rows, H, groups.ends,
                             Act::kNone, nullptr, grad_bias, workspace, splits, stream);
  }
  return launched("combine_backward");
}

std::string gate_matrix(const int64_t* src, const float* w, RowGroups groups, int64_t S, int64_t R,
                        int k, float* gate, void* stream) {
  if (S == 0 || groups.G == 0) return {};
  if (cudaMemsetAsync(gate, 0, sizeof(float) * S * groups.G, as_stream(stream)) != cudaSuccess) {
    return launched("gate_matrix (zeroing)");
  }
  if (R == 0) return {};
  constexpr int threads = 256;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>((R + threads - 1) / threads, 4096));
  gate_matrix_kernel<<<blocks, threads, 0, as_stream(stream)>>>(
      src, w, R, k, groups.G, groups.rows_per_group, groups.ends, gate);
  return launched("gate_matrix");
}

// Elementwise launches over n elements: the block count, and whether 32-bit indices suffice.
constexpr int kEltThreads = 256;
unsigned elt_blocks(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kEltThreads - 1) / kEltThreads, 4096));
}
bool fits32(int64_t n) { return n < (int64_t{1} << 31); }

std::string bias_act_forward(const void* h, const void* b, DType dtype, int64_t G, int64_t rows,
                             int64_t F, const int64_t* ends, Act act, void* a, void* stream) {
  if (rows == 0 || F == 0 || G == 0) return {};
  const int64_t per_group = ends == nullptr ? rows / G : 0;
  const bool v = packable_by(16 / static_cast<int64_t>(dtype_size(dtype)), F, dtype, {h, b, a});
  with_dtype_act(dtype, act, [&](auto tag, auto act_tag) {
    using T = typename decltype(tag)::type;
    constexpr Act A = decltype(act_tag)::value;
    constexpr int kW = 16 / sizeof(T);
    auto kernel = v ? bias_act_forward_kernel<kW, A, T> : bias_act_forward_kernel<1, A, T>;
    // Threads: a row's packs rounded up to warps, 64 to 256; blocks: at most 8192.
    const int64_t packs = (F + (v ? kW : 1) - 1) / (v ? kW : 1);
    const int threads =
        static_cast<int>(std::min<int64_t>(256, std::max<int64_t>(64, (packs + 31) / 32 * 32)));
    const auto blocks = static_cast<unsigned>(std::min<int64_t>(rows, 8192));
    kernel<<<blocks, threads, shared_ends_bytes(ends, G), as_stream(stream)>>>(
        static_cast<const T*>(h), static_cast<const T*>(b), rows, per_group, F, ends, G,
        static_cast<T*>(a));
  });
  return launched("bias_act_forward");
}

int64_t bias_act_backward_splits(int64_t G, int64_t rows) {
  // Chunks of about 128 rows (16 a lane), at most 64 per group.
  const int64_t per_group = G > 0 ? rows / G : rows;
  return std::max<int64_t>(1, std::min<int64_t>(64, (per_group + 127) / 128));
}

std::string bias_act_backward(const void* grad_a, const void* h, const void* b, DType dtype,
                              int64_t G, int64_t rows, int64_t F, const int64_t* ends, Act act,
                              void* grad_h, void* grad_b, float* workspace, int64_t splits,
                              void* stream) {
  if (F == 0 || G == 0) return {};
  if (splits < 1 || splits > 65535) return "bias_act_backward: 1 to 65535 row chunks";
  if (act != Act::kNone && (h == nullptr || b == nullptr))
    return "bias_act_backward: the activation's derivative needs h and b";
  const int64_t per_group = ends == nullptr ? rows / G : 0;
  constexpr int kW = 4;
  const bool v = packable_by(kW, F, dtype, {grad_a, h, b, grad_h, grad_b});
  const dim3 block(kBwdCols, kBwdLanes);
  with_dtype_act(dtype, act, [&](auto tag, auto act_tag) {
    using T = typename decltype(tag)::type;
    constexpr Act A = decltype(act_tag)::value;
    const int64_t cols_per_block = int64_t{kBwdCols} * (v ? kW : 1);
    // Block row G zeroes the padding rows of grad_h (none to write: no such row).
    const bool pad_row = ends != nullptr && grad_h != nullptr;
    const dim3 grid(static_cast<unsigned>((F + cols_per_block - 1) / cols_per_block),
                    static_cast<unsigned>(pad_row ? G + 1 : G), static_cast<unsigned>(splits));
    auto kernel = v ? bias_act_backward_kernel<kW, A, T> : bias_act_backward_kernel<1, A, T>;
    kernel<<<grid, block, 0, as_stream(stream)>>>(
        static_cast<const T*>(grad_a), static_cast<const T*>(h), static_cast<const T*>(b), rows,
        per_group, F, ends, G, static_cast<T*>(grad_h), workspace);
    sum_chunks_kernel<T><<<elt_blocks(G * F), kEltThreads, 0, as_stream(stream)>>>(
        workspace, splits, G * F, static_cast<T*>(grad_b));
  });
  return launched("bias_act_backward");
}

std::string split_bf16(const float* in, int64_t rows, int64_t cols, SplitParts parts, void* out,
                       void* stream) {
  if (parts.n < 1 || parts.n > 4) return "split_bf16: 1 to 4 parts";
  for (int j = 0; j < parts.n; ++j) {
    if (parts.part[j] < 0 || parts.part[j] > 2)
      return "split_bf16: a part is 0 (hi), 1 (mid) or 2 (lo)";
  }
  const int64_t n = rows * cols;
  if (n == 0) return {};
  auto* o = static_cast<__nv_bfloat16*>(out);
  if (fits32(n * parts.n)) {
    split_bf16_kernel<uint32_t><<<elt_blocks(n), kEltThreads, 0, as_stream(stream)>>>(
        in, static_cast<uint32_t>(rows), static_cast<uint32_t>(cols), parts, o);
  } else {
    split_bf16_kernel<int64_t>
        <<<elt_blocks(n), kEltThreads, 0, as_stream(stream)>>>(in, rows, cols, parts, o);
  }
  return launched("split_bf16");
}

std::string sum_blocks(const float* in, int64_t rows, int64_t cols, int n, float* out,
                       void* stream) {
  if (n < 1) return "sum_blocks: at least one block";
  const int64_t total = rows * cols;
  if (total == 0) return {};
  if (fits32(total * n)) {
    sum_blocks_kernel<uint32_t><<<elt_blocks(total), kEltThreads, 0, as_stream(stream)>>>(
        in, static_cast<uint32_t>(rows), static_cast<uint32_t>(cols), n, out);
  } else {
    sum_blocks_kernel<int64_t>
        <<<elt_blocks(total), kEltThreads, 0, as_stream(stream)>>>(in, rows, cols, n, out);
  }
  return launched("sum_blocks");
}

}  // namespace sy::kernels
