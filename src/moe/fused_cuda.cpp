// The fused MoE kernels as LibTorch autograd functions (Note [Fused MoE kernels] in fused.h).
#ifdef SWITCHYARD_FUSED_KERNELS
#include <initializer_list>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "common/error.h"
#include "moe/fused.h"

namespace sy::fused {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void* stream_of(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

kernels::DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kernels::DType::kFloat32;
    case at::kBFloat16: return kernels::DType::kBFloat16;
    case at::kHalf: return kernels::DType::kFloat16;
    default:
      SY_THROW("fused MoE kernels: unsupported dtype ", t,
               " (expected float32, bfloat16 or float16)");
  }
}

void check(const std::string& error) { SY_CHECK(error.empty(), "fused MoE kernel: ", error); }

void check_cuda(const at::Tensor& t, const char* what) {
  SY_CHECK(t.is_cuda(), "fused MoE kernels: ", what, " must be a CUDA tensor");
}

struct RouterFn : torch::autograd::Function<RouterFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits_in, int64_t k,
                               bool renorm) {
    const at::Tensor logits = logits_in.contiguous();
    const int64_t S = logits.size(0), E = logits.size(1);
    const c10::cuda::CUDAGuard guard(logits.device());
    at::Tensor probs = at::empty({S, E}, logits.options());
    at::Tensor w = at::empty({S, k}, logits.options());
    at::Tensor idx = at::empty({S, k}, logits.options().dtype(at::kLong));
    at::Tensor lse = at::empty({S}, logits.options());
    check(kernels::router_forward(
        logits.data_ptr<float>(), S, E, static_cast<int>(k), renorm, probs.data_ptr<float>(),
        w.data_ptr<float>(), idx.data_ptr<int64_t>(), lse.data_ptr<float>(), stream_of(logits)));
    ctx->save_for_backward({probs, w, idx});
    ctx->saved_data["renorm"] = renorm;
    ctx->mark_non_differentiable({idx});
    return {probs, w, idx, lse};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& probs = saved[0];
    const at::Tensor& w = saved[1];
    const at::Tensor& idx = saved[2];
    const bool renorm = ctx->saved_data["renorm"].toBool();
    const int64_t S = probs.size(0), E = probs.size(1), k = w.size(1);
    auto ptr = [](at::Tensor& g) -> const float* {
      if (!g.defined()) return nullptr;
      g = g.to(at::kFloat).contiguous();
      return g.data_ptr<float>();
    };
    at::Tensor g_probs = grads[0], g_w = grads[1], g_lse = grads[3];
    // The aux loss's gradient is one row broadcast over the tokens (RouterLossesFn): read it so.
    const bool broadcast = g_probs.defined() && g_probs.scalar_type() == at::kFloat &&
                           g_probs.dim() == 2 && g_probs.stride(0) == 0 && g_probs.stride(1) == 1;
    const float* gp = broadcast ? g_probs.data_ptr<float>() : ptr(g_probs);
    const float* gw = ptr(g_w);
    const float* gl = ptr(g_lse);
    const c10::cuda::CUDAGuard guard(probs.device());
    at::Tensor g_logits = at::empty({S, E}, probs.options());
    check(kernels::router_backward(probs.data_ptr<float>(), idx.data_ptr<int64_t>(),
                                   w.data_ptr<float>(), gp, broadcast ? 0 : E, gw, gl, S, E,
                                   static_cast<int>(k), renorm, g_logits.data_ptr<float>(),
                                   stream_of(probs)));
    return {g_logits, at::Tensor(), at::Tensor()};
  }
};

