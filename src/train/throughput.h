// End-to-end throughput of training (docs/bench.md#end-to-end-switchyard-train): model FLOPs per
// token and the dense GEMM rate of the device, for model FLOPs utilization (MFU).
#pragma once

#include <cstdint>

#include <c10/core/Device.h>

#include "config/config.h"

namespace sy {

// Training FLOPs per token (forward + backward = 3 x forward) of the model's matrix products,
// counting what a token *uses*: attention projections (8 d^2) and scores/values (4 T d, causal
// counted in full, as Megatron and PaLM count), dense FFNs, for each MoE block the router (2 d E)
// and top_k experts (4 d F, 6 d F for SwiGLU; dropped choices counted as computed), the LM head
// (2 d V). Embedding lookups, norms and elementwise work are not counted. model.kind
// encoder_decoder: a token is a position of either half of a row (Note [Seq2seq batches]): the
// mean of an encoder position (its stack) and a decoder position (its stack with cross-attention,
// 8 d^2 + 4 T d more per block, and the LM head).
double model_flops_per_token(const Config& config, int64_t vocab_size, int64_t num_moe_blocks);

// The device's dense GEMM rate, TFLOP/s, for the model's FFN shape [M, d_model] x [d_model, d_ff]
// with M = min(tokens per micro-batch, 16384) rounded to at least 1024, in bf16 when
// train.dtype is bf16 (else fp32): median of 20 timed products after 5 warm-ups.
struct GemmRate {
  double tflops = 0;
  int64_t m = 0, k = 0, n = 0;
};
GemmRate measure_dense_gemm_rate(const Config& config, c10::Device device);

}  // namespace sy
