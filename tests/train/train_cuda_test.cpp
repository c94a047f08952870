// train.cuda_graph against the eager step on the GPU (Note [CUDA graph step]): the same run with
// the step captured and replayed gives the same losses, the same skipped step, and the same
// weights; a step that synchronizes with the host is refused with an error naming the key. The
// graph replays the eager step's kernels with the same random-number offsets, so the runs agree
// to within float reassociation (in practice bitwise). Skips without CUDA.
#include <cmath>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#include "common/files.h"
#include "config/config.h"
#include "parallel/communicator.h"
#include "parallel/groups.h"
#include "moe/init.h"
#include "train/grad_sync.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace sy {
namespace {

#define SKIP_WITHOUT_CUDA()         \
  if (!torch::cuda::is_available()) \
  GTEST_SKIP() << "no CUDA device visible to this build (LibTorch " TORCH_VERSION ")"

// Noisy top-2 routing, dropout and gradient accumulation: every source of randomness and every
// accumulation the graph must replay; evaluation between steps runs eagerly on the same stream.
Config graph_config(bool cuda_graph, const std::string& extra = "") {
  const std::string dir =
      ::testing::TempDir() + "/sy_train_cuda_" + (cuda_graph ? "graph" : "eager");
  return load_config_from_string(
      "model: {n_layers: 3, d_model: 32, n_heads: 4, d_ff: 64, block_size: 16, dropout: 0.1}\n"
      "moe: {num_experts: 4, top_k: 2, router: noisy_topk, every: 1, capacity_factor: 1.0}\n"
      "data: {batch_size: 8, synthetic_chars: 20000}\n"
      "train: {max_steps: 30, lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 5, grad_accum: 2, "
      "eval_interval: 10, eval_iters: 2, log_interval: 5, device: cuda, checkpoint_interval: -1, "
      "cuda_graph: " +
          std::string(cuda_graph ? "true" : "false") + ", out_dir: '" + dir + "'}\n" + extra,
      "train_cuda_test");
}

void expect_same_curve(const std::vector<std::pair<int64_t, double>>& graph,
                       const std::vector<std::pair<int64_t, double>>& eager, const char* what) {
  ASSERT_EQ(graph.size(), eager.size()) << what;
  for (size_t i = 0; i < graph.size(); ++i) {
    EXPECT_EQ(graph[i].first, eager[i].first) << what;
    EXPECT_NEAR(graph[i].second, eager[i].second, 1e-5 * std::abs(eager[i].second))
        << what << " at step " << eager[i].first;
  }
}

TEST(TrainCudaGraph, EqualsEagerSteps) {
  SKIP_WITHOUT_CUDA();
  const TrainResult eager = train(graph_config(false), make_groups(make_self_communicator(), 1));
  const TrainResult graph = train(graph_config(true), make_groups(make_self_communicator(), 1));
  ASSERT_EQ(eager.train_loss.size(), 6u);
  ASSERT_EQ(eager.val_loss.size(), 4u);  // steps 0, 10, 20, 30
  expect_same_curve(graph.train_loss, eager.train_loss, "train loss");
  expect_same_curve(graph.val_loss, eager.val_loss, "val loss");
  // The runs trained: the curves compared are not two copies of the initial loss.
  EXPECT_LT(eager.val_loss.back().second, eager.val_loss.front().second - 0.1);
}

TEST(TrainCudaGraph, SkipsTheSameNonFiniteStep) {
  SKIP_WITHOUT_CUDA();
  // debug.nan_step reaches a captured step through a device scalar: both runs skip step 13 only.
  const std::string nan = "debug: {nan_step: 12}\n";
  Config eager_cfg = graph_config(false, nan), graph_cfg = graph_config(true, nan);
  eager_cfg.train.skip_nonfinite = graph_cfg.train.skip_nonfinite = 1;
  const TrainResult eager = train(eager_cfg, make_groups(make_self_communicator(), 1));
  const TrainResult graph = train(graph_cfg, make_groups(make_self_communicator(), 1));
  expect_same_curve(graph.train_loss, eager.train_loss, "train loss");
  expect_same_curve(graph.val_loss, eager.val_loss, "val loss");
  // A second NaN step is one more than skip_nonfinite allows: the graphed run stops as well.
  graph_cfg.train.skip_nonfinite = 0;
  try {
    train(graph_cfg, make_groups(make_self_communicator(), 1));
    ADD_FAILURE() << "a NaN loss at a captured step did not stop the run";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("step 13: the loss is NaN or Inf on rank(s) 0"),
              std::string::npos)
        << e.what();
  }
}

