#include "model/gpt.h"

#include <cmath>
#include <optional>

#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "common/error.h"
#include "common/recompute.h"

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

at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal,
                  const at::Tensor& keep, double p, bool training, at::Generator* gen) {
  SY_CHECK(!(causal && keep.defined()), "attention: causal and a key mask at once");
  const int64_t Tq = q.size(2), Tk = k.size(2);
  // [B, Tk] -> [B, 1, 1, Tk]: the same keys for every head and query.
  const at::Tensor keep4 = keep.defined() ? keep.view({keep.size(0), 1, 1, Tk}) : at::Tensor();
#if TORCH_VERSION_MAJOR >= 2
  // Fused attention, except when attention dropout must come from this rank's CPU generator.
  if (p == 0.0 || !q.is_cpu()) {
    // An undefined mask must be passed as no mask (LibTorch 2.x rejects an undefined tensor).
    const std::optional<at::Tensor> mask =
        keep4.defined() ? std::optional<at::Tensor>(keep4) : std::nullopt;
    return at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/mask, /*dropout_p=*/p,
                                            /*is_causal=*/causal);
  }
#endif
  at::Tensor att =
      q.matmul(k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(q.size(3))));
  const double minus_inf = -std::numeric_limits<float>::infinity();
  if (causal) {
    at::Tensor mask = at::ones({Tq, Tk}, q.options().dtype(at::kBool)).triu(/*diagonal=*/1);
    att = att.masked_fill(mask, minus_inf);
  }
  if (keep4.defined()) att = att.masked_fill(keep4.logical_not(), minus_inf);
  att = at::softmax(att, /*dim=*/-1);
  return dropout(att, p, training, gen).matmul(v);
}

namespace {

// [B, T, H] -> [B, nh, T, hd]
at::Tensor split_heads(const at::Tensor& t, int64_t n_heads) {
  return t.view({t.size(0), t.size(1), n_heads, t.size(2) / n_heads}).transpose(1, 2);
}

// [B, nh, T, hd] -> [B, T, H]
at::Tensor merge_heads(const at::Tensor& y) {
  return y.transpose(1, 2).contiguous().view({y.size(0), y.size(2), y.size(1) * y.size(3)});
}

}  // namespace

SelfAttentionImpl::SelfAttentionImpl(const ModelConfig& cfg, bool causal)
    : n_heads_(cfg.n_heads), dropout_(cfg.dropout), causal_(causal) {
  qkv = register_module(
      "qkv",
      torch::nn::Linear(torch::nn::LinearOptions(cfg.d_model, 3 * cfg.d_model).bias(cfg.bias)));
  proj = register_module(
      "proj", torch::nn::Linear(torch::nn::LinearOptions(cfg.d_model, cfg.d_model).bias(cfg.bias)));
}

at::Tensor SelfAttentionImpl::forward(const at::Tensor& x, at::Generator* gen,
                                      const at::Tensor& keep) {
  auto parts = qkv->forward(x).split(x.size(2), /*dim=*/2);
  const double p = is_training() ? dropout_ : 0.0;
  const at::Tensor y =
      attend(split_heads(parts[0], n_heads_), split_heads(parts[1], n_heads_),
             split_heads(parts[2], n_heads_), causal_, keep, p, is_training(), gen);
  return dropout(proj->forward(merge_heads(y)), dropout_, is_training(), gen);
}

CrossAttentionImpl::CrossAttentionImpl(const ModelConfig& cfg)
    : n_heads_(cfg.n_heads), dropout_(cfg.dropout) {
  q = register_module(
      "q", torch::nn::Linear(torch::nn::LinearOptions(cfg.d_model, cfg.d_model).bias(cfg.bias)));
  kv = register_module(
      "kv",
      torch::nn::Linear(torch::nn::LinearOptions(cfg.d_model, 2 * cfg.d_model).bias(cfg.bias)));
  proj = register_module(
      "proj", torch::nn::Linear(torch::nn::LinearOptions(cfg.d_model, cfg.d_model).bias(cfg.bias)));
}

