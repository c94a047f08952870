// validate(): the rules that no single key's type can express, each a sentence naming the keys
// and their values ("moe.top_k (3) must be <= moe.num_experts (2)"). The first broken rule
// throws. Comparisons are written so that they fail for NaN too (loading rejects non-finite
// numbers, but a Config can also be built in code).
#include <algorithm>
#include <string>
#include <vector>
#include <tuple>
#include <utility>

#include "common/error.h"
#include "config/config.h"
#include "config/config_internal.h"

namespace sy {
namespace {

using config_detail::format_number;

void at_least(const char* key, int64_t value, int64_t lowest) {
  SY_CHECK(value >= lowest, key, " (", value, ") must be >= ", lowest);
}

void non_negative(const char* key, double value) {
  SY_CHECK(value >= 0, key, " (", format_number(value), ") must be >= 0");
}

// Upper bounds of the size keys (config.h, namespace limits).
void at_most(const char* key, int64_t value, int64_t limit) {
  SY_CHECK(value <= limit, key, " (", value, ") is too large: at most ", limit);
}

// The product of the named sizes, or an error naming them when it leaves 64 bits: "data.batch_size
// (B) * model.block_size (T) * ... overflows a 64-bit integer (what)".
int64_t checked_product(const std::vector<std::pair<std::string, int64_t>>& factors,
                        const char* what) {
  int64_t product = 1;
  bool overflow = false;
  for (const auto& [key, value] : factors) {
    overflow = overflow || __builtin_mul_overflow(product, value, &product);
  }
  if (overflow) {
    std::string named;
    for (const auto& [key, value] : factors) {
      named += (named.empty() ? "" : " * ") + key + " (" + std::to_string(value) + ")";
    }
    SY_THROW(named, " overflows a 64-bit integer (", what, ")");
  }
  return product;
}

// value in [0, 1).
void unit_interval(const char* key, double value) {
  SY_CHECK(value >= 0 && value < 1, key, " (", format_number(value), ") must be in [0, 1)");
}

void validate_model(const ModelConfig& m) {
  at_least("model.n_layers", m.n_layers, 1);
  at_least("model.d_model", m.d_model, 1);
  at_least("model.n_heads", m.n_heads, 1);
  at_least("model.d_ff", m.d_ff, 1);
  at_least("model.block_size", m.block_size, 1);
  at_least("model.vocab_size", m.vocab_size, 0);
  at_most("model.n_layers", m.n_layers, limits::kLayers);
  at_most("model.d_model", m.d_model, limits::kWidth);
  at_most("model.n_heads", m.n_heads, limits::kWidth);
  at_most("model.d_ff", m.d_ff, limits::kWidth);
  at_most("model.block_size", m.block_size, limits::kBlock);
  at_most("model.vocab_size", m.vocab_size, limits::kVocab);
  SY_CHECK(m.d_model % m.n_heads == 0, "model.d_model (", m.d_model,
           ") must be divisible by model.n_heads (", m.n_heads, ")");
  unit_interval("model.dropout", m.dropout);
}

void validate_moe(const MoeConfig& e) {
  at_least("moe.num_experts", e.num_experts, 1);
  at_least("moe.top_k", e.top_k, 1);
  at_most("moe.num_experts", e.num_experts, limits::kExperts);
  for (const auto& [key, factor] :
       {std::pair<const char*, double>{"moe.capacity_factor", e.capacity_factor},
        {"moe.eval_capacity_factor", e.eval_capacity_factor}}) {
    SY_CHECK(factor <= limits::kCapacityFactor, key, " (", format_number(factor),
             ") is too large: at most ", format_number(limits::kCapacityFactor),
             " (a factor of moe.num_experts / moe.top_k already keeps every token)");
  }
  SY_CHECK(e.top_k <= e.num_experts, "moe.top_k (", e.top_k, ") must be <= moe.num_experts (",
           e.num_experts, ")");
  SY_CHECK(e.router != RouterKind::kSwitch || e.top_k == 1,
           "moe.router 'switch' routes each token to one ", "expert: moe.top_k (", e.top_k,
           ") must be 1");
  if (e.router == RouterKind::kExpertChoice) {
    SY_CHECK(e.capacity_factor > 0 && e.eval_capacity_factor > 0,
             "moe.router 'expert_choice' fills every expert to its capacity: moe.capacity_factor (",
             format_number(e.capacity_factor), ") and moe.eval_capacity_factor (",
             format_number(e.eval_capacity_factor), ") must be > 0");
  }
  at_least("moe.every", e.every, 0);
  // capacity_factor and eval_capacity_factor: any value; <= 0 means dropless.
  at_least("moe.min_capacity", e.min_capacity, 0);
  at_most("moe.min_capacity", e.min_capacity, limits::kMinCapacity);
  non_negative("moe.aux_loss_coef", e.aux_loss_coef);
  non_negative("moe.z_loss_coef", e.z_loss_coef);
  at_least("moe.d_ff", e.d_ff, 0);
  at_most("moe.d_ff", e.d_ff, limits::kWidth);
  unit_interval("moe.jitter_eps", e.jitter_eps);
  at_least("moe.a2a_chunks", e.a2a_chunks, 1);
  at_most("moe.a2a_chunks", e.a2a_chunks, limits::kA2aChunks);
  at_least("moe.shared_experts", e.shared_experts, 0);
  at_least("moe.shared_d_ff", e.shared_d_ff, 0);
  at_most("moe.shared_experts", e.shared_experts, limits::kExperts);
  at_most("moe.shared_d_ff", e.shared_d_ff, limits::kWidth);
  SY_CHECK(e.route_scale > 0, "moe.route_scale (", format_number(e.route_scale), ") must be > 0");
  non_negative("moe.bias_update_rate", e.bias_update_rate);
  // Scores, biases and groups act on the scores the top-k is taken from: switch and topk only.
  const bool scored = e.router == RouterKind::kSwitch || e.router == RouterKind::kTopK;
  const char* router = choice_name(e.router);
  SY_CHECK(e.score == ScoreKind::kSoftmax || scored,
           "moe.score 'sigmoid' applies to the switch and topk routers, not moe.router '", router,
           "'");
  SY_CHECK(!uses_score_bias(e.balance) || scored, "moe.balance '", choice_name(e.balance),
           "' adds a bias to the scores of the switch and topk routers, not moe.router '", router,
           "'");
  if (e.aux_loss_scope == AuxScope::kGlobalBatch) {
    SY_CHECK(e.aux_loss == AuxLossKind::kSwitch,
             "moe.aux_loss_scope 'global_batch' counts f over the global batch for the switch aux "
             "loss; moe.aux_loss is '",
             choice_name(e.aux_loss), "'");
    // The counting pass must route exactly as the training pass (Note [Global-batch aux loss]).
    SY_CHECK(
        e.router != RouterKind::kNoisyTopK && e.router != RouterKind::kRandom && e.jitter_eps == 0,
        "moe.aux_loss_scope 'global_batch' routes every micro-batch twice and needs routing "
        "that draws no random numbers: not moe.router '",
        choice_name(e.router), "' with moe.jitter_eps ", format_number(e.jitter_eps));
  }
  at_least("moe.route_groups", e.route_groups, 0);
  at_least("moe.route_group_limit", e.route_group_limit, 0);
  at_most("moe.route_groups", e.route_groups, limits::kExperts);
  at_most("moe.route_group_limit", e.route_group_limit, limits::kExperts);
  if (e.route_group_limit > 0) {
    SY_CHECK(e.route_groups > 1, "moe.route_group_limit (", e.route_group_limit,
             ") needs moe.route_groups > 1, the number of expert groups; it is ", e.route_groups);
  }
  if (e.route_groups > 1) {
    SY_CHECK(scored, "moe.route_groups limits the switch and topk routers, not moe.router '",
             router, "'");
    SY_CHECK(e.num_experts % e.route_groups == 0, "moe.num_experts (", e.num_experts,
             ") must be divisible by moe.route_groups (", e.route_groups, ")");
    SY_CHECK(e.route_group_limit >= 1 && e.route_group_limit <= e.route_groups,
             "moe.route_group_limit (", e.route_group_limit, ") must be in [1, moe.route_groups (",
             e.route_groups, ")]");
    const int64_t reachable = e.route_group_limit * (e.num_experts / e.route_groups);
    SY_CHECK(e.top_k <= reachable, "moe.top_k (", e.top_k, ") must be <= the experts in ",
             e.route_group_limit, " of ", e.route_groups, " groups (", reachable, ")");
  }
}

void validate_data(const DataConfig& d, const ModelConfig& m) {
  const bool token_file = d.format == DataFormat::kUint16 || d.format == DataFormat::kUint32;
  const char* format = choice_name(d.format);
  if (d.format != DataFormat::kText) {
    SY_CHECK(m.vocab_size > 0, "data.format '", format, "' needs model.vocab_size (the number of ",
             "token ids); it is ", m.vocab_size);
  }
  if (token_file) {
    SY_CHECK(!d.path.empty(), "data.format '", format, "' needs data.path: a flat binary file of ",
             format, " token ids");
  }
  SY_CHECK(d.format != DataFormat::kUint16 || m.vocab_size <= 65536,
           "data.format 'uint16' holds ids below ", "65536, but model.vocab_size is ", m.vocab_size,
           "; use uint32");
  SY_CHECK(d.val_path.empty() || token_file,
           "data.val_path is for token files (data.format uint16 or uint32), not '", format, "'");
  SY_CHECK(d.format != DataFormat::kRandom || d.path.empty(),
           "data.format 'random' reads no file; data.path is '", d.path, "'");
  at_least("data.batch_size", d.batch_size, 1);
  SY_CHECK(d.val_fraction > 0 && d.val_fraction < 1, "data.val_fraction (",
           format_number(d.val_fraction), ") must be in (0, 1)");
  at_least("data.synthetic_chars", d.synthetic_chars, 1);
  at_most("data.batch_size", d.batch_size, limits::kBatch);
  at_most("data.synthetic_chars", d.synthetic_chars, limits::kSyntheticChars);
  SY_CHECK(static_cast<int64_t>(d.tasks.size()) <= limits::kTasks, "data.tasks has ",
           d.tasks.size(), " tasks: too many, at most ", limits::kTasks);
}

void validate_train(const TrainConfig& t) {
  at_least("train.max_steps", t.max_steps, 1);
  SY_CHECK(t.lr > 0, "train.lr (", format_number(t.lr), ") must be > 0");
  non_negative("train.min_lr", t.min_lr);
  SY_CHECK(t.min_lr <= t.lr, "train.min_lr (", format_number(t.min_lr), ") must be <= train.lr (",
           format_number(t.lr), ")");
  at_least("train.warmup_steps", t.warmup_steps, 0);
  non_negative("train.weight_decay", t.weight_decay);
  unit_interval("train.beta1", t.beta1);
  unit_interval("train.beta2", t.beta2);
  non_negative("train.grad_clip", t.grad_clip);
  at_least("train.grad_accum", t.grad_accum, 1);
  at_most("train.grad_accum", t.grad_accum, limits::kGradAccum);
  at_least("train.eval_interval", t.eval_interval, 0);
  at_least("train.eval_iters", t.eval_iters, 0);
  at_most("train.eval_iters", t.eval_iters, limits::kEvalIters);
  at_least("train.log_interval", t.log_interval, 1);
  at_least("train.checkpoint_interval", t.checkpoint_interval, -1);  // -1: none
  at_least("train.keep_checkpoints", t.keep_checkpoints, 0);
  at_least("train.stop_at_step", t.stop_at_step, 0);
  SY_CHECK(t.stop_at_step == 0 || t.checkpoint_interval >= 0, "train.stop_at_step (",
           t.stop_at_step,
           ") ends the run with a checkpoint to resume from, but train.checkpoint_interval is -1 "
           "(none)");
  SY_CHECK(t.stop_at_step <= t.max_steps, "train.stop_at_step (", t.stop_at_step,
           ") is past train.max_steps (", t.max_steps, "): the run would end at max_steps first");
  at_least("train.skip_nonfinite", t.skip_nonfinite, 0);
}

void validate_debug(const DebugConfig& d) {
  for (const auto& [key, value] :
       {std::pair<const char*, int64_t>{"debug.crash_rank", d.crash_rank},
        {"debug.crash_step", d.crash_step},
        {"debug.stall_rank", d.stall_rank},
        {"debug.stall_step", d.stall_step},
        {"debug.nan_step", d.nan_step},
        {"debug.kill_in_save_step", d.kill_in_save_step}}) {
    at_least(key, value, -1);  // -1: off
  }
  at_least("debug.nan_rank", d.nan_rank, 0);
}

bool valid_task_name(const std::string& name) {
  return !name.empty() && name.find_first_not_of(
                              "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                              "0123456789_-") == std::string::npos;
}

// Expert ids of `key` (moe.frozen_experts, data.tasks[i].experts): in [0, E), each once.
void expert_ids(const std::string& key, const std::vector<int64_t>& ids, int64_t num_experts) {
  for (size_t i = 0; i < ids.size(); ++i) {
    SY_CHECK(ids[i] >= 0 && ids[i] < num_experts, key, "[", i, "] (", ids[i],
             ") is not an expert id: moe.num_experts is ", num_experts, ", so ids are 0 to ",
             num_experts - 1);
    for (size_t j = 0; j < i; ++j) {
      SY_CHECK(ids[j] != ids[i], key, " names expert ", ids[i], " twice");
    }
  }
}

// data.tasks and what depends on it (docs/tasks.md).
void validate_tasks(const Config& c) {
  const std::vector<TaskConfig>& tasks = c.data.tasks;
  const MoeConfig& e = c.moe;
  SY_CHECK(e.task_masks == TaskMaskKind::kFixed || !tasks.empty(),
           "moe.task_masks 'learned' learns a gate per task: it needs data.tasks");
  if (tasks.empty()) return;
  SY_CHECK(c.data.path.empty() && c.data.format == DataFormat::kText,
           "data.tasks gives each task its corpus; data.path ('", c.data.path,
           "') and data.format ('", choice_name(c.data.format), "') must be left unset");
  bool any_weight = false, any_text = false, any_tokens = false, any_mask = false;
  for (size_t i = 0; i < tasks.size(); ++i) {
    const TaskConfig& t = tasks[i];
    const std::string key = str("data.tasks[", i, "]");
    SY_CHECK(valid_task_name(t.name), key, ".name ('", t.name,
             "') must be letters, digits, '_' or '-' (it names the task's metrics and head)");
    for (size_t j = 0; j < i; ++j) {
      SY_CHECK(tasks[j].name != t.name, key, ".name: task '", t.name, "' is declared twice");
    }
    SY_CHECK(t.path.empty() != (t.synthetic < 0), key, " (", t.name, ") needs exactly one corpus: ",
             "path (a file) or synthetic (a language of the embedded corpus, 0 to ",
             kSyntheticLanguages - 1, ")");
    SY_CHECK(t.synthetic < kSyntheticLanguages, key, ".synthetic (", t.synthetic,
             ") must be a language of the embedded corpus, 0 to ", kSyntheticLanguages - 1);
    SY_CHECK(t.format != DataFormat::kRandom, key, ".format 'random' is not a task corpus; use ",
             "text, uint16 or uint32");
    SY_CHECK(t.format == DataFormat::kText || !t.path.empty(), key, ".format '",
             choice_name(t.format), "' needs a path (a file of token ids)");
    (t.format == DataFormat::kText ? any_text : any_tokens) = true;
    SY_CHECK(t.weight >= 0, key, ".weight (", format_number(t.weight), ") must be >= 0");
    any_weight = any_weight || t.weight > 0;
    if (!t.experts.empty()) {
      any_mask = true;
      SY_CHECK(e.every > 0, key, ".experts masks the experts, but the model has no MoE layer ",
               "(moe.every is 0)");
      expert_ids(key + ".experts", t.experts, e.num_experts);
      const int64_t k = e.router == RouterKind::kDense ? e.num_experts : e.top_k;
      SY_CHECK(static_cast<int64_t>(t.experts.size()) >= k, key, ".experts allows ",
               t.experts.size(), " expert(s), fewer than the ", k,
               " each token chooses (moe.top_k)");
      if (e.route_groups > 1 && e.num_experts % e.route_groups == 0) {
        // A token picks from route_group_limit groups, those holding its allowed experts first;
        // the limit's worth of groups with the fewest of them must still hold k.
        std::vector<int64_t> per_group(static_cast<size_t>(e.route_groups), 0);
        for (int64_t id : t.experts) {
          if (id >= 0 && id < e.num_experts) ++per_group[id / (e.num_experts / e.route_groups)];
        }
        std::vector<int64_t> used;
        for (int64_t n : per_group) {
          if (n > 0) used.push_back(n);
        }
        std::sort(used.begin(), used.end());
        int64_t reachable = 0;  // in the route_group_limit groups holding the fewest
        for (size_t g = 0; g < std::min(used.size(), static_cast<size_t>(e.route_group_limit));
             ++g) {
          reachable += used[g];
        }
        SY_CHECK(reachable >= k, key, ".experts spreads over ", used.size(), " of the ",
                 e.route_groups, " expert groups (moe.route_groups); the ", e.route_group_limit,
                 " group(s) a token may use (moe.route_group_limit) can hold only ", reachable,
                 " of them, fewer than moe.top_k (", k, ")");
      }
    }
  }
  SY_CHECK(any_weight, "data.tasks: at least one task needs a weight > 0 (a task of weight 0 is ",
           "only evaluated)");
  SY_CHECK(!(any_text && any_tokens), "data.tasks mixes text tasks with token files: the tasks ",
           "share one vocabulary, so they must all be text or all token files");
  SY_CHECK(!any_tokens || c.model.vocab_size > 0,
           "data.tasks with token files needs model.vocab_size (the number of token ids)");
  if (any_mask) {
    const bool per_token = e.router == RouterKind::kSwitch || e.router == RouterKind::kTopK ||
                           e.router == RouterKind::kTopKLogits ||
                           e.router == RouterKind::kNoisyTopK;
    SY_CHECK(per_token, "data.tasks expert masks act on the scores the top-k is taken from: ",
             "moe.router switch, topk, topk_logits or noisy_topk, not '", choice_name(e.router),
             "'");
  }
  if (any_mask || e.task_masks == TaskMaskKind::kLearned) {
    SY_CHECK(
        e.aux_loss_scope != AuxScope::kGlobalBatch,
        "data.tasks expert masks (fixed or learned) route by task, and the aux loss is counted "
        "over each task's allowed experts per micro_batch or sequence; moe.aux_loss_scope "
        "'global_batch' is not supported with them");
  }
}

// model.kind and train.objective go together; data.mask_prob; the seq2seq keys.
void validate_objective(const Config& c) {
  const bool encoder = c.model.kind == ModelKind::kEncoder;
  const bool mlm = c.train.objective == Objective::kMlm;
  SY_CHECK(encoder == mlm, "model.kind '", choice_name(c.model.kind), "' trains with ",
           encoder ? "train.objective mlm (masked tokens: it sees both sides)"
           : c.model.kind == ModelKind::kDecoder
               ? "train.objective lm (next tokens: it sees only the past)"
               : "train.objective lm (each target token from the source and the target's past)",
           ", not '", choice_name(c.train.objective), "'");
  SY_CHECK(c.data.mask_prob > 0 && c.data.mask_prob < 1, "data.mask_prob (",
           format_number(c.data.mask_prob), ") must be in (0, 1)");
  for (const auto& [key, value] :
       {std::pair<const char*, int64_t>{"data.source_language", c.data.source_language},
        {"data.target_language", c.data.target_language}}) {
    SY_CHECK(value >= 0 && value < kSyntheticLanguages, key, " (", value,
             ") is not a language of the embedded corpus: 0 to ", kSyntheticLanguages - 1);
  }
  if (c.model.kind != ModelKind::kEncoderDecoder) {
    SY_CHECK(c.moe.where == MoeWhere::kBoth, "moe.where '", choice_name(c.moe.where),
             "' chooses between the stacks of model.kind encoder_decoder; model.kind '",
             choice_name(c.model.kind), "' has one stack (leave moe.where at both)");
    return;
  }
  SY_CHECK(c.data.format == DataFormat::kText,
           "model.kind encoder_decoder trains on pairs of sequences: data.format must be text (a "
           "file of source<TAB>target lines in data.path, or the embedded task of data.pairs), "
           "not '",
           choice_name(c.data.format), "'");
  SY_CHECK(c.data.tasks.empty(),
           "data.tasks is not supported with model.kind encoder_decoder (it trains on one set of "
           "pairs: data.path or data.pairs)");
  SY_CHECK(c.data.pairs != PairTask::kTranslate || !c.data.path.empty() ||
               c.data.source_language != c.data.target_language,
           "data.pairs 'translate' needs two languages: data.source_language and "
           "data.target_language are both ",
           c.data.source_language);
  SY_CHECK(c.model.block_size >= 2, "model.block_size (", c.model.block_size,
           ") must be >= 2 for model.kind encoder_decoder (a target token and its end)");
}

// The expert-parallel layout; world_size > 0 also checks it against the actual ranks.
void validate_parallel(const Config& c, int world_size) {
  const int64_t ep_size = c.parallel.ep_size;
  const int64_t num_experts = c.moe.num_experts;
  at_least("parallel.ep_size", ep_size, 0);
  at_most("parallel.ep_size", ep_size, limits::kExperts);
  non_negative("parallel.timeout_s", c.parallel.timeout_s);
  at_least("parallel.ranks_per_node", c.parallel.ranks_per_node, 0);
  at_most("parallel.ranks_per_node", c.parallel.ranks_per_node, limits::kExperts);
  if (c.parallel.a2a == A2aKind::kHierarchical) {
    SY_CHECK(c.parallel.ranks_per_node >= 1,
             "parallel.a2a hierarchical needs parallel.ranks_per_node (the ranks of one node, "
             ">= 1), got ",
             c.parallel.ranks_per_node);
    SY_CHECK(ep_size == 0 || ep_size % c.parallel.ranks_per_node == 0, "parallel.ranks_per_node (",
             c.parallel.ranks_per_node, ") must divide parallel.ep_size (", ep_size,
             ") for parallel.a2a hierarchical");
  }
  SY_CHECK(!c.moe.dedup_dispatch || c.parallel.a2a == A2aKind::kHierarchical,
           "moe.dedup_dispatch sends each token once per node of the two-level all-to-all: it "
           "needs parallel.a2a hierarchical (with parallel.ranks_per_node), got parallel.a2a ",
           choice_name(c.parallel.a2a));
  SY_CHECK(ep_size == 0 || num_experts % ep_size == 0, "moe.num_experts (", num_experts,
           ") must be divisible by parallel.ep_size (", ep_size, ")");
  if (world_size <= 0) return;
  if (ep_size == 0) {
    SY_CHECK(num_experts % world_size == 0, "moe.num_experts (", num_experts,
             ") must be divisible by the world size (", world_size,
             "), since parallel.ep_size is 0 (one expert-parallel group over all ranks)");
    SY_CHECK(
        c.parallel.a2a != A2aKind::kHierarchical || world_size % c.parallel.ranks_per_node == 0,
        "parallel.ranks_per_node (", c.parallel.ranks_per_node, ") must divide the world size (",
        world_size, ") for parallel.a2a hierarchical, since parallel.ep_size is 0");
    return;
  }
  SY_CHECK(world_size % ep_size == 0, "parallel.ep_size (", ep_size,
           ") must divide the world size (", world_size, ")");
}

// The largest products of sizes the run computes (element counts of its biggest tensors, tokens
// per step), each within 64 bits; each key is bounded on its own above, but not their product.
void validate_products(const Config& c, int world_size) {
  const ModelConfig& m = c.model;
  const int64_t rows = m.kind == ModelKind::kEncoderDecoder ? 2 : 1;  // source + target halves
  checked_product({{"data.batch_size", c.data.batch_size},
                   {"model.n_heads", m.n_heads},
                   {"model.block_size", m.block_size},
                   {"model.block_size", m.block_size}},
                  "the attention scores of a micro-batch");
  if (m.vocab_size > 0) {
    checked_product({{"data.batch_size", c.data.batch_size},
                     {"model.block_size", m.block_size},
                     {"model.vocab_size", m.vocab_size}},
                    "the logits of a micro-batch");
  }
  const int64_t d_ff = c.moe.d_ff > 0 ? c.moe.d_ff : m.d_ff;
  checked_product({{"model.n_layers", m.n_layers * rows},
                   {"moe.num_experts", c.moe.num_experts},
                   {"model.d_model", m.d_model},
                   {c.moe.d_ff > 0 ? "moe.d_ff" : "model.d_ff", d_ff},
                   {"3 (the expert matrices)", 3}},
                  "the routed experts' weights");
  checked_product({{"data.batch_size", c.data.batch_size},
                   {"model.block_size", m.block_size * rows},
                   {"train.grad_accum", c.train.grad_accum},
                   {"the world size", std::max(world_size, 1)}},
                  "the tokens of a step");
}

}  // namespace

void validate(const Config& config, int world_size) {
  validate_model(config.model);
  validate_moe(config.moe);
  SY_CHECK(config.moe.every <= config.model.n_layers, "moe.every (", config.moe.every,
           ") is larger than model.n_layers (", config.model.n_layers,
           "): no block would be an MoE block; write moe.every 0 for a dense model");
  SY_CHECK(config.moe.aux_loss_scope != AuxScope::kGlobalBatch || config.model.dropout == 0,
           "moe.aux_loss_scope 'global_batch' routes every micro-batch twice and needs a forward "
           "without random numbers: model.dropout must be 0, not ",
           config_detail::format_number(config.model.dropout));
  validate_data(config.data, config.model);
  validate_tasks(config);
  validate_objective(config);
  expert_ids("moe.frozen_experts", config.moe.frozen_experts, config.moe.num_experts);
  SY_CHECK(config.moe.frozen_experts.empty() || config.moe.every > 0,
           "moe.frozen_experts freezes experts, but the model has no MoE layer (moe.every is 0)");
  for (const auto* list : {&config.train.trainable, &config.train.frozen}) {
    for (size_t i = 0; i < list->size(); ++i) {
      SY_CHECK(!(*list)[i].empty(),
               list == &config.train.frozen ? "train.frozen" : "train.trainable", "[", i,
               "] is an empty pattern");
    }
  }
  validate_train(config.train);
  validate_products(config, world_size);
  SY_CHECK(
      !config.train.cuda_graph || config.train.activation_checkpointing == Recompute::kNone,
      "train.activation_checkpointing '", choice_name(config.train.activation_checkpointing),
      "' rewinds the random generators on the host for the recomputation, which a CUDA "
      "graph cannot replay: set train.cuda_graph false or train.activation_checkpointing none");
  SY_CHECK(!config.train.cuda_graph || config.moe.expert_gemm != ExpertGemm::kTrimmed,
           "moe.expert_gemm 'trimmed' reads each step's expert loads on the host to size the "
           "buffer, which a CUDA graph cannot replay: set train.cuda_graph false or "
           "moe.expert_gemm auto (a captured step keeps the capacity-sized buffer)");
  validate_parallel(config, world_size);
  validate_debug(config.debug);
  if (world_size > 0) {  // fault injection aimed at a rank the job has
    const DebugConfig& d = config.debug;
    for (const auto& [key, rank, on] : {std::tuple<const char*, int64_t, bool>{
                                            "debug.crash_rank", d.crash_rank, d.crash_step >= 0},
                                        {"debug.stall_rank", d.stall_rank, d.stall_step >= 0},
                                        {"debug.nan_rank", d.nan_rank, d.nan_step >= 0}}) {
      SY_CHECK(!on || rank < world_size, key, " (", rank, ") is not a rank of this job: it has ",
               world_size, " rank(s), 0 to ", world_size - 1);
    }
  }
}

}  // namespace sy
