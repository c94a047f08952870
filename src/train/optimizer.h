// AdamW with its state in the open, so that checkpoints can store it by parameter name and shard
// expert state by global expert id (src/train/checkpoint.h).
//
// The update is LibTorch's torch::optim::AdamW (amsgrad off), operation for operation, so the
// two give bitwise the same weights (tests/train/optimizer_test.cpp):
//   p *= 1 - lr * wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// Each parameter counts its own steps t, as LibTorch's does; a parameter without a gradient is
// left alone. With fp32 master weights (narrow_parameter), a bf16 parameter's gradient
// is widened to fp32, the update runs on the master, and the master is rounded into the
// parameter: the model computes in bf16, the optimizer keeps full precision. Parameters that share weight decay, step count, dtype and device are updated
// together by LibTorch's multi-tensor (_foreach_*) kernels: about ten kernel launches per group
// instead of ten per parameter, the same arithmetic element by element. On CUDA with LibTorch 2.x
// each group is one call of LibTorch's fused AdamW kernel instead (_fused_adamw_, the kernel of
// torch.optim.AdamW(fused=True)): the same update in one pass over weights, gradients and
// moments, with the bias corrections in fp32 on the device, so it agrees with the multi-tensor
// path to float rounding, not bitwise (tests/train/train_cuda_test.cpp). A bf16 parameter with an
// fp32 master steps by a kernel of our own in that case (src/train/kernels/adamw_kernel.h): the
// same fp32 arithmetic in one pass that reads the bf16 gradient and writes the rounded parameter,
// where the multi-tensor route first widens every gradient to an fp32 copy and afterwards copies
// every master into its parameter (at 3.76 B parameters, configs/moe-1b.yaml: 40 instead of 28
// bytes moved per parameter).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace sy {

struct AdamWSlot {
  std::string name;  // the parameter's name in the model ("blocks.1.ffn.experts.w1")
  at::Tensor param;  // the model's tensor (updated in place)
  double weight_decay = 0;
  at::Tensor exp_avg, exp_avg_sq;  // allocated at the first step (or by a checkpoint load)
  int64_t steps = 0;
  // fp32 master copy of a parameter the model holds in a narrower dtype (train.param_dtype bf16):
  // the update runs on it and is rounded into `param`. Undefined for fp32 parameters.
  at::Tensor master;
  // Note [Freezing] (src/train/freeze.h): a frozen parameter is never stepped and gets no moments
  // or master; frozen_rows (int64, on the parameter's device) are rows of a stacked expert tensor
  // that every step leaves bitwise as they were.
  bool frozen = false;
  at::Tensor frozen_rows;

  // The weights the optimizer updates and a checkpoint stores: the master copy if there is one.
  const at::Tensor& weights() const { return master.defined() ? master : param; }
  // After the weights were written (a checkpoint load): rounds them into the model's parameter.
  void sync_param();
};

class AdamW {
 public:
  AdamW(double beta1, double beta2, double eps = 1e-8) : beta1_(beta1), beta2_(beta2), eps_(eps) {}

  void add(const std::string& name, const at::Tensor& param, double weight_decay);
  // Stores parameter `name` in `dtype` from now on (the model's tensor changes dtype in place)
  // and keeps an fp32 master copy of its current value, on which the updates run (none for a
  // frozen parameter, which is only rounded). Call it before the first step, while the parameter
  // still holds its fp32 value.
  void narrow_parameter(const std::string& name, at::ScalarType dtype);
  void step(double lr);  // one update of every parameter that has a gradient
  void zero_grad();      // drops the gradients (as set_to_none)

  std::vector<AdamWSlot>& slots() { return slots_; }
  const std::vector<AdamWSlot>& slots() const { return slots_; }
  AdamWSlot* find(const std::string& name);
  // Most elements one set of multi-tensor ops updates at once (see step()); tests lower it.
  void set_max_chunk_elements(int64_t n) { max_chunk_elements_ = n; }

 private:
  double beta1_, beta2_, eps_;
  int64_t max_chunk_elements_ = int64_t{1} << 27;  // 512 MiB of fp32 temporaries
  std::vector<AdamWSlot> slots_;
};

// Weight decay applies to matrices only: true for biases, norms, the experts' bias rows and the
// routers' learned task gates (decay would pull a shut gate open).
bool is_bias(const std::string& name, const at::Tensor& p);

}  // namespace sy
