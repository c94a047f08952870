// The fused MoE kernels (Note [Fused MoE kernels]) against the LibTorch ops they replace, on the
// GPU: the plan kernel's slots against both LibTorch ways (exact integers), the fused router
// against softmax/top-k/logsumexp (values and gradients), bias + activation against LibTorch's,
// and the whole layer with moe.fused_kernels on against off (outputs, every gradient, drops),
// in fp32 (agreement to float rounding) and under bf16 autocast (to bf16 rounding). Skips
// without CUDA.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#include "moe/fused.h"
#include "moe/moe_layer.h"
#include "moe/layer_cuda_util.h"
#include "moe/moe_test_util.h"
#include "moe/router.h"

namespace sy {
namespace {

using testing_moe::LayerRun;
using testing_moe::rel_err;
using testing_moe::run_cuda_layer;
using testing_moe::seeded_randn;

#define SKIP_WITHOUT_KERNELS()                                                                \
  do {                                                                                        \
    if (!torch::cuda::is_available())                                                         \
      GTEST_SKIP() << "no CUDA device (or a LibTorch without CUDA)";                          \
    if (!fused::available()) GTEST_SKIP() << "this build has no fused MoE kernels (no nvcc)"; \
  } while (0)

TEST(FusedCuda, PlanKernelCountsSlotsAsAHandTable) {
  SKIP_WITHOUT_KERNELS();
  const at::Tensor expert = testing_moe::long_tensor({2, 0, 2, 1, 2, 0}).to(at::kCUDA);
  const ArrivalSlots a = fused::arrival_slots(expert, 4);
  EXPECT_TRUE(at::equal(a.slot.cpu(), testing_moe::long_tensor({0, 0, 1, 0, 2, 1})));
  EXPECT_TRUE(at::equal(a.tokens_per_expert.cpu(), testing_moe::long_tensor({2, 1, 3, 0})));
}

TEST(FusedCuda, PlanKernelEqualsBothLibTorchWays) {
  SKIP_WITHOUT_KERNELS();
  // Sizes around the kernel's chunk of 2048 choices, and expert counts below, at and above a warp.
  for (const int64_t n : {1, 2047, 2048, 2049, 70000}) {
    for (const int64_t E : {1, 7, 32, 64, 300}) {
      at::Generator gen = make_cpu_generator(static_cast<uint64_t>(n * 1000 + E));
      const at::Tensor expert = at::randint(E, {n}, gen, at::kLong).to(at::kCUDA);
      const ArrivalSlots k = fused::arrival_slots(expert, E);
      const ArrivalSlots c = arrival_slots(expert, E, /*by_sort=*/false);
      const ArrivalSlots s = arrival_slots(expert, E, /*by_sort=*/true);
      const std::string what = "n " + std::to_string(n) + ", E " + std::to_string(E);
      EXPECT_TRUE(at::equal(k.slot, c.slot)) << what;
      EXPECT_TRUE(at::equal(k.slot, s.slot)) << what;
      EXPECT_TRUE(at::equal(k.tokens_per_expert, c.tokens_per_expert)) << what;
      EXPECT_EQ(k.tokens_per_expert.sum().item<int64_t>(), n) << what;
    }
  }
}

TEST(FusedCuda, DispatchKernelEqualsDispatchIndex) {
  SKIP_WITHOUT_KERNELS();
  // The kernel's indices against the LibTorch reference (dispatch_index, hand-checked in
  // plan_test.cpp), for the padded rows and for rows packed by expert, with drops, without,
  // dropless, in token order and in score order.
  const int64_t S = 1000, E = 16;
  for (const int64_t k : {1, 2}) {
    for (const int64_t capacity : {int64_t{20}, int64_t{200}, int64_t{0}}) {
      for (const bool score : {false, true}) {
        at::Generator gen = make_cpu_generator(static_cast<uint64_t>(k * 1000 + capacity + score));
        const at::Tensor idx =
            at::randperm(E, gen, at::kLong).narrow(0, 0, k).unsqueeze(0).repeat({S, 1});
        const at::Tensor shuffled =
            (idx + at::randint(E, {S, 1}, gen, at::kLong)).remainder(E).to(at::kCUDA);
        const at::Tensor w = at::rand({S, k}, gen, at::kFloat).to(at::kCUDA);
        const DispatchPlan plan = make_plan(shuffled, w, E, capacity, score, /*fused_kernel=*/true);
        const std::string what = "k " + std::to_string(k) + ", capacity " +
                                 std::to_string(capacity) +
                                 (score ? ", score order" : ", token order");
        // A buffer of fewer rows an expert than the plan's capacity (or than its loads, dropless:
        // Note [Permute beside the host sync]): kept choices of later slots take no row.
        {
          const int64_t fewer = capacity > 0 ? capacity / 2 : S * k / E;
          DispatchPlan fewer_plan = plan;
          fewer_plan.capacity = fewer;
          const int64_t rows = E * fewer;
          const at::Tensor dest =
              at::where(plan.kept.logical_and(plan.slot.lt(fewer)), plan.expert * fewer + plan.slot,
                        at::full_like(plan.slot, rows));
          const fused::DispatchIndex ref = fused::dispatch_index(plan, dest, S, rows);
          const fused::DispatchIndex got = fused::dispatch_rows(fewer_plan, S, rows);
          EXPECT_TRUE(at::equal(got.dest, ref.dest)) << what << " (fewer rows)";
          EXPECT_TRUE(at::equal(got.src, ref.src)) << what << " (fewer rows)";
          EXPECT_GT(got.dest.eq(rows).sum().item<int64_t>(),
                    plan.kept.logical_not().sum().item<int64_t>())
              << what << " (fewer rows)";
        }
        if (capacity > 0) {
          const int64_t rows = E * capacity;
          const at::Tensor dest = at::where(plan.kept, plan.expert * capacity + plan.slot,
                                            at::full_like(plan.slot, rows));
          const fused::DispatchIndex ref = fused::dispatch_index(plan, dest, S, rows);
          const fused::DispatchIndex got = fused::dispatch_rows(plan, S, rows);
          EXPECT_TRUE(at::equal(got.dest, ref.dest)) << what << " (padded)";
          EXPECT_TRUE(at::equal(got.src, ref.src)) << what << " (padded)";
        }
        const at::Tensor kept_per_expert =
            capacity > 0 ? plan.tokens_per_expert.clamp_max(capacity) : plan.tokens_per_expert;
        const at::Tensor starts = kept_per_expert.cumsum(0) - kept_per_expert;
        const int64_t rows = S * k;
        const at::Tensor dest =
            at::where(plan.kept, starts.index_select(0, plan.expert) + plan.slot,
                      at::full_like(plan.slot, rows));
        const fused::DispatchIndex ref = fused::dispatch_index(plan, dest, S, rows);
        const fused::DispatchIndex got = fused::dispatch_rows(plan, S, rows, starts);
        EXPECT_TRUE(at::equal(got.dest, ref.dest)) << what << " (packed)";
        EXPECT_TRUE(at::equal(got.src, ref.src)) << what << " (packed)";
        if (capacity == 20) {
          EXPECT_GT(plan.kept.logical_not().sum().item<int64_t>(), 0) << what;
        }
      }
    }
  }
}

// trim_rows (Note [Permute beside the host sync]): the first C_b rows of each expert of the
// buffer permuted by the index of B rows an expert (B below the plan's capacity, or dropless) are,
// bit for bit, the buffer permuted by the index of C_b rows an expert, with no copy (the experts
// B rows apart); x's gradient through them is the permute's through the C_b-row buffer, bit for
// bit. Token and score order, a bf16 buffer from fp32 rows.
TEST(FusedCuda, TrimRowsEqualThePermuteOfTheTrimmedIndex) {
  SKIP_WITHOUT_KERNELS();
  const int64_t S = 300, E = 8, k = 2, H = 32, beside = 104;
  for (const int64_t capacity : {int64_t{120}, int64_t{0}}) {
    for (const bool score : {false, true}) {
      at::Generator gen = make_cpu_generator(score ? 7 : 6);
      const at::Tensor first = at::randint(E, {S, 1}, gen, at::kLong);
      const at::Tensor idx =
          at::cat({first, (first + 1 + at::randint(E - 1, {S, 1}, gen, at::kLong)).remainder(E)}, 1)
              .to(at::kCUDA);
      const at::Tensor w = at::rand({S, k}, gen, at::kFloat).to(at::kCUDA);
      const DispatchPlan plan = make_plan(idx, w, E, capacity, score, /*fused_kernel=*/true);
      const int64_t most = plan.tokens_per_expert.max().item<int64_t>();
      const int64_t trimmed = (most + 7) / 8 * 8;
      ASSERT_LT(trimmed, beside) << "loads of 75 on average";
      DispatchPlan beside_plan = plan, trimmed_plan = plan;
      beside_plan.capacity = beside;
      trimmed_plan.capacity = trimmed;
      const fused::DispatchIndex full = fused::dispatch_rows(beside_plan, S, E * beside);
      const fused::DispatchIndex cut = fused::dispatch_rows(trimmed_plan, S, E * trimmed);
      const at::Tensor x0 = at::randn({S, H}, gen, at::kFloat).to(at::kCUDA);
      const at::Tensor g = at::randn({E, trimmed, H}, gen, at::kFloat).to(at::kCUDA, at::kBFloat16);
      const at::Tensor x = x0.clone().requires_grad_(true);
      const at::Tensor x_ref = x0.clone().requires_grad_(true);
      const at::Tensor rows = fused::permute(x0, full, at::kBFloat16);
      const at::Tensor got = fused::trim_rows(x, rows, trimmed, cut);
      const at::Tensor want = fused::permute(x_ref, cut, at::kBFloat16).view({E, trimmed, H});
      const std::string what = std::string(score ? "score order" : "token order") + ", capacity " +
                               std::to_string(capacity);
      EXPECT_EQ(got.sizes().vec(), want.sizes().vec()) << what;
      EXPECT_EQ(got.strides().vec(), (std::vector<int64_t>{beside * H, H, 1})) << what;
      EXPECT_EQ(got.data_ptr(), rows.data_ptr()) << what << ": no copy";
      EXPECT_TRUE(at::equal(got, want)) << what;
      got.backward(g);
      want.backward(g);
      EXPECT_TRUE(at::equal(x.grad(), x_ref.grad())) << what;
      EXPECT_GT(x.grad().abs().sum().item<double>(), 0.0) << what;
    }
  }
}

// The combine on bf16 rows into a bf16 output, as in a bf16 model (its output-bias gradient then
// comes from the gate matrix: Note [Output-bias gradient from the gate matrix]), against fp64
// sums written out choice by choice: the output and the gradients of the rows, the gate weights
// and the bias. Rows packed by expert (padding rows past the last group, and a residual added in
// the combine's pass, as the shared experts' output) and padded [E * C] rows, both with dropped
// choices.
TEST(FusedCuda, CombineOnBf16RowsEqualsFp64Sums) {
  SKIP_WITHOUT_KERNELS();
  const int64_t S = 600, E = 8, k = 2, H = 48, capacity = 90;
  at::Generator gen = make_cpu_generator(77);
  // Two distinct experts a token.
  const at::Tensor first = at::randint(E, {S}, gen, at::kLong);
  const at::Tensor second = (first + 1 + at::randint(E - 1, {S}, gen, at::kLong)).remainder(E);
  const at::Tensor w_cpu = at::rand({S, k}, gen, at::kFloat);
  const DispatchPlan plan = make_plan(at::stack({first, second}, 1).to(at::kCUDA),
                                      w_cpu.to(at::kCUDA), E, capacity, /*score=*/false,
                                      /*fused_kernel=*/true);
  const at::Tensor kept_per_expert = plan.tokens_per_expert.clamp_max(capacity);
  for (const bool grouped : {true, false}) {
    const std::string what = grouped ? "rows packed by expert" : "padded rows";
    const int64_t R = grouped ? S * k : E * capacity;
    const at::Tensor ends = grouped ? kept_per_expert.cumsum(0) : at::Tensor();
    const fused::DispatchIndex index =
        grouped ? fused::dispatch_rows(plan, S, R, ends - kept_per_expert)
                : fused::dispatch_rows(plan, S, R);
    const auto bf16 = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
    const at::Tensor y = seeded_randn({R, H}, 78).to(bf16).requires_grad_(true);
    const at::Tensor bias = seeded_randn({E, H}, 79).to(bf16).requires_grad_(true);
    const at::Tensor w = w_cpu.to(at::kCUDA).requires_grad_(true);
    const at::Tensor go = seeded_randn({S, H}, 80).to(bf16);
    const at::Tensor residual =
        grouped ? seeded_randn({S, H}, 81).to(bf16).requires_grad_(true) : at::Tensor();
    const at::Tensor out = fused::combine(y, index, w, at::kBFloat16, bias, ends, residual);
    out.backward(go);

    // fp64 from the bf16 values the kernels read.
    const at::Tensor dest = index.dest.to(at::kCPU);  // [S, k], R where dropped
    const at::Tensor kept = dest.lt(R);
    ASSERT_GT(kept.logical_not().sum().item<int64_t>(), 0) << what << ": no dropped choice";
    const at::Tensor row = dest.clamp_max(R - 1);  // dropped choices: weight 0 below
    const at::Tensor group =
        grouped ? at::searchsorted(ends.to(at::kCPU), row, /*out_int32=*/false, /*right=*/true)
                      .clamp_max(E - 1)
                : at::div(row, capacity, "floor");
    if (grouped) {
      EXPECT_LT(ends[E - 1].item<int64_t>(), R) << what << ": no padding row";
    }
    auto f64 = [](const at::Tensor& t) { return t.detach().to(at::kCPU, at::kDouble); };
    const at::Tensor go64 = f64(go);
    const at::Tensor wk = f64(w) * kept.to(at::kDouble);  // [S, k]
    const at::Tensor yc =
        (f64(y).index_select(0, row.reshape(-1)) + f64(bias).index_select(0, group.reshape(-1)))
            .view({S, k, H});  // each choice's row plus its bias
    const at::Tensor out_ref =
        (wk.unsqueeze(2) * yc).sum(1) + (grouped ? f64(residual) : at::zeros({S, H}, at::kDouble));
    const at::Tensor gw_ref = (yc * go64.unsqueeze(1)).sum(2) * kept.to(at::kDouble);
    const at::Tensor contrib = (wk.unsqueeze(2) * go64.unsqueeze(1)).reshape({S * k, H});
    const at::Tensor gy_ref =
        at::zeros({R, H}, at::kDouble).index_add_(0, row.reshape(-1), contrib);
    const at::Tensor gb_ref =
        at::zeros({E, H}, at::kDouble).index_add_(0, group.reshape(-1), contrib);

    EXPECT_EQ(out.scalar_type(), at::kBFloat16) << what;
    EXPECT_LT(rel_err(out, out_ref), 4e-3) << what << " out";  // bf16 outputs: 2^-9 each
    EXPECT_LT(rel_err(y.grad(), gy_ref), 4e-3) << what << " grad rows";
    EXPECT_LT(rel_err(bias.grad(), gb_ref), 4e-3) << what << " grad bias";
    EXPECT_LT(rel_err(w.grad(), gw_ref), 1e-5) << what << " grad gate weights";  // fp32
    if (grouped) {  // the residual's gradient is grad_out itself
      EXPECT_TRUE(at::equal(residual.grad(), go)) << what << " grad residual";
    }
    // Dropped choices get no gate-weight gradient.
    EXPECT_EQ(w.grad().to(at::kCPU).masked_select(kept.logical_not()).abs().max().item<float>(),
              0.f)
        << what;
  }
}

struct RouterRun {
  RouterOutput out;
  at::Tensor gx, gw;
};

// x_dtype bf16: the router's input as a bf16 model gives it (the weight stays fp32).
RouterRun run_router(MoeConfig cfg, bool fused_on, const at::Tensor& x_cpu,
                     const at::Tensor& gw_cpu, at::ScalarType x_dtype = at::kFloat) {
  cfg.fused_kernels = fused_on;
  at::Generator init = make_cpu_generator(5);
  Router router(cfg, x_cpu.size(1), /*init_std=*/0.5, init);
  router->to(at::kCUDA);
  const at::Tensor x = x_cpu.to(at::kCUDA, x_dtype).requires_grad_(true);
  RouterRun r;
  r.out = router->forward(x, {}, nullptr);
  EXPECT_EQ(router->uses_fused_kernel(x),
            fused_on && (cfg.router == RouterKind::kSwitch || cfg.router == RouterKind::kTopK));
  EXPECT_EQ(router->uses_split_gemm(x),
            fused_on && x_dtype == at::kBFloat16 && fused::router_gemm_available());
  const at::Tensor loss = (r.out.topk_weights * gw_cpu.to(at::kCUDA, at::kFloat)).sum() +
                          0.7 * r.out.aux_loss + 0.3 * r.out.z_loss;
  loss.backward();
  r.gx = x.grad();
  r.gw = router->named_parameters()["weight"].grad();
  return r;
}

TEST(FusedCuda, RouterEqualsSoftmaxTopKAndLogSumExp) {
  SKIP_WITHOUT_KERNELS();
  struct Case {
    std::string router;
    int64_t k, E;
    bool renormalize;
  };
  for (const Case& c :
       {Case{"switch", 1, 64, true}, Case{"topk", 2, 16, true}, Case{"topk", 2, 100, false},
        Case{"topk", 8, 40, true}, Case{"topk", 3, 3, true}}) {
    MoeConfig cfg;
    cfg.router = parse_choice_or_throw<RouterKind>(c.router, "router");
    cfg.top_k = c.k;
    cfg.num_experts = c.E;
    cfg.renormalize = c.renormalize;
    const at::Tensor x = seeded_randn({3000, 48}, 11);
    const at::Tensor gw = seeded_randn({3000, c.k}, 12);
    const RouterRun a = run_router(cfg, true, x, gw), b = run_router(cfg, false, x, gw);
    const std::string what = c.router + " k " + std::to_string(c.k) + " E " + std::to_string(c.E);
    EXPECT_TRUE(at::equal(a.out.topk_idx, b.out.topk_idx)) << what;
    EXPECT_LT(rel_err(a.out.topk_weights, b.out.topk_weights), 1e-6) << what;
    EXPECT_LT(rel_err(a.out.probs, b.out.probs), 1e-6) << what;
    EXPECT_NEAR(a.out.aux_loss.item<double>(), b.out.aux_loss.item<double>(), 1e-6) << what;
    EXPECT_NEAR(a.out.z_loss.item<double>(), b.out.z_loss.item<double>(),
                1e-5 * b.out.z_loss.item<double>())
        << what;
    EXPECT_LT(rel_err(a.gx, b.gx), 1e-5) << what;
    EXPECT_LT(rel_err(a.gw, b.gw), 1e-5) << what;
  }
}

// fused::router_losses against load_balancing_loss and mean(lse^2) (LibTorch ops), values and the
// gradients of probs and lse; row counts that do not fill the last chunk, and more experts than
// a block has threads.
TEST(FusedCuda, RouterLossesEqualLibTorch) {
  SKIP_WITHOUT_KERNELS();
  struct Case {
    int64_t S, E, k;
  };
  for (const Case& c : {Case{3000, 40, 3}, Case{1, 8, 1}, Case{129, 1000, 2}, Case{16384, 64, 1}}) {
    const auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
    const at::Tensor logits = seeded_randn({c.S, c.E}, 41).to(opts);
    const at::Tensor idx = std::get<1>(logits.topk(c.k, -1));
    const at::Tensor probs = at::softmax(logits, -1).requires_grad_(true);
    const at::Tensor lse = at::logsumexp(logits, -1).requires_grad_(true);
    const fused::RouterLosses got = fused::router_losses(probs, lse, idx);
    const at::Tensor aux_ref = load_balancing_loss(probs, idx), z_ref = lse.pow(2).mean();
    const std::string what =
        "S " + std::to_string(c.S) + " E " + std::to_string(c.E) + " k " + std::to_string(c.k);
    EXPECT_NEAR(got.aux.item<double>(), aux_ref.item<double>(), 1e-6 * aux_ref.item<double>())
        << what;
    EXPECT_NEAR(got.z.item<double>(), z_ref.item<double>(), 1e-6 * z_ref.item<double>()) << what;
    const auto g = torch::autograd::grad({0.7 * got.aux + 0.3 * got.z}, {probs, lse});
    const auto g_ref = torch::autograd::grad({0.7 * aux_ref + 0.3 * z_ref}, {probs, lse});
    EXPECT_LT(rel_err(g[0], g_ref[0]), 1e-6) << what;
    EXPECT_LT(rel_err(g[1], g_ref[1]), 1e-6) << what;
  }
}

// fused::split_bf16: the three parts add up to v exactly, over fp32's whole exponent range, and
// land in the column blocks asked for.
TEST(FusedCuda, SplitBf16PartsAddUpExactly) {
  SKIP_WITHOUT_KERNELS();
  const int64_t rows = 300, cols = 70;
  const at::Tensor scale = at::pow(2.0, at::randint(-60, 60, {rows, cols}, at::kDouble));
  const at::Tensor v =
      (seeded_randn({rows, cols}, 3).to(at::kDouble) * scale).to(at::kFloat).to(at::kCUDA);
  const at::Tensor out = fused::split_bf16(v, {2, 0, 1, 0});  // lo, hi, mid, hi
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{rows, 4 * cols}));
  ASSERT_EQ(out.scalar_type(), at::kBFloat16);
  const at::Tensor o = out.to(at::kCPU, at::kDouble);
  const at::Tensor lo = o.narrow(1, 0, cols), hi = o.narrow(1, cols, cols),
                   mid = o.narrow(1, 2 * cols, cols);
  EXPECT_TRUE(at::equal(o.narrow(1, 3 * cols, cols), hi));
  EXPECT_TRUE(at::equal(hi + mid + lo, v.to(at::kCPU, at::kDouble)));
  // Each part is the rounding of what the ones before it left: hi is v in bf16.
  EXPECT_TRUE(at::equal(hi, v.to(at::kBFloat16).to(at::kCPU, at::kDouble)));
  EXPECT_TRUE((mid.abs() <= hi.abs() * std::pow(2.0, -8)).all().item<bool>());
  EXPECT_TRUE((lo.abs() <= mid.abs() * std::pow(2.0, -8)).all().item<bool>());
}

