#include "verify/verify.h"

#include <cmath>
#include <cstdio>
#include <algorithm>
#include <map>
#include <mutex>

#include <torch/torch.h>

#include "common/log.h"
#include "model/gpt.h"
#include "moe/init.h"
#include "moe/moe_layer.h"
#include "parallel/groups.h"
#include "parallel/inproc_comm.h"
#include "train/balance.h"
#include "train/grad_sync.h"
#include "train/optimizer.h"

namespace sy {
namespace {

// Everything one rank (or the reference, for one rank's tokens) produced.
struct RankResult {
  at::Tensor y, grad_x, aux, z;
  at::Tensor load;        // [E] choices per expert (before drops) of this rank's tokens
  at::Tensor score_bias;  // [E] after the bias update (moe.balance bias, aux+bias)
  at::Tensor plan_token, plan_expert, plan_kept;
  std::map<std::string, at::Tensor> grads;    // by parameter name; experts: global slice
  std::map<std::string, at::Tensor> updated;  // weights after one SGD step
  int64_t first_expert = 0, capacity = 0;
};

struct Inputs {
  at::Tensor x, grad_y, token_ids;
  at::Tensor task_ids;  // data.tasks: each token's task (its sequence's), else undefined
  // encoder_decoder without moe.route_padding: the tokens to route (each sequence a random
  // length of routed tokens, then padding; Note [Padding out of routing]), else undefined.
  at::Tensor routed;
};

Inputs make_inputs(const Config& cfg, int rank, int64_t tokens) {
  at::Generator gen =
      make_cpu_generator(mix_seed(static_cast<uint64_t>(cfg.train.seed), 0x1F, rank));
  Inputs in;
  in.x = at::randn({tokens, cfg.model.d_model}, gen, at::kFloat);
  in.grad_y = at::randn({tokens, cfg.model.d_model}, gen, at::kFloat);
  in.token_ids = at::randint(0, 1000, {tokens}, gen, at::kLong);
  if (!cfg.data.tasks.empty()) {
    // One task per sequence of block_size tokens (per token if the tokens are not whole ones).
    const int64_t T = tokens % cfg.model.block_size == 0 ? cfg.model.block_size : 1;
    const auto num_tasks = static_cast<int64_t>(cfg.data.tasks.size());
    in.task_ids = at::randint(0, num_tasks, {tokens / T, 1}, gen, at::kLong)
                      .expand({tokens / T, T})
                      .reshape({-1});
  }
  if (cfg.model.kind == ModelKind::kEncoderDecoder && !cfg.moe.route_padding) {
    const int64_t T = tokens % cfg.model.block_size == 0 ? cfg.model.block_size : tokens;
    const at::Tensor length = at::randint(1, T + 1, {tokens / T, 1}, gen, at::kLong);
    in.routed = at::arange(T, at::kLong).unsqueeze(0).lt(length).reshape({-1});
  }
  return in;
}

// Loss of one rank's tokens: <y, grad_y> + the router losses with their coefficients.
at::Tensor rank_loss(const Config& cfg, MoELayer& layer, const Inputs& in, int rank, RankResult& r,
                     at::Tensor& x) {
  at::Generator gen =
      make_cpu_generator(mix_seed(static_cast<uint64_t>(cfg.train.seed), 0xA1, rank));
  x = in.x.clone().requires_grad_(true);
  MoeOutput out = layer->forward(x, in.token_ids, &gen, /*seq_len=*/cfg.model.block_size,
                                 in.task_ids, in.routed);
  r.y = out.y.detach();
  r.aux = out.aux_loss.detach();
  r.z = out.z_loss.detach();
  const MoeStats& st = layer->last_stats();
  r.plan_token = st.plan_token;
  r.plan_expert = st.plan_expert;
  r.plan_kept = st.plan_kept;
  r.capacity = st.capacity;
  r.load = st.tokens_per_expert;
  const double aux_coef = uses_aux_loss(cfg.moe.balance) ? cfg.moe.aux_loss_coef : 0.0;
  return (out.y * in.grad_y).sum() + aux_coef * out.aux_loss + cfg.moe.z_loss_coef * out.z_loss;
}

// moe.balance bias: a score bias drawn from train.seed (the same in the reference and on every
// rank), so that it steers the choice of experts from the first forward on.
void init_score_bias(const Config& cfg, MoELayer& layer) {
  const at::Tensor& bias = layer->router->score_bias();
  if (!bias.defined()) return;
  at::Generator gen = make_cpu_generator(mix_seed(static_cast<uint64_t>(cfg.train.seed), 0xB5));
  torch::NoGradGuard no_grad;
  bias.copy_(at::randn(bias.sizes(), gen, at::kFloat) * 0.1);
}

// After the optimizer step: the bias update of Note [Score bias balancing] over `world`.
void update_bias(const Config& cfg, MoELayer& layer, const at::Tensor& load, Communicator& world,
                 RankResult& r) {
  if (!layer->router->score_bias().defined()) return;
  update_score_biases({layer}, load.unsqueeze(0), world, cfg.moe.bias_update_rate);
  r.score_bias = layer->router->score_bias().detach().clone();
}

// One optimizer step on the synced gradients: SGD with the config's lr and weight decay, which is
// linear in the gradient, so the step inherits the gradients' agreement. (AdamW's first step,
// g / (|g| + eps), turns rounding-level differences of near-zero gradients into differences of
// up to lr: the comparison would then depend on the BLAS and not on the parallel code.)
void optimizer_step(const Config& cfg, MoELayer& layer, RankResult& r) {
  torch::optim::SGD opt(
      layer->parameters(),
      torch::optim::SGDOptions(cfg.train.lr).weight_decay(cfg.train.weight_decay));
  opt.step();
  for (const auto& p : layer->named_parameters()) r.updated[p.key()] = p.value().detach().clone();
}

void record_grads(MoELayer& layer, RankResult& r) {
  for (const auto& p : layer->named_parameters()) {
    r.grads[p.key()] =
        p.value().grad().defined() ? p.value().grad().clone() : at::zeros_like(p.value());
  }
}

struct Accumulator {
  double max_abs = 0, diff_sq = 0, ref_sq = 0;
  bool bitwise = true;
  void add(const at::Tensor& got, const at::Tensor& ref) {
    at::Tensor g = got.to(at::kDouble), f = ref.to(at::kDouble);
    if (g.numel() == 0) return;
    max_abs = std::max(max_abs, (g - f).abs().max().item<double>());
    diff_sq += (g - f).pow(2).sum().item<double>();
    ref_sq += f.pow(2).sum().item<double>();
    bitwise = bitwise && at::equal(got, ref);
  }
  VerifyRow row(const std::string& name, double tol) const {
    VerifyRow v;
    v.quantity = name;
    v.max_abs_err = max_abs;
    v.rel_err = std::sqrt(diff_sq) / std::max(std::sqrt(ref_sq), 1e-30);
    v.bitwise = bitwise;
    v.ok = bitwise || v.rel_err <= tol;
    return v;
  }
};

}  // namespace

bool VerifyReport::ok() const {
  if (drop_set_mismatches != 0) return false;
  for (const auto& r : rows) {
    if (!r.ok) return false;
  }
  return !rows.empty();
}

std::string VerifyReport::table() const {
  std::string s;
  char line[160];
  std::snprintf(line, sizeof(line), "%-28s %12s %12s  %s\n", "quantity", "max abs err", "rel err",
                "status");
  s += line;
  for (const auto& r : rows) {
    std::snprintf(line, sizeof(line), "%-28s %12.3e %12.3e  %s\n", r.quantity.c_str(),
                  r.max_abs_err, r.rel_err,
                  !r.ok ? "MISMATCH" : (r.bitwise ? "ok (bitwise)" : "ok"));
    s += line;
  }
  std::snprintf(line, sizeof(line),
                "dropped choices: %ld of %ld (capacity %ld per expert per rank); dropped-set "
                "mismatches: %ld\n",
                static_cast<long>(dropped), static_cast<long>(choices), static_cast<long>(capacity),
                static_cast<long>(drop_set_mismatches));
  s += line;
  return s;
}

namespace {

// The reference of Note [EP invariance]: one process holding all experts runs each rank's tokens
// in turn with the same capacity per rank, the loss averaged over ranks as the gradient sync
// averages it; then one optimizer step. Always on the CPU, in fp32.
struct Reference {
  std::vector<RankResult> ranks;
  RankResult params;  // grads and updated weights by name; experts: all of them
};

Reference compute_reference(const Config& cfg, const std::vector<Inputs>& inputs) {
  const int ranks = static_cast<int>(inputs.size());
  Reference ref;
  ref.ranks.resize(ranks);
  MoELayer layer = make_moe_layer(cfg, make_self_communicator());
  layer->train();
  init_score_bias(cfg, layer);
  at::Tensor total;
  std::vector<at::Tensor> xs(ranks);
  for (int r = 0; r < ranks; ++r) {
    at::Tensor loss =
        rank_loss(cfg, layer, inputs[r], r, ref.ranks[r], xs[r]) / static_cast<double>(ranks);
    total = total.defined() ? total + loss : loss;
  }
  total.backward();
  record_grads(layer, ref.params);
  optimizer_step(cfg, layer, ref.params);
  at::Tensor load = ref.ranks[0].load;  // the global batch: every rank's tokens
  for (int r = 1; r < ranks; ++r) load = load + ref.ranks[r].load;
  update_bias(cfg, layer, load, *make_self_communicator(), ref.params);
  for (int r = 0; r < ranks; ++r) ref.ranks[r].grad_x = xs[r].grad() * static_cast<double>(ranks);
  return ref;
}

// One rank of the expert-parallel layer, through the same code as training (layer, gradient
// sync, optimizer step), on `device`; the results come back to the CPU.
RankResult run_rank(const Config& cfg, const ParallelGroups& groups, const Inputs& cpu_inputs,
                    const c10::Device& device) {
  const int r = groups.world_rank;
  auto on_device = [&](const at::Tensor& t) { return t.defined() ? t.to(device) : at::Tensor(); };
  Inputs in{cpu_inputs.x.to(device), cpu_inputs.grad_y.to(device), cpu_inputs.token_ids.to(device),
            on_device(cpu_inputs.task_ids), on_device(cpu_inputs.routed)};
  MoELayer layer = make_moe_layer(cfg, groups.ep);
  layer->to(device);
  layer->train();
  init_score_bias(cfg, layer);
  RankResult got;
  at::Tensor x;
  rank_loss(cfg, layer, in, r, got, x).backward();
  got.grad_x = x.grad().clone();
  ParamSet params;
  for (const auto& p : layer->named_parameters()) {
    (is_expert_parameter(p.key()) ? params.expert : params.dense).push_back(p.value());
  }
  sync_gradients(params, groups);
  got.first_expert = layer->experts->first_expert();
  record_grads(layer, got);
  optimizer_step(cfg, layer, got);
  update_bias(cfg, layer, got.load, *groups.world, got);
  // Everything to the CPU for the comparison.
  for (at::Tensor* t : {&got.y, &got.grad_x, &got.aux, &got.z, &got.plan_token, &got.plan_expert,
                        &got.plan_kept, &got.load, &got.score_bias}) {
    if (t->defined()) *t = t->to(at::kCPU);
  }
  for (auto* m : {&got.grads, &got.updated}) {
    for (auto& [name, t] : *m) t = t.to(at::kCPU);
  }
  return got;
}

// Errors of the ranks' results against the reference, accumulated per quantity.
struct Comparison {
  Accumulator y, gx, aux, z, bias;
  bool has_bias = false;
  std::map<std::string, Accumulator> grads, updated;
  int64_t choices = 0, dropped = 0, mismatches = 0;