at::Tensor CrossAttentionImpl::forward(const at::Tensor& x, const at::Tensor& memory,
                                       const at::Tensor& keep, at::Generator* gen) {
  auto parts = kv->forward(memory).split(memory.size(2), /*dim=*/2);
  const double p = is_training() ? dropout_ : 0.0;
  const at::Tensor y =
      attend(split_heads(q->forward(x), n_heads_), split_heads(parts[0], n_heads_),
             split_heads(parts[1], n_heads_), /*causal=*/false, keep, p, is_training(), gen);
  return dropout(proj->forward(merge_heads(y)), dropout_, is_training(), gen);
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

BlockImpl::BlockImpl(const ModelConfig& model, const MoeConfig& moe_cfg, BlockRole role,
                     bool is_moe, int64_t layer_index, const InitSpec& init,
                     at::Generator& dense_gen, CommPtr ep_group)
    : dropout_(model.dropout) {
  ln1 = register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({model.d_model})));
  attn = register_module("attn", SelfAttention(model, role != BlockRole::kBidirectional));
  if (role == BlockRole::kCrossDecoder) {
    ln_cross = register_module("ln_cross",
                               torch::nn::LayerNorm(torch::nn::LayerNormOptions({model.d_model})));
    cross = register_module("cross", CrossAttention(model));
  }
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
                               at::Generator* gen, const BlockContext& ctx) {
  BlockOutput out;
  at::Tensor x = x_in + attn->forward(layer_norm_keep_bf16(ln1, x_in), gen, ctx.keep);
  if (cross) {
    SY_CHECK(ctx.memory.defined(),
             "model: a decoder block with cross-attention needs the "
             "encoder's output");
    x = x + cross->forward(layer_norm_keep_bf16(ln_cross, x), ctx.memory, ctx.memory_keep, gen);
  }
  at::Tensor h = layer_norm_keep_bf16(ln2, x);
  if (moe) {
    const int64_t B = h.size(0), T = h.size(1), H = h.size(2);
    MoeOutput m = moe->forward(h.reshape({B * T, H}), token_ids, gen, /*seq_len=*/T, ctx.task_ids,
                               ctx.routed);
    h = m.y.view({B, T, H});
    out.aux_loss = m.aux_loss;
    out.z_loss = m.z_loss;
  } else {
    h = mlp->forward(h);
  }
  out.x = x + dropout(h, dropout_, is_training(), gen);
  return out;
}

namespace {

// Whether block i of a stack is an MoE block: every moe.every-th (1-based), in the stacks
// moe.where names.
bool moe_block(const MoeConfig& moe, int64_t i, bool stack_chosen) {
  return stack_chosen && moe.every > 0 && (i + 1) % moe.every == 0;
}

}  // namespace

EncoderImpl::EncoderImpl(const ModelConfig& model, const MoeConfig& moe, const InitSpec& init,
                         at::Generator& dense_gen, const CommPtr& ep_group) {
  wpe = register_module("wpe", torch::nn::Embedding(model.block_size, model.d_model));
  blocks = register_module("blocks", torch::nn::ModuleList());
  const bool chosen = moe.where != MoeWhere::kDecoder;
  for (int64_t i = 0; i < model.n_layers; ++i) {
    blocks->push_back(Block(model, moe, BlockRole::kBidirectional, moe_block(moe, i, chosen), i,
                            init, dense_gen, ep_group));
  }
  ln_f =
      register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({model.d_model})));
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
  const bool seq2seq = model.kind == ModelKind::kEncoderDecoder;
  SY_CHECK(!seq2seq || vocab_size > kSeq2SeqSpecialIds,
           "model: an encoder_decoder vocabulary needs characters besides PAD, BOS and EOS");
  wte = register_module("wte", torch::nn::Embedding(vocab_size, model.d_model));
  wpe = register_module("wpe", torch::nn::Embedding(model.block_size, model.d_model));
  // An encoder_decoder's layers: the encoder's 0 .. n_layers - 1, then the decoder's.
  int64_t first_layer = 0;
  if (seq2seq) {
    encoder = register_module("encoder", Encoder(model, moe_cfg, init, dense_gen, ep_group));
    first_layer = model.n_layers;
  }
  const BlockRole role = seq2seq                             ? BlockRole::kCrossDecoder
                         : model.kind == ModelKind::kEncoder ? BlockRole::kBidirectional
                                                             : BlockRole::kCausal;
  const bool chosen = !seq2seq || moe_cfg.where != MoeWhere::kEncoder;
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < model.n_layers; ++i) {
    blocks->push_back(Block(model, moe_cfg, role, moe_block(moe_cfg, i, chosen), first_layer + i,
                            init, dense_gen, ep_group));
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
  for (const torch::nn::ModuleList& stack :
       {encoder ? encoder->blocks : torch::nn::ModuleList(nullptr), blocks}) {
    if (!stack) continue;
    for (const auto& b : *stack) {
      auto block = std::dynamic_pointer_cast<BlockImpl>(b);
      if (block && block->moe) layers.push_back(block->moe);
    }
  }
  return layers;
}

void GPTImpl::set_activation_checkpointing(Recompute what) {
  recompute_blocks_ = what == Recompute::kBlock;
  for (MoELayer& layer : moe_layers()) {
    layer->experts->set_recompute(what == Recompute::kMoe);
    if (layer->shared) layer->shared->set_recompute(what == Recompute::kMoe);
  }
}

