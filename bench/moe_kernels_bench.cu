// The MoE layer's fused kernels (src/moe/kernels) alone, on C3's shapes (docs/bench.md): 8192
// tokens of width 2048, top-6 of 64 experts, expert width 1408, bf16, uniform random routing into
// a padded buffer trimmed to the largest load (Note [Trimmed expert buffer]), slots numbered as
// the layer numbers them. Each kernel is timed by CUDA events over `reps` repetitions (default
// 30) after 3 warm-ups, with L2 flushed (a 256 MiB memset) before each, and printed with its
// nominal traffic (bytes each array is read or written once) and the rate that makes; a
// device-to-device copy gives the memory's practical rate. The checksums let two builds be
// compared for equal outputs. No LibTorch:
//
//   nvcc -O3 -std=c++17 -arch=sm_90 -Isrc bench/moe_kernels_bench.cu \
//     src/moe/kernels/moe_kernels.cu -o moe_kernels_bench && ./moe_kernels_bench [reps]
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "moe/kernels/moe_kernels.h"

using namespace sy::kernels;

#define CK(x)                                                                   \
  do {                                                                          \
    cudaError_t e = (x);                                                        \
    if (e != cudaSuccess) {                                                     \
      fprintf(stderr, "CUDA %s at line %d\n", cudaGetErrorString(e), __LINE__); \
      exit(1);                                                                  \
    }                                                                           \
  } while (0)
#define OK(x)                                                  \
  do {                                                         \
    std::string e = (x);                                       \
    if (!e.empty()) {                                          \
      fprintf(stderr, "%s at line %d\n", e.c_str(), __LINE__); \
      exit(1);                                                 \
    }                                                          \
  } while (0)

template <class T> T* dev(size_t n) {
  T* p;
  CK(cudaMalloc(&p, n * sizeof(T)));
  return p;
}
void fill_bf16(__nv_bfloat16* d, size_t n, std::mt19937& g, float scale) {
  std::vector<__nv_bfloat16> h(n);
  std::normal_distribution<float> nd(0.f, scale);
  for (auto& v : h) v = __float2bfloat16(nd(g));
  CK(cudaMemcpy(d, h.data(), n * 2, cudaMemcpyHostToDevice));
}
double checksum_bf16(const void* d, size_t n) {
  std::vector<__nv_bfloat16> h(n);
  CK(cudaMemcpy(h.data(), d, n * 2, cudaMemcpyDeviceToHost));
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += __bfloat162float(h[i]) * (1.0 + (i % 7) * 0.1);
  return s;
}
double checksum_f(const float* d, size_t n) {
  std::vector<float> h(n);
  CK(cudaMemcpy(h.data(), d, n * 4, cudaMemcpyDeviceToHost));
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += h[i] * (1.0 + (i % 7) * 0.1);
  return s;
}