// Note [Split-bf16 router GEMM]: logits and both gradients against fp64 references. A plain bf16
// GEMM (the weight rounded to bf16) misses the logits' bound by a factor of 100 or more.
TEST(FusedCuda, SplitRouterGemmEqualsFp64) {
  SKIP_WITHOUT_KERNELS();
  if (!fused::router_gemm_available())
    GTEST_SKIP() << "LibTorch before 2.9: no GEMM with an fp32 output";
  const int64_t S = 2000, H = 1024, E = 64;
  const at::Tensor x = seeded_randn({S, H}, 21).to(at::kCUDA, at::kBFloat16).requires_grad_(true);
  const at::Tensor w =
      (seeded_randn({H, E}, 22) * 0.02).to(at::kCUDA, at::kFloat).requires_grad_(true);
  const at::Tensor g = seeded_randn({S, E}, 23).to(at::kCUDA, at::kFloat);
  const at::Tensor logits = fused::router_logits(x, w);
  ASSERT_EQ(logits.scalar_type(), at::kFloat);
  logits.backward(g);

  const at::Tensor xd = x.detach().to(at::kCPU, at::kDouble),
                   wd = w.detach().to(at::kCPU, at::kDouble);
  const at::Tensor gd = g.to(at::kCPU, at::kDouble);
  auto max_err = [](const at::Tensor& a, const at::Tensor& ref) {
    return (a.to(at::kCPU, at::kDouble) - ref).abs().max().item<double>() /
           ref.abs().max().item<double>();
  };
  // Bounds of fp32 accumulation over H = 1024 (logits) and S = 2000 (grad_w) products.
  const at::Tensor ref = xd.mm(wd);
  EXPECT_LT(max_err(logits, ref), 2e-6);
  EXPECT_GT(max_err(x.detach().mm(w.detach().to(at::kBFloat16)), ref), 2e-4);
  EXPECT_LT(max_err(w.grad(), xd.t().mm(gd)), 1e-5);
  // grad_x is bf16 like x: within half a bf16 spacing of the exact value (at most 2^-8 of it),
  // plus the terms left out (below 2^-16 of the largest), element by element.
  ASSERT_EQ(x.grad().scalar_type(), at::kBFloat16);
  const at::Tensor gx_ref = gd.mm(wd.t());
  const at::Tensor gx_err = (x.grad().to(at::kCPU, at::kDouble) - gx_ref).abs();
  EXPECT_TRUE(
      (gx_err <= gx_ref.abs() * std::pow(2.0, -8) + 1e-4 * gx_ref.abs().max()).all().item<bool>())
      << "largest error " << gx_err.max().item<double>();
}

