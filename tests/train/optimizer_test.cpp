// sy::AdamW against LibTorch's torch::optim::AdamW, the independent reference it claims to
// reproduce operation for operation: the same weights, bit for bit, after several steps with
// changing learning rates, two weight-decay groups, and a parameter that skips a step.
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#include "moe/init.h"
#include "train/optimizer.h"

namespace sy {
namespace {

TEST(AdamW, MatchesLibTorchBitwise) {
  at::Generator gen = make_cpu_generator(11);
  const std::vector<std::vector<int64_t>> shapes = {{4, 8}, {8}, {3, 5, 2}};
  std::vector<at::Tensor> ours, chunked, theirs, inits;
  for (const auto& shape : shapes) {
    at::Tensor init = at::randn(shape, gen);
    inits.push_back(init);
    ours.push_back(init.clone().requires_grad_(true));
    chunked.push_back(init.clone().requires_grad_(true));
    theirs.push_back(init.clone().requires_grad_(true));
  }
  const double beta1 = 0.9, beta2 = 0.95, wd = 0.1;
  AdamW opt(beta1, beta2);
  // The same update in chunks of at most 10 elements: every tensor (32, 8, 30) is its own chunk.
  AdamW opt_chunked(beta1, beta2);
  opt_chunked.set_max_chunk_elements(10);
  for (auto [o, p] : {std::pair{&opt, &ours}, std::pair{&opt_chunked, &chunked}}) {
    o->add("w", (*p)[0], wd);
    o->add("b", (*p)[1], 0.0);
    o->add("e", (*p)[2], wd);
  }
  auto options = [&](double decay) {
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(1e-3).betas({beta1, beta2}).weight_decay(decay));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<at::Tensor>{theirs[0], theirs[2]}, options(wd));
  groups.emplace_back(std::vector<at::Tensor>{theirs[1]}, options(0.0));
  torch::optim::AdamW ref(groups, torch::optim::AdamWOptions(1e-3));

  const std::vector<double> lrs = {1e-3, 3e-3, 2e-3, 5e-4, 1e-4, 7e-3};
  for (size_t step = 0; step < lrs.size(); ++step) {
    opt.zero_grad();
    opt_chunked.zero_grad();
    ref.zero_grad();
    for (size_t i = 0; i < shapes.size(); ++i) {
      // Parameter 1 has no gradient at step 2: both must leave it alone and not count the step.
      // (LibTorch 1.13's zero_grad zeroes gradients instead of dropping them: drop it here.)
      if (i == 1 && step == 2) {
        theirs[i].mutable_grad() = at::Tensor();
        continue;
      }
      at::Tensor g = at::randn(shapes[i], gen) * (i + 1.0);
      ours[i].mutable_grad() = g.clone();
      chunked[i].mutable_grad() = g.clone();
      theirs[i].mutable_grad() = g.clone();
    }
    for (auto& group : ref.param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lrs[step]);
    }
    opt.step(lrs[step]);
    opt_chunked.step(lrs[step]);
    ref.step();
    for (size_t i = 0; i < shapes.size(); ++i) {
      ASSERT_TRUE(at::equal(ours[i], theirs[i]))
          << "parameter " << i << " after step " << step << ": max diff "
          << (ours[i] - theirs[i]).abs().max().item<double>();
      ASSERT_TRUE(at::equal(chunked[i], theirs[i]))
          << "chunked: parameter " << i << " after step " << step;
    }
  }
  EXPECT_EQ(opt.find("w")->steps, 6);
  EXPECT_EQ(opt.find("b")->steps, 5);  // skipped once
  EXPECT_EQ(opt.find("nothing"), nullptr);
  // The weights moved: the test compares updates, not two copies left alone.
  for (size_t i = 0; i < shapes.size(); ++i) EXPECT_FALSE(at::allclose(ours[i], inits[i])) << i;
}

TEST(AdamW, Bf16ParameterWithFp32MasterEqualsFp32Update) {
  // A bf16 parameter with an fp32 master: each update runs on the master exactly as on an fp32
  // parameter given the same (bf16, widened) gradient, and the parameter is the rounded master.
  at::Generator gen = make_cpu_generator(12);
  const at::Tensor init = at::randn({6, 4}, gen);
  at::Tensor narrow = init.clone().requires_grad_(true);
  at::Tensor wide = init.clone().requires_grad_(true);
  AdamW ours(0.9, 0.95), ref(0.9, 0.95);
  ours.add("w", narrow, 0.1);
  ref.add("w", wide, 0.1);
  ours.narrow_parameter("w", at::kBFloat16);
  EXPECT_EQ(narrow.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::equal(ours.find("w")->master, init)) << "the master keeps the fp32 initial value";
  EXPECT_TRUE(at::equal(ours.find("w")->weights(), init));
  for (int step = 0; step < 4; ++step) {
    const at::Tensor g = at::randn({6, 4}, gen).to(at::kBFloat16);
    narrow.mutable_grad() = g.clone();
    wide.mutable_grad() = g.to(at::kFloat);
    ours.step(1e-2);
    ref.step(1e-2);
    ASSERT_TRUE(at::equal(ours.find("w")->master, wide.detach())) << "step " << step;
    ASSERT_TRUE(at::equal(narrow.detach(), wide.detach().to(at::kBFloat16))) << "step " << step;
    ASSERT_TRUE(at::equal(ours.find("w")->exp_avg, ref.find("w")->exp_avg)) << "step " << step;
  }
  EXPECT_FALSE(at::equal(ours.find("w")->master, init));
  // Writing the master (as a checkpoint load does) and syncing rounds it into the parameter.
  ours.find("w")->master.fill_(1.0 / 3.0);
  ours.find("w")->sync_param();
  EXPECT_TRUE(at::equal(narrow.detach(), at::full({6, 4}, 1.0 / 3.0).to(at::kBFloat16)));
  EXPECT_THROW(ours.narrow_parameter("w", at::kBFloat16), Error);
  EXPECT_THROW(ours.narrow_parameter("nothing", at::kBFloat16), Error);
}

TEST(AdamW, ZeroGradDropsGradients) {
  at::Tensor p = at::ones({3}).requires_grad_(true);
  AdamW opt(0.9, 0.999);
  opt.add("p", p, 0.0);
  p.mutable_grad() = at::ones({3});
  opt.zero_grad();
  EXPECT_FALSE(p.grad().defined());
  opt.step(1.0);  // no gradient: nothing happens
  EXPECT_TRUE(at::equal(p, at::ones({3})));
  EXPECT_EQ(opt.find("p")->steps, 0);
}

}  // namespace
}  // namespace sy
