#include "train/grad_sync.h"

#include <torch/torch.h>

#include "parallel/watchdog.h"

namespace sy {
namespace {

// One flat buffer per reduction keeps it to one collective per group.
void reduce_flat(std::vector<at::Tensor>& params, Communicator& comm, double scale) {
  if (params.empty()) return;
  for (auto& p : params) {
    if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
  }
  if (comm.size() == 1) {
    // Nothing to exchange: scale in place (multi-tensor kernels), no flat copy.
    if (scale != 1.0) {
      std::vector<at::Tensor> grads;
      for (auto& p : params) grads.push_back(p.mutable_grad());
      at::_foreach_mul_(grads, scale);
    }
    return;
  }
  std::vector<at::Tensor> grads;
  grads.reserve(params.size());
  for (auto& p : params) grads.push_back(p.grad().reshape({-1}));
  // Reduced in fp32 (train.param_dtype bf16 has bf16 gradients; MPI has no bf16 sum).
  at::Tensor flat = at::cat(grads);
  if (flat.scalar_type() != at::kFloat && flat.scalar_type() != at::kDouble) flat = flat.to(at::kFloat);
  comm.all_reduce(flat, ReduceOp::kSum);
  flat.mul_(scale);
  int64_t offset = 0;
  for (auto& p : params) {
    const int64_t n = p.numel();
    p.mutable_grad().copy_(flat.narrow(0, offset, n).view_as(p));
    offset += n;
  }
}

at::Tensor sum_of_squares(const std::vector<at::Tensor>& params, const at::Tensor& like) {
  std::vector<at::Tensor> grads;
  for (const auto& p : params) {
    if (p.grad().defined()) grads.push_back(p.grad().scalar_type() == at::kFloat ? p.grad() : p.grad().to(at::kFloat));
  }
  if (grads.empty()) return at::zeros({}, like.options().dtype(at::kFloat));
  // One multi-tensor kernel for the per-tensor norms, then their squares summed.
  return at::stack(at::_foreach_norm(grads, 2)).pow(2).sum();
}

}  // namespace

void sync_gradients(ParamSet& params, const ParallelGroups& groups) {
  const double scale = 1.0 / static_cast<double>(groups.world_size);
  {
    CollectiveLabel label("grad sync dense");
    reduce_flat(params.dense, *groups.world, scale);
  }
  CollectiveLabel label("grad sync expert");
  reduce_flat(params.expert, *groups.dp, scale);
}

at::Tensor clip_grad_norm(ParamSet& params, const ParallelGroups& groups, double max_norm) {
  const at::Tensor& like = params.dense.empty() ? params.expert.front() : params.dense.front();
  at::Tensor expert_sq = sum_of_squares(params.expert, like).reshape({1});
  if (groups.ep->size() > 1) {
    CollectiveLabel label("grad norm expert");
    groups.ep->all_reduce(expert_sq, ReduceOp::kSum);
  }
  at::Tensor norm = (sum_of_squares(params.dense, like) + expert_sq.squeeze(0)).sqrt();
  if (max_norm > 0) {
    at::Tensor coef = (max_norm / (norm + 1e-6)).clamp_max(1.0);
    torch::NoGradGuard no_grad;
    for (auto* set : {&params.dense, &params.expert}) {
      for (auto& p : *set) {
        if (p.grad().defined()) p.mutable_grad().mul_(coef);
      }
    }
  }
  return norm;
}

}  // namespace sy