struct RouterLossesFn : torch::autograd::Function<RouterLossesFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& probs_in,
                               const at::Tensor& lse_in, const at::Tensor& idx_in) {
    const at::Tensor probs = probs_in.contiguous(), lse = lse_in.contiguous(),
                     idx = idx_in.contiguous();
    const int64_t S = probs.size(0), E = probs.size(1), k = idx.size(1);
    const c10::cuda::CUDAGuard guard(probs.device());
    at::Tensor aux = at::empty({}, probs.options()), z = at::empty({}, probs.options());
    at::Tensor f = at::empty({E}, probs.options());
    at::Tensor workspace = at::empty({kernels::router_losses_workspace(S, E)}, probs.options());
    check(kernels::router_losses(probs.data_ptr<float>(), lse.data_ptr<float>(),
                                 idx.data_ptr<int64_t>(), S, E, static_cast<int>(k),
                                 workspace.data_ptr<float>(), aux.data_ptr<float>(),
                                 z.data_ptr<float>(), f.data_ptr<float>(), stream_of(probs)));
    ctx->save_for_backward({f, lse});
    return {aux, z};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& f = saved[0];
    const at::Tensor& lse = saved[1];
    const int64_t S = lse.size(0), E = f.size(0);
    at::Tensor g_probs, g_lse;
    // d aux / d probs[s, e] = E f_e / S for every token: one row, broadcast (not materialised).
    if (grads[0].defined())
      g_probs = (f * (grads[0].to(at::kFloat) * (static_cast<double>(E) / S))).expand({S, E});
    if (grads[1].defined()) g_lse = lse * (grads[1].to(at::kFloat) * (2.0 / S));
    return {g_probs, g_lse, at::Tensor()};
  }
};

// Note [Split-bf16 router GEMM] (fused.h). at::mm with an fp32 output for bf16 inputs came with
// LibTorch 2.9; before it the router keeps its fp32 GEMM.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
#define SY_ROUTER_GEMM 1
// [rows, 3 * E] fp32 as the sum of its three column blocks, [rows, E], lo + mid first.
at::Tensor sum_thirds(const at::Tensor& t, int64_t E) {
  at::Tensor out = at::empty({t.size(0), E}, t.options());
  check(kernels::sum_blocks(t.data_ptr<float>(), t.size(0), E, 3, out.data_ptr<float>(),
                            stream_of(t)));
  return out;
}

struct RouterGemmFn : torch::autograd::Function<RouterGemmFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x_in, const at::Tensor& w) {
    const at::Tensor x = x_in.contiguous();
    const int64_t E = w.size(1);
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor logits = sum_thirds(at::mm(x, split_bf16(w, {0, 1, 2}), at::kFloat), E);
    ctx->save_for_backward({x, w});
    return logits;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& w = saved[1];
    const int64_t E = w.size(1);
    const c10::cuda::CUDAGuard guard(x.device());
    // Column blocks g_hi | g_hi | g_mid | g_lo: the last three give grad_w, all four grad_x.
    const at::Tensor g4 = split_bf16(grads[0], {0, 0, 1, 2});
    at::Tensor grad_x, grad_w;
    if (ctx->needs_input_grad(0)) grad_x = at::mm(g4, split_bf16(w, {0, 1, 0, 0}).t());
    if (ctx->needs_input_grad(1))
      grad_w = sum_thirds(at::mm(x.t(), g4.narrow(1, E, 3 * E), at::kFloat), E);
    return {grad_x, grad_w};
  }
};
#endif

struct PermuteFn : torch::autograd::Function<PermuteFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x_in, const at::Tensor& dest,
                            const at::Tensor& src, int64_t dtype) {
    const at::Tensor x = x_in.contiguous();
    const int64_t S = x.size(0), H = x.size(1), R = src.numel();
    const int64_t k = S > 0 ? dest.size(1) : 1;
    const auto buffer_dtype = static_cast<at::ScalarType>(dtype);
    const c10::cuda::CUDAGuard guard(x.device());
    at::Tensor buffer = at::empty({R, H}, x.options().dtype(buffer_dtype));
    check(kernels::permute_forward(x.data_ptr(), kernel_dtype(x.scalar_type()),
                                   src.data_ptr<int64_t>(), R, H, static_cast<int>(k),
                                   buffer.data_ptr(), kernel_dtype(buffer_dtype), stream_of(x)));
    ctx->save_for_backward({dest});
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["S"] = S;
    return buffer;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {permute_grad(ctx, grads[0]), at::Tensor(), at::Tensor(), at::Tensor()};
  }

  // x's gradient [S, H] from the buffer's g [R, H]: each token's k rows summed, by dest (saved
  // first) and the x_dtype and S saved by forward (PermuteFn's or TrimRowsFn's).
  static at::Tensor permute_grad(AutogradContext* ctx, const at::Tensor& grad) {
    const at::Tensor dest = ctx->get_saved_variables()[0];
    const auto x_dtype = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    const int64_t S = ctx->saved_data["S"].toInt();
    const at::Tensor g = grad.contiguous();
    const int64_t H = g.size(-1), R = g.numel() / std::max<int64_t>(H, 1);
    const int64_t k = S > 0 ? dest.size(1) : 1;
    const c10::cuda::CUDAGuard guard(g.device());
    at::Tensor gx = at::empty({S, H}, g.options().dtype(x_dtype));
    check(kernels::permute_backward(g.data_ptr(), kernel_dtype(g.scalar_type()),
                                    dest.data_ptr<int64_t>(), S, R, H, static_cast<int>(k),
                                    gx.data_ptr(), kernel_dtype(x_dtype), stream_of(g)));
    return gx;
  }
};

