// summary.json: see summary.h.
#include "train/summary.h"

#include <sys/resource.h>

#include <cmath>

#include <torch/torch.h>

#include "common/device_timing.h"
#include "common/files.h"
#include "common/json.h"
#include "train/run.h"
#include "train/throughput.h"

namespace sy {
namespace {

struct ParamCounts {
  double total = 0, active = 0;
};

// Routed experts are sharded over the EP group (each rank holds num_experts / ep_size of them):
// their count on this rank times ep_size is the model's.
ParamCounts count_parameters(const Run& run) {
  const MoeConfig& moe = run.cfg.moe;
  const double used = moe.router == RouterKind::kDense
                          ? 1.0
                          : static_cast<double>(moe.top_k) / static_cast<double>(moe.num_experts);
  ParamCounts c;
  for (const auto& item : run.model->named_parameters()) {
    const auto n = static_cast<double>(item.value().numel());
    if (is_expert_parameter(item.key())) {
      const double all = n * static_cast<double>(run.groups.ep_size);
      c.total += all;
      c.active += all * used;
    } else {
      c.total += n;
      c.active += n;
    }
  }
  return c;
}

}  // namespace

void write_summary(const Run& run, int64_t steps_done) {
  if (!run.writer) return;
  const TrainConfig& tc = run.cfg.train;
  const TrainResult& r = run.result;
  const ParamCounts params = count_parameters(run);
  const auto num_moe = static_cast<int64_t>(run.moe_layers.size());
  double peak_mib = 0;
  if (run.is_cuda) {
    peak_mib = static_cast<double>(peak_memory_bytes(run.device)) / (1 << 20);
  } else {
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    peak_mib = static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
  }
  const double no_value = std::nan("");
  JsonObject s;
  // A run whose final evaluation a signal ended is stopped too (Note [Clean stop on a signal]).
  const bool complete = steps_done == tc.max_steps && run.result.stop_signal == 0;
  s.add("status", std::string(complete ? "complete" : "stopped"))
      .add("steps", steps_done)
      .add("max_steps", tc.max_steps)
      .add("tokens", steps_done * run.tokens_per_step)
      .add("tokens_per_step", run.tokens_per_step)
      .add("world_size", static_cast<int64_t>(run.groups.world_size))
      .add("params_total", params.total)
      .add("params_active", params.active)
      .add("flops_per_token", model_flops_per_token(run.cfg, run.corpus.vocab_size, num_moe))
      .add("ms_per_step", r.ms_per_step > 0 ? r.ms_per_step : no_value)
      .add("tokens_per_s", r.tokens_per_s > 0 ? r.tokens_per_s : no_value)
      .add("peak_mib", peak_mib)
      .add("peak_memory", std::string(run.is_cuda ? "cuda" : "cpu_rss"))
      .add("mfu", r.mfu > 0 ? r.mfu : no_value)
      .add("final_val_loss", r.val_loss.empty() ? no_value : r.val_loss.back().second);
  for (const auto& [task, loss] : r.task_val_loss) s.add("final_val_loss." + task, loss);
  if (!std::isnan(r.val_accuracy)) s.add("final_val_accuracy", r.val_accuracy);
  if (!std::isnan(r.val_exact_match)) s.add("final_val_exact_match", r.val_exact_match);
  write_file_atomic(tc.out_dir + "/summary.json", s.str() + "\n");
}

}  // namespace sy
