// The step: see step.h.
#include "train/step.h"

#include <limits>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "common/device_timing.h"
#include "common/stop_signal.h"
#include "common/log.h"
#include "common/autocast.h"
#include "train/balance.h"
#include "train/grad_sync.h"
#include "train/metrics.h"
#include "train/run.h"
#include "train/step_graph.h"

namespace sy {

StepBatches next_batches(Run& run) {
  std::vector<at::Tensor> x_parts, y_parts, task_parts;
  for (int64_t micro = 0; micro < run.cfg.train.grad_accum; ++micro) {
    Batch b = objective_batch(
        run.cfg, run.corpus,
        run.corpus.dataset->sample(Split::kTrain, run.cfg.data.batch_size, run.streams.train_rng),
        run.streams.train_rng);
    x_parts.push_back(b.x);
    y_parts.push_back(b.y);
    if (b.task.defined()) task_parts.push_back(b.task);
  }
  return {at::stack(x_parts), at::stack(y_parts),
          task_parts.empty() ? at::Tensor() : at::stack(task_parts)};
}

// Note [CUDA graph step]: with train.cuda_graph on a CUDA device, the step's device work
// (device_step: forward and backward of every micro-batch, gradient sync, norm, the non-finite
// flags) is captured as one CUDA graph at the second step and replayed from then on, which
// removes the per-kernel launch cost of a small model. The first step runs eagerly on the
// graph's stream (warm-up). Between replays the host copies the next batches into the graph's
// input tensors, reads the flags, and runs the optimizer eagerly; the gradients and step sums are
// tensors the graph writes in place, so nothing may reassign them (no zero_grad once captured:
// every replay overwrites the gradients). Needs static shapes and no host sync in the step: one
// rank, MoE layers in capacity mode or with the grouped GEMM.
StepRunner::StepRunner(Run& run) : run_(run) {
  const TrainConfig& tc = run.cfg.train;
  if (tc.cuda_graph && !run.is_cuda) SY_LOG("train", "train.cuda_graph has no effect on the CPU");
  const bool use_graph = tc.cuda_graph && run.is_cuda;
  SY_CHECK(!use_graph || run.groups.world_size == 1,
           "train.cuda_graph captures the step of one "
           "rank; this run has ",
           run.groups.world_size,
           " ranks (graphs over collectives are not "
           "implemented): set train.cuda_graph false");
  if (use_graph) graph_ = std::make_unique<StepGraph>(run.device);
  // debug.nan_step: a device scalar, 1 except at that step (so that a captured step sees it).
  const DebugConfig& debug = run.cfg.debug;
  if (debug.nan_step >= 0 && run.groups.world_rank == debug.nan_rank) {
    loss_gate_ = at::ones({}, torch::TensorOptions().device(run.device));
  }
}

StepRunner::~StepRunner() = default;

StepOutput StepRunner::device_step(const at::Tensor& xs, const at::Tensor& ys,
                                   const at::Tensor& tasks) {
  const int64_t grad_accum = run_.cfg.train.grad_accum;
  StepOutput o;
  auto add = [](at::Tensor& sum, const at::Tensor& v) { sum = sum.defined() ? sum + v : v; };
  for (int64_t micro = 0; micro < grad_accum; ++micro) {
    LossOutput out;
    {
      CudaAutocast autocast(run_.bf16);
      out = run_.model->loss(xs[micro], ys[micro], tasks.defined() ? tasks[micro] : at::Tensor());
    }
    if (loss_gate_.defined()) out.loss = out.loss * loss_gate_;
    (out.loss / static_cast<double>(grad_accum)).backward();
    add(o.loss, out.loss.detach());
    add(o.ce, out.ce.detach());
    add(o.aux, out.aux.detach());
    add(o.z, out.z.detach());
    if (!run_.moe_layers.empty()) {
      std::vector<at::Tensor> loads, dropped;
      for (const auto& layer : run_.moe_layers) {
        const MoeStats& ms = layer->last_stats();
        loads.push_back(ms.tokens_per_expert);
        dropped.push_back(ms.dropped);
      }
      add(o.load, at::stack(loads));
      add(o.dropped, at::stack(dropped).sum());
    }
  }
  if (run_.moe_layers.empty()) {
    const auto longs = torch::TensorOptions().device(run_.device).dtype(at::kLong);
    o.load = at::zeros({0, run_.cfg.moe.num_experts}, longs);
    o.dropped = at::zeros({}, longs);
  }
  sync_gradients(run_.params, run_.groups);
  o.grad_norm = clip_grad_norm(run_.params, run_.groups, run_.cfg.train.grad_clip);
  o.flags = at::stack({at::isfinite(o.loss).logical_not(), at::isfinite(o.grad_norm).logical_not()})
                .to(at::kFloat);
  return o;
}

StepOutput StepRunner::forward_backward(const StepBatches& batches, int64_t step) {
  const bool tasks = batches.task.defined();
  if (!graph_) {
    run_.optimizer.zero_grad();
    return device_step(batches.x.to(run_.device), batches.y.to(run_.device),
                       tasks ? batches.task.to(run_.device) : at::Tensor());
  }
  if (!graph_x_.defined()) {
    graph_x_ = at::empty_like(batches.x, batches.x.options().device(run_.device));
    graph_y_ = at::empty_like(batches.y, batches.y.options().device(run_.device));
    if (tasks)
      graph_task_ = at::empty_like(batches.task, batches.task.options().device(run_.device));
  }
  graph_x_.copy_(batches.x);
  graph_y_.copy_(batches.y);
  if (tasks) graph_task_.copy_(batches.task);
  if (step == run_.start_step) {
    run_.optimizer.zero_grad();
    return device_step(graph_x_, graph_y_, graph_task_);  // eager warm-up
  }
  if (!graph_->captured()) {
    run_.optimizer.zero_grad();  // the capture's backward allocates the gradients it will write
    graph_->capture([&]() { graph_out_ = device_step(graph_x_, graph_y_, graph_task_); });
    // Its first replay, timed on the GPU: the part of the step the graph holds.
    DeviceTimer timer(run_.device);
    timer.start();
    graph_->replay();
    timer.stop();
    SY_LOG("train", "step ", step + 1,
           ": captured the step as a CUDA graph (train.cuda_graph); "
           "a replay takes ",
           1000.0 * timer.seconds(), " ms on the GPU");
  } else {
    graph_->replay();
  }
  return graph_out_;
}

// Note [Non-finite steps]: one small all-reduce per step tells every rank whether any rank's
// loss or the (global) gradient norm is NaN/Inf, so all ranks skip or stop together.
// The same exchange carries each rank's stop request (Note [Clean stop on a signal]): three
// flags per rank, the third the signal number, so a signal that reached any rank stops every
// rank after this step, without a collective of its own.
std::string StepRunner::nonfinite_reason(StepOutput& out) {
  const ParallelGroups& groups = run_.groups;
  const auto local_stop = static_cast<float>(stop_signal());
  at::Tensor flags;
  if (groups.world_size > 1) {
    flags = at::zeros({3 * groups.world_size}, out.flags.options());
    flags.narrow(0, 3 * groups.world_rank, 2).copy_(out.flags);
    flags.narrow(0, 3 * groups.world_rank + 2, 1).fill_(local_stop);
    CollectiveLabel label("non-finite check");
    groups.world->all_reduce(flags, ReduceOp::kSum);
    flags = flags.to(at::kCPU);
  } else {
    flags = out.flags.to(at::kCPU);  // [2]: this rank's; the stop request is local
    out.stop_signal = static_cast<int>(local_stop);
  }
  const float* flag = flags.data_ptr<float>();
  const int per_rank = groups.world_size > 1 ? 3 : 2;
  std::string bad_loss_ranks;
  bool bad_norm = false;
  for (int r = 0; r < groups.world_size; ++r) {
    const float* f = flag + per_rank * r;
    if (f[0] > 0) bad_loss_ranks += (bad_loss_ranks.empty() ? "" : ", ") + std::to_string(r);
    bad_norm = bad_norm || f[1] > 0;
    if (per_rank == 3 && out.stop_signal == 0) out.stop_signal = static_cast<int>(f[2]);
  }
  if (!bad_loss_ranks.empty()) return "the loss is NaN or Inf on rank(s) " + bad_loss_ranks;
  if (!bad_norm) return "";
  std::string what = "the gradient norm is NaN or Inf";
  for (const AdamWSlot& s : run_.optimizer.slots()) {
    if (s.param.grad().defined() && !at::isfinite(s.param.grad()).all().item<bool>()) {
      return what + " (first non-finite gradient on this rank: '" + s.name + "')";
    }
  }
  return what;
}

StepOutput StepRunner::run(const StepBatches& batches, int64_t step, double lr) {
  const TrainConfig& tc = run_.cfg.train;
  if (loss_gate_.defined()) {
    loss_gate_.fill_(step == run_.cfg.debug.nan_step ? std::numeric_limits<double>::quiet_NaN()
                                                     : 1.0);
  }
  if (run_.cfg.moe.aux_loss_scope == AuxScope::kGlobalBatch) {
    // Note [Global-batch aux loss]: f of every router from a counting pass over the step's batch.
    CudaAutocast autocast(run_.bf16);
    count_global_choices(*run_.model, batches.x.to(run_.device), *run_.groups.world);
  }
  StepOutput out = forward_backward(batches, step);
  const std::string bad = nonfinite_reason(out);
  if (bad.empty()) {
    run_.optimizer.step(lr);
    const MoeConfig& moe = run_.cfg.moe;
    if (uses_score_bias(moe.balance)) {
      update_score_biases(run_.moe_layers, out.load, *run_.groups.world, moe.bias_update_rate);
    }
    out.applied = true;
    return out;
  }
  SY_CHECK(run_.skipped < tc.skip_nonfinite, "step ", step + 1, ": ", bad, "; stopping (",
           run_.skipped, " step(s) skipped so far, train.skip_nonfinite is ", tc.skip_nonfinite,
           "). No checkpoint was written for this step",
           run_.result.checkpoint.empty() ? std::string()
                                          : "; the last one is " + run_.result.checkpoint);
  ++run_.skipped;
  if (!graph_) run_.optimizer.zero_grad();  // a captured step overwrites its gradients anyway
  SY_LOG("train", "step ", step + 1, ": ", bad, "; step skipped (", run_.skipped, " of at most ",
         tc.skip_nonfinite, ")");
  run_.metrics.write(JsonObject().add("step", step + 1).add("skipped_nonfinite", run_.skipped));
  return out;
}

}  // namespace sy
