// Typed configuration: plain structs with defaults, loaded from YAML files and `--set` overrides.
//
// Every key lives in one section (model, moe, data, train, parallel). load_config() merges the
// files in order (later wins), applies the overrides, rejects unknown keys (suggesting the
// nearest valid one), reports type errors with the full key, the expected type and the file and
// line, and then checks the cross-field rules in validate(). docs/config.md lists every key.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sy {

struct ModelConfig {
  int64_t n_layers = 2;
  int64_t d_model = 64;
  int64_t n_heads = 4;
  int64_t d_ff = 256;           // hidden size of the dense FFN (and of each expert, see moe.d_ff)
  int64_t block_size = 64;      // context length T
  double dropout = 0.0;
  std::string init = "normal";  // "normal" (N(0, 0.02)) | "kaiming" (kaiming-normal, as makeMoE)
  bool bias = true;             // biases in the linear layers
  int64_t vocab_size = 0;       // 0: taken from the data (tokenizer); otherwise must match it
};

struct MoeConfig {
  int64_t num_experts = 8;
  int64_t top_k = 2;
  // "switch" (top-1 of softmax, raw probability), "topk" (softmax then top-k, GShard),
  // "topk_logits" (top-k of logits then softmax over the kept, makeMoE/Mixtral),
  // "noisy_topk" (Shazeer's learned noise, then as topk_logits), "dense" (softmax over all
  // experts, every expert sees every token), "hash" (token id hash), "random".
  std::string router = "topk";
  bool renormalize = true;        // "topk": rescale the kept weights to sum to 1
  int64_t every = 1;              // every k-th block (1-based: blocks k, 2k, ...) is MoE; 0: none
  double capacity_factor = 1.25;  // training; <= 0: dropless
  double eval_capacity_factor = 2.0;
  int64_t min_capacity = 4;
  double aux_loss_coef = 0.01;
  double z_loss_coef = 0.001;
  std::string activation = "gelu";  // "gelu" | "relu" | "swiglu"
  int64_t d_ff = 0;                 // expert hidden size; 0: model.d_ff
  double jitter_eps = 0.0;          // multiplicative jitter U(1-eps, 1+eps) on the router input
  std::string priority = "token";   // slot order: "token" (GShard) | "score" (batch-prioritized)
};

struct DataConfig {
  std::string path;         // text file; empty: the embedded synthetic corpus
  int64_t batch_size = 16;  // sequences per rank per micro-batch
  double val_fraction = 0.1;
  int64_t synthetic_chars = 200000;  // size of the embedded synthetic corpus
};

struct TrainConfig {
  int64_t max_steps = 200;
  double lr = 1e-3;
  double min_lr = 1e-4;
  int64_t warmup_steps = 20;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double grad_clip = 1.0;  // 0: no clipping
  int64_t grad_accum = 1;
  int64_t eval_interval = 50;  // 0: no evaluation
  int64_t eval_iters = 10;
  int64_t log_interval = 10;
  int64_t seed = 1337;
  std::string device = "auto";  // "cpu" | "cuda" | "auto"
  std::string dtype = "fp32";   // "fp32" | "bf16" (autocast, CUDA only)
  std::string out_dir = "runs/default";
};

struct ParallelConfig {
  int64_t ep_size = 0;  // expert-parallel group size; 0: the world size
};

struct Config {
  ModelConfig model;
  MoeConfig moe;
  DataConfig data;
  TrainConfig train;
  ParallelConfig parallel;
};

// Loads and merges `files` in order, then applies `overrides` ("section.key=value", YAML
// scalars), then validate(). Throws sy::Error naming the file, key and what was expected.
Config load_config(const std::vector<std::string>& files,
                   const std::vector<std::string>& overrides);

// As load_config() for one YAML document held in memory (a config saved in a checkpoint, tests);
// `source_name` stands for the file name in error messages.
Config load_config_from_string(const std::string& yaml_text, const std::string& source_name,
                               const std::vector<std::string>& overrides = {});

// Cross-field rules, written as sentences ("moe.top_k (3) must be <= moe.num_experts (2)").
// world_size > 0 also checks the parallel layout against it.
void validate(const Config& config, int world_size = 0);

// The resolved config as YAML, every key present (printed at start, saved in the run folder).
std::string to_yaml(const Config& config);

// Every valid key, "section.key", in declaration order (for docs, suggestions and tests).
std::vector<std::string> config_keys();

}  // namespace sy
