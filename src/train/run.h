// One rank's training run between steps (the state `sy::train()` in trainer.cpp carries from
// step to step) and the phases around the step that read or write it: setup, resume, the run
// folder, evaluation, checkpoints and the throughput report. The step itself is in step.h, the
// log interval in interval_log.h.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <c10/core/Device.h>

#include "common/tfevents.h"
#include "config/config.h"
#include "data/corpus.h"
#include "model/gpt.h"
#include "parallel/groups.h"
#include "train/grad_sync.h"
#include "train/interval_log.h"
#include "train/metrics.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace sy {

// The rank's data streams and dropout/noise generator: with the interval statistics, what a
// checkpoint needs besides weights and optimizer state to continue bitwise.
struct RankStreams {
  std::mt19937_64 train_rng, eval_rng;
  at::Generator gen;
};

// train.tf32 for the run, and the process's setting back afterwards (tests train several runs).
class Tf32Scope {
 public:
  explicit Tf32Scope(bool on);
  ~Tf32Scope();
  Tf32Scope(const Tf32Scope&) = delete;
  Tf32Scope& operator=(const Tf32Scope&) = delete;

 private:
  bool previous_;
};

struct Run {
  Run(const Config& config, const ParallelGroups& groups);  // see setup()
  Run(const Run&) = delete;
  Run& operator=(const Run&) = delete;

  const Config& cfg;
  const ParallelGroups& groups;
  c10::Device device;
  bool is_cuda;
  bool bf16;    // train.dtype bf16: autocast in the forward
  bool writer;  // world rank 0 writes the run folder
  Tf32Scope tf32;

  Corpus corpus;
  GPT model{nullptr};
  std::vector<MoELayer> moe_layers;
  RankStreams streams;
  ParamSet params;  // dense and expert parameters, for the gradient sync and the norm
  AdamW optimizer;
  int64_t tokens_per_step = 0;  // over all ranks and micro-batches

  int64_t start_step = 0;    // steps done before this run (a resumed checkpoint's step)
  int64_t end_step = 0;      // the step this run stops after (train.stop_at_step or max_steps)
  int64_t skipped = 0;       // steps skipped for non-finite values (train.skip_nonfinite)
  std::string resumed_from;  // the checkpoint folder this run continues ("" from step 0)
  IntervalStats interval;
  MetricsWriter metrics;
  std::unique_ptr<TfEventsWriter> tensorboard;  // train.tensorboard, rank 0: out_dir's events file
  TrainResult result;
};

// Data, model, generators and optimizer of a fresh run (step 0); nothing written yet.
std::unique_ptr<Run> setup(const Config& config, const ParallelGroups& groups);

// --resume DIR|auto ("" for none): weights, optimizer, streams and the partial interval from a
// checkpoint (streams re-seeded when the world size differs), and the run's first and last step.
void resume(Run& run, const std::string& resume_option);

// Rank 0 writes config.yaml, vocab.json and opens metrics.jsonl (continuing it when resumed),
// and with train.tensorboard a new TensorBoard events file (a resumed run adds one).
void open_run_folder(Run& run);

// train.eval_interval: mean train and val loss over train.eval_iters batches, all ranks.
bool eval_due(const Run& run, int64_t step);
// Returns the signal that ended the evaluation early (Note [Clean stop on a signal]; nothing
// logged), or 0.
int evaluate(Run& run, int64_t steps_done);

// A checkpoint after `steps_done` steps when train.checkpoint_interval asks for one, and always
// after the run's last step (unless checkpoint_interval is -1).
void maybe_save(Run& run, int64_t steps_done);

// ms/step and tokens/s over the steps after the run's first (`steady_s` seconds), and on CUDA
// the MFU against the dense GEMM rate and the peak memory; logged before the final checkpoint.
void report_throughput(Run& run, int64_t steps_run, double steady_s);

// A stop requested by `signal` after `steps_done` steps (Note [Clean stop on a signal]): a
// checkpoint (unless one was just written, or train.checkpoint_interval is -1) and the log line
// that says how to continue.
void stop_on_signal(Run& run, int64_t steps_done, int signal);

// After the loop: the final evaluation (or the stop message) and model.pt.
void finish(Run& run, int64_t steps_done);

// Waits for the device's queued work (CUDA), so that a clock read charges it to the right side.
void drain(const Run& run);

}  // namespace sy