// The router on a bf16 input (a bf16 model): the fused path (split-bf16 GEMM and the router
// kernel) against the plain one (fp32 GEMM and LibTorch ops), to fp32 rounding except grad_x,
// which is bf16 in both.
TEST(FusedCuda, RouterOnBf16InputEqualsThePlainRouter) {
  SKIP_WITHOUT_KERNELS();
  for (const auto& [router, k] :
       {std::pair<std::string, int64_t>{"switch", 1}, {"topk", 2}, {"topk_logits", 2}}) {
    MoeConfig cfg;
    cfg.router = parse_choice_or_throw<RouterKind>(router, "router");
    cfg.top_k = k;
    cfg.num_experts = 64;
    const at::Tensor x = seeded_randn({3000, 256}, 13);
    const at::Tensor gw = seeded_randn({3000, k}, 14);
    const RouterRun a = run_router(cfg, true, x, gw, at::kBFloat16);
    const RouterRun b = run_router(cfg, false, x, gw, at::kBFloat16);
    EXPECT_TRUE(at::equal(a.out.topk_idx, b.out.topk_idx)) << router;
    EXPECT_LT(rel_err(a.out.topk_weights, b.out.topk_weights), 1e-5) << router;
    EXPECT_LT(rel_err(a.out.probs, b.out.probs), 1e-5) << router;
    EXPECT_NEAR(a.out.z_loss.item<double>(), b.out.z_loss.item<double>(),
                1e-5 * b.out.z_loss.item<double>());
    ASSERT_EQ(a.gx.scalar_type(), at::kBFloat16);
    EXPECT_LT(rel_err(a.gx, b.gx), 1e-2) << router;
    EXPECT_LT(rel_err(a.gw, b.gw), 1e-5) << router;
  }
}

