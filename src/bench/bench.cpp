#include "bench/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <vector>

#include <torch/torch.h>

#include "bench/raw_nccl.h"
#include "bench/trace.h"
#include "common/device_timing.h"
#include "common/error.h"
#include "model/gpt.h"
#include "moe/moe_layer.h"
#include "moe/phases.h"
#include "common/autocast.h"
#include "train/step_graph.h"

namespace sy {
namespace {

// `v` reduced over the ranks of `comm`: kMax for times (each rank's own median, the slowest
// wins), kSum for counts.
double reduce_over(Communicator& comm, double v, ReduceOp op, const c10::Device& device) {
  at::Tensor t = at::full({1}, v, at::TensorOptions().dtype(at::kDouble).device(device));
  comm.all_reduce(t, op);
  return t.to(at::kCPU).item<double>();
}

}  // namespace

#ifndef SWITCHYARD_CUDA
RawAllToAll make_raw_nccl_all_to_all(const ParallelGroups&, const c10::Device&) { return {}; }
#endif

LayerBenchResult bench_layer(const Config& cfg, const ParallelGroups& groups,
                             const c10::Device& device, const BenchOptions& opt) {
  SY_CHECK(opt.reps >= 1 && opt.rounds >= 1 && opt.warmup >= 0,
           "bench: --reps and --rounds must be >= 1 and --warmup >= 0");
  const bool bf16 = cfg.train.dtype == Precision::kBf16;
  SY_CHECK(!bf16 || device.is_cuda(), "train.dtype 'bf16' needs train.device cuda");
  const int64_t S = cfg.data.batch_size * cfg.model.block_size;  // tokens per rank
  const int64_t H = cfg.model.d_model;
  const int64_t F = cfg.moe.d_ff > 0 ? cfg.moe.d_ff : cfg.model.d_ff;
  const bool swiglu = cfg.moe.activation == Activation::kSwiGlu;

  // train.cuda_graph on a CUDA device: the step is captured once and the timed runs replay it,
  // as the trainer runs such a step (Note [CUDA graph step] in src/train/step.cpp), so the time
  // holds the GPU's work without the host's launches between kernels. Made first: its stream is
  // current from here on, for the tensors below and every run.
  std::unique_ptr<StepGraph> graph;
  if (cfg.train.cuda_graph && device.is_cuda()) {
    SY_CHECK(groups.world_size == 1,
             "bench layer: train.cuda_graph captures the step of one rank; this run has ",
             groups.world_size,
             " ranks (graphs over collectives are not implemented): set train.cuda_graph false");
    graph = std::make_unique<StepGraph>(device);
  }
  MoELayer layer = make_moe_layer(cfg, groups.ep);
  layer->to(device);
  layer->train();
  if (cfg.train.param_dtype == Precision::kBf16) {
    // As the trainer stores them (train.param_dtype): bf16 but for the router.
    torch::NoGradGuard no_grad;
    for (auto& item : layer->named_parameters()) {
      if (!is_router_parameter(item.key()))
        item.value().set_data(item.value().detach().to(at::kBFloat16));
    }
  }
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(
      static_cast<uint64_t>(cfg.train.seed) + groups.world_rank);
  const auto opts = at::TensorOptions().dtype(at::kFloat).device(device);
  // The input in the dtype the model's blocks hand the layer: bf16 with bf16 parameters (Note
  // [LayerNorm dtype] in src/model/gpt.cpp), else fp32.
  const auto x_dtype = cfg.train.param_dtype == Precision::kBf16 ? at::kBFloat16 : at::kFloat;
  at::Tensor x = at::randn({S, H}, gen, at::kFloat).to(device, x_dtype).requires_grad_(true);
  at::Tensor grad_y = at::randn({S, H}, gen, at::kFloat).to(device);
  at::Generator route_gen = at::make_generator<at::CPUGeneratorImpl>(7);

  // --trace: an empty trace first, so that a LibTorch without the profiler's trace support or an
  // unwritable path fails before the benchmark rather than after it.
  if (!opt.trace_path.empty()) trace_to_file(opt.trace_path, device, groups.world_rank == 0, [] {});

  auto step = [&](PhaseRecorder* rec) {
    x.mutable_grad() = at::Tensor();
    for (auto& p : layer->parameters()) p.mutable_grad() = at::Tensor();
    // The upstream gradient goes straight into backward (no loss built from y, whose product
    // and sum would be timed too); the aux and z losses join with their coefficients.
    std::vector<at::Tensor> outputs, grads;
    {
      CudaAutocast autocast(bf16);
      // Through a view, as the layer meets activations in a model: x feeds the router and the
      // shared experts on two streams, and a leaf read so would have its gradient accumulator
      // fed from both (LibTorch warns of the stream mismatch).
      MoeOutput out = layer->forward(x.view_as(x), {}, &route_gen);
      outputs.push_back(out.y);
      if (grad_y.scalar_type() != out.y.scalar_type())
        grad_y = grad_y.to(out.y.scalar_type());  // once
      grads.push_back(grad_y);
      if (cfg.moe.aux_loss_coef != 0 || cfg.moe.z_loss_coef != 0) {
        outputs.push_back(cfg.moe.aux_loss_coef * out.aux_loss + cfg.moe.z_loss_coef * out.z_loss);
        grads.push_back(at::ones({}, outputs.back().options()));
      }
    }
    torch::autograd::backward(outputs, grads);
    if (rec != nullptr) rec->mark("backward (all parts)");
  };

  LayerBenchResult r;
  if (graph) {
    // Two eager steps first (the libraries' per-stream state, the one-time cast of grad_y), then
    // the capture, whose backward allocates the gradients every replay writes.
    for (int i = 0; i < 2; ++i) step(nullptr);
    graph->capture([&] { step(nullptr); });
    r.cuda_graph = true;
  }
  auto timed_step = [&] {
    if (graph) {
      graph->replay();
    } else {
      step(nullptr);
    }
  };
  // Steps alone first: the peak memory (without the floor's tensors), and how the steps ran the
  // experts; the timed rounds follow below.
  synchronize(device);
  reset_peak_memory(device);
  median_seconds(device, opt.warmup, opt.reps, timed_step);
  synchronize(device);
  const double peak_mib = static_cast<double>(peak_memory_bytes(device)) / (1 << 20);
  {
    // How the timed steps ran the experts (with a graph: as captured; the eager runs below may
    // choose otherwise, e.g. a trimmed buffer, which a captured step cannot read).
    const MoeStats& timed = layer->last_stats();
    r.path = path_name(timed.path);
    r.capacity = timed.capacity;
    r.buffer_capacity = timed.buffer_capacity;
  }
  r.peak_mib = reduce_over(*groups.world, peak_mib, ReduceOp::kMax, device);

  // Rows the experts of one rank process: the kept choices of the EP group, shared by its ranks
  // (the routing of the last step, the same in every step of this fixed input).
  const MoeStats& st = layer->last_stats();
  const int64_t capacity = st.capacity;
  r.rows_across_nodes =
      reduce_over(*groups.world, static_cast<double>(st.rows_across_nodes), ReduceOp::kSum, device);
  r.flat_rows_across_nodes = reduce_over(
      *groups.world, static_cast<double>(st.flat_rows_across_nodes), ReduceOp::kSum, device);
  const double kept_here =
      static_cast<double>((st.tokens_per_expert.sum() - st.dropped).to(at::kCPU).item<int64_t>());
  const double rows = reduce_over(*groups.ep, kept_here, ReduceOp::kSum, device) / groups.ep_size;
  const double fwd_flops_per_row = 2.0 * H * F * (swiglu ? 3 : 2);
  r.expert_flops = 3.0 * rows * fwd_flops_per_row;

  // The floor's GEMMs: the six GEMMs of the experts' forward and backward, batched over `n`
  // experts of `m` rows and width `f`, in the compute dtype; made once, run in every round.
  const auto gemm_opts = opts.dtype(bf16 ? at::kBFloat16 : at::kFloat);
  struct SixGemms {
    at::Tensor a, w1, h, w2, dy;
    double flops = 0;
    void operator()() const {
      at::bmm(a, w1);                   // forward: X W1
      at::bmm(h, w2);                   //          A W2
      at::bmm(dy, w2.transpose(1, 2));  // backward: dA = dY W2^T
      at::bmm(h.transpose(1, 2), dy);   //           dW2 = A^T dY
      at::bmm(h, w1.transpose(1, 2));   //           dX = dH W1^T
      at::bmm(a.transpose(1, 2), h);    //           dW1 = X^T dH
    }
  };
  auto six_gemms = [&](int64_t n, int64_t m, int64_t f) {
    return SixGemms{at::randn({n, m, H}, gemm_opts), at::randn({n, H, f}, gemm_opts),
                    at::randn({n, m, f}, gemm_opts), at::randn({n, f, H}, gemm_opts),
                    at::randn({n, m, H}, gemm_opts), 6.0 * 2.0 * n * m * H * f};
  };
  // The routed experts: the local experts at the routed rows per expert.
  const int64_t local = cfg.moe.num_experts / groups.ep_size;
  const int64_t R = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(rows / local)));
  const SixGemms routed_gemms = six_gemms(local, R, F);
  std::vector<std::function<void()>> works{timed_step, routed_gemms};
  // The shared experts: every token through one FFN of their summed width, at that shape's rate.
  const int64_t Fs = cfg.moe.shared_experts * (cfg.moe.shared_d_ff > 0 ? cfg.moe.shared_d_ff : F);
  const bool shared = cfg.moe.shared_experts > 0;
  const SixGemms shared_gemms = shared ? six_gemms(1, S, Fs) : SixGemms{};
  if (shared) {
    r.shared_flops = 3.0 * static_cast<double>(S) * 2.0 * H * Fs * (swiglu ? 3 : 2);
    works.push_back(shared_gemms);
  }
  // The floor's all-to-all: the dispatch buffer of one rank, E x C rows (capacity) or its kept
  // rows (dropless), rounded up to a multiple of the EP size.
  const bool exchanges = groups.ep_size > 1;
  if (exchanges) {
    const int64_t n = groups.ep_size;
    int64_t buffer_rows =
        capacity > 0 ? cfg.moe.num_experts * capacity : static_cast<int64_t>(kept_here);
    buffer_rows = (buffer_rows + n - 1) / n * n;
    const at::Tensor in = at::randn({buffer_rows, H}, gemm_opts);
    at::Tensor out = at::empty_like(in);
    works.push_back(
        [&groups, in, out]() mutable { groups.ep->all_to_all_single(out, in, {}, {}); });
  }
  auto tflops = [&](double flops, double seconds) {
    return flops / reduce_over(*groups.world, seconds, ReduceOp::kMax, device) / 1e12;
  };

  // The rounds: the timed steps and the floor's pieces in turn (median_seconds_each), so that
  // each round's floor is measured beside the steps it is compared with.
  struct Round {
    double ms, gemm_tflops, shared_gemm_tflops, alltoall_ms, floor_ms, efficiency;
  };
  std::vector<Round> rounds;
  for (int i = 0; i < opt.rounds; ++i) {
    const std::vector<double> t = median_seconds_each(device, opt.warmup, opt.reps, works);
    Round round{};
    round.ms = 1000.0 * reduce_over(*groups.world, t[0], ReduceOp::kMax, device);
    round.gemm_tflops = tflops(routed_gemms.flops, t[1]);
    double shared_ms = 0;
    if (shared) {
      round.shared_gemm_tflops = tflops(shared_gemms.flops, t[2]);
      shared_ms = 1000.0 * r.shared_flops / (round.shared_gemm_tflops * 1e12);
    }
    if (exchanges) {
      round.alltoall_ms = 1000.0 * reduce_over(*groups.world, t.back(), ReduceOp::kMax, device);
    }
    round.floor_ms =
        1000.0 * r.expert_flops / (round.gemm_tflops * 1e12) + shared_ms + 4.0 * round.alltoall_ms;
    round.efficiency = round.floor_ms / round.ms;
    rounds.push_back(round);
  }
  // The round of the median efficiency (the lower middle of an even count) gives every number
  // printed, so that they stay one consistent measurement; the others give the spread.
  std::sort(rounds.begin(), rounds.end(),
            [](const Round& a, const Round& b) { return a.efficiency < b.efficiency; });
  const Round& mid = rounds[(rounds.size() - 1) / 2];
  r.rounds = static_cast<int>(rounds.size());
  r.ms = mid.ms;
  r.gemm_tflops = mid.gemm_tflops;
  r.shared_gemm_tflops = mid.shared_gemm_tflops;
  r.alltoall_ms = mid.alltoall_ms;
  r.floor_ms = mid.floor_ms;
  r.efficiency = mid.efficiency;
  r.efficiency_min = rounds.front().efficiency;
  r.efficiency_max = rounds.back().efficiency;
  r.tokens_per_s = static_cast<double>(S) / (r.ms / 1000.0);
  r.expert_tflops = r.expert_flops / (r.ms / 1000.0) / 1e12;

  // Breakdown: separate eager runs, the device drained at every phase boundary (moe/phases.h).
  {
    PhaseRecorder rec([&] { synchronize(device); });
    const int runs = std::max(1, std::min(opt.reps, 5));
    for (int i = 0; i < runs; ++i) {
      rec.start();
      step(&rec);
    }
    for (const auto& [name, seconds] : rec.phases()) {
      r.breakdown_ms.emplace_back(
          name, 1000.0 * reduce_over(*groups.world, seconds / runs, ReduceOp::kMax, device));
    }
  }

  // --trace: a few more steps under LibTorch's profiler, written by world rank 0.
  if (!opt.trace_path.empty()) {
    trace_to_file(opt.trace_path, device, groups.world_rank == 0, [&] {
      for (int i = 0; i < std::max(1, std::min(opt.reps, 3)); ++i) timed_step();
      synchronize(device);
    });
  }
  return r;
}