  void add(const RankResult& got, const RankResult& ref, const RankResult& ref_params) {
    y.add(got.y, ref.y);
    gx.add(got.grad_x, ref.grad_x);
    aux.add(got.aux, ref.aux);
    z.add(got.z, ref.z);
    if (ref_params.score_bias.defined()) {
      has_bias = true;
      bias.add(got.score_bias, ref_params.score_bias);
    }
    // The routed choices (the load's sum) and those of them not kept.
    const int64_t routed = ref.load.sum().item<int64_t>();
    choices += routed;
    dropped += routed - ref.plan_kept.sum().item<int64_t>();
    const bool same_plan =
        at::equal(got.plan_token, ref.plan_token) && at::equal(got.plan_expert, ref.plan_expert);
    mismatches +=
        same_plan ? got.plan_kept.ne(ref.plan_kept).sum().item<int64_t>() : ref.plan_kept.numel();
    for (const auto& [name, g] : got.grads) {
      auto slice = [&](const at::Tensor& full) {
        return is_expert_parameter(name) ? full.narrow(0, got.first_expert, g.size(0)) : full;
      };
      grads[name].add(g, slice(ref_params.grads.at(name)));
      updated[name].add(got.updated.at(name), slice(ref_params.updated.at(name)));
    }
  }