// trim_rows: the forward only points at rows already written (by PermuteFn without autograd);
// the backward is PermuteFn's over the E * C_b rows.
struct TrimRowsFn : torch::autograd::Function<TrimRowsFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& rows,
                            const at::Tensor& dest, int64_t experts, int64_t rows_per_expert) {
    const int64_t H = rows.size(1), B = rows.size(0) / experts;
    ctx->save_for_backward({dest});
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["S"] = x.size(0);
    // A tensor over rows' memory, not a view of it: autograd would tie a view to its base.
    return at::empty({0}, rows.options())
        .set_(rows.storage(), rows.storage_offset(), {experts, rows_per_expert, H}, {B * H, H, 1});
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {PermuteFn::permute_grad(ctx, grads[0]), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

// bias and ends: empty tensors when absent (see BiasActFn).
kernels::RowGroups row_groups(const at::Tensor& bias, const at::Tensor& ends, int64_t rows) {
  kernels::RowGroups g;
  if (bias.numel() == 0) return g;
  g.G = bias.size(0);
  if (ends.numel() > 0) {
    g.ends = ends.data_ptr<int64_t>();
  } else {
    g.rows_per_group = g.G > 0 ? rows / g.G : 0;
  }
  return g;
}

struct CombineFn : torch::autograd::Function<CombineFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& y_in, const at::Tensor& dest,
                            const at::Tensor& src, const at::Tensor& w_in,
                            const at::Tensor& bias_in, const at::Tensor& ends,
                            const at::Tensor& residual_in, int64_t out_dtype) {
    const at::Tensor y = y_in.contiguous();
    const at::Tensor w = w_in.to(at::kFloat).contiguous();
    const at::Tensor bias = bias_in.to(y.scalar_type()).contiguous();
    const int64_t R = y.size(0), H = y.size(1), S = w.size(0);
    const int64_t k = S > 0 ? w.size(1) : 1;
    const auto dtype = static_cast<at::ScalarType>(out_dtype);
    const c10::cuda::CUDAGuard guard(y.device());
    at::Tensor out = at::empty({S, H}, y.options().dtype(dtype));
    const at::Tensor residual = residual_in.to(dtype).contiguous();
    check(kernels::combine_forward(
        y.data_ptr(), kernel_dtype(y.scalar_type()), bias.numel() > 0 ? bias.data_ptr() : nullptr,
        row_groups(bias, ends, R), dest.data_ptr<int64_t>(), w.data_ptr<float>(), S, R, H,
        static_cast<int>(k), residual.numel() > 0 ? residual.data_ptr() : nullptr, out.data_ptr(),
        kernel_dtype(dtype), stream_of(y)));
    ctx->save_for_backward({y, src, w, bias, ends});
    ctx->saved_data["residual_dtype"] =
        residual_in.numel() > 0 ? static_cast<int64_t>(residual_in.scalar_type()) : int64_t{-1};
    ctx->saved_data["w_dtype"] = static_cast<int64_t>(w_in.scalar_type());
    ctx->saved_data["bias_dtype"] = static_cast<int64_t>(bias_in.scalar_type());
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &y = saved[0], &src = saved[1], &w = saved[2], &bias = saved[3],
                     &ends = saved[4];
    const at::Tensor g = grads[0].contiguous();
    const int64_t R = y.size(0), H = y.size(1), S = w.size(0);
    const int64_t k = S > 0 ? w.size(1) : 1;
    const c10::cuda::CUDAGuard guard(y.device());
    at::Tensor gy = at::empty_like(y);
    at::Tensor gw = at::empty({S, k}, w.options());
    at::Tensor gb = bias.numel() > 0 ? at::empty_like(bias) : at::Tensor();
    const kernels::RowGroups groups = row_groups(bias, ends, R);
    // Note [Output-bias gradient from the gate matrix] (fused.h): with a bf16 grad_out, the bias
    // gradient comes from one GEMM over grad_out instead of column sums over grad_y.
#ifdef SY_ROUTER_GEMM
    // Where it moves less: the sums read all R rows of H, the GEMM reads grad_out's S rows once
    // but multiplies them by 3G columns at a skinny GEMM's rate (C3: G S = 10.7 R, 80 us of sums
    // against 20 us on an H100; C2's top-1 over 64 experts, G S = 64 R, keeps the sums).
    const bool gate_gemm =
        gb.defined() && g.scalar_type() == at::kBFloat16 && groups.G * S <= 16 * R;
#else
    const bool gate_gemm = false;
#endif
    const bool sums = gb.defined() && !gate_gemm;
    const int64_t group_rows = groups.ends != nullptr ? R : groups.G * groups.rows_per_group;
    const int64_t splits = sums ? kernels::bias_act_backward_splits(groups.G, group_rows) : 1;
    at::Tensor workspace =
        at::empty({sums ? splits * groups.G * H : 0}, y.options().dtype(at::kFloat));
    check(kernels::combine_backward(
        g.data_ptr(), kernel_dtype(g.scalar_type()), y.data_ptr(), kernel_dtype(y.scalar_type()),
        gb.defined() ? bias.data_ptr() : nullptr, groups, src.data_ptr<int64_t>(),
        w.data_ptr<float>(), S, R, H, static_cast<int>(k), gy.data_ptr(), gw.data_ptr<float>(),
        sums ? gb.data_ptr() : nullptr, workspace.data_ptr<float>(), splits, stream_of(y)));
#ifdef SY_ROUTER_GEMM
    if (gate_gemm) {
      at::Tensor gate = at::empty({S, groups.G}, w.options());
      check(kernels::gate_matrix(src.data_ptr<int64_t>(), w.data_ptr<float>(), groups, S, R,
                                 static_cast<int>(k), gate.data_ptr<float>(), stream_of(y)));
      // [H, 3G]: grad_out^T times the gate matrix's three bf16 parts (exact products, fp32
      // sums), then the parts added: [H, G], stored transposed into gb [G, H].
      gb.copy_(sum_thirds(at::mm(g.t(), split_bf16(gate, {0, 1, 2}), at::kFloat), groups.G).t());
    }
#endif
    const auto w_dtype = static_cast<at::ScalarType>(ctx->saved_data["w_dtype"].toInt());
    const auto bias_dtype = static_cast<at::ScalarType>(ctx->saved_data["bias_dtype"].toInt());
    // The residual's gradient is grad_out itself (in the residual's dtype).
    const int64_t residual_dtype = ctx->saved_data["residual_dtype"].toInt();
    return {gy,
            at::Tensor(),
            at::Tensor(),
            gw.to(w_dtype),
            gb.defined() ? gb.to(bias_dtype) : at::Tensor(),
            at::Tensor(),
            residual_dtype >= 0 ? grads[0].to(static_cast<at::ScalarType>(residual_dtype))
                                : at::Tensor(),
            at::Tensor()};
  }
};

