#include "train/model_io.h"

#include <cstdio>

#include <torch/torch.h>

#include "common/error.h"

namespace sy {

void save_model(const std::string& path, GPTImpl& model, const ParallelGroups& groups) {
  torch::NoGradGuard no_grad;
  torch::serialize::OutputArchive archive;
  for (const auto& item : model.named_parameters()) {
    at::Tensor value = item.value().detach();
    if (is_expert_parameter(item.key()) && groups.ep->size() > 1) {
      std::vector<int64_t> shape = value.sizes().vec();
      shape[0] *= groups.ep->size();
      at::Tensor full = at::empty(shape, value.options());
      groups.ep->all_gather(full, value.contiguous());
      value = full;
    }
    archive.write(item.key(), value.to(at::kCPU));
  }
  for (const auto& item : model.named_buffers()) {  // replicated: the routers' score biases
    archive.write(item.key(), item.value().detach().to(at::kCPU));
  }
  if (groups.world_rank != 0) return;
  const std::string tmp = path + ".tmp";
  archive.save_to(tmp);
  SY_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename '", tmp, "' to '", path,
           "'");
}

void load_model(const std::string& path, GPTImpl& model, int64_t ep_rank, int64_t ep_size) {
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const c10::Error& e) {
    SY_THROW("cannot read model file '", path, "': ", e.what_without_backtrace());
  }
  torch::NoGradGuard no_grad;
  for (auto& item : model.named_parameters()) {
    at::Tensor stored;
    SY_CHECK(archive.try_read(item.key(), stored), "model file '", path, "' has no tensor '",
             item.key(), "'");
    at::Tensor& param = item.value();
    if (is_expert_parameter(item.key())) {
      const int64_t local = param.size(0);
      SY_CHECK(stored.size(0) == local * ep_size, "model file '", path, "': '", item.key(),
               "' holds ", stored.size(0), " experts, the model has ", local * ep_size);
      stored = stored.narrow(0, ep_rank * local, local);
    }
    SY_CHECK(stored.sizes() == param.sizes(), "model file '", path, "': '", item.key(),
             "' has shape ", stored.sizes(), ", the model expects ", param.sizes());
    param.copy_(stored);
  }
  for (auto& item : model.named_buffers()) {
    at::Tensor stored;
    SY_CHECK(archive.try_read(item.key(), stored), "model file '", path, "' has no tensor '",
             item.key(), "'");
    SY_CHECK(stored.sizes() == item.value().sizes(), "model file '", path, "': '", item.key(),
             "' has shape ", stored.sizes(), ", the model expects ", item.value().sizes());
    item.value().copy_(stored);
  }
}

}  // namespace sy
