// Model FLOPs per token against a count by hand for a small model.
#include <gtest/gtest.h>

#include "config/config.h"
#include "train/throughput.h"

namespace sy {
namespace {

Config small_model() {
  Config c;
  c.model.n_layers = 2;
  c.model.d_model = 4;
  c.model.block_size = 8;
  c.model.d_ff = 16;
  c.moe.every = 2;  // block 2 is MoE, block 1 dense
  c.moe.num_experts = 4;
  c.moe.top_k = 2;
  c.moe.router = RouterKind::kTopK;
  c.moe.d_ff = 0;  // experts use model.d_ff
  c.moe.activation = Activation::kGelu;
  return c;
}

TEST(Throughput, ModelFlopsPerTokenByHand) {
  Config c = small_model();
  // Forward, per token:
  //   attention, 2 blocks: 2 x (8 d^2 + 4 T d) = 2 x (128 + 128)   = 512
  //   dense FFN, 1 block:  2 x 2 x d x F = 4 x 4 x 16               = 256
  //   MoE, 1 block: router 2 d E = 32; 2 experts x 2 x 2 d F = 512 = 544
  //   LM head: 2 d V = 2 x 4 x 10                                 = 80
  // Training = 3 x forward = 3 x 1392.
  EXPECT_DOUBLE_EQ(model_flops_per_token(c, 10, 1), 3.0 * 1392);
  // SwiGLU experts have three matrices: 2 x 2 x 3 x d x F = 768 instead of 512.
  c.moe.activation = Activation::kSwiGlu;
  EXPECT_DOUBLE_EQ(model_flops_per_token(c, 10, 1), 3.0 * (1392 + 256));
  // Dense routing sends every token to all 4 experts.
  c.moe.activation = Activation::kGelu;
  c.moe.router = RouterKind::kDense;
  EXPECT_DOUBLE_EQ(model_flops_per_token(c, 10, 1), 3.0 * (1392 + 512));
  // Separate expert width.
  c.moe.router = RouterKind::kTopK;
  c.moe.d_ff = 8;
  EXPECT_DOUBLE_EQ(model_flops_per_token(c, 10, 1), 3.0 * (1392 - 256));
  // Two shared experts of the routed width (8): every token through 2 x 2 x 2 d 8 = 256 more.
  c.moe.shared_experts = 2;
  EXPECT_DOUBLE_EQ(model_flops_per_token(c, 10, 1), 3.0 * 1392);
  // ... or of their own width 4: 2 x 2 x 2 d 4 = 128.
  c.moe.shared_d_ff = 4;
  EXPECT_DOUBLE_EQ(model_flops_per_token(c, 10, 1), 3.0 * (1392 - 128));
}

TEST(Throughput, DenseGemmRateOnCpuIsPositive) {
  Config c = small_model();
  c.data.batch_size = 2;  // M = max(1024, 16) = 1024
  const GemmRate r = measure_dense_gemm_rate(c, c10::Device(c10::kCPU));
  EXPECT_EQ(r.m, 1024);
  EXPECT_EQ(r.k, 4);
  EXPECT_EQ(r.n, 16);
  EXPECT_GT(r.tflops, 0.0);
}

}  // namespace
}  // namespace sy
