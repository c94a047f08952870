// The log interval and the step clock: see interval_log.h.
#include "train/interval_log.h"

#include <algorithm>
#include <cstdio>

#include <torch/torch.h>

#include "common/log.h"
#include "common/tfevents.h"
#include "parallel/watchdog.h"
#include "train/run.h"

namespace sy {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// "expert_load/layer03/expert017": indices zero-padded to the width of the largest, so that
// TensorBoard's name order is numeric order. `layer` counts MoE layers, as metrics.jsonl does.
std::string expert_load_tag(int64_t layer, int64_t num_layers, int64_t expert,
                            int64_t num_experts) {
  const auto padded = [](int64_t i, int64_t count) {
    const std::string digits = std::to_string(i);
    const size_t width = std::to_string(std::max<int64_t>(count - 1, 0)).size();
    return std::string(width > digits.size() ? width - digits.size() : 0, '0') + digits;
  };
  return "expert_load/layer" + padded(layer, num_layers) + "/expert" + padded(expert, num_experts);
}

}  // namespace

IntervalStats IntervalStats::zeros(c10::Device device, int64_t num_moe, int64_t num_experts) {
  const auto opts = torch::TensorOptions().device(device);
  return IntervalStats{at::zeros({}, opts), at::zeros({}, opts), at::zeros({}, opts),
                       at::zeros({}, opts.dtype(at::kLong)),
                       at::zeros({num_moe, num_experts}, opts.dtype(at::kLong))};
}

void IntervalStats::add(const StepOutput& step, int64_t micro) {
  ce += step.ce;
  aux += step.aux;
  z += step.z;
  dropped += step.dropped;
  load += step.load;
  micro_batches += micro;
  ++steps;
}

std::vector<std::pair<const char*, at::Tensor*>> IntervalStats::saved_tensors() {
  return {{"interval_ce", &ce},
          {"interval_aux", &aux},
          {"interval_z", &z},
          {"interval_dropped", &dropped},
          {"interval_load", &load}};
}

std::vector<std::pair<const char*, int64_t*>> IntervalStats::saved_ints() {
  return {{"interval_micro_batches", &micro_batches}, {"interval_steps", &steps}};
}

double StepClock::stop(bool first) {
  first_ = first;
  step_s_ = seconds_since(start_);
  if (!first_) steady_s_ += step_s_;
  return step_s_;
}

double StepClock::resync() {
  const double synced_s = seconds_since(start_);
  const double added = synced_s - step_s_;
  if (!first_) steady_s_ += added;
  step_s_ = synced_s;
  return added;
}

void IntervalLog::add(const StepOutput& step, double step_seconds) {
  IntervalStats& st = run_.interval;
  grad_norm_ = step.grad_norm;
  if (step.applied) st.add(step, run_.cfg.train.grad_accum);
  st.seconds += step_seconds;
}

bool IntervalLog::due(int64_t steps_done) const {
  const TrainConfig& tc = run_.cfg.train;
  return (steps_done % tc.log_interval == 0 || steps_done == tc.max_steps) &&
         run_.interval.micro_batches > 0;
}

void IntervalLog::write(int64_t steps_done, double lr, StepClock& clock) {
  const Config& cfg = run_.cfg;
  const ParallelGroups& groups = run_.groups;
  IntervalStats& st = run_.interval;
  const int64_t num_moe = static_cast<int64_t>(run_.moe_layers.size());
  const int64_t num_experts = cfg.moe.num_experts;
  // One reduction for the interval: [ce, aux, z, dropped, load...] summed over ranks.
  at::Tensor packed = at::cat({at::stack({st.ce, st.aux, st.z, st.dropped.to(at::kFloat)}),
                               st.load.reshape({-1}).to(at::kFloat)});
  {
    CollectiveLabel label("log interval statistics");
    groups.world->all_reduce(packed, ReduceOp::kSum);
  }
  packed = packed.to(at::kCPU, at::kDouble);
  const double* v = packed.data_ptr<double>();
  const double n = static_cast<double>(st.micro_batches * groups.world_size);
  const double ce_mean = v[0] / n, aux_mean = v[1] / n, z_mean = v[2] / n;
  // The routed choices: the loads' sum (tokens left out of routing are in neither).
  double all_choices = 0;
  for (int64_t i = 0; i < num_moe * num_experts; ++i) all_choices += v[4 + i];
  const double drop = all_choices > 0 ? v[3] / all_choices : 0.0;
  // expert_load[l][e]: expert e's share of layer l's routed choices over the interval.
  std::vector<std::vector<double>> expert_load(num_moe);
  for (int64_t l = 0; l < num_moe; ++l) {
    double total = 0;
    for (int64_t e = 0; e < num_experts; ++e) total += v[4 + l * num_experts + e];
    for (int64_t e = 0; e < num_experts; ++e) {
      expert_load[l].push_back(total > 0 ? v[4 + l * num_experts + e] / total : 0.0);
    }
  }
  const double norm = grad_norm_.item<double>();
  // The copy above drained the device: the last step is re-timed up to now.
  const double interval_s = st.seconds + clock.resync();
  const double ms_step = 1000.0 * interval_s / static_cast<double>(std::max<int64_t>(1, st.steps));
  const double tok_s = static_cast<double>(run_.tokens_per_step * st.steps) / interval_s;
  const double eta = ms_step * static_cast<double>(run_.end_step - steps_done) / 1000.0;
  run_.result.train_loss.emplace_back(steps_done, ce_mean);
  char line[256];
  std::snprintf(line, sizeof(line),
                "step %6ld/%ld | loss %.4f | aux %.3f | z %.3f | drop %5.2f%% | gnorm %.3f | "
                "lr %.2e | %.0f tok/s | %.1f ms/step | ETA %s",
                static_cast<long>(steps_done), static_cast<long>(cfg.train.max_steps), ce_mean,
                aux_mean, z_mean, 100.0 * drop, norm, lr, tok_s, ms_step,
                format_duration(eta).c_str());
  SY_LOG("train", line);
  run_.metrics.write(JsonObject()
                         .add("step", steps_done)
                         .add("train_loss", ce_mean)
                         .add("aux_loss", aux_mean)
                         .add("z_loss", z_mean)
                         .add("drop_fraction", drop)
                         .add("grad_norm", norm)
                         .add("lr", lr)
                         .add("tokens_per_s", tok_s)
                         .add("ms_per_step", ms_step)
                         .add("expert_load", expert_load));
  if (run_.tensorboard) {
    TfEventsWriter& tb = *run_.tensorboard;
    const std::pair<const char*, double> scalars[] = {
        {"train/loss", ce_mean},       {"train/aux_loss", aux_mean}, {"train/z_loss", z_mean},
        {"train/drop_fraction", drop}, {"train/grad_norm", norm},    {"train/lr", lr},
        {"perf/tokens_per_s", tok_s},  {"perf/ms_per_step", ms_step}};
    for (const auto& [tag, value] : scalars) tb.scalar(tag, steps_done, value);
    for (int64_t l = 0; l < num_moe; ++l) {
      for (int64_t e = 0; e < num_experts; ++e) {
        tb.scalar(expert_load_tag(l, num_moe, e, num_experts), steps_done, expert_load[l][e]);
      }
    }
    tb.flush();
  }
  st = IntervalStats::zeros(run_.device, num_moe, num_experts);
}

}  // namespace sy
