// The training loop. Note [No host sync in the step]: losses and router statistics stay on the
// device between log lines; one all-reduce and one copy to the host per log interval.
#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include <torch/torch.h>
#ifdef SWITCHYARD_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

#include "common/log.h"
#include "data/dataset.h"
#include "model/gpt.h"
#include "moe/init.h"
#include "train/autocast.h"
#include "train/grad_sync.h"
#include "train/metrics.h"
#include "train/model_io.h"
#include "train/schedule.h"

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

struct Corpus {
  CharTokenizer tokenizer;
  std::unique_ptr<TokenDataset> dataset;
};

Corpus load_corpus(const Config& cfg) {
  const bool synthetic = cfg.data.path.empty();
  const std::string text = synthetic ? synthetic_corpus(kSyntheticSeed, cfg.data.synthetic_chars)
                                     : read_text_file(cfg.data.path);
  const std::string source = synthetic ? "synthetic corpus" : "data file '" + cfg.data.path + "'";
  Corpus c;
  c.tokenizer = CharTokenizer::from_text(text);
  c.dataset = std::make_unique<TokenDataset>(c.tokenizer.encode(text), cfg.data.val_fraction,
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
};

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

TrainResult train(const Config& cfg, const ParallelGroups& groups) {
  const std::string device_name = resolve_device(cfg.train.device);
  const bool is_cuda = device_name == "cuda";
  SY_CHECK(cfg.train.dtype == "fp32" || is_cuda,
           "train.dtype 'bf16' needs train.device cuda (autocast runs on CUDA only)");
  const torch::Device device = is_cuda ? current_cuda_device() : torch::Device(torch::kCPU);
  const bool bf16 = cfg.train.dtype == "bf16";
  const bool writer = groups.world_rank == 0;
  const auto seed = static_cast<uint64_t>(cfg.train.seed);

  Corpus corpus = load_corpus(cfg);
  const int64_t vocab = corpus.tokenizer.vocab_size();
  SY_CHECK(cfg.model.vocab_size == 0 || cfg.model.vocab_size == vocab, "model.vocab_size (",
           cfg.model.vocab_size, ") differs from the data's vocabulary (", vocab, ")");

  MetricsWriter metrics;
  if (writer) {
    std::filesystem::create_directories(cfg.train.out_dir);
    std::ofstream(cfg.train.out_dir + "/config.yaml") << to_yaml(cfg);
    corpus.tokenizer.save(cfg.train.out_dir + "/vocab.json");
    metrics = MetricsWriter(cfg.train.out_dir + "/metrics.jsonl");
  }

  GPT model(cfg.model, cfg.moe, vocab, groups.ep, seed);
  model->to(device);
  // Each rank draws its own data, dropout and routing noise (Note [Groups]: ranks read
  // different data); CUDA ops use the device generator, seeded per rank.
  at::Generator gen = make_cpu_generator(mix_seed(seed, 0xA1, groups.world_rank));
  model->set_generator(&gen);
  if (is_cuda) torch::cuda::manual_seed(mix_seed(seed, 0xC0, groups.world_rank));
  std::mt19937_64 train_rng(mix_seed(seed, 0xB1, groups.world_rank));
  std::mt19937_64 eval_rng(mix_seed(seed, 0xE1, groups.world_rank));

  ParamSet params;
  std::vector<at::Tensor> decay, no_decay;
  for (const auto& item : model->named_parameters()) {
    (is_expert_parameter(item.key()) ? params.expert : params.dense).push_back(item.value());
    const bool is_bias = item.value().dim() < 2 || item.key().find("b1") != std::string::npos ||
                         item.key().find("b2") != std::string::npos ||
                         item.key().find("bias") != std::string::npos;
    (is_bias ? no_decay : decay).push_back(item.value());
  }
  auto adam = [&](double wd) {
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(cfg.train.lr).betas({cfg.train.beta1, cfg.train.beta2}).weight_decay(wd));
  };
  std::vector<torch::optim::OptimizerParamGroup> param_groups;
  param_groups.emplace_back(decay, adam(cfg.train.weight_decay));
  param_groups.emplace_back(no_decay, adam(0.0));
  torch::optim::AdamW optimizer(param_groups, torch::optim::AdamWOptions(cfg.train.lr));

  auto moe_layers = model->moe_layers();
  const int64_t num_moe = static_cast<int64_t>(moe_layers.size());
  const int64_t tokens_per_step = cfg.data.batch_size * cfg.model.block_size *
                                  cfg.train.grad_accum * groups.world_size;
  SY_LOG("train", "model: ", vocab, " tokens vocabulary, ", cfg.model.n_layers, " layers (",
         num_moe, " MoE, ", cfg.moe.num_experts, " experts, top-", cfg.moe.top_k, "), device ",
         device_name, ", ", groups.world_size, " rank(s), ep_size ", groups.ep_size);

  TrainResult result;
  auto evaluate = [&](int64_t step) {
    if (cfg.train.eval_interval <= 0 || cfg.train.eval_iters <= 0) return;
    torch::NoGradGuard no_grad;
    model->eval();
    at::Tensor sums = at::zeros({2}, torch::TensorOptions().device(device));  // train, val
    for (int64_t i = 0; i < cfg.train.eval_iters; ++i) {
      for (int split = 0; split < 2; ++split) {
        Batch b = corpus.dataset->sample(split ? Split::kVal : Split::kTrain, cfg.data.batch_size, eval_rng);
        CudaAutocast autocast(bf16);
        sums[split] += model->loss(b.x.to(device), b.y.to(device)).ce.detach();
      }
    }
    model->train();
    groups.world->all_reduce(sums, ReduceOp::kSum);
    sums = sums.to(at::kCPU) / static_cast<double>(cfg.train.eval_iters * groups.world_size);
    const double train_l = sums[0].item<double>(), val_l = sums[1].item<double>();
    result.val_loss.emplace_back(step, val_l);
    SY_LOG("eval", "step ", step, " | train ", train_l, " | val ", val_l);
    metrics.write(JsonObject().add("step", step).add("eval_train_loss", train_l).add("val_loss", val_l));
  };

  const auto& tc = cfg.train;
  IntervalStats st;
  auto reset_stats = [&]() {
    auto opts = torch::TensorOptions().device(device);
    st = IntervalStats{at::zeros({}, opts), at::zeros({}, opts), at::zeros({}, opts),
                       at::zeros({}, opts.dtype(at::kLong)),
                       at::zeros({num_moe, cfg.moe.num_experts}, opts.dtype(at::kLong))};
  };
  reset_stats();
  // Step time excludes evaluation and step 0 (allocator and kernel warm-up); CUDA work is
  // drained before each clock read so asynchronous kernels are charged to the right side.
  auto drain = [&]() {
    if (is_cuda) torch::cuda::synchronize();
  };
  double steady_s = 0;
  at::Tensor grad_norm;
  model->train();
  for (int64_t step = 0; step < tc.max_steps; ++step) {
    if (tc.eval_interval > 0 && step % tc.eval_interval == 0) {
      drain();
      evaluate(step);
    }
    const auto step_start = std::chrono::steady_clock::now();
    const double lr = learning_rate(tc, step);
    for (auto& group : optimizer.param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    }
    optimizer.zero_grad();
    for (int64_t micro = 0; micro < tc.grad_accum; ++micro) {
      Batch b = corpus.dataset->sample(Split::kTrain, cfg.data.batch_size, train_rng);
      LossOutput out;
      {
        CudaAutocast autocast(bf16);
        out = model->loss(b.x.to(device), b.y.to(device));
      }
      (out.loss / static_cast<double>(tc.grad_accum)).backward();
      st.ce += out.ce.detach();
      st.aux += out.aux.detach();
      st.z += out.z.detach();
      for (int64_t l = 0; l < num_moe; ++l) {
        const MoeStats& ms = moe_layers[l]->last_stats();
        st.load[l] += ms.tokens_per_expert;
        st.dropped += ms.dropped;
        st.choices += ms.num_choices;
      }
      ++st.micro_batches;
    }
    sync_gradients(params, groups);
    grad_norm = clip_grad_norm(params, groups, tc.grad_clip);
    optimizer.step();
    ++st.steps;
    const bool timed_sync = step == 0 || (tc.eval_interval > 0 && (step + 1) % tc.eval_interval == 0);
    if (timed_sync) drain();
    const double step_s = seconds_since(step_start);
    st.seconds += step_s;
    if (step > 0) steady_s += step_s;

    const bool last = step + 1 == tc.max_steps;
    if ((step + 1) % tc.log_interval == 0 || last) {
      // One reduction for the interval: [ce, aux, z, dropped, load...] summed over ranks.
      at::Tensor packed = at::cat({at::stack({st.ce, st.aux, st.z, st.dropped.to(at::kFloat)}),
                                   st.load.reshape({-1}).to(at::kFloat)});
      groups.world->all_reduce(packed, ReduceOp::kSum);
      packed = packed.to(at::kCPU, at::kDouble);
      const double* v = packed.data_ptr<double>();
      const double n = static_cast<double>(st.micro_batches * groups.world_size);
      const double ce = v[0] / n, aux = v[1] / n, z = v[2] / n;
      const double choices = static_cast<double>(st.choices * groups.world_size);
      const double drop = choices > 0 ? v[3] / choices : 0.0;
      std::vector<std::vector<double>> load(num_moe);
      for (int64_t l = 0; l < num_moe; ++l) {
        double total = 0;
        for (int64_t e = 0; e < cfg.moe.num_experts; ++e) total += v[4 + l * cfg.moe.num_experts + e];
        for (int64_t e = 0; e < cfg.moe.num_experts; ++e) {
          load[l].push_back(total > 0 ? v[4 + l * cfg.moe.num_experts + e] / total : 0.0);
        }
      }
      const double norm = grad_norm.item<double>();
      // The copy above drained the device: re-time the last step up to now.
      const double synced_s = seconds_since(step_start);
      const double interval_s = st.seconds - step_s + synced_s;
      if (step > 0) steady_s += synced_s - step_s;
      const double ms_step = 1000.0 * interval_s / static_cast<double>(st.steps);
      const double tok_s = static_cast<double>(tokens_per_step * st.steps) / interval_s;
      const double eta = ms_step * static_cast<double>(tc.max_steps - step - 1) / 1000.0;
      result.train_loss.emplace_back(step + 1, ce);  // steps done, as metrics.jsonl and val_loss
      char line[256];
      std::snprintf(line, sizeof(line),
                    "step %6ld/%ld | loss %.4f | aux %.3f | z %.3f | drop %5.2f%% | gnorm %.3f | "
                    "lr %.2e | %.0f tok/s | %.1f ms/step | ETA %s",
                    static_cast<long>(step + 1), static_cast<long>(tc.max_steps), ce, aux, z,
                    100.0 * drop, norm, lr, tok_s, ms_step, format_duration(eta).c_str());
      SY_LOG("train", line);
      metrics.write(JsonObject()
                        .add("step", step + 1)
                        .add("train_loss", ce)
                        .add("aux_loss", aux)
                        .add("z_loss", z)
                        .add("drop_fraction", drop)
                        .add("grad_norm", norm)
                        .add("lr", lr)
                        .add("tokens_per_s", tok_s)
                        .add("ms_per_step", ms_step)
                        .add("expert_load", load));
      reset_stats();
    }
  }
  drain();
  evaluate(tc.max_steps);
  if (tc.max_steps > 1) {
    result.ms_per_step = 1000.0 * steady_s / static_cast<double>(tc.max_steps - 1);
    result.tokens_per_s = static_cast<double>(tokens_per_step) * 1000.0 / result.ms_per_step;
  }
  save_model(cfg.train.out_dir + "/model.pt", *model, groups);
  SY_LOG("train", "done: ", tc.max_steps, " steps, ", result.ms_per_step, " ms/step; run folder ",
         cfg.train.out_dir);
  return result;
}

}  // namespace sy
