// The training loop. Note [No host sync in the step]: losses and router statistics stay on the
// device between log lines; one all-reduce and one copy to the host per log interval.
#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>

#include <torch/torch.h>
#ifdef SWITCHYARD_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

#include "common/log.h"
#include "data/dataset.h"
#include "model/gpt.h"
#include "moe/init.h"
#include "common/files.h"
#include "common/device_timing.h"
#include "train/autocast.h"
#include "train/throughput.h"
#include "train/checkpoint.h"
#include "parallel/watchdog.h"
#include "train/faults.h"
#include "train/grad_sync.h"
#include "train/metrics.h"
#include "train/model_io.h"
#include "train/optimizer.h"
#include "train/schedule.h"
#include "train/step_graph.h"

namespace sy {

std::string resolve_device(const std::string& requested) {
  const bool has_cuda = torch::cuda::is_available();
  if (requested == "auto") return has_cuda ? "cuda" : "cpu";
  SY_CHECK(requested != "cuda" || has_cuda,
           "train.device is 'cuda' but no CUDA device is available to this build (LibTorch ",
           TORCH_VERSION, has_cuda ? "" : ", CPU only or no GPU visible", "); use cpu or auto");
  return requested;
}

c10::Device current_cuda_device() {
#ifdef SWITCHYARD_CUDA
  // The launcher picked this rank's GPU (apps/switchyard.cpp: device = node-local rank).
  return torch::Device(torch::kCUDA, c10::cuda::current_device());
#else
  SY_THROW("this build of Switchyard has no CUDA support (LibTorch ", TORCH_VERSION, " is CPU only)");
#endif
}

namespace {

constexpr uint64_t kSyntheticSeed = 0x5717C4;  // fixed: every run sees the same default corpus

// The training data: a character vocabulary and its tokenized text, or token ids (a file or
// random), whose vocabulary is model.vocab_size ids and which have no tokenizer.
struct Corpus {
  std::unique_ptr<CharTokenizer> tokenizer;  // text runs only
  int64_t vocab_size = 0;
  std::unique_ptr<TokenSource> dataset;
};

Corpus load_corpus(const Config& cfg) {
  Corpus c;
  const auto& d = cfg.data;
  if (d.format == "uint16" || d.format == "uint32") {
    c.vocab_size = cfg.model.vocab_size;
    c.dataset = open_token_file(d.path, d.val_path, d.format == "uint16" ? 2 : 4, d.val_fraction,
                                cfg.model.block_size, c.vocab_size);
    return c;
  }
  if (d.format == "random") {
    c.vocab_size = cfg.model.vocab_size;
    c.dataset = random_tokens(c.vocab_size, cfg.model.block_size);
    return c;
  }
  const bool synthetic = d.path.empty();
  const std::string text = synthetic ? synthetic_corpus(kSyntheticSeed, d.synthetic_chars)
                                     : read_text_file(d.path);
  const std::string source = synthetic ? "synthetic corpus" : "data file '" + d.path + "'";
  c.tokenizer = std::make_unique<CharTokenizer>(CharTokenizer::from_text(text));
  c.vocab_size = c.tokenizer->vocab_size();
  SY_CHECK(cfg.model.vocab_size == 0 || cfg.model.vocab_size == c.vocab_size, "model.vocab_size (",
           cfg.model.vocab_size, ") differs from the data's vocabulary (", c.vocab_size, ")");
  c.dataset = std::make_unique<TokenDataset>(c.tokenizer->encode(text), d.val_fraction,
                                             cfg.model.block_size, source);
  return c;
}

std::string format_duration(double seconds) {
  const auto s = static_cast<int64_t>(std::max(0.0, seconds));
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof(buf), "%ldh%02ldm", s / 3600, (s % 3600) / 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%ldm%02lds", s / 60, s % 60);
  }
  return buf;
}

// Sums over the interval, on the device; reduced and read at log time.
struct IntervalStats {
  at::Tensor ce, aux, z;  // [] sums over micro-batches
  at::Tensor dropped;     // [] choices dropped
  at::Tensor load;        // [num_moe_layers, E] choices per expert
  int64_t micro_batches = 0, choices = 0, steps = 0;
  double seconds = 0;  // training time (evaluation excluded)

