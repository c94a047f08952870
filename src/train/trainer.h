// The training loop of one rank (src/train/trainer.cpp): data, model, AdamW with warm-up and
// cosine decay, gradient accumulation, gradient sync over the EP/DP groups, clipping by the
// global norm, a stop on NaN/Inf, periodic evaluation, logging, checkpoints and resuming, and the
// run folder (config.yaml, vocab.json, metrics.jsonl, summary.json, model.pt, checkpoints/). The same code
// runs for one process, in-process ranks and mpirun. Its phases: run.h (setup, resume, eval,
// checkpoints), step.h (the step), interval_log.h (the log line).
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "config/config.h"
#include "parallel/groups.h"

namespace sy {

struct TrainResult {
  // (steps done, ...), as the "step" of metrics.jsonl: a train entry at 10 covers steps 1..10,
  // a val entry at 10 is evaluated after 10 steps (0: at initialisation).
  std::vector<std::pair<int64_t, double>> train_loss;  // (step, mean CE over the log interval)
  std::vector<std::pair<int64_t, double>> val_loss;    // (step, val CE)
  // data.tasks: the last evaluation's val CE of each task, in data.tasks order (name, loss).
  std::vector<std::pair<std::string, double>> task_val_loss;
  // The last evaluation's val accuracy (mlm: masked tokens; encoder_decoder: target tokens) and
  // exact-match rate (encoder_decoder); NaN where the run has none.
  double val_accuracy = std::nan(""), val_exact_match = std::nan("");
  double ms_per_step = 0;   // mean over the run, excluding step 0
  double tokens_per_s = 0;  // over all ranks
  // CUDA runs: model FLOPs utilization of each rank against the dense GEMM rate measured at the
  // end of the run (train/throughput.h), and the peak device memory of rank 0 (MiB).
  double model_tflops = 0, gemm_tflops = 0, mfu = 0, peak_mib = 0;
  int64_t start_step = 0;  // steps done before this run (a resumed checkpoint's step)
  int64_t steps = 0;       // steps done at the end (max_steps, or train.stop_at_step)
  std::string checkpoint;  // the last checkpoint this run wrote
  int stop_signal = 0;     // the run stopped early on this signal (Note [Clean stop on a signal])
};

struct TrainOptions {
  // "" : start from step 0; "auto": the newest complete checkpoint under
  // <out_dir>/checkpoints (or step 0 when there is none); otherwise a checkpoint folder.
  std::string resume;
  // Called on the writing rank (world rank 0) once the data, the model, train.init_from and the
  // checkpoint resumed from have loaded, before the first file is written to train.out_dir
  // (the launcher's --overwrite removes the earlier run there: Note [Run folders]).
  std::function<void()> before_writing = nullptr;
};

TrainResult train(const Config& config, const ParallelGroups& groups,
                  const TrainOptions& options = {});

}  // namespace sy
