// The phases around the step: see run.h.
#include "train/run.h"

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <fstream>
#include <sstream>

#include <torch/torch.h>

#include "common/device_timing.h"
#include "common/files.h"
#include "common/log.h"
#include "common/oom.h"
#include "common/stop_signal.h"
#include "model/memory.h"
#include "moe/init.h"
#include "parallel/runtime.h"
#include "parallel/watchdog.h"
#include "common/autocast.h"
#include "train/checkpoint.h"
#include "train/freeze.h"
#include "train/init_from.h"
#include "train/model_io.h"
#include "train/throughput.h"

namespace sy {
namespace {

// train.device resolved for this process, with the dtype it allows.
c10::Device run_device(const Config& cfg) {
  const bool is_cuda = resolve_device(cfg.train.device) == DeviceKind::kCuda;
  SY_CHECK(cfg.train.dtype == Precision::kFp32 || is_cuda,
           "train.dtype 'bf16' needs train.device cuda (autocast runs on CUDA only)");
  return is_cuda ? current_cuda_device() : c10::Device(c10::kCPU);
}

// Each rank draws its own data, dropout and routing noise (Note [Groups]: ranks read different
// data); CUDA ops use the device generator, seeded per rank. `step` > 0 re-seeds the streams of
// a run resumed on another world size.
void seed_streams(Run& run, uint64_t step) {
  const auto seed = static_cast<uint64_t>(run.cfg.train.seed);
  const auto rank = static_cast<uint64_t>(run.groups.world_rank);
  run.streams.train_rng.seed(mix_seed(seed, 0xB1, rank, step));
  run.streams.eval_rng.seed(mix_seed(seed, 0xE1, rank, step));
  run.streams.gen = make_cpu_generator(mix_seed(seed, 0xA1, rank, step));
  if (run.is_cuda) torch::cuda::manual_seed(mix_seed(seed, 0xC0, rank, step));
}

std::string rng_text(const std::mt19937_64& rng) {
  std::ostringstream os;
  os << rng;
  return os.str();
}

void rng_from_text(std::mt19937_64& rng, const std::string& text, const std::string& what) {
  std::istringstream is(text);
  is >> rng;
  SY_CHECK(!is.fail(), "checkpoint rank state: cannot restore ", what);
}

// What a checkpoint holds of this rank besides weights and optimizer (Note [Checkpoint layout]).
RankState rank_state(Run& run) {
  RankState s;
  s.text["train_rng"] = rng_text(run.streams.train_rng);
  s.text["eval_rng"] = rng_text(run.streams.eval_rng);
  s.tensors["cpu_generator"] = run.streams.gen.get_state();
  if (run.is_cuda)
    s.tensors["cuda_generator"] = at::globalContext().defaultGenerator(run.device).get_state();
  for (auto& [key, t] : run.interval.saved_tensors()) s.tensors[key] = *t;
  for (auto& [key, v] : run.interval.saved_ints()) s.ints[key] = *v;
  s.ints["skipped_nonfinite"] = run.skipped;
  return s;
}

void restore_rank_state(Run& run, const RankState& s) {
  rng_from_text(run.streams.train_rng, s.text.at("train_rng"), "the data sampler");
  rng_from_text(run.streams.eval_rng, s.text.at("eval_rng"), "the evaluation sampler");
  run.streams.gen.set_state(s.tensors.at("cpu_generator"));
  if (run.is_cuda && s.tensors.count("cuda_generator")) {
    at::Generator cuda_gen = at::globalContext().defaultGenerator(run.device);  // a handle
    cuda_gen.set_state(s.tensors.at("cuda_generator"));
  }
  for (auto& [key, t] : run.interval.saved_tensors()) t->copy_(s.tensors.at(key));
  for (auto& [key, v] : run.interval.saved_ints()) *v = s.ints.at(key);
  run.skipped = s.ints.at("skipped_nonfinite");
}

// The config keys that size each phase, for out-of-memory errors.
const char* const kModelKeys =
    "model.n_layers, model.d_model, model.d_ff, moe.num_experts, moe.d_ff and the vocabulary";
const char* const kBatchKeys =
    "data.batch_size, model.block_size, model.d_model, moe.top_k, moe.capacity_factor and the "
    "vocabulary";

// Ranks of this job whose memory comes from the same pool as this rank's: every in-process rank
// (--ranks) on the CPU, the node's ranks of an mpirun job on the CPU as the launcher reports them,
// one per GPU.
int64_t ranks_sharing_memory(const Run& run) {
  if (run.is_cuda) return 1;
  if (!MpiRuntime::launched_by_mpi()) return run.groups.world_size;
  for (const char* name :
       {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_LOCAL_SIZE"}) {
    const char* value = std::getenv(name);
    if (value != nullptr && std::atoll(value) > 0) return std::atoll(value);
  }
  return 1;
}

// The device's free memory, read once per process: every in-process rank compares with the same
// number, so they all decide alike.
int64_t available_once(c10::Device device) {
  static std::once_flag once;
  static int64_t bytes = -1;
  std::call_once(once, [&] { bytes = available_memory(device); });
  return bytes;
}

// Note [Memory estimate] (src/model/memory.h), logged at start and checked against the device's
// free memory before the model is built.
void check_memory(const Run& run, int64_t vocab) {
  const Config& cfg = run.cfg;
  const MemoryEstimate est = estimate_memory(cfg, vocab, run.groups.ep_size);
  const int64_t sharing = ranks_sharing_memory(run);
  const int64_t available = available_once(run.device);
  const std::string where = run.is_cuda ? "on the GPU" : "on this host";
  SY_LOG("train", "memory estimate per rank: ", est.describe(), "; ", est.parameters,
         " parameters on this rank",
         available >= 0 ? str("; ", format_bytes(available), " available ", where) : "");
  if (available < 0) return;
  const double need = est.total * static_cast<double>(sharing);
  // The formula is an upper-end estimate (configs/moe-1b.yaml: 79.6 GiB estimated, a 72 GB peak
  // measured on an 80 GB GPU, about what it has free), so a run up to kMemoryMargin times the
  // memory only gets a warning; beyond that it cannot fit.
  constexpr double kMemoryMargin = 1.5;
  if (need > static_cast<double>(available) && need <= kMemoryMargin * available) {
    SY_LOG("train", "warning: the memory estimate (", format_bytes(static_cast<int64_t>(need)),
           ") is above the ", format_bytes(available), " available ", where,
           "; the estimate is an upper end, so the run goes on, but may run out of memory (the "
           "biggest: ",
           est.biggest_terms(2), ")");
    return;
  }
  SY_CHECK(need <= kMemoryMargin * static_cast<double>(available),
           "the memory estimate of this run, ",
           format_bytes(static_cast<int64_t>(std::min(est.total, 9e18))), " per rank",
           sharing > 1 ? str(" (", format_bytes(static_cast<int64_t>(std::min(need, 9e18))),
                             " for the ", sharing, " ranks sharing it)")
                       : "",
           ", exceeds the ", format_bytes(available), " available ", where,
           "; the biggest: ", est.biggest_terms(2), " (docs/config.md#memory-estimate)");
}

// A capacity factor or a min_capacity that asks for more slots than a rank's tokens is clamped to
// them (Note [Capacity scope] in src/moe/plan.h); said once, at start.
void log_capacity_clamp(const Config& cfg) {
  const MoeConfig& e = cfg.moe;
  if (e.every == 0 || e.router == RouterKind::kDense) return;
  const int64_t tokens = cfg.data.batch_size * cfg.model.block_size;
  for (const auto& [key, factor] :
       {std::pair<const char*, double>{"moe.capacity_factor", e.capacity_factor},
        {"moe.eval_capacity_factor", e.eval_capacity_factor}}) {
    const double slots =
        factor * static_cast<double>(e.top_k * tokens) / static_cast<double>(e.num_experts);
    if (factor <= 0 || slots <= static_cast<double>(tokens) + 1e-9) continue;
    SY_LOG("train", key, " (", factor, ") asks for ", slots, " slots per expert, more than the ",
           tokens, " tokens a rank holds per micro-batch: the capacity is clamped to ", tokens,
           " (no choice is dropped)");
  }
  if (e.min_capacity > tokens) {
    SY_LOG("train", "moe.min_capacity (", e.min_capacity, ") is more than the ", tokens,
           " tokens a rank holds per micro-batch: the capacity is at most ", tokens);
  }
}

}  // namespace

Tf32Scope::Tf32Scope(bool on) : previous_(at::globalContext().allowTF32CuBLAS()) {
  at::globalContext().setAllowTF32CuBLAS(on);
}

Tf32Scope::~Tf32Scope() { at::globalContext().setAllowTF32CuBLAS(previous_); }

Run::Run(const Config& config, const ParallelGroups& g)
    : cfg(config),
      groups(g),
      device(run_device(config)),
      is_cuda(device.is_cuda()),
      bf16(config.train.dtype == Precision::kBf16),
      writer(g.world_rank == 0),
      tf32(config.train.tf32 && is_cuda),
      optimizer(config.train.beta1, config.train.beta2) {}

std::unique_ptr<Run> setup(const Config& cfg, const ParallelGroups& groups) {
  auto run = std::make_unique<Run>(cfg, groups);
  Run& r = *run;
  r.corpus = in_phase("loading the data", "data.path, data.tasks and data.synthetic_chars",
                      [&] { return load_corpus(cfg); });
  const int64_t vocab = r.corpus.vocab_size;
  check_memory(r, vocab);
  log_capacity_clamp(cfg);
  r.model = in_phase("building the model", kModelKeys, [&] {
    GPT model(cfg.model, cfg.moe, vocab, groups.ep, static_cast<uint64_t>(cfg.train.seed),
              cfg.data.tasks);
    model->to(r.device);
    return model;
  });
  if (!cfg.train.init_from.empty()) {  // weights of a finished run (Note [Initialising from a run])
    const InitFromReport from = in_phase("loading train.init_from", kModelKeys, [&] {
      return init_weights_from(cfg, r.corpus.tokenizer.get(), *r.model, groups);
    });
    SY_LOG("train", "init_from ", from.path, ": ", from.loaded, " tensors loaded",
           from.upcycled ? str(", ", from.upcycled, " MoE layer(s) upcycled from dense FFNs") : "",
           from.grown ? str(", ", from.grown, " new expert(s) (moe.new_expert_init ",
                            choice_name(cfg.moe.new_expert_init), ")")
                      : "",
           from.fresh ? str(", ", from.fresh, " tensor(s) freshly initialised") : "");
  }
  seed_streams(r, 0);
  r.model->set_generator(&r.streams.gen);

  for (const auto& item : r.model->named_parameters()) {
    r.optimizer.add(item.key(), item.value(),
                    is_bias(item.key(), item.value()) ? 0.0 : cfg.train.weight_decay);
  }
  // train.trainable, train.frozen, moe.frozen_experts (Note [Freezing]).
  const FreezePlan freeze = plan_freezing(cfg, *r.model, groups.ep_rank);
  const bool masters = cfg.train.param_dtype == Precision::kBf16;
  const int64_t saved = apply_freezing(freeze, *r.model, r.optimizer, masters);
  for (const auto& item : r.model->named_parameters()) {
    if (!r.params.anchor.defined()) r.params.anchor = item.value();
    if (freeze.frozen_whole(item.key())) continue;
    (is_expert_parameter(item.key()) ? r.params.expert : r.params.dense).push_back(item.value());
  }
  if (freeze.trainable_params < freeze.total_params) {
    SY_LOG("train", "trainable parameters: ", freeze.trainable_params, " of ", freeze.total_params,
           " (", freeze.frozen.size(), " tensor(s) frozen on this rank",
           freeze.frozen_local_rows.empty()
               ? std::string()
               : str(", ", freeze.frozen_local_rows.size(), " frozen expert row(s) in the rest"),
           "); optimizer state not allocated on this rank: ", format_bytes(saved));
  }
  if (masters) {
    // Every parameter but the routers' (Note [Router precision]) is stored in bf16; the
    // optimizer keeps their fp32 values as masters.
    std::vector<std::string> names;
    for (const AdamWSlot& s : r.optimizer.slots()) {
      if (!is_router_parameter(s.name)) names.push_back(s.name);
    }
    in_phase("allocating the optimizer's fp32 master weights", kModelKeys, [&] {
      for (const std::string& name : names) r.optimizer.narrow_parameter(name, at::kBFloat16);
      return 0;
    });
  }

  r.moe_layers = r.model->moe_layers();
  r.model->set_activation_checkpointing(cfg.train.activation_checkpointing);
  if (cfg.train.activation_checkpointing != Recompute::kNone) {
    const bool ep_repeats = cfg.train.activation_checkpointing == Recompute::kBlock &&
                            groups.ep_size > 1 && !r.moe_layers.empty();
    SY_LOG("train", "activation checkpointing: ",
           cfg.train.activation_checkpointing == Recompute::kMoe
               ? "moe (the experts' hidden activations are recomputed in the backward)"
               : "block (every block's activations are recomputed in the backward)",
           ep_repeats ? "; the recomputed MoE layers repeat their forward all-to-alls" : "");
  }
  const int64_t num_moe = static_cast<int64_t>(r.moe_layers.size());
  // The positions the model processes: both halves of an encoder_decoder's rows.
  const int64_t row = cfg.model.block_size * (cfg.model.kind == ModelKind::kEncoderDecoder ? 2 : 1);
  r.tokens_per_step = cfg.data.batch_size * row * cfg.train.grad_accum * groups.world_size;
  SY_LOG("train", "model: ", choice_name(cfg.model.kind), ", ", vocab, " tokens vocabulary, ",
         cfg.model.n_layers,
         cfg.model.kind == ModelKind::kEncoderDecoder ? " layers per stack (" : " layers (",
         num_moe, " MoE, ", cfg.moe.num_experts, " experts, top-", cfg.moe.top_k, "), device ",
         r.is_cuda ? "cuda" : "cpu", ", ", groups.world_size, " rank(s), ep_size ", groups.ep_size);
  r.interval = IntervalStats::zeros(r.device, num_moe, cfg.moe.num_experts);
  if (cfg.train.warmup_steps > cfg.train.max_steps) {
    SY_LOG("train", "warning: train.warmup_steps (", cfg.train.warmup_steps,
           ") is longer than the run (train.max_steps ", cfg.train.max_steps,
           "): the learning rate never reaches train.lr");
  }
  r.end_step = cfg.train.stop_at_step > 0 ? std::min(cfg.train.stop_at_step, cfg.train.max_steps)
                                          : cfg.train.max_steps;
  return run;
}

void resume(Run& run, const std::string& resume_option) {
  const Config& cfg = run.cfg;
  std::string dir = resume_option;
  if (resume_option == "auto") {
    dir = latest_checkpoint(checkpoint_root(cfg));
    if (dir.empty()) {
      SY_LOG("train", "--resume auto: no complete checkpoint under ", checkpoint_root(cfg),
             ", starting from step 0");
    }
  }
  run.resumed_from = dir;
  if (!dir.empty()) {
    const LoadedCheckpoint ck = in_phase("loading the checkpoint " + dir, kModelKeys, [&] {
      return load_checkpoint(dir, cfg, run.corpus.tokenizer.get(), run.corpus.vocab_size,
                             *run.model, run.optimizer, run.groups, run.device);
    });
    run.start_step = ck.step;
    if (ck.has_rank_state) {
      restore_rank_state(run, ck.state);
    } else {
      // Another world size: weights, optimizer and step continue; each rank's data and noise
      // streams start afresh (seeded by rank and step), so the run is not bitwise the one saved.
      seed_streams(run, static_cast<uint64_t>(run.start_step));
      SY_LOG("train", "the checkpoint was written by ", ck.saved_world_size, " rank(s) (ep_size ",
             ck.saved_ep_size, "), this run has ", run.groups.world_size, " (ep_size ",
             run.groups.ep_size, "): experts resharded; data and dropout streams re-seeded");
    }
    SY_LOG("train", "resumed from ", dir, " at step ", run.start_step);
  }
  SY_CHECK(run.start_step <= cfg.train.max_steps, "train.max_steps (", cfg.train.max_steps,
           ") is below the step of the checkpoint resumed from (", run.start_step, ", ",
           run.resumed_from, "): raise train.max_steps to train on");
  SY_CHECK(run.start_step < run.end_step || run.start_step == cfg.train.max_steps,
           "train.stop_at_step (", cfg.train.stop_at_step, ") must be after the resumed step (",
           run.start_step, ")");
  run.result.start_step = run.start_step;
}

void open_run_folder(Run& run) {
  if (!run.writer) return;
  const std::string& out_dir = run.cfg.train.out_dir;
  make_directories(out_dir);
  std::ofstream(out_dir + "/config.yaml") << to_yaml(run.cfg);
  if (run.corpus.tokenizer) run.corpus.tokenizer->save(out_dir + "/vocab.json");
  const std::string metrics_path = out_dir + "/metrics.jsonl";
  run.metrics = !run.resumed_from.empty() ? MetricsWriter(metrics_path, run.start_step)
                                          : MetricsWriter(metrics_path);
  if (run.cfg.train.tensorboard) {
    run.tensorboard = std::make_unique<TfEventsWriter>(out_dir);
    SY_LOG("train", "TensorBoard events: ", run.tensorboard->path());
  }
}

bool eval_due(const Run& run, int64_t step) {
  return run.cfg.train.eval_interval > 0 && step % run.cfg.train.eval_interval == 0;
}

namespace {
int evaluate_losses(Run& run, int64_t steps_done);
}  // namespace

int evaluate(Run& run, int64_t steps_done) {
  return in_phase(str("evaluation at step ", steps_done),
                  std::string(kBatchKeys) + " (train.eval_iters batches)",
                  [&] { return evaluate_losses(run, steps_done); });
}

namespace {

// The signal that asked any rank to stop (the largest number, if several), or 0: one small
// all-reduce over the world, as the step's exchange carries it (Note [Clean stop on a signal]).
int stop_signal_of_any_rank(const Run& run) {
  if (run.groups.world_size == 1) return stop_signal();
  at::Tensor signal =
      at::full({1}, static_cast<float>(stop_signal()), at::TensorOptions().device(run.device));
  CollectiveLabel label("evaluation stop check");
  run.groups.world->all_reduce(signal, ReduceOp::kMax);
  return static_cast<int>(signal.item<float>());
}

int evaluate_losses(Run& run, int64_t steps_done) {
  const TrainConfig& tc = run.cfg.train;
  drain(run);
  if (tc.eval_interval <= 0 || tc.eval_iters <= 0) return 0;
  torch::NoGradGuard no_grad;
  run.model->eval();
  // Column 0: the run's data (without tasks), or task t in column t (data.tasks: every task is
  // evaluated on its own batches, weight 0 included).
  const TaskMixture* tasks = run.corpus.tasks;
  const int64_t columns = tasks != nullptr ? tasks->num_tasks() : 1;
  // Rows: train and val loss; with train.objective mlm also train and val accuracy (the share
  // of masked tokens whose most likely prediction is the original token); with model.kind
  // encoder_decoder the token accuracy and the exact-match rate (Note [Seq2seq batches]).
  const bool mlm = run.cfg.train.objective == Objective::kMlm;
  const bool seq2seq = run.cfg.model.kind == ModelKind::kEncoderDecoder;
  const int64_t rows = seq2seq ? 6 : mlm ? 4 : 2;
  at::Tensor sums = at::zeros({rows, columns}, torch::TensorOptions().device(run.device));
  for (int64_t i = 0; i < tc.eval_iters; ++i) {
    // A stop request ends the evaluation (every rank after the same batch): a preempted job's
    // grace period is for the checkpoint, not for train.eval_iters more batches.
    if (const int signal = stop_signal_of_any_rank(run); signal != 0) {
      run.model->train();
      SY_LOG("train", "evaluation at step ", steps_done, " ended after ", i, " of ", tc.eval_iters,
             " batches by ", stop_signal_name(signal), ": not logged");
      return signal;
    }
    for (int split = 0; split < 2; ++split) {
      for (int64_t t = 0; t < columns; ++t) {
        const Split which = split ? Split::kVal : Split::kTrain;
        const int64_t B = run.cfg.data.batch_size;
        Batch b = tasks != nullptr ? tasks->sample_task(t, which, B, run.streams.eval_rng)
                                   : run.corpus.dataset->sample(which, B, run.streams.eval_rng);
        b = objective_batch(run.cfg, run.corpus, std::move(b), run.streams.eval_rng);
        CudaAutocast autocast(run.bf16);
        const at::Tensor task = b.task.defined() ? b.task.to(run.device) : at::Tensor();
        const at::Tensor x = b.x.to(run.device), y = b.y.to(run.device);
        if (rows == 2) {
          sums[split][t] += run.model->loss(x, y, task).ce.detach();
          continue;
        }
        const at::Tensor logits = run.model->forward(x, nullptr, nullptr, task);
        sums[split][t] += token_cross_entropy(logits, y);
        const at::Tensor counted = y != kIgnoreTarget;  // [B, T]
        const at::Tensor right = (logits.argmax(-1) == y).logical_and(counted);
        sums[2 + split][t] +=
            right.sum().to(at::kFloat) / counted.sum().clamp_min(1).to(at::kFloat);
        if (seq2seq) {  // a row counts when none of its counted positions is wrong
          const at::Tensor exact = right.sum(1) == counted.sum(1);
          sums[4 + split][t] += exact.to(at::kFloat).mean();
        }
      }
    }
  }
  run.model->train();
  CollectiveLabel label("eval losses");
  run.groups.world->all_reduce(sums, ReduceOp::kSum);
  sums = (sums.to(at::kCPU) / static_cast<double>(tc.eval_iters * run.groups.world_size))
             .to(at::kDouble);
  // The run's losses: with tasks, the mean over the tasks weighted by their sampling weights.
  double train_l = 0, val_l = 0, train_acc = 0, val_acc = 0, train_exact = 0, val_exact = 0,
         weight_sum = 0;
  for (int64_t t = 0; t < columns; ++t) {
    const double w = tasks != nullptr ? run.cfg.data.tasks[static_cast<size_t>(t)].weight : 1.0;
    train_l += w * sums[0][t].item<double>();
    val_l += w * sums[1][t].item<double>();
    if (rows > 2) {
      train_acc += w * sums[2][t].item<double>();
      val_acc += w * sums[3][t].item<double>();
    }
    if (seq2seq) {
      train_exact += w * sums[4][t].item<double>();
      val_exact += w * sums[5][t].item<double>();
    }
    weight_sum += w;
  }
  train_l /= weight_sum;
  val_l /= weight_sum;
  train_acc /= weight_sum;
  val_acc /= weight_sum;
  train_exact /= weight_sum;
  val_exact /= weight_sum;
  run.result.val_loss.emplace_back(steps_done, val_l);
  if (rows > 2) run.result.val_accuracy = val_acc;
  if (seq2seq) run.result.val_exact_match = val_exact;
  JsonObject line;
  line.add("step", steps_done).add("eval_train_loss", train_l).add("val_loss", val_l);
  if (rows > 2) line.add("eval_train_accuracy", train_acc).add("val_accuracy", val_acc);
  if (seq2seq) line.add("eval_train_exact_match", train_exact).add("val_exact_match", val_exact);
  std::string per_task;
  run.result.task_val_loss.clear();
  for (int64_t t = 0; tasks != nullptr && t < columns; ++t) {
    const std::string& name = run.cfg.data.tasks[static_cast<size_t>(t)].name;
    const double task_train = sums[0][t].item<double>(), task_val = sums[1][t].item<double>();
    line.add("eval_train_loss." + name, task_train).add("val_loss." + name, task_val);
    per_task += str(per_task.empty() ? " | val per task: " : ", ", name, " ", task_val);
    run.result.task_val_loss.emplace_back(name, task_val);
    if (run.tensorboard) run.tensorboard->scalar("eval/val_loss/" + name, steps_done, task_val);
  }
  SY_LOG("eval", "step ", steps_done, " | train ", train_l, " | val ", val_l,
         mlm ? str(" | masked-token accuracy: train ", train_acc, ", val ", val_acc) : "",
         seq2seq ? str(" | token accuracy: train ", train_acc, ", val ", val_acc,
                       " | exact match: train ", train_exact, ", val ", val_exact)
                 : "",
         per_task);
  run.metrics.write(line);
  if (run.tensorboard) {
    run.tensorboard->scalar("eval/train_loss", steps_done, train_l);
    run.tensorboard->scalar("eval/val_loss", steps_done, val_l);
    if (rows > 2) run.tensorboard->scalar("eval/val_accuracy", steps_done, val_acc);
    if (seq2seq) run.tensorboard->scalar("eval/val_exact_match", steps_done, val_exact);
    run.tensorboard->flush();
  }
  return 0;
}

}  // namespace

void maybe_save(Run& run, int64_t steps_done) {
  const TrainConfig& tc = run.cfg.train;
  const bool interval_save = tc.checkpoint_interval > 0 && steps_done % tc.checkpoint_interval == 0;
  if (tc.checkpoint_interval < 0 || !(interval_save || steps_done == run.end_step)) return;
  const CheckpointSave req{checkpoint_root(run.cfg), steps_done, tc.keep_checkpoints,
                           run.cfg.debug.kill_in_save_step == steps_done};
  run.result.checkpoint =
      save_checkpoint(req, run.cfg, run.corpus.tokenizer.get(), run.corpus.vocab_size, *run.model,
                      run.optimizer, rank_state(run), run.groups, run.device);
  SY_LOG("checkpoint", "step ", steps_done, ": ", run.result.checkpoint);
}

// measure_dense_gemm_rate draws no numbers from the generators that a checkpoint saves.
void report_throughput(Run& run, int64_t steps_run, double steady_s) {
  if (steps_run <= 1) return;
  TrainResult& result = run.result;
  result.ms_per_step = 1000.0 * steady_s / static_cast<double>(steps_run - 1);
  result.tokens_per_s = static_cast<double>(run.tokens_per_step) * 1000.0 / result.ms_per_step;
  if (!run.is_cuda) return;
  const Config& cfg = run.cfg;
  result.peak_mib = static_cast<double>(peak_memory_bytes(run.device)) / (1 << 20);
  const GemmRate rate = measure_dense_gemm_rate(cfg, run.device);
  const double per_rank_tok_s = result.tokens_per_s / run.groups.world_size;
  const auto num_moe = static_cast<int64_t>(run.moe_layers.size());
  result.model_tflops =
      per_rank_tok_s * model_flops_per_token(cfg, run.corpus.vocab_size, num_moe) / 1e12;
  result.gemm_tflops = rate.tflops;
  result.mfu = result.model_tflops / rate.tflops;
  char line[320];
  std::snprintf(line, sizeof(line),
                "throughput: %.1f ms/step, %.0f tokens/s per rank, model %.1f TFLOP/s per rank; "
                "dense %s GEMM %ldx%ldx%ld %.1f TFLOP/s; MFU %.3f; peak memory %.0f MiB",
                result.ms_per_step, per_rank_tok_s, result.model_tflops,
                choice_name(cfg.train.dtype), static_cast<long>(rate.m), static_cast<long>(rate.k),
                static_cast<long>(rate.n), rate.tflops, result.mfu, result.peak_mib);
  SY_LOG("train", line);
}

void stop_on_signal(Run& run, int64_t steps_done, int signal) {
  const TrainConfig& tc = run.cfg.train;
  run.result.stop_signal = signal;
  const std::string name = stop_signal_name(signal);
  if (tc.checkpoint_interval < 0) {
    SY_LOG("train", "stopped by ", name, " at step ", steps_done, " of ", tc.max_steps,
           "; train.checkpoint_interval is -1, so there is no checkpoint to resume from");
    return;
  }
  const bool just_saved = tc.checkpoint_interval > 0 && steps_done % tc.checkpoint_interval == 0;
  if (!just_saved) {
    const CheckpointSave req{checkpoint_root(run.cfg), steps_done, tc.keep_checkpoints, false};
    run.result.checkpoint =
        save_checkpoint(req, run.cfg, run.corpus.tokenizer.get(), run.corpus.vocab_size, *run.model,
                        run.optimizer, rank_state(run), run.groups, run.device);
  }
  SY_LOG("train", "stopped by ", name, " at step ", steps_done, " of ", tc.max_steps,
         "; checkpoint ", run.result.checkpoint, "; resume with --resume auto");
}

void finish(Run& run, int64_t steps_done) {
  const TrainConfig& tc = run.cfg.train;
  run.result.steps = steps_done;
  drain(run);
  if (steps_done == tc.max_steps) {
    // Ended by a signal, the run stops as one stopped by a signal does: the checkpoint of the last
    // step is there, and --resume auto runs the final evaluation.
    if (const int signal = evaluate(run, tc.max_steps); signal != 0) {
      run.result.stop_signal = signal;
      SY_LOG("train", "the final evaluation was ended by ", stop_signal_name(signal),
             "; resume with --resume auto to run it");
    }
  } else if (run.result.stop_signal == 0) {
    SY_LOG("train", "stopped after step ", steps_done, " of ", tc.max_steps,
           " (train.stop_at_step); continue with --resume auto");
  }
  if (tc.checkpoint_interval >= 0) {
    save_model(tc.out_dir + "/model.pt", *run.model, run.groups);
  } else {
    SY_LOG("train", "train.checkpoint_interval is -1: no checkpoint and no model.pt written");
  }
  SY_LOG("train", "done: ", steps_done - run.start_step, " steps, ", run.result.ms_per_step,
         " ms/step; run folder ", tc.out_dir);
}

void drain(const Run& run) {
  if (run.is_cuda) torch::cuda::synchronize();
}

}  // namespace sy
