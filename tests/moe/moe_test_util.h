// Small helpers shared by the tests in tests/moe: tolerant tensor comparison that names the
// worst element, tensors from nested lists, and parameter access by name.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moe/init.h"
#include "moe/moe_layer.h"

namespace sy::testing_moe {

// Expects |actual - expected| <= atol + rtol * |expected| elementwise, same shape; on failure
// prints the worst element. Both are compared in double.
inline void expect_close(const at::Tensor& actual, const at::Tensor& expected, double rtol,
                         double atol, const std::string& what) {
  ASSERT_TRUE(actual.defined()) << what << ": actual undefined";
  ASSERT_TRUE(expected.defined()) << what << ": expected undefined";
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  if (actual.numel() == 0) return;
  const at::Tensor a = actual.detach().to(at::kDouble).contiguous();
  const at::Tensor e = expected.detach().to(at::kDouble).contiguous();
  const at::Tensor excess = (a - e).abs() - (e.abs() * rtol + atol);
  const int64_t worst = excess.reshape({-1}).argmax().item<int64_t>();
  const double worst_excess = excess.reshape({-1})[worst].item<double>();
  EXPECT_LE(worst_excess, 0.0) << what << ": element " << worst << " is "
                               << a.reshape({-1})[worst].item<double>() << ", expected "
                               << e.reshape({-1})[worst].item<double>() << " (max |diff| "
                               << (a - e).abs().max().item<double>() << ")";
}

// Bitwise equality (same shape and dtype, every element identical).
inline void expect_equal(const at::Tensor& actual, const at::Tensor& expected,
                         const std::string& what) {
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  ASSERT_EQ(actual.scalar_type(), expected.scalar_type()) << what;
  EXPECT_TRUE(at::equal(actual, expected)) << what << ":\n" << actual << "\nexpected\n" << expected;
}

inline at::Tensor long_tensor(const std::vector<int64_t>& v) {
  return at::tensor(v, at::TensorOptions().dtype(at::kLong));
}

inline at::Tensor long_matrix(const std::vector<std::vector<int64_t>>& rows) {
  std::vector<at::Tensor> t;
  for (const auto& r : rows) t.push_back(long_tensor(r));
  return at::stack(t);
}

inline at::Tensor double_matrix(const std::vector<std::vector<double>>& rows) {
  std::vector<at::Tensor> t;
  for (const auto& r : rows) t.push_back(at::tensor(r, at::TensorOptions().dtype(at::kDouble)));
  return at::stack(t);
}

inline at::Tensor bool_tensor(const std::vector<int>& v) {
  std::vector<int64_t> w(v.begin(), v.end());
  return long_tensor(w).to(at::kBool);
}

// The parameter `name` of `module` (throws through .at when absent, so a renamed parameter
// fails the test loudly).
inline at::Tensor param(const torch::nn::Module& module, const std::string& name) {
  return module.named_parameters(/*recurse=*/true)[name];
}

// An MoE layer for the layer and EP tests: kaiming init (router logits of order 1, so routing is
// diverse), experts converted to double (the router stays fp32 by design), and non-zero biases
// that are a function of the global expert id only, so every sharding holds the same values.
inline MoELayer make_test_layer(const MoeConfig& cfg, int64_t d_model, int64_t d_ff, uint64_t seed,
                                CommPtr ep_group = nullptr) {
  const InitSpec init{/*kaiming=*/true, seed};
  at::Generator dense_gen = make_cpu_generator(seed);
  MoELayer layer(cfg, d_model, d_ff, /*bias=*/true, init, dense_gen, /*layer_index=*/3,
                 std::move(ep_group));
  layer->experts->to(at::kDouble);
  torch::NoGradGuard no_grad;
  ExpertsImpl& ex = *layer->experts;
  for (int64_t e = 0; e < ex.num_local(); ++e) {
    at::Generator gen = make_cpu_generator(9000 + static_cast<uint64_t>(ex.first_expert() + e));
    ex.b1[e].copy_(at::randn(ex.b1[e].sizes(), gen, at::kDouble) * 0.1);
    ex.b2[e].copy_(at::randn(ex.b2[e].sizes(), gen, at::kDouble) * 0.1);
  }
  if (layer->shared) {  // the shared experts likewise, with biases of their own
    layer->shared->to(at::kDouble);
    at::Generator gen = make_cpu_generator(8000);
    layer->shared->b1.copy_(at::randn(layer->shared->b1.sizes(), gen, at::kDouble) * 0.1);
    layer->shared->b2.copy_(at::randn(layer->shared->b2.sizes(), gen, at::kDouble) * 0.1);
  }
  return layer;
}

inline at::Tensor seeded_randn(std::vector<int64_t> sizes, uint64_t seed) {
  at::Generator gen = make_cpu_generator(seed);
  return at::randn(sizes, gen, at::kDouble);
}

}  // namespace sy::testing_moe