namespace {

// block->forward(x, ...) with its activations recomputed in the backward: the block's input and
// the encoder's output (a seq2seq decoder's cross-attention) are the checkpoint's inputs.
BlockOutput checkpointed_block(const std::shared_ptr<BlockImpl>& block, const at::Tensor& x,
                               const at::Tensor& token_ids, at::Generator* gen,
                               const BlockContext& ctx) {
  const RecomputeFn fn = [block, token_ids, gen, ctx](const std::vector<at::Tensor>& in) {
    BlockContext c = ctx;
    if (in.size() > 1) c.memory = in[1];
    BlockOutput o = block->forward(in[0], token_ids, gen, c);
    return std::vector<at::Tensor>{o.x, o.aux_loss, o.z_loss};
  };
  std::vector<at::Tensor> inputs{x};
  if (ctx.memory.defined()) inputs.push_back(ctx.memory);
  const std::vector<at::Tensor> out = checkpoint(fn, inputs, block->parameters(), gen);
  return BlockOutput{out[0], out[1], out[2]};
}

}  // namespace

at::Tensor GPTImpl::run_blocks(torch::nn::ModuleList& stack, at::Tensor x,
                               const at::Tensor& token_ids, const BlockContext& ctx,
                               at::Tensor& aux_sum, at::Tensor& z_sum, int64_t& num_moe) {
  for (const auto& b : *stack) {
    auto block = std::dynamic_pointer_cast<BlockImpl>(b);
    BlockOutput out = recompute_blocks_ ? checkpointed_block(block, x, token_ids, gen_, ctx)
                                        : block->forward(x, token_ids, gen_, ctx);
    x = out.x;
    if (out.aux_loss.defined()) {
      aux_sum = aux_sum.defined() ? aux_sum + out.aux_loss : out.aux_loss;
      z_sum = z_sum.defined() ? z_sum + out.z_loss : out.z_loss;
      ++num_moe;
    }
  }
  return x;
}

at::Tensor GPTImpl::hidden(const at::Tensor& idx, at::Tensor* aux, at::Tensor* z,
                           const at::Tensor& task) {
  SY_CHECK(idx.dim() == 2, "model: expected [B, T] token ids, got ", idx.sizes());
  const bool seq2seq = static_cast<bool>(encoder);
  const int64_t T = seq2seq ? model_.block_size : idx.size(1);
  if (seq2seq) {
    SY_CHECK(idx.size(1) == 2 * T, "model: an encoder_decoder takes rows of source and decoder ",
             "input, 2 * model.block_size = ", 2 * T, " tokens; got ", idx.size(1));
  } else {
    SY_CHECK(T <= model_.block_size, "model: sequence length ", T, " exceeds model.block_size (",
             model_.block_size, ")");
  }
  at::Tensor pos = at::arange(T, idx.options());
  SY_CHECK(!task_masks_ || task.defined(),
           "model: the routers have data.tasks expert masks, so "
           "every sequence needs its task id");
  BlockContext ctx;
  // Each token's task: its sequence's.
  if (task_masks_) {
    ctx.task_ids = task.to(idx.device()).view({-1, 1}).expand({idx.size(0), T}).reshape({-1});
  }
  at::Tensor aux_sum, z_sum;
  int64_t num_moe = 0;
  at::Tensor dec = idx;
  if (seq2seq) {  // Note [Seq2seq batches]: the source half through the encoder first
    const at::Tensor src = idx.narrow(1, 0, T);
    dec = idx.narrow(1, T, T);
    const int64_t pad = seq2seq_ids(vocab_size_ - kSeq2SeqSpecialIds).pad;
    BlockContext enc_ctx;
    enc_ctx.keep = src != pad;
    if (!moe_.route_padding) {
      enc_ctx.routed = enc_ctx.keep.reshape({-1});
      ctx.routed = (dec != pad).reshape({-1});
    }
    at::Tensor e = wte->forward(src) + encoder->wpe->forward(pos).unsqueeze(0);
    e = dropout(e, model_.dropout, is_training(), gen_);
    e = run_blocks(encoder->blocks, e, src.reshape({-1}), enc_ctx, aux_sum, z_sum, num_moe);
    ctx.memory = layer_norm_keep_bf16(encoder->ln_f, e);
    ctx.memory_keep = enc_ctx.keep;
  }
  at::Tensor x = wte->forward(dec) + wpe->forward(pos).unsqueeze(0);
  x = dropout(x, model_.dropout, is_training(), gen_);
  x = run_blocks(blocks, x, dec.reshape({-1}), ctx, aux_sum, z_sum, num_moe);
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
  const at::Tensor task_dev = task.to(h.device()).view({-1, 1, 1});
  for (auto& [t, head] : task_heads) logits = at::where(task_dev == t, head->forward(h), logits);
  return logits;
}

at::Tensor token_cross_entropy(const at::Tensor& logits, const at::Tensor& targets) {
  return at::cross_entropy_loss(logits.reshape({targets.numel(), -1}).to(at::kFloat),
                                targets.reshape({-1}));  // ignore_index -100: see gpt.h
}

LossOutput GPTImpl::loss(const at::Tensor& idx, const at::Tensor& targets, const at::Tensor& task) {
  LossOutput out;
  out.ce = token_cross_entropy(forward(idx, &out.aux, &out.z, task), targets);
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
