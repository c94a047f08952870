// The fast paths on the GPU against the plain ones (bf16 autocast, as train.dtype bf16 runs):
// moe.expert_gemm grouped (one grouped GEMM over only the kept rows, LibTorch >= 2.8 on CUDA)
// against batched (one bmm over the padded [E, C, H] buffer), same weights, same input, same
// upstream gradient. Both compute in bf16 with fp32 accumulation, in different GEMM kernels, so
// they agree to bf16 rounding: relative error of each tensor (Frobenius) below 1e-2. Skips
// without CUDA.
#include <algorithm>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moe/moe_layer.h"
#include "moe/moe_test_util.h"
#include "train/autocast.h"

namespace sy {
namespace {

using testing_moe::make_test_layer;
using testing_moe::seeded_randn;

double rel_err(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.to(at::kCPU, at::kDouble), y = b.to(at::kCPU, at::kDouble);
  return (x - y).norm().item<double>() / std::max(y.norm().item<double>(), 1e-30);
}

struct LayerRun {
  at::Tensor y, gx, gw1, gw2, grouter;
  int64_t dropped = 0;
};

LayerRun run_layer(MoeConfig cfg, const std::string& gemm, const at::Tensor& x_cpu, const at::Tensor& g_cpu) {
  cfg.expert_gemm = gemm;
  MoELayer layer = make_test_layer(cfg, x_cpu.size(1), 512, /*seed=*/41);
  layer->to(at::kCUDA, at::kFloat);
  const at::Tensor x = x_cpu.to(at::kCUDA, at::kFloat).requires_grad_(true);
  LayerRun r;
  {
    CudaAutocast autocast(true);
    MoeOutput out = layer->forward(x);
    r.y = out.y;
    ((out.y.to(at::kFloat) * g_cpu.to(at::kCUDA, at::kFloat)).sum() + 0.01 * out.aux_loss).backward();
  }
  r.gx = x.grad();
  r.gw1 = layer->experts->w1.grad();
  r.gw2 = layer->experts->w2.grad();
  r.grouter = layer->router->named_parameters()["weight"].grad();
  r.dropped = layer->last_stats().dropped.item<int64_t>();
  return r;
}

TEST(MoELayerCuda, GroupedGemmEqualsBatched) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device (or a LibTorch without CUDA)";
  for (const double factor : {0.5, 1.25, 0.0}) {
    MoeConfig cfg;
    cfg.num_experts = 8;
    cfg.top_k = 2;
    cfg.router = "topk";
    cfg.capacity_factor = factor;
    cfg.activation = "gelu";
    const at::Tensor x = seeded_randn({1024, 256}, 42).to(at::kFloat);
    const at::Tensor g = seeded_randn({1024, 256}, 43).to(at::kFloat);
    const LayerRun a = run_layer(cfg, "batched", x, g), b = run_layer(cfg, "grouped", x, g);
    const std::string what = "capacity factor " + std::to_string(factor);
    EXPECT_EQ(a.dropped, b.dropped) << what;
    if (factor == 0.5) {
      EXPECT_GT(a.dropped, 0) << what;
    }
    EXPECT_TRUE(at::isfinite(b.y).all().item<bool>()) << what;
    EXPECT_LT(rel_err(b.y, a.y), 1e-2) << what << " y";
    EXPECT_LT(rel_err(b.gx, a.gx), 1e-2) << what << " grad x";
    EXPECT_LT(rel_err(b.gw1, a.gw1), 1e-2) << what << " grad w1";
    EXPECT_LT(rel_err(b.gw2, a.gw2), 1e-2) << what << " grad w2";
    EXPECT_LT(rel_err(b.grouter, a.grouter), 1e-2) << what << " grad router";
  }
}

}  // namespace
}  // namespace sy