TEST(FusedCuda, BiasActivationEqualsLibTorch) {
  SKIP_WITHOUT_KERNELS();
  for (const int64_t F : {40, 37}) {  // 16-byte packs (4 fp32, 8 bf16), and one element at a time
    for (const auto dtype : {at::kFloat, at::kBFloat16}) {
      for (const auto act : {kernels::Act::kGelu, kernels::Act::kRelu}) {
        const auto opts = at::TensorOptions().device(at::kCUDA).dtype(dtype);
        const at::Tensor h = seeded_randn({3, 50, F}, 21).to(opts).requires_grad_(true);
        const at::Tensor b = seeded_randn({3, F}, 22).to(opts).requires_grad_(true);
        const at::Tensor g = seeded_randn({3, 50, F}, 23).to(opts);
        const at::Tensor a = fused::bias_act(h, b, act);
        const auto [gh, gb] = [&] {
          auto grads = torch::autograd::grad({a}, {h, b}, {g});
          return std::make_pair(grads[0], grads[1]);
        }();
        // Reference in double from the same (rounded) inputs.
        const at::Tensor hd = h.detach().to(at::kDouble).requires_grad_(true);
        const at::Tensor bd = b.detach().to(at::kDouble).requires_grad_(true);
        const at::Tensor pre = hd + bd.unsqueeze(1);
        const at::Tensor ref = act == kernels::Act::kGelu ? at::gelu(pre) : at::relu(pre);
        auto ref_grads = torch::autograd::grad({ref}, {hd, bd}, {g.to(at::kDouble)});
        const double tol = dtype == at::kFloat ? 1e-6 : 1e-2;
        const std::string what = "F " + std::to_string(F) +
                                 (dtype == at::kFloat ? " fp32" : " bf16") +
                                 (act == kernels::Act::kGelu ? " gelu" : " relu");
        EXPECT_EQ(a.scalar_type(), dtype) << what;
        EXPECT_LT(rel_err(a, ref), tol) << what;
        EXPECT_LT(rel_err(gh, ref_grads[0]), tol) << what;
        EXPECT_LT(rel_err(gb, ref_grads[1]), tol) << what;
      }
    }
  }
}