  // Every accumulator in report order (the same on every rank: names come from a sorted map).
  std::vector<std::pair<std::string, Accumulator*>> rows() {
    std::vector<std::pair<std::string, Accumulator*>> out{{"output", &y}, {"grad input", &gx}};
    for (auto& [name, acc] : grads) out.emplace_back("grad " + name, &acc);
    out.emplace_back("aux loss", &aux);
    out.emplace_back("z loss", &z);
    if (has_bias) out.emplace_back("score bias after update", &bias);
    for (auto& [name, acc] : updated) out.emplace_back("step " + name, &acc);
    return out;
  }

  // Combines the ranks' comparisons (sums of squares and counts add, maxima and "not bitwise"
  // take the maximum), so every rank ends with the job-wide one.
  void reduce_over(Communicator& world, const c10::Device& device) {
    auto acc_rows = rows();
    std::vector<double> sums, maxes;
    for (auto& [name, a] : acc_rows) {
      sums.insert(sums.end(), {a->diff_sq, a->ref_sq});
      maxes.insert(maxes.end(), {a->max_abs, a->bitwise ? 0.0 : 1.0});
    }
    sums.insert(sums.end(), {static_cast<double>(choices), static_cast<double>(dropped),
                             static_cast<double>(mismatches)});
    auto reduce = [&](std::vector<double>& v, ReduceOp op) {
      at::Tensor t = at::tensor(v, at::TensorOptions().dtype(at::kDouble)).to(device);
      world.all_reduce(t, op);
      t = t.to(at::kCPU);
      for (size_t i = 0; i < v.size(); ++i) v[i] = t[static_cast<int64_t>(i)].item<double>();
    };
    reduce(sums, ReduceOp::kSum);
    reduce(maxes, ReduceOp::kMax);
    for (size_t i = 0; i < acc_rows.size(); ++i) {
      Accumulator& a = *acc_rows[i].second;
      a.diff_sq = sums[2 * i];
      a.ref_sq = sums[2 * i + 1];
      a.max_abs = maxes[2 * i];
      a.bitwise = maxes[2 * i + 1] == 0.0;
    }
    const size_t c = 2 * acc_rows.size();
    choices = static_cast<int64_t>(sums[c]);
    dropped = static_cast<int64_t>(sums[c + 1]);
    mismatches = static_cast<int64_t>(sums[c + 2]);
  }