  // What a checkpoint's RankState carries of the interval, by key: one table for save and load.
  std::vector<std::pair<const char*, at::Tensor*>> saved_tensors() {
    return {{"interval_ce", &ce}, {"interval_aux", &aux}, {"interval_z", &z},
            {"interval_dropped", &dropped}, {"interval_load", &load}};
  }
  std::vector<std::pair<const char*, int64_t*>> saved_ints() {
    return {{"interval_micro_batches", &micro_batches}, {"interval_choices", &choices},
            {"interval_steps", &steps}};
  }
};

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

namespace {

// The rank's data streams, dropout/noise generators and the partial log interval: what a
// checkpoint needs besides weights and optimizer state to continue bitwise.
struct RankStreams {
  std::mt19937_64 train_rng, eval_rng;
  at::Generator gen;
};

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

}  // namespace

namespace {

// train.tf32 for the run, and the process's setting back afterwards (tests train several runs).
class Tf32Scope {
 public:
  explicit Tf32Scope(bool on) : previous_(at::globalContext().allowTF32CuBLAS()) {
    at::globalContext().setAllowTF32CuBLAS(on);
  }
  ~Tf32Scope() { at::globalContext().setAllowTF32CuBLAS(previous_); }
  Tf32Scope(const Tf32Scope&) = delete;
  Tf32Scope& operator=(const Tf32Scope&) = delete;