TEST(FusedCuda, GroupedBiasActivationZeroesPaddingAndSumsEachGroup) {
  SKIP_WITHOUT_KERNELS();
  // Groups of 3, 0 and 7 rows, then 2 padding rows (whatever they hold: here NaN).
  const at::Tensor ends = testing_moe::long_tensor({3, 3, 10}).to(at::kCUDA);
  for (const int64_t F : {8, 5}) {
    const auto opts = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
    at::Tensor h0 = seeded_randn({12, F}, 41).to(opts);
    h0.narrow(0, 10, 2).fill_(std::numeric_limits<float>::quiet_NaN());
    const at::Tensor h = h0.requires_grad_(true);
    const at::Tensor b = seeded_randn({3, F}, 42).to(opts).requires_grad_(true);
    const at::Tensor g = seeded_randn({12, F}, 43).to(opts);
    const at::Tensor a = fused::grouped_bias_act(h, b, ends, kernels::Act::kGelu);
    auto grads = torch::autograd::grad({a}, {h, b}, {g});
    // Reference: rows 0-2 take bias 0, rows 3-9 bias 2; padding rows are zero.
    const at::Tensor row_bias =
        at::cat({b.detach()[0].expand({3, F}), b.detach()[2].expand({7, F})});
    const at::Tensor pre =
        (h.detach().narrow(0, 0, 10) + row_bias).to(at::kDouble).requires_grad_(true);
    const at::Tensor ref = at::gelu(pre);
    const at::Tensor ref_gpre =
        torch::autograd::grad({ref}, {pre}, {g.narrow(0, 0, 10).to(at::kDouble)})[0];
    const std::string what = "F " + std::to_string(F);
    EXPECT_LT(rel_err(a.narrow(0, 0, 10), ref), 1e-6) << what;
    EXPECT_TRUE(at::equal(a.narrow(0, 10, 2).cpu(), at::zeros({2, F}))) << what;
    EXPECT_LT(rel_err(grads[0].narrow(0, 0, 10), ref_gpre), 1e-6) << what;
    EXPECT_TRUE(at::equal(grads[0].narrow(0, 10, 2).cpu(), at::zeros({2, F}))) << what;
    EXPECT_LT(rel_err(grads[1][0], ref_gpre.narrow(0, 0, 3).sum(0)), 1e-6) << what;
    EXPECT_TRUE(at::equal(grads[1][1].cpu(), at::zeros({F}))) << what << ": the empty group";
    EXPECT_LT(rel_err(grads[1][2], ref_gpre.narrow(0, 3, 7).sum(0)), 1e-6) << what;
  }
}