// act(h + b[group]) over h's rows: h [G, C, F] (groups of C rows; `ends` empty) or h [N, F] in
// groups ending at `ends` (rows past the last end: zeros, no gradient). (An empty tensor rather
// than an undefined one: autograd functions take no undefined tensor arguments.)
struct BiasActFn : torch::autograd::Function<BiasActFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& h_in, const at::Tensor& b_in,
                            const at::Tensor& ends, int64_t act) {
    const at::Tensor h = h_in.contiguous();
    const at::Tensor b = b_in.contiguous();
    const int64_t F = h.size(-1), rows = F > 0 ? h.numel() / F : 0;
    const c10::cuda::CUDAGuard guard(h.device());
    at::Tensor a = at::empty_like(h);
    check(kernels::bias_act_forward(h.data_ptr(), b.data_ptr(), kernel_dtype(h.scalar_type()),
                                    b.size(0), rows, F,
                                    ends.numel() > 0 ? ends.data_ptr<int64_t>() : nullptr,
                                    static_cast<kernels::Act>(act), a.data_ptr(), stream_of(h)));
    ctx->save_for_backward({h, b, ends});
    ctx->saved_data["act"] = act;
    return a;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &h = saved[0], &b = saved[1], &ends = saved[2];
    const at::Tensor g = grads[0].to(h.scalar_type()).contiguous();
    const auto act = static_cast<kernels::Act>(ctx->saved_data["act"].toInt());
    const int64_t F = h.size(-1), rows = F > 0 ? h.numel() / F : 0;
    const int64_t* ends_ptr = ends.numel() > 0 ? ends.data_ptr<int64_t>() : nullptr;
    const c10::cuda::CUDAGuard guard(h.device());
    at::Tensor gh = at::empty_like(h);
    at::Tensor gb = at::empty_like(b);
    const int64_t splits = kernels::bias_act_backward_splits(b.size(0), rows);
    at::Tensor workspace = at::empty({splits * b.size(0) * F}, h.options().dtype(at::kFloat));
    check(kernels::bias_act_backward(g.data_ptr(), h.data_ptr(), b.data_ptr(),
                                     kernel_dtype(h.scalar_type()), b.size(0), rows, F, ends_ptr,
                                     act, gh.data_ptr(), gb.data_ptr(), workspace.data_ptr<float>(),
                                     splits, stream_of(h)));
    return {gh, gb, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

bool available() { return true; }

bool capturing(const at::Tensor& on) {
  if (!on.is_cuda()) return false;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  const cudaError_t e =
      cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(on.device().index()).stream(), &status);
  SY_CHECK(e == cudaSuccess, "cudaStreamIsCapturing: ", cudaGetErrorString(e));
  return status != cudaStreamCaptureStatusNone;
}

ArrivalSlots arrival_slots(const at::Tensor& expert_in, int64_t num_experts) {
  check_cuda(expert_in, "the plan's expert ids");
  const at::Tensor expert = expert_in.to(at::kLong).contiguous();
  const c10::cuda::CUDAGuard guard(expert.device());
  ArrivalSlots a;
  a.slot = at::empty({expert.numel()}, expert.options());
  a.tokens_per_expert = at::empty({num_experts}, expert.options());
  check(kernels::plan_slots(expert.data_ptr<int64_t>(), expert.numel(), num_experts,
                            a.slot.data_ptr<int64_t>(), a.tokens_per_expert.data_ptr<int64_t>(),
                            stream_of(expert)));
  return a;
}

RouterTopK router_topk(const at::Tensor& logits, int64_t k, bool renorm) {
  check_cuda(logits, "the router logits");
  SY_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat,
           "fused router: expected [S, E] float32 logits, got ", logits.sizes(), " ",
           logits.scalar_type());
  SY_CHECK(k >= 1 && k <= kernels::kMaxTopK && k <= logits.size(1), "fused router: top-k ", k,
           " not in [1, min(", logits.size(1), ", ", kernels::kMaxTopK, ")]");
  variable_list out = RouterFn::apply(logits, k, renorm);
  return {out[0], out[1], out[2], out[3]};
}