  VerifyReport report(const Config& cfg, int ranks, int64_t tokens, int64_t capacity,
                      double tolerance) {
    VerifyReport rep;
    rep.ranks = ranks;
    rep.ep_size = cfg.parallel.ep_size > 0 ? cfg.parallel.ep_size : ranks;
    rep.tokens_per_rank = tokens;
    rep.capacity = capacity;
    rep.choices = choices;
    rep.dropped = dropped;
    rep.drop_set_mismatches = mismatches;
    for (auto& [name, acc] : rows()) rep.rows.push_back(acc->row(name, tolerance));
    return rep;
  }
};

int64_t tokens_per_rank(const Config& cfg) { return cfg.data.batch_size * cfg.model.block_size; }

std::vector<Inputs> make_all_inputs(const Config& cfg, int ranks) {
  std::vector<Inputs> inputs;
  for (int r = 0; r < ranks; ++r) inputs.push_back(make_inputs(cfg, r, tokens_per_rank(cfg)));
  return inputs;
}

}  // namespace

VerifyReport verify_expert_parallel(const Config& cfg, int ranks, double tolerance) {
  const std::vector<Inputs> inputs = make_all_inputs(cfg, ranks);
  const Reference ref = compute_reference(cfg, inputs);
  std::vector<RankResult> got(ranks);
  run_inproc_ranks(ranks, [&](CommPtr world) {
    ParallelGroups groups =
        make_groups(world, cfg.parallel.ep_size, {}, cfg.parallel.two_level_ranks());
    got[groups.world_rank] = run_rank(cfg, groups, inputs[groups.world_rank], at::kCPU);
  });
  Comparison cmp;
  for (int r = 0; r < ranks; ++r) cmp.add(got[r], ref.ranks[r], ref.params);
  return cmp.report(cfg, ranks, tokens_per_rank(cfg), ref.ranks[0].capacity, tolerance);
}

VerifyReport verify_expert_parallel(const Config& cfg, const CommPtr& world,
                                    const c10::Device& device, double tolerance) {
  SY_CHECK(device.is_cpu() || (cfg.moe.router != RouterKind::kNoisyTopK &&
                               cfg.moe.router != RouterKind::kRandom && cfg.moe.jitter_eps == 0),
           "switchyard verify on CUDA compares against a CPU reference, so routing must not draw "
           "random numbers: moe.router '",
           choice_name(cfg.moe.router), "' with moe.jitter_eps ", cfg.moe.jitter_eps,
           " does; check it with --ranks N on the CPU instead");
  const int ranks = world->size();
  // Every rank recomputes the whole (deterministic) reference and compares its own part.
  const std::vector<Inputs> inputs = make_all_inputs(cfg, ranks);
  const Reference ref = compute_reference(cfg, inputs);
  ParallelGroups groups =
      make_groups(world, cfg.parallel.ep_size, {}, cfg.parallel.two_level_ranks());
  const RankResult got = run_rank(cfg, groups, inputs[groups.world_rank], device);
  Comparison cmp;
  cmp.add(got, ref.ranks[groups.world_rank], ref.params);
  cmp.reduce_over(*world, device);
  return cmp.report(cfg, ranks, tokens_per_rank(cfg), ref.ranks[0].capacity, tolerance);
}

bool print_verify_report(const Config& cfg, const VerifyReport& report, const std::string& where) {
  std::printf(
      "switchyard verify: %ld ranks (%s), ep_size %ld, %ld tokens per rank, router %s, "
      "top-%ld, capacity factor %g\n%s%s\n",
      static_cast<long>(report.ranks), where.c_str(), static_cast<long>(report.ep_size),
      static_cast<long>(report.tokens_per_rank), choice_name(cfg.moe.router),
      static_cast<long>(cfg.moe.top_k), cfg.moe.capacity_factor, report.table().c_str(),
      report.ok() ? "PASS: expert-parallel layer equals the single-process layer"
                  : "FAIL: expert-parallel layer differs from the single-process layer");
  std::fflush(stdout);
  return report.ok();
}

bool run_verify(const Config& cfg, int ranks) {
  return print_verify_report(cfg, verify_expert_parallel(cfg, ranks), "in-process");
}

}  // namespace sy