int main(int argc, char** argv) {
  const int64_t S = 8192, k = 6, E = 64, H = 2048, F = 1408;
  const int reps = argc > 1 ? atoi(argv[1]) : 30;
  std::mt19937 gen(1234);
  // Routing: k distinct experts a token, uniform.
  std::vector<int64_t> expert(S * k);
  std::vector<int> perm(E);
  for (int e = 0; e < E; ++e) perm[e] = e;
  for (int64_t t = 0; t < S; ++t) {
    for (int c = 0; c < k; ++c) {
      std::uniform_int_distribution<int> u(c, E - 1);
      std::swap(perm[c], perm[u(gen)]);
      expert[t * k + c] = perm[c];
    }
  }
  // Slots as the layer numbers them (Note [Slot order] in src/moe/plan.h): all first choices in
  // token order, then all second choices, ...
  std::vector<int64_t> load(E, 0), slot(S * k);
  for (int64_t c = 0; c < k; ++c) {
    for (int64_t t = 0; t < S; ++t) slot[t * k + c] = load[expert[t * k + c]]++;
  }
  int64_t maxload = *std::max_element(load.begin(), load.end());
  const int64_t Cb = (maxload + 7) / 8 * 8, R = E * Cb;
  std::vector<int64_t> dest(S * k), src(R, -1);
  for (int64_t i = 0; i < S * k; ++i) {
    dest[i] = expert[i] * Cb + slot[i];
    src[dest[i]] = i;
  }
  printf("S %ld k %ld E %ld H %ld F %ld: C_b %ld, R %ld rows (%ld filled)\n", (long)S, (long)k,
         (long)E, (long)H, (long)F, (long)Cb, (long)R, (long)(S * k));
  int64_t* d_dest = dev<int64_t>(S * k);
  int64_t* d_src = dev<int64_t>(R);
  CK(cudaMemcpy(d_dest, dest.data(), S * k * 8, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_src, src.data(), R * 8, cudaMemcpyHostToDevice));
  auto* x = dev<__nv_bfloat16>(S * H);
  auto* buf = dev<__nv_bfloat16>(R * H);
  auto* gx = dev<__nv_bfloat16>(S * H);
  auto* y = dev<__nv_bfloat16>(R * H);
  auto* gy = dev<__nv_bfloat16>(R * H);
  auto* out = dev<__nv_bfloat16>(S * H);
  auto* gout = dev<__nv_bfloat16>(S * H);
  auto* b2 = dev<__nv_bfloat16>(E * H);
  auto* hh = dev<__nv_bfloat16>(R * F);
  auto* aa = dev<__nv_bfloat16>(R * F);
  auto* ga = dev<__nv_bfloat16>(R * F);
  auto* gh = dev<__nv_bfloat16>(R * F);
  auto* b1 = dev<__nv_bfloat16>(E * F);
  auto* gb1 = dev<__nv_bfloat16>(E * F);
  float* w = dev<float>(S * k);
  float* gw = dev<float>(S * k);
  const int64_t splits = bias_act_backward_splits(E, R);
  float* ws = dev<float>(splits * E * F);
  char* flush = dev<char>(size_t{256} << 20);
  fill_bf16(x, S * H, gen, 1.f);
  fill_bf16(y, R * H, gen, 1.f);
  fill_bf16(gout, S * H, gen, 1.f);
  fill_bf16(b2, E * H, gen, 0.1f);
  fill_bf16(hh, R * F, gen, 1.f);
  fill_bf16(ga, R * F, gen, 1.f);
  fill_bf16(b1, E * F, gen, 0.1f);
  {
    std::vector<float> hw(S * k);
    std::uniform_real_distribution<float> u(0.f, 1.f);
    for (auto& v : hw) v = u(gen);
    CK(cudaMemcpy(w, hw.data(), S * k * 4, cudaMemcpyHostToDevice));
  }
  cudaStream_t st;
  CK(cudaStreamCreate(&st));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  RowGroups groups;
  groups.G = E;
  groups.rows_per_group = Cb;
  const DType bf = DType::kBFloat16;
  auto time = [&](const char* name, double mbytes, auto&& fn) {
    std::vector<float> ms;
    for (int i = 0; i < reps + 3; ++i) {
      CK(cudaMemsetAsync(flush, i, size_t{256} << 20, st));
      CK(cudaEventRecord(e0, st));
      fn();
      CK(cudaEventRecord(e1, st));
      CK(cudaEventSynchronize(e1));
      float t;
      CK(cudaEventElapsedTime(&t, e0, e1));
      if (i >= 3) ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    const double med = ms[ms.size() / 2] * 1e3;
    printf("%-28s median %7.1f us (min %7.1f)  %6.0f MB  %5.2f TB/s\n", name, med, ms[0] * 1e3,
           mbytes, mbytes / med);  // MB per us = TB/s
  };
  const double MB = 1e-6;
  const double filled = double(S * k);
  time("permute_forward", (S * H + R * H) * 2 * MB,
       [&] { OK(permute_forward(x, bf, d_src, R, H, k, buf, bf, st)); });
  printf("  checksum buffer %.6e\n", checksum_bf16(buf, R * H));
  time("permute_backward", (filled * H + S * H) * 2 * MB,
       [&] { OK(permute_backward(buf, bf, d_dest, S, R, H, k, gx, bf, st)); });
  printf("  checksum grad_x %.6e\n", checksum_bf16(gx, S * H));
  time("combine_forward (bias)", (filled * H + S * H) * 2 * MB, [&] {
    OK(combine_forward(y, bf, b2, groups, d_dest, w, S, R, H, k, nullptr, out, bf, st));
  });
  printf("  checksum out %.6e\n", checksum_bf16(out, S * H));
  time("combine_backward (bias)", (S * H + filled * H + R * H) * 2 * MB, [&] {
    OK(combine_backward(gout, bf, y, bf, b2, groups, d_src, w, S, R, H, k, gy, gw, nullptr, nullptr,
                        1, st));
  });
  printf("  checksum grad_y %.6e grad_w %.6e\n", checksum_bf16(gy, R * H), checksum_f(gw, S * k));
  time("bias_act_forward gelu", 2.0 * R * F * 2 * MB,
       [&] { OK(bias_act_forward(hh, b1, bf, E, R, F, nullptr, Act::kGelu, aa, st)); });
  printf("  checksum a %.6e\n", checksum_bf16(aa, R * F));
  time("bias_act_backward gelu", 3.0 * R * F * 2 * MB, [&] {
    OK(bias_act_backward(ga, hh, b1, bf, E, R, F, nullptr, Act::kGelu, gh, gb1, ws, splits, st));
  });
  printf("  checksum grad_h %.6e grad_b %.6e\n", checksum_bf16(gh, R * F),
         checksum_bf16(gb1, E * F));
  // The shared experts' shapes: one group of S rows of 2F.
  time("bias_act_forward shared", 2.0 * S * 2 * F * 2 * MB,
       [&] { OK(bias_act_forward(hh, b1, bf, 1, S, 2 * F, nullptr, Act::kGelu, aa, st)); });
  time("bias_act_backward shared", 3.0 * S * 2 * F * 2 * MB, [&] {
    OK(bias_act_backward(ga, hh, b1, bf, 1, S, 2 * F, nullptr, Act::kGelu, gh, gb1, ws,
                         bias_act_backward_splits(1, S), st));
  });
  time("bias_act_forward relu", 2.0 * R * F * 2 * MB,
       [&] { OK(bias_act_forward(hh, b1, bf, E, R, F, nullptr, Act::kRelu, aa, st)); });
  time("bias_act_backward relu", 3.0 * R * F * 2 * MB, [&] {
    OK(bias_act_backward(ga, hh, b1, bf, E, R, F, nullptr, Act::kRelu, gh, gb1, ws, splits, st));
  });
  time("d2d copy (R x H)", 2.0 * R * H * 2 * MB,
       [&] { CK(cudaMemcpyAsync(gy, y, R * H * 2, cudaMemcpyDeviceToDevice, st)); });
  return 0;
}
