// The CUDA AdamW step of a parameter stored in bf16 with an fp32 master (train.param_dtype bf16;
// AdamW::narrow_parameter in src/train/optimizer.h), behind a plain C++ interface like
// src/moe/kernels/moe_kernels.h: raw device pointers, a stream, an error string empty on success.
#pragma once

#include <cstdint>
#include <string>

namespace sy::kernels {

struct AdamWHyper {
  float lr, beta1, beta2, eps, weight_decay;
  float bias_correction1;       // 1 - beta1^t
  float bias_correction2_sqrt;  // sqrt(1 - beta2^t)
};

// One pass over n elements: reads the bf16 gradient, the fp32 master and moments, and writes the
// master, the moments and the bf16 parameter (the master rounded to nearest). The arithmetic is
// that of LibTorch's fused AdamW kernel (_fused_adamw_) in fp32, on the gradient widened to fp32:
//   w -= lr wd w;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g g;
//   w -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
// gradient and parameter are bfloat16 (2-byte) arrays, the others float.
std::string adamw_master_step(const void* grad_bf16, float* master, float* exp_avg,
                              float* exp_avg_sq, void* param_bf16, int64_t n, const AdamWHyper& h,
                              void* stream);

}  // namespace sy::kernels
