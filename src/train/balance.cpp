// See balance.h.
#include "train/balance.h"

#include <vector>

#include <torch/torch.h>

#include "parallel/watchdog.h"

namespace sy {

void count_global_choices(GPTImpl& model, const at::Tensor& xs, Communicator& world) {
  std::vector<MoELayer> layers = model.moe_layers();
  if (layers.empty()) return;
  at::Tensor counts;  // [L, E] int64
  {
    torch::NoGradGuard no_grad;
    for (int64_t micro = 0; micro < xs.size(0); ++micro) {
      model.hidden(xs[micro]);  // routing only: no final norm, no LM head
      std::vector<at::Tensor> per_layer;
      for (const MoELayer& layer : layers)
        per_layer.push_back(layer->last_stats().tokens_per_expert);
      const at::Tensor c = at::stack(per_layer);
      counts = counts.defined() ? counts + c : c;
    }
  }
  counts = counts.to(at::kLong).contiguous();
  if (world.size() > 1) {
    CollectiveLabel label("moe aux loss: global-batch counts");
    world.all_reduce(counts, ReduceOp::kSum);
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    layers[i]->router->set_global_counts(counts[static_cast<int64_t>(i)]);
  }
}

}  // namespace sy
