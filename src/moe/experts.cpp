#include "moe/experts.h"

#include <ATen/autocast_mode.h>
#include <torch/torch.h>
#include <torch/version.h>

#if defined(SWITCHYARD_CUDA) && __has_include(<ATen/ops/_grouped_mm.h>)
#include <ATen/ops/_grouped_mm.h>
#define SY_HAVE_GROUPED_MM 1
#endif

#include "common/error.h"
#include "common/recompute.h"
#include "moe/fused.h"

namespace sy {

ExpertsImpl::ExpertsImpl(Activation activation, int64_t d_model, int64_t d_ff, bool bias,
                         int64_t first_expert, int64_t num_local, const InitSpec& init,
                         int64_t layer_index)
    : activation_(activation), first_expert_(first_expert), num_local_(num_local), bias_(bias) {
  const int64_t d_in = activation == Activation::kSwiGlu ? 2 * d_ff : d_ff;
  torch::NoGradGuard no_grad;
  at::Tensor w1_all = at::empty({num_local, d_model, d_in}, at::kFloat);
  at::Tensor w2_all = at::empty({num_local, d_ff, d_model}, at::kFloat);
  for (int64_t e = 0; e < num_local; ++e) {
    const auto global = static_cast<uint64_t>(first_expert + e);
    at::Generator gen = make_cpu_generator(
        mix_seed(init.seed, /*a=*/0xE7, static_cast<uint64_t>(layer_index), global));
    w1_all[e].normal_(0.0, init_std(init, d_model), gen);
    w2_all[e].normal_(0.0, init_std(init, d_ff), gen);
  }
  w1 = register_parameter("w1", w1_all);
  w2 = register_parameter("w2", w2_all);
  if (bias_) {
    b1 = register_parameter("b1", at::zeros({num_local, 1, d_in}, at::kFloat));
    b2 = register_parameter("b2", at::zeros({num_local, 1, d_model}, at::kFloat));
  }
}

at::Tensor ExpertsImpl::activate(const at::Tensor& h) const {
  switch (activation_) {
    case Activation::kGelu: return at::gelu(h);
    case Activation::kRelu: return at::relu(h);
    case Activation::kSwiGlu: {
      auto parts = h.chunk(2, /*dim=*/-1);  // [gate, up]
      return at::silu(parts[0]) * parts[1];
    }
  }
  SY_THROW("unreachable activation");
}

bool ExpertsImpl::checkpointing() const {
  return recompute_ && !inside_checkpoint_ && torch::GradMode::is_enabled();
}

at::Tensor ExpertsImpl::recomputed(std::function<at::Tensor(const at::Tensor&)> run,
                                   const at::Tensor& x) {
  const RecomputeFn fn = [this, run](const std::vector<at::Tensor>& in) {
    inside_checkpoint_ = true;  // the calls run() makes are the plain ones
    std::vector<at::Tensor> out;
    try {
      out = {run(in[0])};
    } catch (...) {
      inside_checkpoint_ = false;
      throw;
    }
    inside_checkpoint_ = false;
    return out;
  };
  return checkpoint(fn, {x}, parameters(), /*gen=*/nullptr)[0];
}

namespace {

// bias + x w, batched over the experts: x [El, C, K], w [El, K, N], bias [El, 1, N]. One expert
// (the shared experts) runs as a 2-D addmm, which hands the bias to the GEMM's epilogue (cuBLASLt
// on CUDA); baddbmm first copies the broadcast bias into its whole [El, C, N] output, a pass over
// it that the GEMM then reads again. The 2-D operands are views by squeeze: select's backward
// writes zeros over the whole input's shape and copies the gradient in (two more passes over
// the shared experts' activations on the side stream, each waiting for the routed GEMMs that
// fill the GPU: bench/results/2026-12-05-h100-c3-kernels-and-shared-backward.md).
at::Tensor bias_bmm(const at::Tensor& bias, const at::Tensor& x, const at::Tensor& w) {
  if (x.size(0) != 1) return at::baddbmm(bias, x, w);
  return at::addmm(bias.view({-1}), x.squeeze(0), w.squeeze(0)).unsqueeze(0);
}

}  // namespace

at::Tensor ExpertsImpl::forward(const at::Tensor& x, bool output_bias) {
  if (checkpointing()) {
    return recomputed(
        [this, output_bias](const at::Tensor& in) { return forward(in, output_bias); }, x);
  }
  // x: [El, C, H]
  SY_CHECK(x.dim() == 3 && x.size(0) == num_local_, "experts: expected [", num_local_,
           ", C, H] input, got ", x.sizes());
  if (bias_ && fused_kernels_ && x.is_cuda() && activation_ != Activation::kSwiGlu &&
      fused::available() && fused::supports(autocast_matmul_dtype(x))) {
    // No baddbmm: it would first copy the broadcast bias into the [El, C, F] output.
    const at::Tensor h = at::bmm(x, w1);
    const at::Tensor a = fused::bias_act(
        h, b1.squeeze(1).to(h.scalar_type()),
        activation_ == Activation::kGelu ? kernels::Act::kGelu : kernels::Act::kRelu);
    return output_bias ? bias_bmm(b2, a, w2) : at::bmm(a, w2);
  }
  at::Tensor h = bias_ ? bias_bmm(b1, x, w1) : at::bmm(x, w1);
  h = activate(h);
  return bias_ && output_bias ? bias_bmm(b2, h, w2) : at::bmm(h, w2);
}

at::ScalarType autocast_matmul_dtype(const at::Tensor& x) {
  if (!x.is_cuda()) return x.scalar_type();
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  if (at::autocast::is_autocast_enabled(at::kCUDA))
    return at::autocast::get_autocast_dtype(at::kCUDA);
#else
  if (at::autocast::is_enabled()) return at::autocast::get_autocast_gpu_dtype();
#endif
  return x.scalar_type();
}

bool ExpertsImpl::grouped_gemm_available(const at::Tensor& x) const {
#ifdef SY_HAVE_GROUPED_MM
  return grouped_kernel_ && x.is_cuda() && autocast_matmul_dtype(x) == at::kBFloat16;
#else
  (void)x;
  return false;
#endif
}

at::Tensor ExpertsImpl::forward_grouped(const at::Tensor& x, const at::Tensor& ends,
                                        bool output_bias) {
  if (checkpointing()) {
    return recomputed([this, ends, output_bias](
                          const at::Tensor& in) { return forward_grouped(in, ends, output_bias); },
                      x);
  }
  SY_CHECK(x.dim() == 2 && ends.dim() == 1 && ends.size(0) == num_local_,
           "experts: expected [N, H] rows and ", num_local_, " group ends, got ", x.sizes(),
           " and ", ends.sizes());
#ifdef SY_HAVE_GROUPED_MM
  if (grouped_gemm_available(x)) {
    // One grouped GEMM per weight (CUTLASS on sm90): rows [ends[e-1], ends[e]) times expert e's
    // matrix. Autocast does not cover _grouped_mm, so cast here (LibTorch's autocast would cast
    // the weights for the bmm alike).
    const at::Tensor offs = ends.to(at::kInt);
    const at::Tensor xb = x.to(at::kBFloat16);
    if (fused_kernels_ && activation_ != Activation::kSwiGlu && fused::available()) {
      // Bias + activation per group in one kernel, which also zeroes the rows past ends[-1]
      // (Note [Fused MoE kernels]); the second bias the same way, with no activation.
      auto bias = [&](const at::Tensor& b, int64_t width) {
        return bias_ ? b.squeeze(1).to(at::kBFloat16)
                     : at::zeros({num_local_, width}, xb.options());
      };
      const kernels::Act act =
          activation_ == Activation::kGelu ? kernels::Act::kGelu : kernels::Act::kRelu;
      const at::Tensor h = fused::grouped_bias_act(at::_grouped_mm(xb, w1.to(at::kBFloat16), offs),
                                                   bias(b1, w1.size(2)), ends, act);
      const at::Tensor y = at::_grouped_mm(h, w2.to(at::kBFloat16), offs);
      // Without the output bias the rows past ends[-1] stay unwritten (the fused combine never
      // reads them).
      return output_bias
                 ? fused::grouped_bias_act(y, bias(b2, w2.size(2)), ends, kernels::Act::kNone)
                 : y;
    }
    // The kernel leaves rows past ends[-1] unwritten: each GEMM's output (with its bias) is
    // masked to zero there, so that no uninitialised value reaches the activation, an output or,
    // through where's backward, a bias gradient.
    at::Tensor valid, row_expert;
    if (x.size(0) > 0) {
      const at::Tensor row = at::arange(x.size(0), ends.options());
      valid = row.lt(ends.narrow(0, num_local_ - 1, 1)).unsqueeze(1);
      // Expert of each row: the number of group ends at or before it (padding rows: clamped).
      if (bias_) {
        row_expert = at::searchsorted(ends, row, /*out_int32=*/false, /*right=*/true)
                         .clamp_max(num_local_ - 1);
      }
    }
    auto mask = [&](const at::Tensor& t) {
      return valid.defined() ? at::where(valid, t, at::zeros({}, t.options())) : t;
    };
    auto add_bias = [&](const at::Tensor& t, const at::Tensor& b) {
      return row_expert.defined() ? t + b.squeeze(1).index_select(0, row_expert).to(t.scalar_type())
                                  : t;
    };
    const at::Tensor h =
        activate(mask(add_bias(at::_grouped_mm(xb, w1.to(at::kBFloat16), offs), b1)));
    const at::Tensor y = at::_grouped_mm(h, w2.to(at::kBFloat16), offs);
    return mask(output_bias ? add_bias(y, b2) : y);
  }
#endif
  // One matmul per expert over its rows: the ends are needed on the host (one sync). Padding rows
  // come back as zeros.
  const at::Tensor ends_cpu = ends.to(at::kCPU, at::kLong);
  const int64_t* e = ends_cpu.data_ptr<int64_t>();
  std::vector<int64_t> counts(num_local_);
  for (int64_t i = 0; i < num_local_; ++i) counts[i] = e[i] - (i ? e[i - 1] : 0);
  const int64_t used = num_local_ ? e[num_local_ - 1] : 0;
  SY_CHECK(used <= x.size(0), "experts: group ends reach row ", used, " of ", x.size(0));
  at::Tensor y = forward_grouped(x.narrow(0, 0, used), counts, output_bias);
  if (used == x.size(0)) return y;
  return at::cat({y, at::zeros({x.size(0) - used, y.size(1)}, y.options())}, /*dim=*/0);
}

at::Tensor ExpertsImpl::forward_grouped(const at::Tensor& x, const std::vector<int64_t>& counts,
                                        bool output_bias) {
  if (checkpointing()) {
    return recomputed(
        [this, counts, output_bias](const at::Tensor& in) {
          return forward_grouped(in, counts, output_bias);
        },
        x);
  }
  SY_CHECK(static_cast<int64_t>(counts.size()) == num_local_, "experts: ", counts.size(),
           " group counts for ", num_local_, " local experts");
#ifdef SY_HAVE_GROUPED_MM
  if (grouped_gemm_available(x)) {
    std::vector<int64_t> ends(counts.size());
    int64_t total = 0;
    for (size_t i = 0; i < counts.size(); ++i) ends[i] = total += counts[i];
    SY_CHECK(total == x.size(0), "experts: group counts sum to ", total, ", not ", x.size(0),
             " rows");
    return forward_grouped(
        x, at::tensor(ends, at::TensorOptions().dtype(at::kLong)).to(x.options().dtype(at::kLong)),
        output_bias);
  }
#endif
  std::vector<at::Tensor> outs;
  outs.reserve(counts.size());
  auto groups = x.split_with_sizes(counts, /*dim=*/0);
  for (int64_t e = 0; e < num_local_; ++e) {
    const at::Tensor& xe = groups[e];  // [n_e, H]
    at::Tensor h = xe.matmul(w1[e]);
    if (bias_) h = h + b1[e];
    h = activate(h).matmul(w2[e]);
    if (bias_ && output_bias) h = h + b2[e];
    outs.push_back(h);
  }
  return at::cat(outs, /*dim=*/0);
}

}  // namespace sy
