// GPT-style decoder with MoE FFNs: token + learned position embeddings, pre-LayerNorm blocks of
// causal self-attention and an FFN (dense, or an MoE layer on every moe.every-th block), a final
// LayerNorm and the LM head. Loss = cross-entropy + aux_loss_coef * aux + z_loss_coef * z, with
// aux and z averaged over the MoE layers. With model.kind encoder the attention is bidirectional
// (BERT-style) and the targets are the masked tokens only: a target of -100 (kIgnoreTarget in
// data/dataset.h, LibTorch's ignore_index: the positions that were not masked) adds nothing to
// the cross-entropy, which is the mean over the others. With model.kind encoder_decoder an encoder
// stack (bidirectional, PAD masked) reads the source half of each row and the decoder attends to
// its output through cross-attention (Note [Seq2seq batches] in data/pairs.h).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include "config/config.h"
#include "moe/moe_layer.h"
#include "parallel/communicator.h"

namespace sy {

// Dropout that draws from `gen` for CPU tensors (reproducible per rank, also for in-process
// ranks), and from the device's default generator otherwise.
at::Tensor dropout(const at::Tensor& x, double p, bool training, at::Generator* gen);
// ln(x); a bf16 CUDA input with bf16 weights stays bf16 under autocast (Note [LayerNorm dtype]).
at::Tensor layer_norm_keep_bf16(torch::nn::LayerNorm ln, const at::Tensor& x);

// Scaled dot-product attention of q [B, nh, Tq, hd] over k, v [B, nh, Tk, hd]: causal (query i
// sees keys 0 .. i), or limited to the keys whose `keep` [B, Tk] (bool) is true, or neither (both
// at once is not needed and refused). Attention dropout p draws from `gen` on the CPU.
at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal,
                  const at::Tensor& keep, double p, bool training, at::Generator* gen);

// Multi-head self-attention: causal (each position sees itself and the past) in a decoder,
// bidirectional (every position sees the whole sequence) in an encoder.
class SelfAttentionImpl : public torch::nn::Module {
 public:
  SelfAttentionImpl(const ModelConfig& cfg, bool causal);
  // [B, T, H] -> [B, T, H]; keep [B, T] bool: the positions that may be attended to (the
  // encoder's non-PAD source tokens), undefined: all.
  at::Tensor forward(const at::Tensor& x, at::Generator* gen, const at::Tensor& keep = {});

  torch::nn::Linear qkv{nullptr}, proj{nullptr};

 private:
  int64_t n_heads_;
  double dropout_;
  bool causal_;
};
TORCH_MODULE(SelfAttention);

// Multi-head cross-attention of a decoder: queries from x [B, T, H], keys and values from the
// encoder's output `memory` [B, S, H], limited to its positions whose `keep` [B, S] is true.
class CrossAttentionImpl : public torch::nn::Module {
 public:
  explicit CrossAttentionImpl(const ModelConfig& cfg);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& memory, const at::Tensor& keep,
                     at::Generator* gen);

  torch::nn::Linear q{nullptr}, kv{nullptr}, proj{nullptr};

 private:
  int64_t n_heads_;
  double dropout_;
};
TORCH_MODULE(CrossAttention);

// The dense FFN: Linear -> activation -> Linear (SwiGLU: the first Linear is twice as wide).
class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(const ModelConfig& cfg, Activation activation);
  at::Tensor forward(const at::Tensor& x);

  torch::nn::Linear fc{nullptr}, proj{nullptr};

 private:
  Activation activation_;
};
TORCH_MODULE(Mlp);

struct BlockOutput {
  at::Tensor x;
  at::Tensor aux_loss, z_loss;  // undefined for dense blocks
};

// What a block's attention looks at besides its own positions (all undefined in a GPT).
struct BlockContext {
  at::Tensor task_ids;  // [B*T] each token's task (data.tasks expert masks)
  at::Tensor keep;      // [B, T] bool: self-attention's keys that count (encoder: not PAD)
  // [B*T] bool: the tokens the MoE blocks route (Note [Padding out of routing] in
  // moe/moe_layer.h: an encoder_decoder's non-PAD positions unless moe.route_padding).
  at::Tensor routed;
  at::Tensor memory;       // [B, S, H]: the encoder's output, for a decoder's cross-attention
  at::Tensor memory_keep;  // [B, S] bool: its positions that count
};

// Which part of a model a block is: how it attends.
enum class BlockRole {
  kCausal,         // a GPT block: causal self-attention
  kBidirectional,  // an encoder block: bidirectional self-attention
  kCrossDecoder,   // a seq2seq decoder block: causal self-attention, then cross-attention
};