TEST(AdamWCuda, FusedKernelMatchesTheCpuUpdate) {
  SKIP_WITHOUT_CUDA();
  // The CUDA path (LibTorch's fused kernel) against the CPU path (bitwise LibTorch's AdamW,
  // tests/train/optimizer_test.cpp): two weight-decay groups, an fp32 master for a bf16
  // parameter, a parameter that skips a step, changing learning rates.
  at::Generator gen = make_cpu_generator(31);
  // p2 and p3: bf16 with fp32 masters, stepped by the one-pass kernel in packs of four (512
  // elements) and one at a time (35).
  const std::vector<std::vector<int64_t>> shapes = {{64, 32}, {32}, {8, 16, 4}, {7, 5}};
  std::vector<at::Tensor> cpu, gpu, inits;
  AdamW on_cpu(0.9, 0.95), on_gpu(0.9, 0.95);
  for (size_t i = 0; i < shapes.size(); ++i) {
    const at::Tensor init = at::randn(shapes[i], gen);
    inits.push_back(init.to(at::kDouble));
    cpu.push_back(init.clone().requires_grad_(true));
    gpu.push_back(init.to(at::kCUDA).requires_grad_(true));
    on_cpu.add("p" + std::to_string(i), cpu[i], i == 1 ? 0.0 : 0.1);
    on_gpu.add("p" + std::to_string(i), gpu[i], i == 1 ? 0.0 : 0.1);
  }
  for (const char* name : {"p2", "p3"}) {
    on_cpu.narrow_parameter(name, at::kBFloat16);
    on_gpu.narrow_parameter(name, at::kBFloat16);
  }
  const std::vector<double> lrs = {1e-3, 3e-3, 2e-3, 5e-4, 7e-3};
  for (size_t step = 0; step < lrs.size(); ++step) {
    on_cpu.zero_grad();
    on_gpu.zero_grad();
    for (size_t i = 0; i < shapes.size(); ++i) {
      if (i == 1 && step == 2) continue;  // no gradient: both leave it alone
      const at::Tensor g = at::randn(shapes[i], gen).to(cpu[i].scalar_type());
      cpu[i].mutable_grad() = g.clone();
      gpu[i].mutable_grad() = g.to(at::kCUDA);
    }
    on_cpu.step(lrs[step]);
    on_gpu.step(lrs[step]);
    for (size_t i = 0; i < shapes.size(); ++i) {
      const at::Tensor a = on_gpu.slots()[i].weights().to(at::kCPU, at::kDouble);
      const at::Tensor b = on_cpu.slots()[i].weights().to(at::kDouble);
      const double err = (a - b).abs().max().item<double>();
      EXPECT_LT(err, 1e-5) << "parameter " << i << " after step "
                           << step;  // updates are ~lr = 1e-3
    }
    for (const size_t i : {2, 3}) {
      EXPECT_TRUE(at::equal(gpu[i].detach().to(at::kCPU),
                            on_gpu.slots()[i].master.to(at::kCPU, at::kBFloat16)))
          << "the bf16 parameter " << i << " is its rounded master";
    }
  }
  EXPECT_EQ(on_gpu.find("p1")->steps, 4);
  // The updates compared are not nothing: every weight tensor moved by far more than 1e-5.
  for (size_t i = 0; i < shapes.size(); ++i) {
    EXPECT_GT((on_cpu.slots()[i].weights().to(at::kDouble) - inits[i]).abs().max().item<double>(),
              1e-3)
        << i;
  }
}

// clip_grad_norm on bf16 and fp32 gradients on the GPU: the norm in fp32 from the bf16 values
// (against fp64), and each gradient scaled as gradient * coefficient rounded once to its dtype.
TEST(GradClipCuda, Bf16GradientsAreNormedInFp32AndScaledOnce) {
  SKIP_WITHOUT_CUDA();
  at::Generator gen = make_cpu_generator(32);
  ParamSet params;
  std::vector<at::Tensor> before;
  const std::vector<std::pair<std::vector<int64_t>, at::ScalarType>> specs = {
      {{300, 70}, at::kBFloat16}, {{33}, at::kBFloat16}, {{50, 8}, at::kFloat}};
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& [shape, dtype] = specs[i];
    at::Tensor p =
        at::zeros(shape, at::TensorOptions().device(at::kCUDA).dtype(dtype)).requires_grad_(true);
    p.mutable_grad() = (at::randn(shape, gen) * static_cast<double>(i + 1)).to(at::kCUDA, dtype);
    before.push_back(p.grad().clone());
    (i == 2 ? params.dense : params.expert).push_back(p);
  }
  double ref_sq = 0;
  for (const at::Tensor& g : before)
    ref_sq += g.to(at::kCPU, at::kDouble).pow(2).sum().item<double>();
  const double ref = std::sqrt(ref_sq);
  ParallelGroups groups = make_groups(make_self_communicator(), 1);
  const at::Tensor norm = clip_grad_norm(params, groups, 0.5 * ref);
  EXPECT_EQ(norm.scalar_type(), at::kFloat);
  EXPECT_NEAR(norm.item<double>(), ref, 1e-6 * ref);
  const at::Tensor coef = (0.5 * ref / (norm + 1e-6)).clamp_max(1.0);
  std::vector<at::Tensor> after = params.expert;
  after.push_back(params.dense[0]);
  for (size_t i = 0; i < after.size(); ++i) {
    const at::Tensor expected = (before[i].to(at::kFloat) * coef).to(before[i].scalar_type());
    EXPECT_TRUE(at::equal(after[i].grad(), expected)) << "gradient " << i;
  }
}

// Last in this file: a refused capture leaves the process usable, but keep it after the others.
TEST(TrainCudaGraph, RefusesAStepThatSynchronizes) {
  SKIP_WITHOUT_CUDA();
  // Dropless MoE in fp32 runs one matmul per expert with the counts on the host: not capturable.
  Config cfg = graph_config(true);
  cfg.moe.capacity_factor = 0;
  try {
    train(cfg, make_groups(make_self_communicator(), 1));
    ADD_FAILURE() << "a step with a host synchronization was captured";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("train.cuda_graph: the training step cannot be captured"),
              std::string::npos)
        << e.what();
  }
  // The device still works afterwards.
  EXPECT_EQ(at::ones({4}, at::kCUDA).sum().item<double>(), 4.0);
}

}  // namespace
}  // namespace sy
