#include "train/optimizer.h"

#include <cmath>

#include <torch/torch.h>

#if defined(SWITCHYARD_CUDA) && __has_include(<ATen/ops/_fused_adamw.h>)
#include <ATen/ops/_fused_adamw.h>
#define SY_HAVE_FUSED_ADAMW 1
#endif

#ifdef SWITCHYARD_FUSED_KERNELS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "train/kernels/adamw_kernel.h"
#endif

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

void AdamWSlot::sync_param() {
  if (!master.defined()) return;
  torch::NoGradGuard no_grad;
  param.detach().copy_(master);
}

void AdamW::narrow_parameter(const std::string& name, at::ScalarType dtype) {
  AdamWSlot* s = find(name);
  SY_CHECK(s != nullptr, "AdamW: no parameter '", name, "'");
  SY_CHECK(!s->exp_avg.defined() && !s->master.defined(), "AdamW: '", name,
           "' must be narrowed once, before the first step");
  torch::NoGradGuard no_grad;
  if (!s->frozen) s->master = s->param.detach().to(at::kFloat).clone();
  s->param.set_data(s->param.detach().to(dtype));
}

AdamWSlot* AdamW::find(const std::string& name) {
  for (AdamWSlot& s : slots_) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

namespace {

#ifdef SWITCHYARD_FUSED_KERNELS
// Whether slot s steps by the one-pass kernel of a bf16 parameter with an fp32 master.
bool takes_master_kernel(const AdamWSlot& s, const at::Tensor& grad) {
  const at::Tensor p = s.param.detach();
  return s.master.defined() && s.master.is_cuda() && p.scalar_type() == at::kBFloat16 &&
         grad.scalar_type() == at::kBFloat16 && s.master.scalar_type() == at::kFloat &&
         p.is_contiguous() && grad.is_contiguous() && s.master.is_contiguous() &&
         s.exp_avg.is_contiguous() && s.exp_avg_sq.is_contiguous();
}
#endif

}  // namespace

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  // Groups of slots updated by one set of multi-tensor ops: same weight decay, step count (so the
  // same bias corrections), dtype and device.
  struct Group {
    double weight_decay;
    int64_t steps;
    at::ScalarType dtype;
    at::Device device;
    std::vector<at::Tensor> params, grads, exp_avg, exp_avg_sq;
  };
  std::vector<Group> groups;
  std::vector<AdamWSlot*> narrow;  // parameters updated through their fp32 masters
  // Frozen rows (Note [Freezing]): their values before the step, written back after it.
  std::vector<std::pair<AdamWSlot*, at::Tensor>> kept_rows;
  for (AdamWSlot& s : slots_) {
    const at::Tensor& grad = s.param.grad();
    if (s.frozen || !grad.defined()) continue;
    if (s.frozen_rows.defined()) {
      kept_rows.emplace_back(&s, s.weights().detach().index_select(0, s.frozen_rows));
    }
    const bool via_master = s.master.defined();
    const at::Tensor w = via_master ? s.master : s.param.detach();
    if (!s.exp_avg.defined()) {
      s.exp_avg = at::zeros_like(w, at::MemoryFormat::Preserve);
      s.exp_avg_sq = at::zeros_like(w, at::MemoryFormat::Preserve);
    }
    s.steps += 1;
#ifdef SWITCHYARD_FUSED_KERNELS
    if (takes_master_kernel(s, grad)) {
      const double t = static_cast<double>(s.steps);
      kernels::AdamWHyper h{};
      h.lr = static_cast<float>(lr);
      h.beta1 = static_cast<float>(beta1_);
      h.beta2 = static_cast<float>(beta2_);
      h.eps = static_cast<float>(eps_);
      h.weight_decay = static_cast<float>(s.weight_decay);
      h.bias_correction1 = static_cast<float>(1 - std::pow(beta1_, t));
      h.bias_correction2_sqrt = static_cast<float>(std::sqrt(1 - std::pow(beta2_, t)));
      const c10::cuda::CUDAGuard guard(w.device());
      const std::string error = kernels::adamw_master_step(
          grad.data_ptr(), s.master.data_ptr<float>(), s.exp_avg.data_ptr<float>(),
          s.exp_avg_sq.data_ptr<float>(), s.param.detach().data_ptr(), w.numel(), h,
          c10::cuda::getCurrentCUDAStream(w.device().index()).stream());
      SY_CHECK(error.empty(), "AdamW: ", error);
      continue;
    }
#endif
    Group* g = nullptr;
    for (Group& candidate : groups) {
      if (candidate.weight_decay == s.weight_decay && candidate.steps == s.steps &&
          candidate.dtype == w.scalar_type() && candidate.device == w.device()) {
        g = &candidate;
        break;
      }
    }
    if (g == nullptr) {
      groups.push_back(Group{s.weight_decay, s.steps, w.scalar_type(), w.device(), {}, {}, {}, {}});
      g = &groups.back();
    }
    g->params.push_back(w);
    g->grads.push_back(grad);  // widened to the master's dtype chunk by chunk, below
    if (via_master) narrow.push_back(&s);
    g->exp_avg.push_back(s.exp_avg);
    g->exp_avg_sq.push_back(s.exp_avg_sq);
  }
  // The order of operations is LibTorch's AdamW::step (bitwise equality with it is tested). A
  // group is updated in chunks of at most max_chunk_elements_ elements (a tensor larger than that
  // is a chunk of its own), which bounds the temporaries (the denominators and the widened
  // gradients of fp32 masters) to one chunk: a model whose optimizer state fills the GPU still
  // steps.
  for (Group& g : groups) {
    const double bias_correction1 = 1 - std::pow(beta1_, static_cast<double>(g.steps));
    const double bias_correction2 = 1 - std::pow(beta2_, static_cast<double>(g.steps));
    for (size_t begin = 0; begin < g.params.size();) {
      size_t end = begin;
      int64_t elements = 0;
      while (end < g.params.size() &&
             (end == begin || elements + g.params[end].numel() <= max_chunk_elements_)) {
        elements += g.params[end++].numel();
      }
      auto part = [&](const std::vector<at::Tensor>& v) {
        return std::vector<at::Tensor>(v.begin() + static_cast<std::ptrdiff_t>(begin),
                                       v.begin() + static_cast<std::ptrdiff_t>(end));
      };
      std::vector<at::Tensor> params = part(g.params), exp_avg = part(g.exp_avg),
                              exp_avg_sq = part(g.exp_avg_sq), grads = part(g.grads);
      for (at::Tensor& grad : grads) {
        if (grad.scalar_type() != g.dtype) grad = grad.to(g.dtype);
      }
#ifdef SY_HAVE_FUSED_ADAMW
      if (g.device.is_cuda()) {
        // One pass over weights, gradients and moments (torch.optim.AdamW(fused=True)'s kernel):
        // the same update, with the bias corrections computed on the device in fp32.
        const at::Tensor step = at::full({}, static_cast<double>(g.steps),
                                         at::TensorOptions().device(g.device).dtype(at::kFloat));
        const std::vector<at::Tensor> steps(params.size(), step);
        at::_fused_adamw_(params, grads, exp_avg, exp_avg_sq, /*max_exp_avg_sqs=*/{}, steps, lr,
                          beta1_, beta2_, g.weight_decay, eps_, /*amsgrad=*/false,
                          /*maximize=*/false);
        begin = end;
        continue;
      }
#endif
      if (g.weight_decay != 0) at::_foreach_mul_(params, 1 - lr * g.weight_decay);
      at::_foreach_mul_(exp_avg, beta1_);
      at::_foreach_add_(exp_avg, grads, 1 - beta1_);
      at::_foreach_mul_(exp_avg_sq, beta2_);
      at::_foreach_addcmul_(exp_avg_sq, grads, grads, 1 - beta2_);
      grads.clear();  // the widened copies are not needed past here
      std::vector<at::Tensor> denom = at::_foreach_sqrt(exp_avg_sq);
      at::_foreach_div_(denom, std::sqrt(bias_correction2));
      at::_foreach_add_(denom, eps_);
      at::_foreach_addcdiv_(params, exp_avg, denom, -lr / bias_correction1);
      begin = end;
    }
  }
  for (auto& [s, rows] : kept_rows) {
    s->weights().detach().index_copy_(0, s->frozen_rows, rows);
    // A master's frozen rows round to the parameter's bits they were rounded to before.
    if (s->master.defined())
      s->param.detach().index_copy_(0, s->frozen_rows, rows.to(s->param.scalar_type()));
  }
  for (AdamWSlot* s : narrow) s->param.detach().copy_(s->master);
}

void AdamW::zero_grad() {
  for (AdamWSlot& s : slots_) {
    if (s.param.grad().defined()) s.param.mutable_grad() = at::Tensor();
  }
}

bool is_bias(const std::string& name, const at::Tensor& p) {
  // By the last name component ("...experts.b1", "...ln1.bias", "...router.task_gate"), so that
  // a task head heads.<task>.weight is a matrix whatever the task is called.
  const std::string leaf = name.substr(name.rfind('.') + 1);
  return p.dim() < 2 || leaf == "b1" || leaf == "b2" || leaf == "bias" || leaf == "task_gate";
}

}  // namespace sy
