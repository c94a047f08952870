// Typed configuration: plain structs with defaults, loaded from YAML files and `--set` overrides.
//
// Every key lives in one section (model, moe, data, train, parallel, debug). load_config() merges
// the files in order (later wins), applies the overrides, rejects unknown keys (suggesting the
// nearest valid one), reports type errors with the full key, the expected type and the file and
// line, and then checks the cross-field rules in validate(). docs/config.md lists every key.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "config/choices.h"

namespace sy {

struct ModelConfig {
  // decoder: causal self-attention (a GPT LM); encoder: bidirectional self-attention, trained
  // with train.objective mlm; encoder_decoder: an encoder and a causal decoder with
  // cross-attention, n_layers blocks each, trained on pairs of sequences (docs/models.md).
  ModelKind kind = ModelKind::kDecoder;
  int64_t n_layers = 2;
  int64_t d_model = 64;
  int64_t n_heads = 4;
  int64_t d_ff = 256;       // hidden size of the dense FFN (and of each expert, see moe.d_ff)
  int64_t block_size = 64;  // context length T
  double dropout = 0.0;
  InitKind init = InitKind::kNormal;  // normal (N(0, 0.02)) | kaiming (kaiming-normal, as makeMoE)
  bool bias = true;                   // biases in the linear layers
  int64_t vocab_size = 0;             // 0: taken from the data (tokenizer); otherwise must match it
};

struct MoeConfig {
  int64_t num_experts = 8;
  int64_t top_k = 2;
  // "switch" (top-1 of softmax, raw probability), "topk" (softmax then top-k, GShard),
  // "topk_logits" (top-k of logits then softmax over the kept, makeMoE/Mixtral),
  // "noisy_topk" (Shazeer's learned noise, then as topk_logits), "dense" (softmax over all
  // experts, every expert sees every token), "hash" (token id hash), "random".
  RouterKind router = RouterKind::kTopK;
  bool renormalize = true;        // "topk": rescale the kept weights to sum to 1
  int64_t every = 1;              // every k-th block (1-based: blocks k, 2k, ...) is MoE; 0: none
  double capacity_factor = 1.25;  // training; <= 0: dropless
  double eval_capacity_factor = 2.0;
  int64_t min_capacity = 4;
  double aux_loss_coef = 0.01;
  double z_loss_coef = 0.001;
  Activation activation = Activation::kGelu;  // gelu | relu | swiglu
  int64_t d_ff = 0;                           // expert hidden size; 0: model.d_ff
  double jitter_eps = 0.0;  // multiplicative jitter U(1-eps, 1+eps) on the router input
  SlotPriority priority =
      SlotPriority::kToken;  // slot order: token (GShard) | score (batch-prioritized)
  // Expert GEMMs (docs/bench.md#expert-gemms-batched-grouped-or-trimmed): "batched" (one bmm over
  // the padded [E, C, H] buffer in capacity mode, one matmul per expert in dropless mode),
  // "grouped" (only the kept rows, packed by expert: one grouped GEMM where LibTorch has one for
  // the device and dtype, i.e. bf16 on CUDA with LibTorch >= 2.8, else one matmul per expert;
  // capacity mode on one EP rank and dropless), "trimmed" (the batched bmm over a buffer cut each
  // step to the largest kept load of any expert: Note [Trimmed expert buffer] in moe_layer.cpp),
  // "auto" (on CUDA with the fused kernels and one EP rank, with a capacity factor above 1 or
  // dropless: trimmed or grouped, whichever the step's loads favour; otherwise grouped in dropless
  // mode, and in capacity mode grouped with the fused kernels, a factor above 1, one EP rank and
  // the grouped GEMM available, else batched).
  ExpertGemm expert_gemm = ExpertGemm::kAuto;
  // On CUDA: the router's softmax/top-k/log-sum-exp, the plan's slot count, the permute, the
  // combine and the experts' bias + activation run as fused kernels (Note [Fused MoE kernels] in
  // src/moe/fused.h); false: LibTorch ops only, as on the CPU. Same results up to float rounding.
  bool fused_kernels = true;
  // The expert-parallel exchanges in this many chunks (Note [Chunked all-to-all] in
  // moe_layer.cpp): on CUDA the experts start on the first chunk while the next is in flight and
  // each chunk's combine overlaps the next chunk's experts. 1: one exchange each way. No effect
  // with one EP rank. The same results up to float rounding of the expert weight gradients.
  int64_t a2a_chunks = 1;
  // With parallel.a2a hierarchical, in capacity mode: the dispatch sends each token once per
  // destination node instead of once per slot (Note [Node-deduplicated dispatch] in
  // moe/dedup_dispatch.h): fewer bytes across nodes, most with group-limited routing.
  bool dedup_dispatch = false;
  // encoder_decoder models: whether PAD positions are routed like other tokens (true) or left
  // out of the routed experts (false: no capacity, no aux/z loss, no load; Note [Padding out of
  // routing] in moe/moe_layer.h). Other model kinds have no padding.
  bool route_padding = false;