 private:
  bool previous_;
};

}  // namespace

TrainResult train(const Config& cfg, const ParallelGroups& groups, const TrainOptions& options) {
  const std::string device_name = resolve_device(cfg.train.device);
  const bool is_cuda = device_name == "cuda";
  SY_CHECK(cfg.train.dtype == "fp32" || is_cuda,
           "train.dtype 'bf16' needs train.device cuda (autocast runs on CUDA only)");
  const torch::Device device = is_cuda ? current_cuda_device() : torch::Device(torch::kCPU);
  const bool bf16 = cfg.train.dtype == "bf16";
  const bool writer = groups.world_rank == 0;
  const auto seed = static_cast<uint64_t>(cfg.train.seed);
  const Tf32Scope tf32(cfg.train.tf32 && is_cuda);
  const auto& tc = cfg.train;

  Corpus corpus = load_corpus(cfg);
  const int64_t vocab = corpus.vocab_size;

  // Which checkpoint to continue from, decided before anything is written to the run folder.
  std::string resume_dir;
  if (options.resume == "auto") {
    resume_dir = latest_checkpoint(checkpoint_root(cfg));
    if (resume_dir.empty()) {
      SY_LOG("train", "--resume auto: no complete checkpoint under ", checkpoint_root(cfg),
             ", starting from step 0");
    }
  } else {
    resume_dir = options.resume;
  }

  GPT model(cfg.model, cfg.moe, vocab, groups.ep, seed);
  model->to(device);
  // Each rank draws its own data, dropout and routing noise (Note [Groups]: ranks read
  // different data); CUDA ops use the device generator, seeded per rank.
  RankStreams rs{std::mt19937_64(mix_seed(seed, 0xB1, groups.world_rank)),
                 std::mt19937_64(mix_seed(seed, 0xE1, groups.world_rank)),
                 make_cpu_generator(mix_seed(seed, 0xA1, groups.world_rank))};
  model->set_generator(&rs.gen);
  if (is_cuda) torch::cuda::manual_seed(mix_seed(seed, 0xC0, groups.world_rank));

  ParamSet params;
  AdamW optimizer(tc.beta1, tc.beta2);
  for (const auto& item : model->named_parameters()) {
    (is_expert_parameter(item.key()) ? params.expert : params.dense).push_back(item.value());
    // Weight decay for matrices only (not biases, norms or experts' bias rows).
    const bool is_bias = item.value().dim() < 2 || item.key().find("b1") != std::string::npos ||
                         item.key().find("b2") != std::string::npos ||
                         item.key().find("bias") != std::string::npos;
    optimizer.add(item.key(), item.value(), is_bias ? 0.0 : tc.weight_decay);
  }

  if (tc.param_dtype == "bf16") {
    // Every parameter but the routers' (Note [Router precision]) is stored in bf16; the
    // optimizer keeps their fp32 values as masters.
    std::vector<std::string> names;
    for (const AdamWSlot& s : optimizer.slots()) {
      if (!is_router_parameter(s.name)) names.push_back(s.name);
    }
    for (const std::string& name : names) optimizer.narrow_parameter(name, at::kBFloat16);
  }

  auto moe_layers = model->moe_layers();
  const int64_t num_moe = static_cast<int64_t>(moe_layers.size());
  const int64_t tokens_per_step = cfg.data.batch_size * cfg.model.block_size *
                                  tc.grad_accum * groups.world_size;
  SY_LOG("train", "model: ", vocab, " tokens vocabulary, ", cfg.model.n_layers, " layers (",
         num_moe, " MoE, ", cfg.moe.num_experts, " experts, top-", cfg.moe.top_k, "), device ",
         device_name, ", ", groups.world_size, " rank(s), ep_size ", groups.ep_size);

  IntervalStats st;
  auto reset_stats = [&]() {
    auto opts = torch::TensorOptions().device(device);
    st = IntervalStats{at::zeros({}, opts), at::zeros({}, opts), at::zeros({}, opts),
                       at::zeros({}, opts.dtype(at::kLong)),
                       at::zeros({num_moe, cfg.moe.num_experts}, opts.dtype(at::kLong))};
  };
  reset_stats();
  int64_t skipped = 0;  // steps skipped for non-finite values (train.skip_nonfinite)

  int64_t start_step = 0;
  if (!resume_dir.empty()) {
    const LoadedCheckpoint ck = load_checkpoint(resume_dir, cfg, corpus.tokenizer.get(), vocab,
                                                *model, optimizer, groups, device);
    start_step = ck.step;
    if (ck.has_rank_state) {
      const RankState& s = ck.state;
      rng_from_text(rs.train_rng, s.text.at("train_rng"), "the data sampler");
      rng_from_text(rs.eval_rng, s.text.at("eval_rng"), "the evaluation sampler");
      rs.gen.set_state(s.tensors.at("cpu_generator"));
      if (is_cuda && s.tensors.count("cuda_generator")) {
        at::Generator cuda_gen = at::globalContext().defaultGenerator(device);  // a handle
        cuda_gen.set_state(s.tensors.at("cuda_generator"));
      }
      for (auto& [key, t] : st.saved_tensors()) t->copy_(s.tensors.at(key));
      for (auto& [key, v] : st.saved_ints()) *v = s.ints.at(key);
      skipped = s.ints.at("skipped_nonfinite");
    } else {
      // Another world size: weights, optimizer and step continue; each rank's data and noise
      // streams start afresh (seeded by rank and step), so the run is not bitwise the one saved.
      rs.train_rng.seed(mix_seed(seed, 0xB1, groups.world_rank, static_cast<uint64_t>(start_step)));
      rs.eval_rng.seed(mix_seed(seed, 0xE1, groups.world_rank, static_cast<uint64_t>(start_step)));
      rs.gen = make_cpu_generator(mix_seed(seed, 0xA1, groups.world_rank, static_cast<uint64_t>(start_step)));
      if (is_cuda) torch::cuda::manual_seed(mix_seed(seed, 0xC0, groups.world_rank, static_cast<uint64_t>(start_step)));
      SY_LOG("train", "the checkpoint was written by ", ck.saved_world_size, " rank(s) (ep_size ",
             ck.saved_ep_size, "), this run has ", groups.world_size, " (ep_size ", groups.ep_size,
             "): experts resharded; data and dropout streams re-seeded");
    }
    SY_LOG("train", "resumed from ", resume_dir, " at step ", start_step);
  }
  const int64_t end_step = tc.stop_at_step > 0 ? std::min(tc.stop_at_step, tc.max_steps) : tc.max_steps;
  SY_CHECK(start_step < end_step || start_step == tc.max_steps, "train.stop_at_step (",
           tc.stop_at_step, ") must be after the resumed step (", start_step, ")");

  MetricsWriter metrics;
  if (writer) {
    make_directories(tc.out_dir);
    std::ofstream(tc.out_dir + "/config.yaml") << to_yaml(cfg);
    if (corpus.tokenizer) corpus.tokenizer->save(tc.out_dir + "/vocab.json");
    const std::string metrics_path = tc.out_dir + "/metrics.jsonl";
    metrics = resume_dir.empty() ? MetricsWriter(metrics_path) : MetricsWriter(metrics_path, start_step);
  }

  auto rank_state = [&]() {
    RankState s;
    s.text["train_rng"] = rng_text(rs.train_rng);
    s.text["eval_rng"] = rng_text(rs.eval_rng);
    s.tensors["cpu_generator"] = rs.gen.get_state();
    if (is_cuda) s.tensors["cuda_generator"] = at::globalContext().defaultGenerator(device).get_state();
    for (auto& [key, t] : st.saved_tensors()) s.tensors[key] = *t;
    for (auto& [key, v] : st.saved_ints()) s.ints[key] = *v;
    s.ints["skipped_nonfinite"] = skipped;
    return s;
  };
  TrainResult result;
  result.start_step = start_step;
  auto save = [&](int64_t steps_done) {
    CheckpointSave req{checkpoint_root(cfg), steps_done, tc.keep_checkpoints,
                       cfg.debug.kill_in_save_step == steps_done};
    result.checkpoint = save_checkpoint(req, cfg, corpus.tokenizer.get(), vocab, *model, optimizer,
                                        rank_state(), groups, device);
    SY_LOG("checkpoint", "step ", steps_done, ": ", result.checkpoint);
  };

  auto evaluate = [&](int64_t step) {
    if (tc.eval_interval <= 0 || tc.eval_iters <= 0) return;
    torch::NoGradGuard no_grad;
    model->eval();
    at::Tensor sums = at::zeros({2}, torch::TensorOptions().device(device));  // train, val
    for (int64_t i = 0; i < tc.eval_iters; ++i) {
      for (int split = 0; split < 2; ++split) {
        Batch b = corpus.dataset->sample(split ? Split::kVal : Split::kTrain, cfg.data.batch_size, rs.eval_rng);
        CudaAutocast autocast(bf16);
        sums[split] += model->loss(b.x.to(device), b.y.to(device)).ce.detach();
      }
    }
    model->train();
    CollectiveLabel label("eval losses");
    groups.world->all_reduce(sums, ReduceOp::kSum);
    sums = sums.to(at::kCPU) / static_cast<double>(tc.eval_iters * groups.world_size);
    const double train_l = sums[0].item<double>(), val_l = sums[1].item<double>();
    result.val_loss.emplace_back(step, val_l);
    SY_LOG("eval", "step ", step, " | train ", train_l, " | val ", val_l);
    metrics.write(JsonObject().add("step", step).add("eval_train_loss", train_l).add("val_loss", val_l));
  };

  // Step time excludes evaluation and the first step of the process (allocator and kernel
  // warm-up); CUDA work is drained before each clock read so asynchronous kernels are charged to
  // the right side.
  auto drain = [&]() {
    if (is_cuda) torch::cuda::synchronize();
  };
  const auto fopts = torch::TensorOptions().device(device);
  double steady_s = 0;
  at::Tensor grad_norm;
  // The throughput of the run (steps after its first), reported before the final checkpoint so
  // that a slow save does not hold it back; measure_dense_gemm_rate draws no numbers from the
  // generators that a checkpoint saves.
  auto report_throughput = [&](int64_t steps_run) {
    if (steps_run > 1) {
      result.ms_per_step = 1000.0 * steady_s / static_cast<double>(steps_run - 1);
      result.tokens_per_s = static_cast<double>(tokens_per_step) * 1000.0 / result.ms_per_step;
      if (is_cuda) {
        result.peak_mib = static_cast<double>(peak_memory_bytes(device)) / (1 << 20);
        const GemmRate rate = measure_dense_gemm_rate(cfg, device);
        const double per_rank_tok_s = result.tokens_per_s / groups.world_size;
        result.model_tflops = per_rank_tok_s * model_flops_per_token(cfg, vocab, num_moe) / 1e12;
        result.gemm_tflops = rate.tflops;
        result.mfu = result.model_tflops / rate.tflops;
        char line[320];
        std::snprintf(line, sizeof(line),
                      "throughput: %.1f ms/step, %.0f tokens/s per rank, model %.1f TFLOP/s per rank; "
                      "dense %s GEMM %ldx%ldx%ld %.1f TFLOP/s; MFU %.3f; peak memory %.0f MiB",
                      result.ms_per_step, per_rank_tok_s, result.model_tflops, cfg.train.dtype.c_str(),
                      static_cast<long>(rate.m), static_cast<long>(rate.k), static_cast<long>(rate.n), rate.tflops,
                      result.mfu, result.peak_mib);
        SY_LOG("train", line);
      }
    }
  };

  // Note [CUDA graph step]: with train.cuda_graph on a CUDA device, the step's device work
  // (device_step below: forward and backward of every micro-batch, gradient sync, norm, the
  // non-finite flags) is captured as one CUDA graph at the second step and replayed from then
  // on, which removes the per-kernel launch cost of a small model. The first step runs eagerly on
  // the graph's stream (warm-up). Between replays the host copies the next batches into the
  // graph's input tensors, reads the flags, and runs the optimizer eagerly; the gradients and
  // step sums are tensors the graph writes in place, so nothing may reassign them (no zero_grad
  // once captured: every replay overwrites the gradients). Needs static shapes and no host sync
  // in the step: one rank, MoE layers in capacity mode or with the grouped GEMM.
  const bool use_graph = tc.cuda_graph && is_cuda;
  if (tc.cuda_graph && !is_cuda) SY_LOG("train", "train.cuda_graph has no effect on the CPU");
  SY_CHECK(!use_graph || groups.world_size == 1, "train.cuda_graph captures the step of one rank; "
           "this run has ", groups.world_size, " ranks (graphs over collectives are not "
           "implemented): set train.cuda_graph false");
  std::unique_ptr<StepGraph> graph;
  if (use_graph) graph = std::make_unique<StepGraph>(device);

  // debug.nan_step: the loss is multiplied by this device scalar, 1 except at that step (a device
  // tensor, so that a captured step sees it change).
  const bool gate_loss = cfg.debug.nan_step >= 0 && groups.world_rank == cfg.debug.nan_rank;
  const at::Tensor loss_gate = gate_loss ? at::ones({}, fopts) : at::Tensor();

  // The device work of one step. xs, ys: [grad_accum, batch, block] token ids on the device.
  struct StepOutput {
    at::Tensor loss, ce, aux, z, dropped, load;  // the step's sums (load: [num_moe, E])
    at::Tensor flags;                            // [2]: loss, gradient norm not finite (this rank)
    at::Tensor grad_norm;
    int64_t choices = 0;
  };
  auto device_step = [&](const at::Tensor& xs, const at::Tensor& ys) {
    StepOutput o;
    auto add = [](at::Tensor& sum, const at::Tensor& v) { sum = sum.defined() ? sum + v : v; };
    for (int64_t micro = 0; micro < tc.grad_accum; ++micro) {
      LossOutput out;
      {
        CudaAutocast autocast(bf16);
        out = model->loss(xs[micro], ys[micro]);
      }
      if (gate_loss) out.loss = out.loss * loss_gate;
      (out.loss / static_cast<double>(tc.grad_accum)).backward();
      add(o.loss, out.loss.detach());
      add(o.ce, out.ce.detach());
      add(o.aux, out.aux.detach());
      add(o.z, out.z.detach());
      if (num_moe > 0) {
        std::vector<at::Tensor> loads, dropped;
        for (const auto& layer : moe_layers) {
          const MoeStats& ms = layer->last_stats();
          loads.push_back(ms.tokens_per_expert);
          dropped.push_back(ms.dropped);
          o.choices += ms.num_choices;
        }
        add(o.load, at::stack(loads));
        add(o.dropped, at::stack(dropped).sum());
      }
    }
    if (num_moe == 0) {
      o.load = at::zeros({0, cfg.moe.num_experts}, fopts.dtype(at::kLong));
      o.dropped = at::zeros({}, fopts.dtype(at::kLong));
    }
    sync_gradients(params, groups);
    o.grad_norm = clip_grad_norm(params, groups, tc.grad_clip);
    o.flags = at::stack({at::isfinite(o.loss).logical_not(), at::isfinite(o.grad_norm).logical_not()})
                  .to(at::kFloat);
    return o;
  };
  at::Tensor graph_x, graph_y;  // the captured step's inputs
  StepOutput graph_out;         // ... and outputs

  model->train();
  int64_t step = start_step;
  for (; step < end_step; ++step) {
    if (tc.eval_interval > 0 && step % tc.eval_interval == 0) {
      drain();
      evaluate(step);
    }
    if (groups.context) groups.context->set_step(step);
    inject_faults_before_step(cfg.debug, groups.world_rank, step);
    const auto step_start = std::chrono::steady_clock::now();
    const double lr = learning_rate(tc, step);
    if (gate_loss) loss_gate.fill_(step == cfg.debug.nan_step ? std::numeric_limits<double>::quiet_NaN() : 1.0);
    at::Tensor xs, ys;
    {
      std::vector<at::Tensor> x_parts, y_parts;
      for (int64_t micro = 0; micro < tc.grad_accum; ++micro) {
        Batch b = corpus.dataset->sample(Split::kTrain, cfg.data.batch_size, rs.train_rng);
        x_parts.push_back(b.x);
        y_parts.push_back(b.y);
      }
      xs = at::stack(x_parts);
      ys = at::stack(y_parts);
    }
    StepOutput o;
    if (!graph) {
      optimizer.zero_grad();
      o = device_step(xs.to(device), ys.to(device));
    } else {
      if (!graph_x.defined()) {
        graph_x = at::empty_like(xs, fopts.dtype(xs.scalar_type()));
        graph_y = at::empty_like(ys, fopts.dtype(ys.scalar_type()));
      }
      graph_x.copy_(xs);
      graph_y.copy_(ys);
      if (step == start_step) {
        optimizer.zero_grad();
        o = device_step(graph_x, graph_y);  // eager warm-up
      } else {
        if (!graph->captured()) {
          optimizer.zero_grad();  // the capture's backward allocates the gradients it will write
          graph->capture([&]() { graph_out = device_step(graph_x, graph_y); });
          // Its first replay, timed on the GPU: the part of the step the graph holds.
          DeviceTimer timer(device);
          timer.start();
          graph->replay();
          timer.stop();
          SY_LOG("train", "step ", step + 1, ": captured the step as a CUDA graph (train.cuda_graph); "
                 "a replay takes ", 1000.0 * timer.seconds(), " ms on the GPU");
        } else {
          graph->replay();
        }
        o = graph_out;
      }
    }
    grad_norm = o.grad_norm;
    // Note [Non-finite steps]: one small all-reduce per step tells every rank whether any rank's
    // loss or the (global) gradient norm is NaN/Inf, so all ranks skip or stop together.
    at::Tensor flags = o.flags;
    if (groups.world_size > 1) {
      flags = at::zeros({2 * groups.world_size}, fopts);
      flags.narrow(0, 2 * groups.world_rank, 2).copy_(o.flags);
      CollectiveLabel label("non-finite check");
      groups.world->all_reduce(flags, ReduceOp::kSum);
    }
    flags = flags.to(at::kCPU);
    const float* flag = flags.data_ptr<float>();
    std::string bad_loss_ranks;
    bool bad_norm = false;
    for (int r = 0; r < groups.world_size; ++r) {
      if (flag[2 * r] > 0) bad_loss_ranks += (bad_loss_ranks.empty() ? "" : ", ") + std::to_string(r);
      bad_norm = bad_norm || flag[2 * r + 1] > 0;
    }
    if (!bad_loss_ranks.empty() || bad_norm) {
      std::string what;
      if (!bad_loss_ranks.empty()) {
        what = "the loss is NaN or Inf on rank(s) " + bad_loss_ranks;
      } else {
        what = "the gradient norm is NaN or Inf";
        for (const AdamWSlot& s : optimizer.slots()) {
          if (s.param.grad().defined() && !at::isfinite(s.param.grad()).all().item<bool>()) {
            what += " (first non-finite gradient on this rank: '" + s.name + "')";
            break;
          }
        }
      }
      SY_CHECK(skipped < tc.skip_nonfinite, "step ", step + 1, ": ", what, "; stopping (",
               skipped, " step(s) skipped so far, train.skip_nonfinite is ", tc.skip_nonfinite,
               "). No checkpoint was written for this step",
               result.checkpoint.empty() ? std::string() : "; the last one is " + result.checkpoint);
      ++skipped;
      if (!graph) optimizer.zero_grad();  // a captured step overwrites its gradients anyway
      SY_LOG("train", "step ", step + 1, ": ", what, "; step skipped (", skipped, " of at most ",
             tc.skip_nonfinite, ")");
      metrics.write(JsonObject().add("step", step + 1).add("skipped_nonfinite", skipped));
    } else {
      optimizer.step(lr);
      st.ce += o.ce;
      st.aux += o.aux;
      st.z += o.z;
      st.dropped += o.dropped;
      st.load += o.load;
      st.choices += o.choices;
      st.micro_batches += tc.grad_accum;
      ++st.steps;
    }
    const bool first_step = step == start_step;
    const bool timed_sync = first_step || step + 1 == end_step ||
                            (tc.eval_interval > 0 && (step + 1) % tc.eval_interval == 0);
    if (timed_sync) drain();
    const double step_s = seconds_since(step_start);
    st.seconds += step_s;
    if (!first_step) steady_s += step_s;

    const bool last = step + 1 == tc.max_steps;
    if (((step + 1) % tc.log_interval == 0 || last) && st.micro_batches > 0) {
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
      const double all_choices = static_cast<double>(st.choices * groups.world_size);
      const double drop = all_choices > 0 ? v[3] / all_choices : 0.0;
      std::vector<std::vector<double>> expert_load(num_moe);
      for (int64_t l = 0; l < num_moe; ++l) {
        double total = 0;
        for (int64_t e = 0; e < cfg.moe.num_experts; ++e) total += v[4 + l * cfg.moe.num_experts + e];
        for (int64_t e = 0; e < cfg.moe.num_experts; ++e) {
          expert_load[l].push_back(total > 0 ? v[4 + l * cfg.moe.num_experts + e] / total : 0.0);
        }
      }
      const double norm = grad_norm.item<double>();
      // The copy above drained the device: re-time the last step up to now.
      const double synced_s = seconds_since(step_start);
      const double interval_s = st.seconds - step_s + synced_s;
      if (!first_step) steady_s += synced_s - step_s;
      const double ms_step = 1000.0 * interval_s / static_cast<double>(std::max<int64_t>(1, st.steps));
      const double tok_s = static_cast<double>(tokens_per_step * st.steps) / interval_s;
      const double eta = ms_step * static_cast<double>(end_step - step - 1) / 1000.0;
      result.train_loss.emplace_back(step + 1, ce_mean);  // steps done, as metrics.jsonl and val_loss
      char line[256];
      std::snprintf(line, sizeof(line),
                    "step %6ld/%ld | loss %.4f | aux %.3f | z %.3f | drop %5.2f%% | gnorm %.3f | "
                    "lr %.2e | %.0f tok/s | %.1f ms/step | ETA %s",
                    static_cast<long>(step + 1), static_cast<long>(tc.max_steps), ce_mean, aux_mean,
                    z_mean, 100.0 * drop, norm, lr, tok_s, ms_step, format_duration(eta).c_str());
      SY_LOG("train", line);
      metrics.write(JsonObject()
                        .add("step", step + 1)
                        .add("train_loss", ce_mean)
                        .add("aux_loss", aux_mean)
                        .add("z_loss", z_mean)
                        .add("drop_fraction", drop)
                        .add("grad_norm", norm)
                        .add("lr", lr)
                        .add("tokens_per_s", tok_s)
                        .add("ms_per_step", ms_step)
                        .add("expert_load", expert_load));
      reset_stats();
    }
    // After the log line, so that a checkpoint on a log step carries an empty interval and one
    // between log steps carries the partial one (Note [Checkpoint layout]: RankState).
    const bool interval_save = tc.checkpoint_interval > 0 && (step + 1) % tc.checkpoint_interval == 0;
    if (step + 1 == end_step) report_throughput(step + 1 - start_step);
    if (tc.checkpoint_interval >= 0 && (interval_save || step + 1 == end_step)) save(step + 1);
  }
  const int64_t steps_run = step - start_step;
  result.steps = step;
  drain();
  if (step == tc.max_steps) {
    evaluate(tc.max_steps);
  } else {
    SY_LOG("train", "stopped after step ", step, " of ", tc.max_steps, " (train.stop_at_step); ",
           "continue with --resume auto");
  }
  if (tc.checkpoint_interval >= 0) {
    save_model(tc.out_dir + "/model.pt", *model, groups);
  } else {
    SY_LOG("train", "train.checkpoint_interval is -1: no checkpoint and no model.pt written");
  }
  SY_LOG("train", "done: ", steps_run, " steps, ", result.ms_per_step, " ms/step; run folder ",
         tc.out_dir);
  return result;
}

}  // namespace sy
