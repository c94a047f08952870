// The memory a training run will need on each rank, estimated from the config alone before
// anything is allocated, and the memory the device has (docs/config.md#memory-estimate).
//
// Note [Memory estimate]: per rank, in bytes, with P this rank's parameters (its EP share of the
// routed experts, every replicated weight), P_r of them the routers' (always fp32), b the bytes of
// an activation element (2 under train.dtype or train.param_dtype bf16, else 4) and N = B * T the
// tokens of a micro-batch (2 * B * T for model.kind encoder_decoder, both halves):
//   parameters   4 P, or 2 (P - P_r) + 4 P_r with train.param_dtype bf16
//   gradients    as the parameters
//   optimizer    AdamW's two fp32 moments, 8 P, plus fp32 masters 4 (P - P_r) with bf16 parameters
//   activations  per micro-batch (kept for the backward), b * N times the sum over blocks of
//                  attention   6 H + 2 n_heads T (the scores and the probabilities); cross-attention
//                              in the decoder of encoder_decoder likewise
//                  dense FFN   2 H + w + f (w = 2 f with swiglu, else f)
//                  MoE         3 E (router) + k' (2 H + w_e + f_e) (the dispatched rows through an
//                              expert) + shared experts 2 H + w_s + f_s
//                              with k' = min(max(capacity_factor * k, E min_capacity / S), E)
//                              in capacity mode (the slots a token's choices occupy; S = batch
//                              size x block size), k when dropless, E for the dense router
//                  residual    2 H
//                moe checkpointing keeps no expert hidden rows (w_e + f_e, w_s + f_s); block
//                checkpointing keeps H per block plus one block's activations; plus the
//                embeddings' H and the logits in fp32, 2 V per token (logits and their softmax)
//   dispatch     the all-to-all send and receive copies of the dispatched rows of every MoE layer
//                under EP (ep_size > 1): 2 k' H b N per MoE layer; none on one EP rank
// A rough upper-end formula: allocator caching, temporary buffers of single ops and evaluation
// (no gradients kept) are not counted; the parameter count is exact (tests/model).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <c10/core/Device.h>

#include "config/config.h"

namespace sy {

struct MemoryTerm {
  std::string name;  // "activations"
  double bytes = 0;
  std::string keys;  // the config keys that drive it
};

struct MemoryEstimate {
  int64_t parameters = 0;         // this rank's parameter count
  std::vector<MemoryTerm> terms;  // parameters, gradients, optimizer, activations, dispatch
  double total = 0;               // bytes per rank
  // "1.2 GiB (parameters 100 MiB, gradients 100 MiB, ...)" in the order of `terms`.
  std::string describe() const;
  // The largest terms first, with their keys: "activations 10 GiB (data.batch_size, ...)".
  std::string biggest_terms(size_t n) const;
};

// This rank's parameters of the model that `config` builds on an EP group of ep_size ranks, with
// a vocabulary of `vocab` ids: exactly what GPT's constructor registers.
int64_t count_parameters(const Config& config, int64_t vocab, int64_t ep_size);

// Note [Memory estimate] for one rank.
MemoryEstimate estimate_memory(const Config& config, int64_t vocab, int64_t ep_size);

// Bytes free for this run on `device`: CUDA, what cudaMemGetInfo reports free (builds with CUDA);
// CPU, MemAvailable of /proc/meminfo (else free pages by sysconf). -1 when unknown.
int64_t available_memory(c10::Device device);

}  // namespace sy