DispatchIndex dispatch_rows(const DispatchPlan& plan, int64_t num_tokens, int64_t rows,
                            const at::Tensor& starts_in) {
  check_cuda(plan.expert, "the plan");
  const int64_t n = plan.expert.numel();
  SY_CHECK(num_tokens > 0 ? n % num_tokens == 0 : n == 0, "dispatch_rows: ", n, " choices for ",
           num_tokens, " tokens");
  SY_CHECK(starts_in.defined() || plan.capacity > 0 || n == 0,
           "dispatch_rows: a padded buffer needs its rows per expert (plan.capacity > 0)");
  const int64_t k = num_tokens > 0 ? n / num_tokens : 0;
  const auto long_opts = plan.expert.options().dtype(at::kLong);
  const at::Tensor expert = plan.expert.contiguous(), slot = plan.slot.contiguous();
  const at::Tensor kept = plan.kept.to(at::kBool).contiguous();
  const at::Tensor order = plan.tokens_in_order || num_tokens == 0
                               ? at::Tensor()
                               : plan.token.narrow(0, 0, num_tokens).contiguous();
  const at::Tensor starts =
      starts_in.defined() ? starts_in.to(at::kLong).contiguous() : at::Tensor();
  DispatchIndex d;
  d.dest = at::empty({num_tokens, k}, long_opts);
  d.src = at::empty({rows}, long_opts);
  const c10::cuda::CUDAGuard guard(expert.device());
  check(kernels::dispatch_index(
      expert.data_ptr<int64_t>(), slot.data_ptr<int64_t>(), kept.data_ptr<bool>(),
      order.defined() ? order.data_ptr<int64_t>() : nullptr,
      starts.defined() ? starts.data_ptr<int64_t>() : nullptr, num_tokens, static_cast<int>(k),
      plan.capacity, rows, d.dest.data_ptr<int64_t>(), d.src.data_ptr<int64_t>(),
      stream_of(expert)));
  return d;
}