  // DeepSeekMoE / DeepSeek-V3 / Qwen-MoE designs (docs/moe.md).
  int64_t shared_experts = 0;  // dense FFNs beside the routed experts, applied to every token
  int64_t shared_d_ff = 0;     // hidden size of each shared expert; 0: the routed experts' size
  // Router scores: softmax over the experts, or an independent sigmoid per expert (the kept
  // scores then renormalized to sum 1 when moe.renormalize). switch and topk routers only.
  ScoreKind score = ScoreKind::kSoftmax;
  double route_scale = 1.0;  // gate weights multiplied by this (after renormalization)
  // Balancing: aux (the aux loss, moe.aux_loss_coef), bias (a per-expert bias added to the scores
  // for the top-k choice only, moved by bias_update_rate * sign(mean load - load) after each
  // optimizer step, the load counted over the global batch), aux+bias, or none.
  BalanceKind balance = BalanceKind::kAux;
  double bias_update_rate = 0.001;
  // The aux loss: switch (E * sum_i f_i P_i) or variance (sum_i (c_i - mean c)^2 / E over the
  // column sums c of the routing weights); counted per micro_batch, per sequence (averaged), or
  // (switch) with f over the global_batch: every micro-batch of the step on every rank.
  AuxLossKind aux_loss = AuxLossKind::kSwitch;
  AuxScope aux_loss_scope = AuxScope::kMicroBatch;
  // Group-limited routing (DeepSeek-V3): the experts form route_groups equal groups; each token
  // picks its k experts from the route_group_limit groups with the largest sum of their two best
  // scores. 0: no limit.
  int64_t route_groups = 0;
  int64_t route_group_limit = 0;
  // The experts of an MoE layer that train.init_from adds beyond the source run's (more experts
  // than it had): copy (expert e starts as source expert e mod E_source, plus noise of 1% of the
  // weights' std, its router row likewise) or random (this model's own initialisation).
  NewExpertInit new_expert_init = NewExpertInit::kCopy;
  // Experts (global ids) whose weights do not train; under EP each rank freezes the ids it holds
  // (Note [Freezing] in src/train/freeze.h).
  std::vector<int64_t> frozen_experts;
  // data.tasks expert masks: fixed (a task's tokens are routed only to its experts) or learned (a
  // trainable gate per task and expert, started open for the task's experts and nearly shut for
  // the others; docs/tasks.md).
  TaskMaskKind task_masks = TaskMaskKind::kFixed;
  // model.kind encoder_decoder: the stacks whose every moe.every-th block is MoE.
  MoeWhere where = MoeWhere::kBoth;
};

// The languages of the embedded synthetic corpus (src/data/synthetic.cpp), which data.tasks can
// take one by one (synthetic: 0 ... kSyntheticLanguages - 1).
inline constexpr int64_t kSyntheticLanguages = 4;

// model.kind encoder_decoder: the vocabulary is the pairs' characters, ids 0 .. num_chars - 1,
// then PAD, BOS and EOS (Note [Seq2seq batches] in data/pairs.h).
inline constexpr int64_t kSeq2SeqSpecialIds = 3;
struct Seq2SeqIds {
  int64_t pad, bos, eos;
};
inline Seq2SeqIds seq2seq_ids(int64_t num_chars) {
  return {num_chars, num_chars + 1, num_chars + 2};
}

// One task of a multi-task run (data.tasks; docs/tasks.md). Its corpus is a text file, a token
// file, or one language of the embedded synthetic corpus; its tokens may be limited to some
// experts and scored by an LM head of its own.
struct TaskConfig {
  std::string name;                       // [A-Za-z0-9_-]+, unique; names metrics and heads
  std::string path;                       // text or token file; empty: `synthetic`
  DataFormat format = DataFormat::kText;  // text | uint16 | uint32 (of `path`)
  int64_t synthetic = -1;                 // a language of the embedded corpus, 0-3
  double weight = 1.0;                    // sampling weight; 0: evaluated, never trained on
  std::vector<int64_t> experts;           // the task's expert mask (global ids); empty: all
  TaskHead head = TaskHead::kShared;      // own: a task-specific LM head (heads.<name>)
  bool operator==(const TaskConfig& o) const {
    return name == o.name && path == o.path && format == o.format && synthetic == o.synthetic &&
           weight == o.weight && experts == o.experts && head == o.head;
  }
};

struct DataConfig {
  // "text": data.path tokenized by characters (empty path: the embedded synthetic corpus);
  // "uint16" | "uint32": data.path is a flat binary file of token ids (nanoGPT's train.bin);
  // "random": uniformly random tokens (benchmarks). All but text need model.vocab_size.
  DataFormat format = DataFormat::kText;
  std::string path;         // text file; empty: the embedded synthetic corpus
  std::string val_path;     // token files: a separate validation file (nanoGPT's val.bin)
  int64_t batch_size = 16;  // sequences per rank per micro-batch
  double val_fraction = 0.1;
  int64_t synthetic_chars = 200000;  // size of the embedded synthetic corpus (of each language)
  // Several tasks instead of data.path: every sequence of a batch comes from one task, drawn by
  // the tasks' weights; the task's id travels with it to the routers and the LM head, and eval
  // reports each task's loss. Empty: one corpus (data.path / data.format).
  std::vector<TaskConfig> tasks;
  // train.objective mlm: the share of each sequence's positions that are masked (exactly
  // max(1, round(mask_prob * block_size)) per sequence); of those 80% become the mask token, 10%
  // a random token, 10% stay.
  double mask_prob = 0.15;
  // model.kind encoder_decoder without data.path: the embedded task of sentence pairs
  // (Note [Seq2seq batches] in data/pairs.h): translate (a sentence of source_language to the
  // same sentence in target_language) or reverse (a sentence of source_language to its
  // characters in reverse order). With data.path: a text file of "source<TAB>target" lines.
  PairTask pairs = PairTask::kTranslate;
  int64_t source_language = 0;
  int64_t target_language = 1;
};

struct TrainConfig {
  // lm: predict every next token (model.kind decoder); mlm: predict the masked tokens
  // (model.kind encoder), with data.mask_prob.
  Objective objective = Objective::kLm;
  int64_t max_steps = 200;
  double lr = 1e-3;
  double min_lr = 1e-4;
  int64_t warmup_steps = 20;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double grad_clip = 1.0;  // 0: no clipping
  int64_t grad_accum = 1;
  int64_t eval_interval = 50;  // 0: no evaluation
  int64_t eval_iters = 10;
  int64_t log_interval = 10;
  int64_t seed = 1337;
  DeviceKind device = DeviceKind::kAuto;  // cpu | cuda | auto
  Precision dtype = Precision::kFp32;     // fp32 | bf16 (autocast, CUDA only)
  // Storage of the parameters: "fp32", or "bf16" for all but the routers', with fp32 master
  // weights in the optimizer (no per-forward weight cast; gradients in bf16).
  Precision param_dtype = Precision::kFp32;
  std::string out_dir = "runs/default";
  // Checkpoints (docs/checkpoints.md): every checkpoint_interval steps (0: only at the end; -1:
  // none, for benchmark runs) under out_dir/checkpoints/step_<N>/, keeping the newest
  // keep_checkpoints (0: all).
  int64_t checkpoint_interval = 0;
  int64_t keep_checkpoints = 3;
  // End the run after this many steps (with a checkpoint), as when a job's time runs out; the
  // schedule still runs to max_steps, so `--resume` continues the same run. 0: run to max_steps.
  int64_t stop_at_step = 0;
  // Steps whose loss or gradient norm is NaN/Inf that may be skipped (no optimizer step) before
  // the run stops; 0: the first one stops it.
  int64_t skip_nonfinite = 0;
  // CUDA only: capture the step's device work (forward, backward, gradient sync, norm) as a CUDA
  // graph after the first step and replay it (docs/bench.md#cuda-graphs). One rank, static shapes.
  bool cuda_graph = false;
  // CUDA only: fp32 matrix products on tensor cores in TF32 (10-bit mantissa inputs, fp32
  // accumulation), as PyTorch's allow_tf32; false keeps full fp32 products.
  bool tf32 = false;
  // TensorBoard event files (scalars and per-layer expert load) in out_dir beside metrics.jsonl,
  // written by world rank 0 (src/common/tfevents.h).
  bool tensorboard = false;
  // Start from the weights of a finished run (its folder's model.pt, or a model.pt file): not its
  // optimizer, step or data position (that is --resume). Any EP layout; more experts than it had
  // (moe.new_expert_init); a dense run into an MoE config (upcycling: every expert of an MoE block
  // starts as that block's dense FFN, the router fresh). src/train/init_from.h.
  std::string init_from;
  // Which parameters train (Note [Freezing] in src/train/freeze.h): names as `switchyard params`
  // lists them, `*` matching any characters; a pattern also matches every parameter under a
  // module it names (lm_head, blocks.*.moe.experts). Empty trainable: every parameter; frozen ones
  // are then taken out. Frozen parameters get no gradient, no optimizer state and no all-reduce.
  std::vector<std::string> trainable;
  std::vector<std::string> frozen;
  // Recompute activations in the backward instead of keeping them: none, moe (the experts' hidden
  // activations of every MoE layer; the all-to-all is not repeated) or block (every block's
  // activations but its input; under EP the recomputed MoE layer repeats its all-to-all).
  // Note [Activation checkpointing] in src/common/recompute.h.
  Recompute activation_checkpointing = Recompute::kNone;
};

struct ParallelConfig {
  int64_t ep_size = 0;  // expert-parallel group size; 0: the world size
  // A collective that has not completed after timeout_s seconds ends the job with a dump of
  // every rank's in-flight operation (docs/parallel.md#faults); 0: no watchdog.
  double timeout_s = 300;
  bool check_splits = false;  // cross-check every all-to-all's send/recv splits before it runs
  // The EP all-to-all: flat, or hierarchical (within each node of ranks_per_node consecutive
  // ranks, then across nodes; Note [Two-level all-to-all] in parallel/hierarchical_comm.h).
  A2aKind a2a = A2aKind::kFlat;
  int64_t ranks_per_node = 0;  // hierarchical: ranks per node, dividing the EP group's size
  // make_groups' ranks_per_node: this one when hierarchical, 0 (flat) otherwise.
  int64_t two_level_ranks() const { return a2a == A2aKind::kHierarchical ? ranks_per_node : 0; }
};

// Fault injection for tests (docs/config.md#debug); everything off by default. Steps count
// steps done: crash_step 5 fails in the step that would make it 6.
struct DebugConfig {
  int64_t crash_rank = -1;  // this rank fails at crash_step ...
  int64_t crash_step = -1;
  CrashMode crash_mode = CrashMode::kThrow;  // ... by throw (an error) or exit (dies, no cleanup)
  int64_t stall_rank = -1;                   // this rank stops making progress at stall_step
  int64_t stall_step = -1;
  int64_t nan_rank = 0;  // this rank's loss becomes NaN at nan_step
  int64_t nan_step = -1;
  int64_t kill_in_save_step = -1;  // every rank dies midway through the save at this step
};

// Upper bounds of the size keys, checked by validate() (docs/config.md#limits): generous but
// finite, so that an impossible size is refused before anything is allocated and the products of
// sizes the run computes stay within 64 bits.
namespace limits {
inline constexpr int64_t kLayers = 1024;                      // model.n_layers (per stack)
inline constexpr int64_t kWidth = int64_t{1} << 20;           // d_model, n_heads, d_ff, moe d_ffs
inline constexpr int64_t kBlock = int64_t{1} << 20;           // model.block_size
inline constexpr int64_t kVocab = int64_t{1} << 31;           // model.vocab_size
inline constexpr int64_t kExperts = 65536;                    // experts, shared experts, groups, EP
inline constexpr int64_t kBatch = int64_t{1} << 20;           // data.batch_size
inline constexpr int64_t kSyntheticChars = int64_t{1} << 32;  // data.synthetic_chars
inline constexpr int64_t kTasks = 1024;                       // entries of data.tasks
inline constexpr int64_t kGradAccum = int64_t{1} << 16;       // train.grad_accum
inline constexpr int64_t kEvalIters = int64_t{1} << 20;       // train.eval_iters
inline constexpr int64_t kMinCapacity = int64_t{1} << 30;     // moe.min_capacity
inline constexpr int64_t kA2aChunks = 64;                     // moe.a2a_chunks
// moe.capacity_factor and eval_capacity_factor: a factor of num_experts / top_k already keeps
// every token (the capacity is clamped to the tokens a rank holds), so this never binds a run.
inline constexpr double kCapacityFactor = 65536;
inline constexpr int64_t kRanks = 1024;                  // --ranks: in-process ranks, a thread each
inline constexpr int64_t kBenchReps = int64_t{1} << 20;  // bench --reps and --warmup
}  // namespace limits

struct Config {
  ModelConfig model;
  MoeConfig moe;
  DataConfig data;
  TrainConfig train;
  ParallelConfig parallel;
  DebugConfig debug;
};

// Loads and merges `files` in order, then applies `overrides` ("section.key=value", YAML
// scalars), then validate(). Throws sy::Error naming the file, key and what was expected.
Config load_config(const std::vector<std::string>& files,
                   const std::vector<std::string>& overrides);

// As load_config() for one YAML document held in memory (a config saved in a checkpoint, tests);
// `source_name` stands for the file name in error messages.
Config load_config_from_string(const std::string& yaml_text, const std::string& source_name,
                               const std::vector<std::string>& overrides = {});

// Cross-field rules, written as sentences ("moe.top_k (3) must be <= moe.num_experts (2)").
// world_size > 0 also checks the parallel layout against it.
void validate(const Config& config, int world_size = 0);

// The resolved config as YAML, every key present (printed at start, saved in the run folder).
std::string to_yaml(const Config& config);

// A config as YAML text (to_yaml's, a checkpoint's config.yaml) as "section.key" -> value pairs
// in document order, each value in YAML flow style (a list on one line). Throws on text that is
// not YAML.
std::vector<std::pair<std::string, std::string>> flatten_config_yaml(const std::string& yaml_text);

// Every valid key, "section.key", in declaration order (for docs, suggestions and tests).
std::vector<std::string> config_keys();

}  // namespace sy
