// The memory estimate (Note [Memory estimate] in src/model/memory.h): its parameter count is the
// model's exact count for every kind of block, and its terms follow the documented formula.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <string>

#include "config/config.h"
#include "model/gpt.h"
#include "model/memory.h"
#include "parallel/communicator.h"

namespace sy {
namespace {

int64_t real_parameters(const Config& c, int64_t vocab) {
  GPT model(c.model, c.moe, vocab, make_self_communicator(), /*seed=*/1, c.data.tasks);
  int64_t n = 0;
  for (const auto& p : model->parameters()) n += p.numel();
  return n;
}

Config small() {
  Config c;
  c.model.n_layers = 3;
  c.model.d_model = 16;
  c.model.n_heads = 2;
  c.model.d_ff = 24;
  c.model.block_size = 8;
  c.moe.num_experts = 4;
  return c;
}

TEST(MemoryEstimate, ParameterCountIsTheModels) {
  const std::vector<std::pair<const char*, std::function<void(Config&)>>> variants = {
      {"defaults", [](Config&) {}},
      {"dense", [](Config& c) { c.moe.every = 0; }},
      {"every 2, no bias",
       [](Config& c) {
         c.moe.every = 2;
         c.model.bias = false;
       }},
      {"swiglu, moe.d_ff",
       [](Config& c) {
         c.moe.activation = Activation::kSwiGlu;
         c.moe.d_ff = 40;
       }},
      {"shared experts",
       [](Config& c) {
         c.moe.shared_experts = 2;
         c.moe.shared_d_ff = 12;
       }},
      {"bias balancing (a buffer, not a parameter)",
       [](Config& c) { c.moe.balance = BalanceKind::kAuxBias; }},
      {"noisy router", [](Config& c) { c.moe.router = RouterKind::kNoisyTopK; }},
      {"encoder", [](Config& c) { c.model.kind = ModelKind::kEncoder; }},
      {"encoder_decoder",
       [](Config& c) {
         c.model.kind = ModelKind::kEncoderDecoder;
         c.moe.where = MoeWhere::kDecoder;
       }},
      {"tasks: own head, learned masks",
       [](Config& c) {
         c.data.tasks = {{"a", "", DataFormat::kText, 0, 1.0, {0, 1}, TaskHead::kOwn},
                         {"b", "", DataFormat::kText, 1, 1.0, {}, TaskHead::kShared}};
         c.moe.task_masks = TaskMaskKind::kLearned;
       }},
  };
  for (const auto& [name, change] : variants) {
    SCOPED_TRACE(name);
    Config c = small();
    change(c);
    const int64_t vocab = 37;
    const int64_t real = real_parameters(c, vocab);
    EXPECT_EQ(count_parameters(c, vocab, /*ep_size=*/1), real);
    const MemoryEstimate est = estimate_memory(c, vocab, 1);
    EXPECT_EQ(est.parameters, real);
    ASSERT_EQ(est.terms.at(0).name, "parameters");
    EXPECT_EQ(est.terms.at(0).bytes, 4.0 * static_cast<double>(real));  // fp32
  }
}

TEST(MemoryEstimate, ExpertParallelRanksHoldTheirShareOfExperts) {
  Config c = small();
  const int64_t H = 16, f = 24, E = 4, layers = 3;
  const int64_t per_expert = H * f + f * H + f + H;  // w1, w2, b1, b2
  EXPECT_EQ(count_parameters(c, 37, 1) - count_parameters(c, 37, 2), layers * (E / 2) * per_expert);
}

TEST(MemoryEstimate, TermsFollowTheFormula) {
  Config c = small();
  c.moe.every = 0;  // dense: activations per token per block 6H + 2 n_heads T + 2H + 2H + 2 f
  const int64_t vocab = 37;
  const MemoryEstimate est = estimate_memory(c, vocab, 1);
  const double P = static_cast<double>(est.parameters);
  ASSERT_EQ(est.terms.size(), 5u);
  EXPECT_EQ(est.terms[1].name, "gradients");
  EXPECT_EQ(est.terms[1].bytes, 4.0 * P);
  EXPECT_EQ(est.terms[2].name, "optimizer state");
  EXPECT_EQ(est.terms[2].bytes, 8.0 * P);  // AdamW's two fp32 moments
  const double H = 16, T = 8, heads = 2, f = 24, N = 16 * T;
  const double block = 6 * H + 2 * heads * T + 2 * H + 2 * H + 2 * f;
  EXPECT_DOUBLE_EQ(est.terms[3].bytes, N * (4.0 * (H + 3 * block) + 8.0 * vocab));
  EXPECT_EQ(est.terms[4].bytes, 0.0);  // one EP rank: no all-to-all copies
  EXPECT_DOUBLE_EQ(est.total, 4 * P + 4 * P + 8 * P + est.terms[3].bytes);
  // bf16 parameters: 2 bytes each but the routers', fp32 masters in the optimizer.
  Config bf16 = small();
  bf16.moe.every = 0;
  bf16.train.param_dtype = Precision::kBf16;
  const MemoryEstimate b = estimate_memory(bf16, vocab, 1);
  EXPECT_EQ(b.terms[0].bytes, 2.0 * P);
  EXPECT_EQ(b.terms[2].bytes, 12.0 * P);
  // The biggest terms name the keys that drive them.
  EXPECT_NE(est.biggest_terms(1).find("activations"), std::string::npos) << est.biggest_terms(1);
  EXPECT_NE(est.biggest_terms(1).find("data.batch_size"), std::string::npos);
}

TEST(MemoryEstimate, AvailableMemoryOnTheHost) {
  const int64_t bytes = available_memory(c10::Device(c10::kCPU));
  EXPECT_GT(bytes, 0);
}

}  // namespace
}  // namespace sy
