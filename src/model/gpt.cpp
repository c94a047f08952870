#include "model/gpt.h"

#include <cmath>

#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "common/error.h"

namespace sy {

at::Tensor dropout(const at::Tensor& x, double p, bool training, at::Generator* gen) {
  if (!training || p <= 0) return x;
  if (gen != nullptr && x.is_cpu()) {
    at::Tensor keep = at::empty_like(x).bernoulli_(1.0 - p, *gen);
    return x * keep / (1.0 - p);
  }
  return at::dropout(x, p, /*train=*/true);
}

// Note [LayerNorm dtype]
// Under bf16 autocast LibTorch runs layer_norm in fp32 and returns fp32. With bf16 parameters
// (train.param_dtype bf16) the residual stream is bf16, and fp32 norms would hand every block fp32
// activations: its GEMMs cast them back to bf16, and the MoE layer's router and permute read, and
// its backward adds, twice the bytes. A bf16 input with bf16 weights is normalised as Megatron-LM
// does instead: in fp32 inside LibTorch's kernel, the result in bf16. fp32 runs are unchanged.
at::Tensor layer_norm_keep_bf16(torch::nn::LayerNorm ln, const at::Tensor& x) {
  if (x.is_cuda() && x.scalar_type() == at::kBFloat16 &&
      ln->weight.scalar_type() == at::kBFloat16) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    return ln->forward(x);
  }
  return ln->forward(x);
}

// ---------------------------------------------------------------------------------------------

SelfAttentionImpl::SelfAttentionImpl(const ModelConfig& cfg)
    : n_heads_(cfg.n_heads), dropout_(cfg.dropout), causal_(cfg.kind == ModelKind::kDecoder) {
  qkv = register_module(
      "qkv",
      torch::nn::Linear(torch::nn::LinearOptions(cfg.d_model, 3 * cfg.d_model).bias(cfg.bias)));
  proj = register_module(
      "proj", torch::nn::Linear(torch::nn::LinearOptions(cfg.d_model, cfg.d_model).bias(cfg.bias)));
}

at::Tensor SelfAttentionImpl::forward(const at::Tensor& x, at::Generator* gen) {
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2);
  const int64_t head_dim = H / n_heads_;
  auto qkv_parts = qkv->forward(x).split(H, /*dim=*/2);
  auto heads = [&](const at::Tensor& t) {  // [B, T, H] -> [B, nh, T, hd]
    return t.view({B, T, n_heads_, head_dim}).transpose(1, 2);
  };
  at::Tensor q = heads(qkv_parts[0]), k = heads(qkv_parts[1]), v = heads(qkv_parts[2]);
  const double p = is_training() ? dropout_ : 0.0;
  at::Tensor y;
#if TORCH_VERSION_MAJOR >= 2
  // Fused attention, except when attention dropout must come from this rank's CPU generator.
  if (p == 0.0 || !x.is_cpu()) {
    y = at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/p,
                                         /*is_causal=*/causal_);
  }
#endif
  if (!y.defined()) {
    at::Tensor att =
        q.matmul(k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(head_dim)));
    if (causal_) {
      at::Tensor mask = at::ones({T, T}, x.options().dtype(at::kBool)).triu(/*diagonal=*/1);
      att = att.masked_fill(mask, -std::numeric_limits<float>::infinity());
    }
    att = at::softmax(att, /*dim=*/-1);
    y = dropout(att, p, is_training(), gen).matmul(v);
  }
  y = y.transpose(1, 2).contiguous().view({B, T, H});
  return dropout(proj->forward(y), dropout_, is_training(), gen);
}

// ---------------------------------------------------------------------------------------------

MlpImpl::MlpImpl(const ModelConfig& cfg, Activation activation) : activation_(activation) {
  const int64_t width = activation == Activation::kSwiGlu ? 2 * cfg.d_ff : cfg.d_ff;
  fc = register_module(
      "fc", torch::nn::Linear(torch::nn::LinearOptions(cfg.d_model, width).bias(cfg.bias)));
  proj = register_module(
      "proj", torch::nn::Linear(torch::nn::LinearOptions(cfg.d_ff, cfg.d_model).bias(cfg.bias)));
}

at::Tensor MlpImpl::forward(const at::Tensor& x) {
  at::Tensor h = fc->forward(x);
  switch (activation_) {
    case Activation::kGelu: h = at::gelu(h); break;
    case Activation::kRelu: h = at::relu(h); break;
    case Activation::kSwiGlu: {
      auto parts = h.chunk(2, /*dim=*/-1);
      h = at::silu(parts[0]) * parts[1];
      break;
    }
  }
  return proj->forward(h);
}

// ---------------------------------------------------------------------------------------------