LayerRun run_layer(MoeConfig cfg, bool fused_on, bool bf16, const at::Tensor& x,
                   const at::Tensor& g) {
  cfg.fused_kernels = fused_on;
  return run_cuda_layer(cfg, /*d_ff=*/96, bf16, x, g);
}

// The fused run a against the LibTorch run b: the output and every gradient within tol.
void expect_layers_agree(const LayerRun& a, const LayerRun& b, double tol,
                         const std::string& what) {
  EXPECT_EQ(a.y.scalar_type(), b.y.scalar_type()) << what;
  EXPECT_EQ(a.dropped, b.dropped) << what;
  EXPECT_LT(rel_err(a.y, b.y), tol) << what << " y";
  EXPECT_LT(rel_err(a.gx, b.gx), tol) << what << " grad x";
  EXPECT_LT(rel_err(a.gw1, b.gw1), tol) << what << " grad w1";
  EXPECT_LT(rel_err(a.gb1, b.gb1), tol) << what << " grad b1";
  EXPECT_LT(rel_err(a.gw2, b.gw2), tol) << what << " grad w2";
  EXPECT_LT(rel_err(a.gb2, b.gb2), tol) << what << " grad b2";
  EXPECT_LT(rel_err(a.grouter, b.grouter), tol) << what << " grad router";
}

