// GPT-style decoder with MoE FFNs: token + learned position embeddings, pre-LayerNorm blocks of
// causal self-attention and an FFN (dense, or an MoE layer on every moe.every-th block), a final
// LayerNorm and the LM head. Loss = cross-entropy + aux_loss_coef * aux + z_loss_coef * z, with
// aux and z averaged over the MoE layers. With model.kind encoder the attention is bidirectional
// (BERT-style) and the targets are the masked tokens only: a target of -100 (kIgnoreTarget in
// data/dataset.h, LibTorch's ignore_index: the positions that were not masked) adds nothing to
// the cross-entropy, which is the mean over the others.
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

// Multi-head self-attention: causal (each position sees itself and the past) for model.kind
// decoder, bidirectional (every position sees the whole sequence) for encoder.
class SelfAttentionImpl : public torch::nn::Module {
 public:
  SelfAttentionImpl(const ModelConfig& cfg);
  at::Tensor forward(const at::Tensor& x, at::Generator* gen);  // [B, T, H] -> [B, T, H]

  torch::nn::Linear qkv{nullptr}, proj{nullptr};

 private:
  int64_t n_heads_;
  double dropout_;
  bool causal_;
};
TORCH_MODULE(SelfAttention);

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

class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const ModelConfig& model, const MoeConfig& moe, bool is_moe, int64_t layer_index,
            const InitSpec& init, at::Generator& dense_gen, CommPtr ep_group);
  // task_ids: [B*T] each token's task (data.tasks expert masks), or undefined.
  BlockOutput forward(const at::Tensor& x, const at::Tensor& token_ids, at::Generator* gen,
                      const at::Tensor& task_ids = {});

  torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  SelfAttention attn{nullptr};
  Mlp mlp{nullptr};       // dense blocks
  MoELayer moe{nullptr};  // MoE blocks

 private:
  double dropout_;
};
TORCH_MODULE(Block);

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
  // where it has one; undefined: no masks, the shared head (lm_head).
  at::Tensor forward(const at::Tensor& idx, at::Tensor* aux = nullptr, at::Tensor* z = nullptr,
                     const at::Tensor& task = {});
  // The blocks' output [B, T, H] before the final LayerNorm and the LM head: what routing needs
  // (the global-batch counting pass, Note [Global-batch aux loss]); forward() is its LM head.
  at::Tensor hidden(const at::Tensor& idx, at::Tensor* aux = nullptr, at::Tensor* z = nullptr,
                    const at::Tensor& task = {});
  LossOutput loss(const at::Tensor& idx, const at::Tensor& targets, const at::Tensor& task = {});

  // Generator for dropout, routing noise and random routing on CPU (owned by the caller).
  void set_generator(at::Generator* gen) { gen_ = gen; }
  std::vector<MoELayer> moe_layers() const;
  int64_t block_size() const { return model_.block_size; }
  int64_t vocab_size() const { return vocab_size_; }

  torch::nn::Embedding wte{nullptr}, wpe{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm ln_f{nullptr};
  torch::nn::Linear lm_head{nullptr};
  // data.tasks head own: (task index, its head), registered as heads.<task name>.
  std::vector<std::pair<int64_t, torch::nn::Linear>> task_heads;
  bool has_task_masks() const { return task_masks_; }

 private:
  bool task_masks_ = false;
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