namespace sy {
namespace {

struct LayoutSpec {
  int world, ep, accum;
};

// The micro-batch `unit` of step `step` of the global batch: [B, T + 1] token ids, the same for
// every layout (a layout's rank r with A micro-batches takes units r*A .. r*A + A - 1).
at::Tensor layout_unit(const Config& cfg, int64_t vocab, int step, int unit) {
  at::Generator gen =
      make_cpu_generator(mix_seed(static_cast<uint64_t>(cfg.train.seed), 0x1A,
                                  static_cast<uint64_t>(step), static_cast<uint64_t>(unit)));
  const int64_t width =
      cfg.model.block_size * (cfg.model.kind == ModelKind::kEncoderDecoder ? 2 : 1);
  return at::randint(0, vocab, {cfg.data.batch_size, width + 1}, gen, at::kLong);
}

// A micro-batch (x, y) from layout_unit(): next-token targets, or for model.kind encoder_decoder
// pairs laid out as Note [Seq2seq batches] says: the unit's first T ids the source, cut by PAD
// to a length of its own per row (1 .. T), the next T - 1 the target, then EOS.
std::pair<at::Tensor, at::Tensor> layout_batch(const Config& cfg, int64_t vocab,
                                               const at::Tensor& unit) {
  const int64_t T = cfg.model.block_size;
  if (cfg.model.kind != ModelKind::kEncoderDecoder) {
    return {unit.narrow(1, 0, T), unit.narrow(1, 1, T)};
  }
  const int64_t B = unit.size(0), chars = vocab - kSeq2SeqSpecialIds;
  const Seq2SeqIds ids = seq2seq_ids(chars);
  at::Tensor body = unit.remainder(chars);
  at::Tensor src = body.narrow(1, 0, T).clone();
  const at::Tensor len = body.select(1, T).remainder(T).add(1).unsqueeze(1);  // [B, 1]
  src.masked_fill_(at::arange(T, unit.options()).unsqueeze(0) >= len, ids.pad);
  const at::Tensor target = body.narrow(1, T, T - 1);
  const at::Tensor bos = at::full({B, 1}, ids.bos, unit.options());
  const at::Tensor eos = at::full({B, 1}, ids.eos, unit.options());
  return {at::cat({src, bos, target}, 1), at::cat({target, eos}, 1)};
}

// The tasks of unit `unit`'s sequences (data.tasks), [B]; undefined without tasks.
at::Tensor layout_tasks(const Config& cfg, int step, int unit) {
  if (cfg.data.tasks.empty()) return {};
  at::Generator gen =
      make_cpu_generator(mix_seed(static_cast<uint64_t>(cfg.train.seed), 0x1B,
                                  static_cast<uint64_t>(step), static_cast<uint64_t>(unit)));
  return at::randint(0, static_cast<int64_t>(cfg.data.tasks.size()), {cfg.data.batch_size}, gen,
                     at::kLong);
}

// Every parameter and buffer of the model, the experts gathered over the EP group (as model.pt).
std::map<std::string, at::Tensor> full_weights(GPTImpl& model, const ParallelGroups& g) {
  std::map<std::string, at::Tensor> out;
  torch::NoGradGuard no_grad;
  for (const auto& item : model.named_parameters()) {
    at::Tensor v = item.value().detach().contiguous();
    if (is_expert_parameter(item.key()) && g.ep->size() > 1) {
      std::vector<int64_t> shape = v.sizes().vec();
      shape[0] *= g.ep->size();
      at::Tensor full = at::empty(shape, v.options());
      g.ep->all_gather(full, v);
      v = full;
    }
    out[item.key()] = v.clone();
  }
  for (const auto& item : model.named_buffers()) out[item.key()] = item.value().detach().clone();
  return out;
}

struct LayoutRun {
  std::vector<double> losses;
  std::map<std::string, at::Tensor> weights;
};

LayoutRun train_layout(const Config& cfg, const LayoutSpec& l, int steps) {
  const int64_t vocab = cfg.model.vocab_size > 0 ? cfg.model.vocab_size : 64;
  LayoutRun result;
  std::mutex mu;
  run_inproc_ranks(l.world, [&](CommPtr world) {
    const ParallelGroups g = make_groups(world, l.ep);
    GPT model(cfg.model, cfg.moe, vocab, g.ep, static_cast<uint64_t>(cfg.train.seed),
              cfg.data.tasks);
    model->train();
    model->set_activation_checkpointing(cfg.train.activation_checkpointing);
    // SGD, as in the layer check above: linear in the gradient, so the layouts' rounding-level
    // differences stay at that level (AdamW's first steps, g / (|g| + eps), would blow the
    // rounding noise of near-zero gradients up to lr).
    std::vector<at::Tensor> decay, no_decay;
    ParamSet params;
    for (const auto& item : model->named_parameters()) {
      (is_expert_parameter(item.key()) ? params.expert : params.dense).push_back(item.value());
      (is_bias(item.key(), item.value()) ? no_decay : decay).push_back(item.value());
    }
    torch::optim::SGD opt(
        {torch::optim::OptimizerParamGroup(
             decay,
             std::make_unique<torch::optim::SGDOptions>(
                 torch::optim::SGDOptions(cfg.train.lr).weight_decay(cfg.train.weight_decay))),
         torch::optim::OptimizerParamGroup(
             no_decay, std::make_unique<torch::optim::SGDOptions>(cfg.train.lr))},
        torch::optim::SGDOptions(cfg.train.lr));
    const std::vector<MoELayer> layers = model->moe_layers();
    std::vector<double> losses;
    for (int step = 0; step < steps; ++step) {
      opt.zero_grad();
      std::vector<at::Tensor> units;
      for (int m = 0; m < l.accum; ++m) {
        units.push_back(layout_unit(cfg, vocab, step, g.world_rank * l.accum + m));
      }
      std::vector<at::Tensor> x_units, y_units;
      for (const at::Tensor& unit : units) {
        auto [x, y] = layout_batch(cfg, vocab, unit);
        x_units.push_back(x);
        y_units.push_back(y);
      }
      const at::Tensor xs = at::stack(x_units), ys = at::stack(y_units);
      if (cfg.moe.aux_loss_scope == AuxScope::kGlobalBatch)
        count_global_choices(*model, xs, *world);
      at::Tensor loss_sum = at::zeros({}, at::kDouble), load;
      for (int m = 0; m < l.accum; ++m) {
        const LossOutput out =
            model->loss(xs[m], ys[m], layout_tasks(cfg, step, g.world_rank * l.accum + m));
        (out.loss / static_cast<double>(l.accum)).backward();
        loss_sum += out.loss.detach().to(at::kDouble);
        if (!layers.empty()) {
          std::vector<at::Tensor> per_layer;
          for (const MoELayer& layer : layers) {
            per_layer.push_back(layer->last_stats().tokens_per_expert);
          }
          const at::Tensor s = at::stack(per_layer);
          load = load.defined() ? load + s : s;
        }
      }
      sync_gradients(params, g);
      clip_grad_norm(params, g, cfg.train.grad_clip);
      opt.step();
      if (uses_score_bias(cfg.moe.balance)) {
        update_score_biases(layers, load, *world, cfg.moe.bias_update_rate);
      }
      world->all_reduce(loss_sum, ReduceOp::kSum);
      losses.push_back(loss_sum.item<double>() / (l.world * l.accum));
    }
    auto weights = full_weights(*model, g);
    if (g.world_rank == 0) {
      std::lock_guard<std::mutex> lock(mu);
      result.losses = losses;
      result.weights = std::move(weights);
    }
  });
  return result;
}

}  // namespace

bool LayoutReport::ok() const {
  if (rows.empty()) return false;
  for (const LayoutRow& r : rows) {
    if (!(r.max_loss_diff <= tolerance && r.weight_rel_err <= tolerance)) return false;
  }
  return true;
}

std::string LayoutReport::table() const {
  std::string s;
  char line[200];
  std::snprintf(line, sizeof(line), "%-30s %-34s %12s %12s\n", "layout",
                "global mean loss per step", "max |dloss|", "weights rel");
  s += line;
  for (const LayoutRow& r : rows) {
    std::string losses;
    for (double v : r.losses) {
      char num[32];
      std::snprintf(num, sizeof(num), "%s%.6f", losses.empty() ? "" : " ", v);
      losses += num;
    }
    std::snprintf(line, sizeof(line), "%-30s %-34s %12.3e %12.3e\n", r.layout.c_str(),
                  losses.c_str(), r.max_loss_diff, r.weight_rel_err);
    s += line;
    if (!r.worst.empty()) {
      std::snprintf(line, sizeof(line), "%-30s largest relative difference: %s (%.3e)\n", "",
                    r.worst.c_str(), r.worst_rel_err);
      s += line;
    }
  }
  return s;
}

LayoutReport verify_layouts(const Config& cfg, int steps, double tolerance) {
  SY_CHECK(steps >= 1, "verify --layouts: steps must be >= 1");
  const std::vector<LayoutSpec> specs = {{4, 4, 1}, {4, 2, 1}, {1, 1, 4}, {2, 2, 2}};
  for (const LayoutSpec& l : specs) {
    SY_CHECK(cfg.moe.num_experts % l.ep == 0, "verify --layouts trains with ep_size ", l.ep,
             ": moe.num_experts (", cfg.moe.num_experts, ") must be divisible by it");
  }
  Config base = cfg;
  base.train.device = DeviceKind::kCpu;
  LayoutReport report;
  report.tolerance = tolerance;
  LayoutRun first;
  for (size_t i = 0; i < specs.size(); ++i) {
    const LayoutSpec& l = specs[i];
    LayoutRun run = train_layout(base, l, steps);
    LayoutRow row;
    row.layout = str("ep ", l.ep, " x dp ", l.world / l.ep, ", grad_accum ", l.accum);
    row.losses = run.losses;
    if (i == 0) first = run;
    double diff_sq = 0, ref_sq = 0;
    for (size_t s = 0; s < run.losses.size(); ++s) {
      row.max_loss_diff = std::max(row.max_loss_diff, std::abs(run.losses[s] - first.losses[s]));
    }
    for (const auto& [name, w] : first.weights) {
      const at::Tensor a = run.weights.at(name).to(at::kDouble), b = w.to(at::kDouble);
      diff_sq += (a - b).pow(2).sum().item<double>();
      ref_sq += b.pow(2).sum().item<double>();
      row.max_weight_diff = std::max(row.max_weight_diff, (a - b).abs().max().item<double>());
      const double rel = (a - b).norm().item<double>() / std::max(b.norm().item<double>(), 1e-30);
      if (rel > row.worst_rel_err) {
        row.worst_rel_err = rel;
        row.worst = name;
      }
    }
    row.weight_rel_err = std::sqrt(diff_sq) / std::max(std::sqrt(ref_sq), 1e-30);
    report.rows.push_back(row);
  }
  return report;
}

}  // namespace sy