TEST(FusedCuda, LayerEqualsTheLibTorchLayer) {
  SKIP_WITHOUT_KERNELS();
  struct Case {
    std::string router, priority, activation;
    int64_t k;
    double factor;  // 0: dropless
    bool bf16;
    std::string gemm = "auto";
  };
  const std::vector<Case> cases = {
      {"topk", "token", "gelu", 2, 1.25, false},
      {"topk", "token", "gelu", 2, 0.5, false},
      {"switch", "token", "relu", 1, 1.0, false},
      {"topk", "score", "gelu", 2, 0.5, false},
      {"topk", "token", "swiglu", 2, 1.25, false},
      {"topk", "token", "gelu", 2, 1.25, true},
      {"switch", "score", "gelu", 1, 0.5, true},
      // The grouped GEMM over the kept rows (bf16), in capacity mode and dropless.
      {"topk", "token", "gelu", 2, 1.25, true, "grouped"},
      {"topk", "score", "relu", 2, 0.5, true, "grouped"},
      {"topk", "token", "gelu", 2, 0.0, true},
      {"topk", "token", "gelu", 2, 0.0, true, "grouped"},
      {"switch", "token", "gelu", 1, 0.0, false},
      // The bmm over a buffer trimmed to the largest kept load (Note [Trimmed expert buffer]).
      {"topk", "token", "gelu", 2, 2.0, false, "trimmed"},
      {"topk", "score", "relu", 2, 0.5, true, "trimmed"},
      {"switch", "token", "gelu", 1, 0.0, true, "trimmed"},
  };
  for (const Case& c : cases) {
    MoeConfig cfg;
    cfg.expert_gemm = parse_choice_or_throw<ExpertGemm>(c.gemm, "expert_gemm");
    cfg.num_experts = 8;
    cfg.router = parse_choice_or_throw<RouterKind>(c.router, "router");
    cfg.priority = parse_choice_or_throw<SlotPriority>(c.priority, "priority");
    cfg.activation = parse_choice_or_throw<Activation>(c.activation, "activation");
    cfg.top_k = c.k;
    cfg.capacity_factor = c.factor;
    const at::Tensor x = seeded_randn({1000, 64}, 31);
    const at::Tensor g = seeded_randn({1000, 64}, 32);
    const LayerRun a = run_layer(cfg, true, c.bf16, x, g), b = run_layer(cfg, false, c.bf16, x, g);
    const std::string what = c.router + "/" + c.priority + "/" + c.activation + "/" + c.gemm +
                             " factor " + std::to_string(c.factor) + (c.bf16 ? " bf16" : " fp32");
    const double tol = c.bf16 ? 1e-2 : 1e-5;
    // The fused layer ran the fused kernels, the other one LibTorch ops only.
    EXPECT_EQ(a.path.rfind("fused", 0), 0u) << what << ": " << a.path;
    EXPECT_EQ(b.path.find("fused"), std::string::npos) << what << ": " << b.path;
    // auto trims the buffer in dropless mode too: the loads here are even (1000 tokens, 8
    // experts), far under kTrimmedRowsLimit.
    if (c.gemm == "grouped") {
      EXPECT_EQ(a.path, "fused grouped") << what;
    } else if (c.gemm == "trimmed" || c.factor == 0.0) {
      EXPECT_EQ(a.path, "fused padded") << what;
    }
    if (c.factor == 0.5) {
      EXPECT_GT(a.dropped, 0) << what;
    }
    expect_layers_agree(a, b, tol, what);
    EXPECT_NEAR(a.aux, b.aux, 1e-5) << what;
    EXPECT_NEAR(a.z, b.z, 1e-5 * b.z) << what;
  }
}