std::vector<AlltoallRow> bench_alltoall(const ParallelGroups& groups, const c10::Device& device,
                                        const BenchOptions& opt) {
  SY_CHECK(opt.min_bytes >= 4 && opt.max_bytes >= opt.min_bytes,
           "bench alltoall: sizes must satisfy 4 <= min <= max, got ", opt.min_bytes, " and ",
           opt.max_bytes);
  Communicator& comm = *groups.ep;
  const int64_t n = comm.size(), me = comm.rank();
  const RawAllToAll raw = make_raw_nccl_all_to_all(groups, device);
  std::vector<AlltoallRow> rows;
  for (int64_t bytes = opt.min_bytes; bytes <= opt.max_bytes; bytes *= 2) {
    // float32 elements, a whole number per destination. Element i of the block for rank d holds
    // me * 2^16 + (d * block + i) mod 2^16: exact in float32, and it names sender and position.
    const int64_t block = std::max<int64_t>(1, bytes / 4 / n);
    const auto opts = at::TensorOptions().dtype(at::kFloat).device(device);
    const at::Tensor pos =
        at::arange(n * block, at::TensorOptions().dtype(at::kLong)).remainder(65536);
    const at::Tensor in = (pos + me * 65536).to(at::kFloat).to(device);
    at::Tensor out = at::empty({n * block}, opts);
    AlltoallRow row;
    row.bytes = n * block * 4;
    synchronize(device);
    reset_peak_memory(device);
    const double t = median_seconds(device, opt.warmup, opt.reps,
                                    [&] { comm.all_to_all_single(out, in, {}, {}); });
    if (raw) {
      // The same exchange through raw NCCL, checked like ours.
      at::Tensor raw_out = at::empty_like(out);
      const double t_raw = median_seconds(device, opt.warmup, opt.reps, [&] { raw(raw_out, in); });
      row.raw_ms = 1000.0 * reduce_over(comm, t_raw, ReduceOp::kMax, device);
      row.raw_wrong = static_cast<int64_t>(
          reduce_over(comm, raw_out.to(at::kCPU).ne(out.to(at::kCPU)).sum().item<double>(),
                      ReduceOp::kSum, device));
    }
    // What rank s sent to me: its block `me`.
    const at::Tensor src =
        at::arange(n, at::TensorOptions().dtype(at::kLong)).repeat_interleave(block);
    const at::Tensor idx = at::arange(block, at::TensorOptions().dtype(at::kLong)).repeat({n});
    const at::Tensor expected = (src * 65536 + (idx + me * block).remainder(65536)).to(at::kFloat);
    row.wrong = static_cast<int64_t>(reduce_over(
        comm, out.to(at::kCPU).ne(expected).sum().item<double>(), ReduceOp::kSum, device));
    row.ms = 1000.0 * reduce_over(comm, t, ReduceOp::kMax, device);
    synchronize(device);
    row.peak_mib = reduce_over(comm, static_cast<double>(peak_memory_bytes(device)) / (1 << 20),
                               ReduceOp::kMax, device);
    row.algbw_gbs = static_cast<double>(row.bytes) / (row.ms / 1000.0) / 1e9;
    row.busbw_gbs = row.algbw_gbs * static_cast<double>(n - 1) / static_cast<double>(n);
    if (row.raw_ms > 0) {
      row.raw_busbw_gbs = static_cast<double>(row.bytes) / (row.raw_ms / 1000.0) / 1e9 *
                          static_cast<double>(n - 1) / static_cast<double>(n);
    }
    rows.push_back(row);
  }
  return rows;
}

