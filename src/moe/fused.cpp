// dispatch_index for every build. Builds without the kernels (no CUDA, or no nvcc) have
// available() false, and the layer never calls the rest; fused_cuda.cpp defines them otherwise.
#include "moe/fused.h"

#include <torch/torch.h>

#include "common/error.h"

namespace sy::fused {

DispatchIndex dispatch_index(const DispatchPlan& plan, const at::Tensor& dest_by_choice,
                             int64_t num_tokens, int64_t rows) {
  const auto long_opts = dest_by_choice.options().dtype(at::kLong);
  const int64_t n = dest_by_choice.numel();
  DispatchIndex d;
  if (num_tokens == 0) {
    d.dest = at::empty({0, 0}, long_opts);
    d.src = at::full({rows}, -1, long_opts);
    return d;
  }
  SY_CHECK(n % num_tokens == 0, "dispatch_index: ", n, " choices for ", num_tokens, " tokens");
  const int64_t k = n / num_tokens;
  // Choice c of the j-th token in processing order is entry c * S + j.
  const at::Tensor by_order = dest_by_choice.view({k, num_tokens}).t();
  d.dest = plan.tokens_in_order
               ? by_order.contiguous()
               : at::empty({num_tokens, k}, long_opts)
                     .index_copy_(0, plan.token.narrow(0, 0, num_tokens), by_order);
  // Dropped choices all land on the extra row `rows`, which is cut off.
  d.src = at::full({rows + 1}, -1, long_opts)
              .scatter_(0, d.dest.reshape({-1}), at::arange(n, long_opts))
              .narrow(0, 0, rows);
  return d;
}

#ifndef SWITCHYARD_FUSED_KERNELS
bool available() { return false; }
bool capturing(const at::Tensor&) { return false; }

namespace {
[[noreturn]] void no_kernels() {
  SY_THROW("this build has no fused MoE kernels (it needs CUDA and nvcc)");
}
}  // namespace

ArrivalSlots arrival_slots(const at::Tensor&, int64_t) { no_kernels(); }
RouterTopK router_topk(const at::Tensor&, int64_t, bool) { no_kernels(); }
RouterLosses router_losses(const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  no_kernels();
}
at::Tensor split_bf16(const at::Tensor&, std::initializer_list<int>) { no_kernels(); }
bool router_gemm_available() { return false; }
at::Tensor router_logits(const at::Tensor&, const at::Tensor&) { no_kernels(); }
DispatchIndex dispatch_rows(const DispatchPlan&, int64_t, int64_t, const at::Tensor&) {
  no_kernels();
}
at::Tensor permute(const at::Tensor&, const DispatchIndex&, at::ScalarType) { no_kernels(); }
at::Tensor trim_rows(const at::Tensor&, const at::Tensor&, int64_t, const DispatchIndex&) {
  no_kernels();
}
at::Tensor combine(const at::Tensor&, const DispatchIndex&, const at::Tensor&, at::ScalarType,
                   const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  no_kernels();
}
at::Tensor bias_act(const at::Tensor&, const at::Tensor&, kernels::Act) { no_kernels(); }
at::Tensor grouped_bias_act(const at::Tensor&, const at::Tensor&, const at::Tensor&, kernels::Act) {
  no_kernels();
}
#endif

}  // namespace sy::fused
