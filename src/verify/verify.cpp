#include "verify/verify.h"

#include <cmath>
#include <cstdio>
#include <map>

#include <torch/torch.h>

#include "common/log.h"
#include "moe/init.h"
#include "moe/moe_layer.h"
#include "parallel/groups.h"
#include "parallel/inproc_comm.h"
#include "train/grad_sync.h"

namespace sy {
namespace {

// Everything one rank (or the reference, for one rank's tokens) produced.
struct RankResult {
  at::Tensor y, grad_x, aux, z;
  at::Tensor plan_token, plan_expert, plan_kept;
  std::map<std::string, at::Tensor> grads;    // by parameter name; experts: global slice
  std::map<std::string, at::Tensor> updated;  // weights after one AdamW step
  int64_t first_expert = 0, capacity = 0;
};

struct Inputs {
  at::Tensor x, grad_y, token_ids;
};

Inputs make_inputs(const Config& cfg, int rank, int64_t tokens) {
  at::Generator gen = make_cpu_generator(mix_seed(static_cast<uint64_t>(cfg.train.seed), 0x1F, rank));
  Inputs in;
  in.x = at::randn({tokens, cfg.model.d_model}, gen, at::kFloat);
  in.grad_y = at::randn({tokens, cfg.model.d_model}, gen, at::kFloat);
  in.token_ids = at::randint(0, 1000, {tokens}, gen, at::kLong);
  return in;
}

MoELayer make_layer(const Config& cfg, CommPtr ep) {
  const auto seed = static_cast<uint64_t>(cfg.train.seed);
  at::Generator dense_gen = make_cpu_generator(mix_seed(seed, 0xD0));
  const int64_t d_ff = cfg.moe.d_ff > 0 ? cfg.moe.d_ff : cfg.model.d_ff;
  return MoELayer(cfg.moe, cfg.model.d_model, d_ff, cfg.model.bias,
                  make_init_spec(cfg.model.init, seed), dense_gen, /*layer_index=*/0, std::move(ep));
}

// Loss of one rank's tokens: <y, grad_y> + the router losses with their coefficients.
at::Tensor rank_loss(const Config& cfg, MoELayer& layer, const Inputs& in, int rank,
                     RankResult& r, at::Tensor& x) {
  at::Generator gen = make_cpu_generator(mix_seed(static_cast<uint64_t>(cfg.train.seed), 0xA1, rank));
  x = in.x.clone().requires_grad_(true);
  MoeOutput out = layer->forward(x, in.token_ids, &gen);
  r.y = out.y.detach();
  r.aux = out.aux_loss.detach();
  r.z = out.z_loss.detach();
  const MoeStats& st = layer->last_stats();
  r.plan_token = st.plan_token;
  r.plan_expert = st.plan_expert;
  r.plan_kept = st.plan_kept;
  r.capacity = st.capacity;
  return (out.y * in.grad_y).sum() + cfg.moe.aux_loss_coef * out.aux_loss +
         cfg.moe.z_loss_coef * out.z_loss;
}

void adam_step(const Config& cfg, MoELayer& layer, RankResult& r) {
  torch::optim::AdamW opt(layer->parameters(),
                          torch::optim::AdamWOptions(cfg.train.lr)
                              .betas({cfg.train.beta1, cfg.train.beta2})
                              .weight_decay(cfg.train.weight_decay));
  opt.step();
  for (const auto& p : layer->named_parameters()) r.updated[p.key()] = p.value().detach().clone();
}

void record_grads(MoELayer& layer, RankResult& r) {
  for (const auto& p : layer->named_parameters()) {
    r.grads[p.key()] = p.value().grad().defined() ? p.value().grad().clone()
                                                  : at::zeros_like(p.value());
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
  std::snprintf(line, sizeof(line), "%-28s %12s %12s  %s\n", "quantity", "max abs err", "rel err", "status");
  s += line;
  for (const auto& r : rows) {
    std::snprintf(line, sizeof(line), "%-28s %12.3e %12.3e  %s\n", r.quantity.c_str(), r.max_abs_err,
                  r.rel_err, !r.ok ? "MISMATCH" : (r.bitwise ? "ok (bitwise)" : "ok"));
    s += line;
  }
  std::snprintf(line, sizeof(line),
                "dropped choices: %ld of %ld (capacity %ld per expert per rank); dropped-set mismatches: %ld\n",
                static_cast<long>(dropped), static_cast<long>(choices), static_cast<long>(capacity),
                static_cast<long>(drop_set_mismatches));
  s += line;
  return s;
}

VerifyReport verify_expert_parallel(const Config& cfg, int ranks, double tolerance) {
  const int64_t tokens = cfg.data.batch_size * cfg.model.block_size;
  std::vector<Inputs> inputs;
  for (int r = 0; r < ranks; ++r) inputs.push_back(make_inputs(cfg, r, tokens));

  // Reference: one process, all experts, each rank's tokens in turn (same capacity per rank).
  std::vector<RankResult> ref(ranks);
  MoELayer ref_layer = make_layer(cfg, make_self_communicator());
  ref_layer->train();
  at::Tensor total;
  std::vector<at::Tensor> ref_x(ranks);
  for (int r = 0; r < ranks; ++r) {
    at::Tensor loss = rank_loss(cfg, ref_layer, inputs[r], r, ref[r], ref_x[r]) / static_cast<double>(ranks);
    total = total.defined() ? total + loss : loss;
  }
  total.backward();
  RankResult ref_params;
  record_grads(ref_layer, ref_params);
  adam_step(cfg, ref_layer, ref_params);
  for (int r = 0; r < ranks; ++r) ref[r].grad_x = ref_x[r].grad() * static_cast<double>(ranks);

  // Expert parallel: N in-process ranks through the same code as training.
  std::vector<RankResult> got(ranks);
  run_inproc_ranks(ranks, [&](CommPtr world) {
    ParallelGroups groups = make_groups(world, cfg.parallel.ep_size);
    const int r = groups.world_rank;
    MoELayer layer = make_layer(cfg, groups.ep);
    layer->train();
    at::Tensor x;
    rank_loss(cfg, layer, inputs[r], r, got[r], x).backward();
    got[r].grad_x = x.grad().clone();
    ParamSet params;
    for (const auto& p : layer->named_parameters()) {
      (p.key().find("experts.") != std::string::npos ? params.expert : params.dense).push_back(p.value());
    }
    sync_gradients(params, groups);
    got[r].first_expert = layer->experts->first_expert();
    record_grads(layer, got[r]);
    adam_step(cfg, layer, got[r]);
  });

  VerifyReport report;
  report.ranks = ranks;
  report.ep_size = cfg.parallel.ep_size > 0 ? cfg.parallel.ep_size : ranks;
  report.tokens_per_rank = tokens;
  report.capacity = ref[0].capacity;
  Accumulator y, gx, aux, z;
  std::map<std::string, Accumulator> grads, updated;
  for (int r = 0; r < ranks; ++r) {
    y.add(got[r].y, ref[r].y);
    gx.add(got[r].grad_x, ref[r].grad_x);
    aux.add(got[r].aux, ref[r].aux);
    z.add(got[r].z, ref[r].z);
    report.choices += ref[r].plan_kept.numel();
    report.dropped += ref[r].plan_kept.logical_not().sum().item<int64_t>();
    const bool same_plan = at::equal(got[r].plan_token, ref[r].plan_token) &&
                           at::equal(got[r].plan_expert, ref[r].plan_expert);
    report.drop_set_mismatches += same_plan ? got[r].plan_kept.ne(ref[r].plan_kept).sum().item<int64_t>()
                                            : ref[r].plan_kept.numel();
    for (const auto& [name, g] : got[r].grads) {
      const bool expert = name.find("experts.") != std::string::npos;
      auto slice = [&](const at::Tensor& full) {
        return expert ? full.narrow(0, got[r].first_expert, g.size(0)) : full;
      };
      grads[name].add(g, slice(ref_params.grads.at(name)));
      updated[name].add(got[r].updated.at(name), slice(ref_params.updated.at(name)));
    }
  }
  report.rows.push_back(y.row("output", tolerance));
  report.rows.push_back(gx.row("grad input", tolerance));
  for (const auto& [name, acc] : grads) report.rows.push_back(acc.row("grad " + name, tolerance));
  report.rows.push_back(aux.row("aux loss", tolerance));
  report.rows.push_back(z.row("z loss", tolerance));
  for (const auto& [name, acc] : updated) report.rows.push_back(acc.row("step " + name, tolerance));
  return report;
}

bool run_verify(const Config& cfg, int ranks) {
  VerifyReport report = verify_expert_parallel(cfg, ranks);
  std::printf("switchyard verify: %ld ranks, ep_size %ld, %ld tokens per rank, router %s, top-%ld, "
              "capacity factor %g\n%s%s\n",
              static_cast<long>(report.ranks), static_cast<long>(report.ep_size),
              static_cast<long>(report.tokens_per_rank), cfg.moe.router.c_str(),
              static_cast<long>(cfg.moe.top_k), cfg.moe.capacity_factor, report.table().c_str(),
              report.ok() ? "PASS: expert-parallel layer equals the single-process layer"
                          : "FAIL: expert-parallel layer differs from the single-process layer");
  return report.ok();
}

}  // namespace sy