std::string format_layer_result(const Config& cfg, const ParallelGroups& g,
                                const LayerBenchResult& r) {
  char line[512];
  std::string s;
  // Note [Chunked all-to-all]: only an EP group of several ranks exchanges.
  std::string how = cfg.moe.a2a_chunks > 1 && g.ep_size > 1
                        ? str(", all-to-alls in ", cfg.moe.a2a_chunks, " chunks")
                        : std::string();
  if (r.cuda_graph) how += ", replayed as a CUDA graph (train.cuda_graph)";
  std::snprintf(
      line, sizeof(line),
      "MoE layer: %ld tokens/rank, H %ld, F %ld, %ld experts top-%ld (%s), capacity factor %g, "
      "%s, %d rank(s), ep_size %d%s\n",
      static_cast<long>(cfg.data.batch_size * cfg.model.block_size),
      static_cast<long>(cfg.model.d_model),
      static_cast<long>(cfg.moe.d_ff > 0 ? cfg.moe.d_ff : cfg.model.d_ff),
      static_cast<long>(cfg.moe.num_experts), static_cast<long>(cfg.moe.top_k),
      choice_name(cfg.moe.router), cfg.moe.capacity_factor, choice_name(cfg.train.dtype),
      g.world_size, g.ep_size, how.c_str());
  s += line;
  if (r.buffer_capacity > 0 && r.buffer_capacity != r.capacity) {
    std::snprintf(line, sizeof(line),
                  "experts: %s path, buffer of %ld rows an expert (trimmed; capacity %ld)\n",
                  r.path.c_str(), static_cast<long>(r.buffer_capacity),
                  static_cast<long>(r.capacity));
  } else {
    std::snprintf(line, sizeof(line), "experts: %s path\n", r.path.c_str());
  }
  s += line;
  std::snprintf(line, sizeof(line), "time (fwd+bwd, median, max over ranks)  %10.3f ms\n", r.ms);
  s += line;
  std::snprintf(line, sizeof(line), "tokens/s per rank                       %10.0f\n",
                r.tokens_per_s);
  s += line;
  std::snprintf(line, sizeof(line),
                "expert TFLOP/s (routed tokens)          %10.3f   (%.3e FLOP)\n", r.expert_tflops,
                r.expert_flops);
  s += line;
  std::snprintf(line, sizeof(line), "floor: batched-GEMM rate                %10.3f TFLOP/s\n",
                r.gemm_tflops);
  s += line;
  if (r.shared_flops > 0) {
    std::snprintf(line, sizeof(line),
                  "floor: shared experts' GEMM rate        %10.3f TFLOP/s (%.3e FLOP)\n",
                  r.shared_gemm_tflops, r.shared_flops);
    s += line;
  }
  std::snprintf(line, sizeof(line), "floor: one all-to-all of the buffer     %10.3f ms\n",
                r.alltoall_ms);
  s += line;
  std::snprintf(line, sizeof(line), "floor (GEMMs + 4 all-to-alls)           %10.3f ms\n",
                r.floor_ms);
  s += line;
  std::snprintf(line, sizeof(line), "efficiency = floor / measured           %10.3f\n",
                r.efficiency);
  s += line;
  if (r.rounds > 1) {
    std::snprintf(line, sizeof(line), "efficiency over %d rounds (median above) %8.3f to %.3f\n",
                  r.rounds, r.efficiency_min, r.efficiency_max);
    s += line;
  }
  std::snprintf(line, sizeof(line), "peak device memory (max over ranks)     %10.1f MiB\n",
                r.peak_mib);
  s += line;
  if (r.flat_rows_across_nodes > 0) {
    std::snprintf(line, sizeof(line),
                  "dispatch rows across nodes (all ranks) %10.0f of %.0f (moe.dedup_dispatch)\n",
                  r.rows_across_nodes, r.flat_rows_across_nodes);
    s += line;
  }
  s += "breakdown (device drained between phases; separate runs):\n";
  for (const auto& [name, ms] : r.breakdown_ms) {
    std::snprintf(line, sizeof(line), "  %-32s %10.3f ms\n", name.c_str(), ms);
    s += line;
  }
  return s;
}