at::Tensor split_bf16(const at::Tensor& v_in, std::initializer_list<int> parts) {
  check_cuda(v_in, "the values to split");
  SY_CHECK(v_in.dim() == 2 && parts.size() >= 1 && parts.size() <= 4,
           "split_bf16: expected a 2-D tensor and 1 to 4 parts, got ", v_in.sizes(), " and ",
           parts.size());
  const at::Tensor v = v_in.to(at::kFloat).contiguous();
  kernels::SplitParts p;
  for (int part : parts) p.part[p.n++] = part;
  const c10::cuda::CUDAGuard guard(v.device());
  at::Tensor out = at::empty({v.size(0), p.n * v.size(1)}, v.options().dtype(at::kBFloat16));
  check(kernels::split_bf16(v.data_ptr<float>(), v.size(0), v.size(1), p, out.data_ptr(),
                            stream_of(v)));
  return out;
}

RouterLosses router_losses(const at::Tensor& probs, const at::Tensor& lse,
                           const at::Tensor& topk_idx) {
  check_cuda(probs, "the router probabilities");
  SY_CHECK(probs.dim() == 2 && probs.size(0) > 0 && probs.scalar_type() == at::kFloat &&
               lse.dim() == 1 && lse.size(0) == probs.size(0) && lse.scalar_type() == at::kFloat &&
               topk_idx.dim() == 2 && topk_idx.size(0) == probs.size(0) &&
               topk_idx.scalar_type() == at::kLong,
           "fused router losses: expected fp32 [S, E] probabilities, [S] log-sum-exps and [S, k] "
           "int64 choices "
           "with S > 0, got ",
           probs.sizes(), ", ", lse.sizes(), " and ", topk_idx.sizes());
  auto out = RouterLossesFn::apply(probs, lse, topk_idx);
  return {out[0], out[1]};
}

bool router_gemm_available() {
#ifdef SY_ROUTER_GEMM
  return true;
#else
  return false;
#endif
}

at::Tensor router_logits(const at::Tensor& x, const at::Tensor& w) {
  check_cuda(x, "the router input");
  SY_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(0) &&
               x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kFloat,
           "split-bf16 router GEMM: expected [S, H] bf16 and [H, E] fp32, got ", x.sizes(), " ",
           x.scalar_type(), " and ", w.sizes(), " ", w.scalar_type());
#ifdef SY_ROUTER_GEMM
  return RouterGemmFn::apply(x, w);
#else
  SY_THROW("split-bf16 router GEMM: needs LibTorch 2.9 or later");
#endif
}

at::Tensor permute(const at::Tensor& x, const DispatchIndex& index, at::ScalarType dtype) {
  check_cuda(x, "the layer input");
  SY_CHECK(x.dim() == 2 && supports_width(x.size(1)),
           "fused permute: expected [S, H] input with H a multiple of 4, got ", x.sizes());
  return PermuteFn::apply(x, index.dest, index.src, static_cast<int64_t>(dtype));
}

