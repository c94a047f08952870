// Shared by the GPU layer tests (layer_cuda_test.cpp, fused_cuda_test.cpp): one forward and
// backward of a test layer on CUDA, and the relative error that compares two runs.
#pragma once

#include <algorithm>
#include <string>

#include <torch/torch.h>

#include "moe/moe_layer.h"
#include "moe/moe_test_util.h"
#include "common/autocast.h"

namespace sy::testing_moe {

// Frobenius relative error of a against b, in double on the host.
inline double rel_err(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.to(at::kCPU, at::kDouble), y = b.to(at::kCPU, at::kDouble);
  return (x - y).norm().item<double>() / std::max(y.norm().item<double>(), 1e-30);
}

struct LayerRun {
  at::Tensor y, gx, gw1, gb1, gw2, gb2, grouter;
  double aux = 0, z = 0;
  int64_t dropped = 0;
  std::string path;             // MoeStats::path: which way the layer ran
  int64_t buffer_capacity = 0;  // MoeStats::buffer_capacity
  int64_t largest_load = 0;     // the most choices routed to one expert, before drops
};

// make_test_layer(cfg, H, d_ff, seed 41) in fp32 on CUDA, x [S, H] requiring grad, upstream
// gradient g, the aux and z losses with coefficients 0.01 and 0.001; bf16 autocast when asked.
inline LayerRun run_cuda_layer(const MoeConfig& cfg, int64_t d_ff, bool bf16,
                               const at::Tensor& x_cpu, const at::Tensor& g_cpu) {
  MoELayer layer = make_test_layer(cfg, x_cpu.size(1), d_ff, /*seed=*/41);
  layer->to(at::kCUDA, at::kFloat);
  const at::Tensor x = x_cpu.to(at::kCUDA, at::kFloat).requires_grad_(true);
  LayerRun r;
  {
    CudaAutocast autocast(bf16);
    MoeOutput out = layer->forward(x);
    r.y = out.y;
    r.aux = out.aux_loss.item<double>();
    r.z = out.z_loss.item<double>();
    torch::autograd::backward(
        {out.y, 0.01 * out.aux_loss + 0.001 * out.z_loss},
        {g_cpu.to(at::kCUDA, out.y.scalar_type()), at::ones({}, out.aux_loss.options())});
  }
  r.gx = x.grad();
  r.gw1 = layer->experts->w1.grad();
  r.gb1 = layer->experts->b1.grad();
  r.gw2 = layer->experts->w2.grad();
  r.gb2 = layer->experts->b2.grad();
  r.grouter = layer->router->named_parameters()["weight"].grad();
  r.dropped = layer->last_stats().dropped.item<int64_t>();
  r.path = path_name(layer->last_stats().path);
  r.buffer_capacity = layer->last_stats().buffer_capacity;
  r.largest_load = layer->last_stats().tokens_per_expert.max().item<int64_t>();
  return r;
}

}  // namespace sy::testing_moe