BlockImpl::BlockImpl(const ModelConfig& model, const MoeConfig& moe_cfg, bool is_moe,
                     int64_t layer_index, const InitSpec& init, at::Generator& dense_gen,
                     CommPtr ep_group)
    : dropout_(model.dropout) {
  ln1 = register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({model.d_model})));
  attn = register_module("attn", SelfAttention(model));
  ln2 = register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({model.d_model})));
  if (is_moe) {
    const int64_t d_ff = moe_cfg.d_ff > 0 ? moe_cfg.d_ff : model.d_ff;
    moe = register_module("moe", MoELayer(moe_cfg, model.d_model, d_ff, model.bias, init, dense_gen,
                                          layer_index, std::move(ep_group)));
  } else {
    mlp = register_module("mlp", Mlp(model, moe_cfg.activation));
  }
}

BlockOutput BlockImpl::forward(const at::Tensor& x_in, const at::Tensor& token_ids,
                               at::Generator* gen, const at::Tensor& task_ids) {
  BlockOutput out;
  at::Tensor x = x_in + attn->forward(layer_norm_keep_bf16(ln1, x_in), gen);
  at::Tensor h = layer_norm_keep_bf16(ln2, x);
  if (moe) {
    const int64_t B = h.size(0), T = h.size(1), H = h.size(2);
    MoeOutput m = moe->forward(h.reshape({B * T, H}), token_ids, gen, /*seq_len=*/T, task_ids);
    h = m.y.view({B, T, H});
    out.aux_loss = m.aux_loss;
    out.z_loss = m.z_loss;
  } else {
    h = mlp->forward(h);
  }
  out.x = x + dropout(h, dropout_, is_training(), gen);
  return out;
}

// ---------------------------------------------------------------------------------------------

namespace {

// Whether `name` is "<module>.<leaf>" with <module> an MoE layer's child `module` ("experts",
// "router"): the whole name "experts.w1" (a bare layer) or "... .moe.experts.w1" (in a model).
// Matched by components, so a task head heads.<task>.weight is never taken for one, whatever the
// task's name.
bool is_moe_child(const std::string& name, const std::string& module) {
  const std::string tag = module + ".";
  const size_t at = name.rfind(tag);
  if (at == std::string::npos || name.find('.', at + tag.size()) != std::string::npos) return false;
  return at == 0 || (at >= 4 && name.compare(at - 4, 4, "moe.") == 0);
}

}  // namespace

bool is_expert_parameter(const std::string& name) { return is_moe_child(name, "experts"); }

bool is_router_parameter(const std::string& name) { return is_moe_child(name, "router"); }

GPTImpl::GPTImpl(const ModelConfig& model, const MoeConfig& moe_cfg, int64_t vocab_size,
                 CommPtr ep_group, uint64_t seed, const std::vector<TaskConfig>& tasks)
    : model_(model), moe_(moe_cfg), vocab_size_(vocab_size) {
  SY_CHECK(vocab_size > 0, "model: vocabulary size must be positive");
  const InitSpec init = make_init_spec(model.init, seed);
  at::Generator dense_gen = make_cpu_generator(mix_seed(seed, /*a=*/0xD0));
  wte = register_module("wte", torch::nn::Embedding(vocab_size, model.d_model));
  wpe = register_module("wpe", torch::nn::Embedding(model.block_size, model.d_model));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < model.n_layers; ++i) {
    const bool is_moe = moe_cfg.every > 0 && (i + 1) % moe_cfg.every == 0;
    blocks->push_back(Block(model, moe_cfg, is_moe, i, init, dense_gen, ep_group));
  }
  ln_f =
      register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({model.d_model})));
  lm_head = register_module(
      "lm_head",
      torch::nn::Linear(torch::nn::LinearOptions(model.d_model, vocab_size).bias(false)));

  // Note [Sharding-independent init]: every dense weight from `dense_gen`, in module order.
  // (Routers and experts initialised themselves above.)
  torch::NoGradGuard no_grad;
  for (const auto& item : named_modules(/*name_prefix=*/"", /*include_self=*/false)) {
    torch::nn::Module* m = item.value().get();
    if (auto* linear = dynamic_cast<torch::nn::LinearImpl*>(m)) {
      linear->weight.normal_(0.0, init_std(init, linear->weight.size(1)), dense_gen);
      if (linear->bias.defined()) linear->bias.zero_();
    } else if (auto* emb = dynamic_cast<torch::nn::EmbeddingImpl*>(m)) {
      emb->weight.normal_(0.0, init.kaiming ? 1.0 : 0.02, dense_gen);
    } else if (auto* ln = dynamic_cast<torch::nn::LayerNormImpl*>(m)) {
      ln->weight.fill_(1.0);
      ln->bias.zero_();
    }
  }
  // data.tasks: after every other weight, so a model without tasks draws the same numbers.
  if (tasks.empty()) return;
  std::vector<std::vector<int64_t>> masks;
  for (const TaskConfig& t : tasks) masks.push_back(t.experts);
  for (MoELayer& layer : moe_layers()) {
    layer->router->set_task_masks(masks, moe_cfg.task_masks);
    task_masks_ = task_masks_ || layer->router->has_task_masks();
  }
  std::shared_ptr<torch::nn::Module> heads;
  for (size_t t = 0; t < tasks.size(); ++t) {
    if (tasks[t].head != TaskHead::kOwn) continue;
    if (!heads) heads = register_module("heads", std::make_shared<torch::nn::Module>());
    torch::nn::Linear head(torch::nn::LinearOptions(model.d_model, vocab_size).bias(false));
    heads->register_module(tasks[t].name, head);
    head->weight.normal_(0.0, init_std(init, model.d_model), dense_gen);
    task_heads.emplace_back(static_cast<int64_t>(t), head);
  }
}