std::string format_alltoall(const ParallelGroups& g, const std::vector<AlltoallRow>& rows) {
  const bool raw = !rows.empty() && rows.front().raw_ms > 0;
  char line[200];
  std::snprintf(line, sizeof(line), "all_to_all_single over %d rank(s) (%s), float32%s\n",
                g.ep_size, g.ep->backend().c_str(),
                raw ? "; raw NCCL: ncclSend/ncclRecv in one group, same buffers" : "");
  std::string s = line;
  std::snprintf(line, sizeof(line), "%14s %12s %12s %12s %8s", "size (B)", "time (us)",
                "algbw (GB/s)", "busbw (GB/s)", "#wrong");
  s += line;
  if (raw) {
    std::snprintf(line, sizeof(line), " %14s %14s %8s %10s", "raw time (us)", "raw busbw", "#wrong",
                  "ours/raw");
    s += line;
  }
  std::snprintf(line, sizeof(line), " %12s\n", "peak (MiB)");
  s += line;
  for (const AlltoallRow& r : rows) {
    std::snprintf(line, sizeof(line), "%14ld %12.1f %12.3f %12.3f %8ld", static_cast<long>(r.bytes),
                  1000.0 * r.ms, r.algbw_gbs, r.busbw_gbs, static_cast<long>(r.wrong));
    s += line;
    if (raw) {
      // ours/raw: raw time over ours, i.e. our bandwidth as a fraction of raw NCCL's.
      std::snprintf(line, sizeof(line), " %14.1f %14.3f %8ld %10.3f", 1000.0 * r.raw_ms,
                    r.raw_busbw_gbs, static_cast<long>(r.raw_wrong), r.raw_ms / r.ms);
      s += line;
    }
    std::snprintf(line, sizeof(line), " %12.1f\n", r.peak_mib);
    s += line;
  }
  return s;
}

}  // namespace sy
