#include "train/optimizer.h"

#include <cmath>

#include <torch/torch.h>

#include "common/error.h"

namespace sy {

void AdamW::add(const std::string& name, const at::Tensor& param, double weight_decay) {
  SY_CHECK(find(name) == nullptr, "AdamW: parameter '", name, "' added twice");
  AdamWSlot slot;
  slot.name = name;
  slot.param = param;
  slot.weight_decay = weight_decay;
  slots_.push_back(std::move(slot));
}

AdamWSlot* AdamW::find(const std::string& name) {
  for (AdamWSlot& s : slots_) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  for (AdamWSlot& s : slots_) {
    const at::Tensor& grad = s.param.grad();
    if (!grad.defined()) continue;
    at::Tensor p = s.param.detach();
    // The order of operations is LibTorch's AdamW::step (bitwise equality with it is tested).
    if (s.weight_decay != 0) p.mul_(1 - lr * s.weight_decay);
    if (!s.exp_avg.defined()) {
      s.exp_avg = at::zeros_like(p, at::MemoryFormat::Preserve);
      s.exp_avg_sq = at::zeros_like(p, at::MemoryFormat::Preserve);
    }
    s.steps += 1;
    const double bias_correction1 = 1 - std::pow(beta1_, static_cast<double>(s.steps));
    const double bias_correction2 = 1 - std::pow(beta2_, static_cast<double>(s.steps));
    s.exp_avg.mul_(beta1_).add_(grad, 1 - beta1_);
    s.exp_avg_sq.mul_(beta2_).addcmul_(grad, grad, 1 - beta2_);
    const at::Tensor denom = (s.exp_avg_sq.sqrt() / std::sqrt(bias_correction2)).add_(eps_);
    p.addcdiv_(s.exp_avg, denom, -lr / bias_correction1);
  }
}

void AdamW::zero_grad() {
  for (AdamWSlot& s : slots_) {
    if (s.param.grad().defined()) s.param.mutable_grad() = at::Tensor();
  }
}

}  // namespace sy
