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

#include "moe/layer_cuda_util.h"
#include "moe/moe_layer.h"
#include "moe/moe_test_util.h"

namespace sy {
namespace {

using testing_moe::LayerRun;
using testing_moe::rel_err;
using testing_moe::run_cuda_layer;
using testing_moe::seeded_randn;

LayerRun run_layer(MoeConfig cfg, const std::string& gemm, const at::Tensor& x,
                   const at::Tensor& g) {
  cfg.expert_gemm = parse_choice_or_throw<ExpertGemm>(gemm, "expert_gemm");
  cfg.fused_kernels =
      false;  // LibTorch's ops around both GEMMs (tests/moe/fused_cuda_test.cpp: fused)
  return run_cuda_layer(cfg, /*d_ff=*/512, /*bf16=*/true, x, g);
}

TEST(MoELayerCuda, GroupedGemmEqualsBatched) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device (or a LibTorch without CUDA)";
  for (const double factor : {0.5, 1.25, 0.0}) {
    MoeConfig cfg;
    cfg.num_experts = 8;
    cfg.top_k = 2;
    cfg.router = RouterKind::kTopK;
    cfg.capacity_factor = factor;
    cfg.activation = Activation::kGelu;
    const at::Tensor x = seeded_randn({1024, 256}, 42).to(at::kFloat);
    const at::Tensor g = seeded_randn({1024, 256}, 43).to(at::kFloat);
    const LayerRun a = run_layer(cfg, "batched", x, g), b = run_layer(cfg, "grouped", x, g);
    const std::string what = "capacity factor " + std::to_string(factor);
    EXPECT_EQ(a.path, factor == 0.0 ? "dropless" : "padded") << what;
    EXPECT_EQ(b.path, factor == 0.0 ? "dropless" : "grouped") << what;
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