at::Tensor trim_rows(const at::Tensor& x, const at::Tensor& rows, int64_t rows_per_expert,
                     const DispatchIndex& index) {
  check_cuda(rows, "the permuted rows");
  const int64_t experts = rows_per_expert > 0 ? index.src.numel() / rows_per_expert : 0;
  SY_CHECK(x.dim() == 2 && rows.dim() == 2 && rows.is_contiguous() && rows.size(1) == x.size(1) &&
               experts > 0 && index.src.numel() == experts * rows_per_expert &&
               rows.size(0) % experts == 0 && rows.size(0) / experts >= rows_per_expert,
           "fused trim_rows: expected [E * B, H] rows for an index of E * C_b rows, C_b <= B; "
           "got ",
           rows.sizes(), " rows, ", index.src.numel(), " index rows, C_b ", rows_per_expert);
  return TrimRowsFn::apply(x, rows, index.dest, experts, rows_per_expert);
}

at::Tensor combine(const at::Tensor& y, const DispatchIndex& index, const at::Tensor& weights,
                   at::ScalarType out_dtype, const at::Tensor& bias, const at::Tensor& ends,
                   const at::Tensor& residual) {
  check_cuda(y, "the expert outputs");
  SY_CHECK(y.dim() == 2 && weights.dim() == 2 && y.size(0) == index.src.numel() &&
               supports_width(y.size(1)),
           "fused combine: expected [R, H] rows with H a multiple of 4 and [S, k] weights, got ",
           y.sizes(), " and ", weights.sizes());
  const auto long_opts = y.options().dtype(at::kLong);
  at::Tensor b = bias.defined() ? bias : at::empty({0}, y.options());
  at::Tensor e = ends.defined() ? ends.to(at::kLong).contiguous() : at::empty({0}, long_opts);
  if (bias.defined()) {
    SY_CHECK(bias.dim() == 2 && bias.size(1) == y.size(1) && bias.size(0) > 0 &&
                 (ends.defined() ? ends.numel() == bias.size(0) : y.size(0) % bias.size(0) == 0),
             "fused combine: expected a [G, H] bias with G groups of the ", y.size(0),
             " rows, got ", bias.sizes());
  }
  if (residual.defined()) {
    SY_CHECK(residual.dim() == 2 && residual.size(0) == weights.size(0) &&
                 residual.size(1) == y.size(1) && residual.device() == y.device(),
             "fused combine: expected a [", weights.size(0), ", ", y.size(1),
             "] residual on the rows' device, got ", residual.sizes());
  }
  at::Tensor res = residual.defined() ? residual : at::empty({0}, y.options());
  return CombineFn::apply(y, index.dest, index.src, weights, b, e, res,
                          static_cast<int64_t>(out_dtype));
}

at::Tensor bias_act(const at::Tensor& h, const at::Tensor& b, kernels::Act act) {
  check_cuda(h, "the expert activations");
  SY_CHECK(h.dim() == 3 && b.dim() == 2 && b.size(0) == h.size(0) && b.size(1) == h.size(2) &&
               b.scalar_type() == h.scalar_type(),
           "fused bias + activation: expected [G, rows, F] and [G, F] of one dtype, got ",
           h.sizes(), " and ", b.sizes());
  return BiasActFn::apply(h, b, at::empty({0}, h.options().dtype(at::kLong)),
                          static_cast<int64_t>(act));
}

at::Tensor grouped_bias_act(const at::Tensor& h, const at::Tensor& b, const at::Tensor& ends,
                            kernels::Act act) {
  check_cuda(h, "the expert activations");
  SY_CHECK(h.dim() == 2 && b.dim() == 2 && b.size(1) == h.size(1) &&
               b.scalar_type() == h.scalar_type() && ends.dim() == 1 && ends.size(0) == b.size(0),
           "fused grouped bias + activation: expected [N, F] rows, [G, F] biases of their dtype "
           "and [G] ends, got ",
           h.sizes(), ", ", b.sizes(), " and ", ends.sizes());
  SY_CHECK(ends.numel() > 0, "fused grouped bias + activation: no groups");
  return BiasActFn::apply(h, b, ends.to(at::kLong).contiguous(), static_cast<int64_t>(act));
}

}  // namespace sy::fused
#endif  // SWITCHYARD_FUSED_KERNELS