class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const ModelConfig& model, const MoeConfig& moe, BlockRole role, bool is_moe,
            int64_t layer_index, const InitSpec& init, at::Generator& dense_gen, CommPtr ep_group);
  BlockOutput forward(const at::Tensor& x, const at::Tensor& token_ids, at::Generator* gen,
                      const BlockContext& ctx = {});

  torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr}, ln_cross{nullptr};
  SelfAttention attn{nullptr};
  CrossAttention cross{nullptr};  // kCrossDecoder blocks
  Mlp mlp{nullptr};               // dense blocks
  MoELayer moe{nullptr};          // MoE blocks

 private:
  double dropout_;
};
TORCH_MODULE(Block);

// The encoder of model.kind encoder_decoder: its own position embeddings, n_layers
// bidirectional blocks and a final LayerNorm (the token embedding is the model's wte).
class EncoderImpl : public torch::nn::Module {
 public:
  EncoderImpl(const ModelConfig& model, const MoeConfig& moe, const InitSpec& init,
              at::Generator& dense_gen, const CommPtr& ep_group);

  torch::nn::Embedding wpe{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm ln_f{nullptr};
};
TORCH_MODULE(Encoder);

// The mean cross-entropy (fp32) of logits [..., V] against targets [...], the positions whose
// target is -100 left out: GPTImpl::loss's, and evaluation's.
at::Tensor token_cross_entropy(const at::Tensor& logits, const at::Tensor& targets);

struct LossOutput {
  at::Tensor loss;  // what backward() is called on
  at::Tensor ce;    // cross-entropy (nats per token)
  at::Tensor aux;   // mean over MoE layers (0 without MoE)
  at::Tensor z;     // mean over MoE layers
};

class GPTImpl : public torch::nn::Module {
 public:
  // ep_group: the expert-parallel group (nullptr or size 1: all experts local). tasks
  // (data.tasks): the routers' task masks (moe.task_masks says fixed or learned) and an LM head
  // heads.<name> for each task with head own.
  GPTImpl(const ModelConfig& model, const MoeConfig& moe, int64_t vocab_size, CommPtr ep_group,
          uint64_t seed, const std::vector<TaskConfig>& tasks = {});

  // idx: [B, T] int64 -> logits [B, T, V]. aux/z (if asked) get the mean MoE losses. task: [B]
  // int64, each sequence's task (data.tasks): its expert mask in every router, and its own head
  // where it has one; undefined: no masks, the shared head (lm_head). model.kind encoder_decoder:
  // idx [B, 2T] = [source | decoder input] -> the decoder's logits [B, T, V] (Note [Seq2seq
  // batches]).
  at::Tensor forward(const at::Tensor& idx, at::Tensor* aux = nullptr, at::Tensor* z = nullptr,
                     const at::Tensor& task = {});
  // The blocks' output [B, T, H] before the final LayerNorm and the LM head: what routing needs
  // (the global-batch counting pass, Note [Global-batch aux loss]); forward() is its LM head.
  at::Tensor hidden(const at::Tensor& idx, at::Tensor* aux = nullptr, at::Tensor* z = nullptr,
                    const at::Tensor& task = {});
  LossOutput loss(const at::Tensor& idx, const at::Tensor& targets, const at::Tensor& task = {});

  // train.activation_checkpointing (Note [Activation checkpointing] in common/recompute.h).
  void set_activation_checkpointing(Recompute what);
  // Generator for dropout, routing noise and random routing on CPU (owned by the caller).
  void set_generator(at::Generator* gen) { gen_ = gen; }
  std::vector<MoELayer> moe_layers() const;  // the encoder's first, then the decoder's
  int64_t block_size() const { return model_.block_size; }
  int64_t vocab_size() const { return vocab_size_; }

  torch::nn::Embedding wte{nullptr}, wpe{nullptr};
  Encoder encoder{nullptr};               // model.kind encoder_decoder
  torch::nn::ModuleList blocks{nullptr};  // the decoder's (or the encoder's, model.kind encoder)
  torch::nn::LayerNorm ln_f{nullptr};
  torch::nn::Linear lm_head{nullptr};
  // data.tasks head own: (task index, its head), registered as heads.<task name>.
  std::vector<std::pair<int64_t, torch::nn::Linear>> task_heads;
  bool has_task_masks() const { return task_masks_; }

 private:
  // The decoder stack from embedded x on; adds the MoE losses to aux_sum/z_sum.
  at::Tensor run_blocks(torch::nn::ModuleList& stack, at::Tensor x, const at::Tensor& token_ids,
                        const BlockContext& ctx, at::Tensor& aux_sum, at::Tensor& z_sum,
                        int64_t& num_moe);
  bool task_masks_ = false;
  bool recompute_blocks_ = false;
  ModelConfig model_;
  MoeConfig moe_;
  int64_t vocab_size_;
  at::Generator* gen_ = nullptr;
};
TORCH_MODULE(GPT);

// True for parameters that live on one EP rank only (expert weights, sharded by global id).
bool is_expert_parameter(const std::string& name);
// True for router parameters, which stay fp32 whatever train.param_dtype says (Note [Router
// precision]).
bool is_router_parameter(const std::string& name);

}  // namespace sy
