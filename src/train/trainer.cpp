// The training loop of one rank: each phase of the step is one named call (run.h, step.h,
// interval_log.h). Note [No host sync in the step]: losses and router statistics stay on the
// device between log lines; one all-reduce and one copy to the host per log interval.
#include "train/trainer.h"

#include "common/log.h"
#include "common/stop_signal.h"
#include "train/faults.h"
#include "train/interval_log.h"
#include "train/run.h"
#include "train/schedule.h"
#include "train/step.h"
#include "train/summary.h"

namespace sy {

TrainResult train(const Config& cfg, const ParallelGroups& groups, const TrainOptions& options) {
  if (cfg.parallel.timeout_s <= 0 && groups.world_size > 1) {  // docs/parallel.md#faults
    SY_LOG("parallel",
           "warning: parallel.timeout_s is 0, so there is no watchdog: a rank that stalls (a "
           "deadlock, a hung GPU or file system) hangs the whole job until it is killed");
  }
  std::unique_ptr<Run> run = setup(cfg, groups);  // data, model, generators, optimizer
  resume(*run, options.resume);                   // from a checkpoint, or step 0
  if (run->writer && options.before_writing) options.before_writing();
  open_run_folder(*run);  // config.yaml, vocab.json, metrics.jsonl
  StepRunner stepper(*run);
  IntervalLog log(*run);
  StepClock clock;
  int64_t step = run->start_step;
  set_stop_in_training(true);  // until the loop ends: no step to finish after it
  for (; step < run->end_step; ++step) {
    if (eval_due(*run, step)) evaluate(*run, step);
    groups.context->set_step(step);  // for the watchdog's dump
    inject_faults_before_step(cfg.debug, groups.world_rank, step);
    clock.start();
    const double lr = learning_rate(cfg.train, step);
    const StepBatches batches = next_batches(*run);
    const StepOutput out = stepper.run(batches, step, lr);  // fwd, bwd, sync, check, optimizer
    const bool first = step == run->start_step, last = step + 1 == run->end_step;
    const bool stopping = out.stop_signal != 0 && !last;  // Note [Clean stop on a signal]
    if (first || last || stopping || eval_due(*run, step + 1)) drain(*run);
    log.add(out, clock.stop(first));
    if (log.due(step + 1)) log.write(step + 1, lr, clock);
    if (last || stopping) {
      report_throughput(*run, step + 1 - run->start_step, clock.steady_seconds());
    }
    maybe_save(*run, step + 1);
    if (stopping) {  // every rank, after this same step
      stop_on_signal(*run, step + 1, out.stop_signal);
      ++step;
      break;
    }
  }
  set_stop_in_training(false);
  finish(*run, step);         // final evaluation, model.pt
  write_summary(*run, step);  // summary.json: the run's totals, for sweeps
  return run->result;
}

}  // namespace sy
