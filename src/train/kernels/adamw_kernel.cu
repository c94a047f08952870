// See adamw_kernel.h.
#include "train/kernels/adamw_kernel.h"

#include <algorithm>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace sy::kernels {
namespace {

struct alignas(8) Bf16x4 {
  __nv_bfloat16 v[4];
};

__device__ __forceinline__ void update(float g, float& w, float& m, float& v, const AdamWHyper& h) {
  w -= h.lr * h.weight_decay * w;
  m = h.beta1 * m + (1.f - h.beta1) * g;
  v = h.beta2 * v + (1.f - h.beta2) * g * g;
  const float step_size = h.lr / h.bias_correction1;
  const float denom = sqrtf(v) / h.bias_correction2_sqrt + h.eps;
  w -= step_size * m / denom;
}

// V: four elements a step (16-byte fp32 and 8-byte bf16 accesses), else one.
template <bool V>
__global__ void adamw_master_kernel(const __nv_bfloat16* __restrict__ grad,
                                    float* __restrict__ master, float* __restrict__ exp_avg,
                                    float* __restrict__ exp_avg_sq,
                                    __nv_bfloat16* __restrict__ param, int64_t n, AdamWHyper h) {
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  if constexpr (V) {
    for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n / 4; i += stride) {
      const Bf16x4 g = reinterpret_cast<const Bf16x4*>(grad)[i];
      float4 w = reinterpret_cast<float4*>(master)[i];
      float4 m = reinterpret_cast<float4*>(exp_avg)[i];
      float4 v = reinterpret_cast<float4*>(exp_avg_sq)[i];
      update(__bfloat162float(g.v[0]), w.x, m.x, v.x, h);
      update(__bfloat162float(g.v[1]), w.y, m.y, v.y, h);
      update(__bfloat162float(g.v[2]), w.z, m.z, v.z, h);
      update(__bfloat162float(g.v[3]), w.w, m.w, v.w, h);
      reinterpret_cast<float4*>(master)[i] = w;
      reinterpret_cast<float4*>(exp_avg)[i] = m;
      reinterpret_cast<float4*>(exp_avg_sq)[i] = v;
      Bf16x4 p;
      p.v[0] = __float2bfloat16_rn(w.x);
      p.v[1] = __float2bfloat16_rn(w.y);
      p.v[2] = __float2bfloat16_rn(w.z);
      p.v[3] = __float2bfloat16_rn(w.w);
      reinterpret_cast<Bf16x4*>(param)[i] = p;
    }
  } else {
    for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride) {
      float w = master[i], m = exp_avg[i], v = exp_avg_sq[i];
      update(__bfloat162float(grad[i]), w, m, v, h);
      master[i] = w;
      exp_avg[i] = m;
      exp_avg_sq[i] = v;
      param[i] = __float2bfloat16_rn(w);
    }
  }
}

bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace

std::string adamw_master_step(const void* grad_bf16, float* master, float* exp_avg,
                              float* exp_avg_sq, void* param_bf16, int64_t n, const AdamWHyper& h,
                              void* stream) {
  if (n == 0) return {};
  const auto* g = static_cast<const __nv_bfloat16*>(grad_bf16);
  auto* p = static_cast<__nv_bfloat16*>(param_bf16);
  auto s = static_cast<cudaStream_t>(stream);
  constexpr int threads = 256;
  const bool v = n % 4 == 0 && aligned(g, 8) && aligned(p, 8) && aligned(master, 16) &&
                 aligned(exp_avg, 16) && aligned(exp_avg_sq, 16);
  const int64_t items = v ? n / 4 : n;
  const auto blocks =
      static_cast<unsigned>(std::min<int64_t>((items + threads - 1) / threads, 4096));
  if (v) {
    adamw_master_kernel<true><<<blocks, threads, 0, s>>>(g, master, exp_avg, exp_avg_sq, p, n, h);
  } else {
    adamw_master_kernel<false><<<blocks, threads, 0, s>>>(g, master, exp_avg, exp_avg_sq, p, n, h);
  }
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? std::string()
                          : std::string("adamw_master_step: ") + cudaGetErrorString(e);
}

}  // namespace sy::kernels
