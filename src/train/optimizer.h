// AdamW with its state in the open, so that checkpoints can store it by parameter name and shard
// expert state by global expert id (src/train/checkpoint.h).
//
// The update is LibTorch's torch::optim::AdamW (amsgrad off), operation for operation, so the
// two give bitwise the same weights (tests/train/optimizer_test.cpp):
//   p *= 1 - lr * wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// Each parameter counts its own steps t, as LibTorch's does; a parameter without a gradient is
// left alone.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace sy {

struct AdamWSlot {
  std::string name;        // the parameter's name in the model ("blocks.1.ffn.experts.w1")
  at::Tensor param;        // the model's tensor (updated in place)
  double weight_decay = 0;
  at::Tensor exp_avg, exp_avg_sq;  // allocated at the first step (or by a checkpoint load)
  int64_t steps = 0;
};

class AdamW {
 public:
  AdamW(double beta1, double beta2, double eps = 1e-8) : beta1_(beta1), beta2_(beta2), eps_(eps) {}

  void add(const std::string& name, const at::Tensor& param, double weight_decay);
  void step(double lr);  // one update of every parameter that has a gradient
  void zero_grad();      // drops the gradients (as set_to_none)

  std::vector<AdamWSlot>& slots() { return slots_; }
  const std::vector<AdamWSlot>& slots() const { return slots_; }
  AdamWSlot* find(const std::string& name);

 private:
  double beta1_, beta2_, eps_;
  std::vector<AdamWSlot> slots_;
};

}  // namespace sy