// Note [Permute beside the host sync]: the trimmed bmm reads the first C_b rows of each expert's
// B in the buffer permuted before the loads were read (capacity mode and dropless), or, when the
// largest load is above B, the layer permutes again. Outputs and every gradient equal the
// LibTorch layer's, with shared experts (the same side stream) too.
TEST(FusedCuda, TrimmedRowsPermutedBesideTheSyncEqualTheLibTorchLayer) {
  SKIP_WITHOUT_KERNELS();
  const int64_t S = 1000, E = 8, k = 2;
  // B = 1.2 * 250 = 300, rounded up to 8; C = 313 at a factor of 1.25.
  PathFacts facts;
  facts.fused_io = facts.one_rank = true;
  facts.expert_gemm = ExpertGemm::kTrimmed;
  facts.num_experts = E;
  const int64_t beside = rows_beside_sync(facts, S * k);
  ASSERT_EQ(beside, 304);
  // Even loads (the largest 290 of a mean of 250, at most B), and loads skewed by a shift of
  // every token along one direction (the largest 980, above C): the CPU layer's loads.
  const at::Tensor even = seeded_randn({S, 64}, 51);
  const at::Tensor skewed = even + 2.0 * seeded_randn({1, 64}, 53);
  const at::Tensor g = seeded_randn({S, 64}, 52);
  for (const double factor : {1.25, 0.0}) {
    for (const bool bf16 : {false, true}) {
      for (const int64_t shared : {0, 1}) {
        for (const bool skew : {false, true}) {
          MoeConfig cfg;
          cfg.expert_gemm = ExpertGemm::kTrimmed;
          cfg.num_experts = E;
          cfg.router = RouterKind::kTopK;
          cfg.top_k = k;
          cfg.capacity_factor = factor;
          cfg.shared_experts = shared;
          const at::Tensor& x = skew ? skewed : even;
          const LayerRun a = run_layer(cfg, true, bf16, x, g);
          const LayerRun b = run_layer(cfg, false, bf16, x, g);
          const std::string what = std::string(bf16 ? "bf16" : "fp32") + " factor " +
                                   std::to_string(factor) + " shared " + std::to_string(shared) +
                                   (skew ? " skewed" : " even");
          ASSERT_EQ(a.largest_load, b.largest_load) << what;
          if (skew) {
            ASSERT_GT(b.largest_load, 313) << what;
          } else {
            ASSERT_LE(b.largest_load, beside) << what;
          }
          EXPECT_EQ(a.path, "fused padded") << what;
          if (skew) {
            EXPECT_GT(a.buffer_capacity, beside) << what << ": permuted again";
          } else {
            EXPECT_LE(a.buffer_capacity, beside) << what << ": read in place";
          }
          expect_layers_agree(a, b, bf16 ? 1e-2 : 1e-5, what);
        }
      }
    }
  }
}

// The permute and combine kernels move 4 elements a thread step: a model width that is not a
// multiple of 4 keeps LibTorch's ops (the kernels would have written past each row), and the
// kernels refuse such rows if called.
TEST(FusedCuda, WidthNotAMultipleOfFourKeepsLibTorchOps) {
  SKIP_WITHOUT_KERNELS();
  MoeConfig cfg;
  cfg.num_experts = 4;
  cfg.top_k = 2;
  cfg.router = RouterKind::kTopK;
  cfg.capacity_factor = 1.0;
  const at::Tensor x = seeded_randn({64, 6}, 41);
  const at::Tensor g = seeded_randn({64, 6}, 42);
  const LayerRun a = run_layer(cfg, true, false, x, g), b = run_layer(cfg, false, false, x, g);
  EXPECT_EQ(a.path, "padded");
  EXPECT_LT(rel_err(a.y, b.y), 1e-6);
  EXPECT_LT(rel_err(a.gx, b.gx), 1e-6);
  const at::Tensor rows = at::randn({8, 6}, at::TensorOptions().device(at::kCUDA));
  fused::DispatchIndex index;
  index.dest = at::zeros({8, 1}, rows.options().dtype(at::kLong));
  index.src = at::arange(8, rows.options().dtype(at::kLong));
  EXPECT_THROW(fused::permute(rows, index, at::kFloat), Error);
  EXPECT_THROW(fused::combine(rows, index, at::ones({8, 1}, rows.options()), at::kFloat), Error);
}

}  // namespace
}  // namespace sy