std::vector<MoELayer> GPTImpl::moe_layers() const {
  std::vector<MoELayer> layers;
  for (const auto& b : *blocks) {
    auto block = std::dynamic_pointer_cast<BlockImpl>(b);
    if (block && block->moe) layers.push_back(block->moe);
  }
  return layers;
}

at::Tensor GPTImpl::hidden(const at::Tensor& idx, at::Tensor* aux, at::Tensor* z,
                           const at::Tensor& task) {
  SY_CHECK(idx.dim() == 2, "model: expected [B, T] token ids, got ", idx.sizes());
  const int64_t T = idx.size(1);
  SY_CHECK(T <= model_.block_size, "model: sequence length ", T, " exceeds model.block_size (",
           model_.block_size, ")");
  at::Tensor pos = at::arange(T, idx.options());
  at::Tensor x = wte->forward(idx) + wpe->forward(pos).unsqueeze(0);
  x = dropout(x, model_.dropout, is_training(), gen_);
  at::Tensor token_ids = idx.reshape({-1});
  SY_CHECK(!task_masks_ || task.defined(),
           "model: the routers have data.tasks expert masks, so "
           "every sequence needs its task id");
  // Each token's task: its sequence's.
  const at::Tensor task_ids =
      task_masks_ ? task.to(idx.device()).view({-1, 1}).expand({idx.size(0), T}).reshape({-1})
                  : at::Tensor();
  at::Tensor aux_sum, z_sum;
  int64_t num_moe = 0;
  for (const auto& b : *blocks) {
    BlockOutput out = b->as<BlockImpl>()->forward(x, token_ids, gen_, task_ids);
    x = out.x;
    if (out.aux_loss.defined()) {
      aux_sum = aux_sum.defined() ? aux_sum + out.aux_loss : out.aux_loss;
      z_sum = z_sum.defined() ? z_sum + out.z_loss : out.z_loss;
      ++num_moe;
    }
  }
  if (aux != nullptr) {
    *aux = num_moe > 0 ? aux_sum / static_cast<double>(num_moe)
                       : at::zeros({}, x.options().dtype(at::kFloat));
  }
  if (z != nullptr) {
    *z = num_moe > 0 ? z_sum / static_cast<double>(num_moe)
                     : at::zeros({}, x.options().dtype(at::kFloat));
  }
  return x;
}

at::Tensor GPTImpl::forward(const at::Tensor& idx, at::Tensor* aux, at::Tensor* z,
                            const at::Tensor& task) {
  const at::Tensor h = layer_norm_keep_bf16(ln_f, hidden(idx, aux, z, task));
  at::Tensor logits = lm_head->forward(h);
  if (!task.defined()) return logits;
  // A task's own head for its sequences (each head runs over the whole batch: static shapes).
  const at::Tensor task_dev = task.to(idx.device()).view({-1, 1, 1});
  for (auto& [t, head] : task_heads) logits = at::where(task_dev == t, head->forward(h), logits);
  return logits;
}

LossOutput GPTImpl::loss(const at::Tensor& idx, const at::Tensor& targets, const at::Tensor& task) {
  LossOutput out;
  at::Tensor logits = forward(idx, &out.aux, &out.z, task);
  out.ce = at::cross_entropy_loss(logits.reshape({-1, vocab_size_}).to(at::kFloat),
                                  targets.reshape({-1}));  // ignore_index -100: see gpt.h
  // A term whose coefficient is 0 is left out rather than multiplied by 0: the same value, and no
  // backward pass through it (z-loss is still computed for the logs).
  out.loss = out.ce;
  // moe.balance bias or none: the aux loss is only logged.
  if (moe_.aux_loss_coef != 0 && uses_aux_loss(moe_.balance)) {
    out.loss = out.loss + moe_.aux_loss_coef * out.aux;
  }
  if (moe_.z_loss_coef != 0) out.loss = out.loss + moe_.z_loss_coef * out.z;
  return out;
}

}  // namespace sy
