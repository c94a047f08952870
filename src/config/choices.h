// The config keys whose value is one of a fixed set of words, as enums, and their names.
//
// Note [Typed choices]: a key such as moe.router is parsed once, when the config is loaded
// (config.cpp reads every enum field through Choices<E>), so an unknown word is an error naming
// the file, line and key, and the code that uses the value switches on an enum instead of
// comparing strings. Choices<E>::names lists the words in the order of E's enumerators;
// to_yaml() prints the same words back.
#pragma once

#include <array>
#include <cstddef>
#include <string>

#include "common/device_kind.h"
#include "common/error.h"

namespace sy {

enum class InitKind { kNormal, kKaiming };  // model.init
// model.kind: a causal decoder (GPT), a bidirectional encoder (BERT-style, trained by MLM), or
// both with cross-attention (a seq2seq model trained on pairs of sequences).
enum class ModelKind { kDecoder, kEncoder, kEncoderDecoder };
enum class MoeWhere { kEncoder, kDecoder, kBoth };  // moe.where: the stacks with MoE blocks
// data.pairs: the embedded seq2seq task: a sentence translated to another synthetic language, or
// its characters reversed.
enum class PairTask { kTranslate, kReverse };
// train.activation_checkpointing: which activations the backward recomputes instead of keeping.
enum class Recompute { kNone, kMoe, kBlock };
enum class Objective { kLm, kMlm };  // train.objective: next-token or masked-token prediction
// moe.router; the variants are described in src/moe/router.h.
enum class RouterKind {
  kSwitch,
  kTopK,
  kTopKLogits,
  kNoisyTopK,
  kDense,
  kHash,
  kRandom,
  kExpertChoice
};
enum class Activation { kGelu, kRelu, kSwiGlu };  // moe.activation (experts and dense FFNs)
enum class SlotPriority { kToken, kScore };       // moe.priority: slot order within an expert
enum class ExpertGemm { kAuto, kBatched, kGrouped, kTrimmed };  // moe.expert_gemm
enum class DataFormat { kText, kUint16, kUint32, kRandom };     // data.format
enum class Precision { kFp32, kBf16 };                          // train.dtype, train.param_dtype
enum class CrashMode { kThrow, kExit };                         // debug.crash_mode
enum class ScoreKind { kSoftmax, kSigmoid };  // moe.score: router scores from the logits
// moe.balance: what keeps the experts' loads even: the aux loss, a per-expert selection bias
// (aux-loss-free, DeepSeek-V3), both, or nothing.
enum class BalanceKind { kAux, kBias, kAuxBias, kNone };
enum class AuxLossKind { kSwitch, kVariance };  // moe.aux_loss
// moe.aux_loss_scope: the tokens f counts (and P, but for global_batch).
enum class AuxScope { kMicroBatch, kSequence, kGlobalBatch };
// parallel.a2a: the expert-parallel all-to-all in one level, or two (Note [Two-level all-to-all])
enum class A2aKind { kFlat, kHierarchical };
// moe.new_expert_init: the experts train.init_from adds beyond the source run's
enum class NewExpertInit { kCopy, kRandom };
// moe.task_masks: a task's expert mask (data.tasks experts) as a fixed rule, or as the starting
// value of a trainable per-task gate over the experts.
enum class TaskMaskKind { kFixed, kLearned };
enum class TaskHead { kShared, kOwn };  // data.tasks head: the model's LM head, or the task's own

template <typename E> struct Choices;  // names: the words of E, indexed by the enumerator's value

template <> struct Choices<InitKind> {
  static constexpr std::array<const char*, 2> names{"normal", "kaiming"};
};
template <> struct Choices<ModelKind> {
  static constexpr std::array<const char*, 3> names{"decoder", "encoder", "encoder_decoder"};
};
template <> struct Choices<MoeWhere> {
  static constexpr std::array<const char*, 3> names{"encoder", "decoder", "both"};
};
template <> struct Choices<PairTask> {
  static constexpr std::array<const char*, 2> names{"translate", "reverse"};
};
template <> struct Choices<A2aKind> {
  static constexpr std::array<const char*, 2> names{"flat", "hierarchical"};
};
template <> struct Choices<Recompute> {
  static constexpr std::array<const char*, 3> names{"none", "moe", "block"};
};
template <> struct Choices<Objective> {
  static constexpr std::array<const char*, 2> names{"lm", "mlm"};
};
template <> struct Choices<RouterKind> {
  static constexpr std::array<const char*, 8> names{
      "switch", "topk", "topk_logits", "noisy_topk", "dense", "hash", "random", "expert_choice"};
};
template <> struct Choices<Activation> {
  static constexpr std::array<const char*, 3> names{"gelu", "relu", "swiglu"};
};
template <> struct Choices<SlotPriority> {
  static constexpr std::array<const char*, 2> names{"token", "score"};
};
template <> struct Choices<ExpertGemm> {
  static constexpr std::array<const char*, 4> names{"auto", "batched", "grouped", "trimmed"};
};
template <> struct Choices<DataFormat> {
  static constexpr std::array<const char*, 4> names{"text", "uint16", "uint32", "random"};
};
template <> struct Choices<Precision> {
  static constexpr std::array<const char*, 2> names{"fp32", "bf16"};
};
template <> struct Choices<DeviceKind> {
  static constexpr std::array<const char*, 3> names{"cpu", "cuda", "auto"};
};
template <> struct Choices<CrashMode> {
  static constexpr std::array<const char*, 2> names{"throw", "exit"};
};
template <> struct Choices<ScoreKind> {
  static constexpr std::array<const char*, 2> names{"softmax", "sigmoid"};
};
template <> struct Choices<BalanceKind> {
  static constexpr std::array<const char*, 4> names{"aux", "bias", "aux+bias", "none"};
};
template <> struct Choices<AuxLossKind> {
  static constexpr std::array<const char*, 2> names{"switch", "variance"};
};
template <> struct Choices<AuxScope> {
  static constexpr std::array<const char*, 3> names{"micro_batch", "sequence", "global_batch"};
};
template <> struct Choices<NewExpertInit> {
  static constexpr std::array<const char*, 2> names{"copy", "random"};
};
template <> struct Choices<TaskMaskKind> {
  static constexpr std::array<const char*, 2> names{"fixed", "learned"};
};
template <> struct Choices<TaskHead> {
  static constexpr std::array<const char*, 2> names{"shared", "own"};
};

// The balancing rules moe.balance turns on.
inline bool uses_aux_loss(BalanceKind b) {
  return b == BalanceKind::kAux || b == BalanceKind::kAuxBias;
}
inline bool uses_score_bias(BalanceKind b) {
  return b == BalanceKind::kBias || b == BalanceKind::kAuxBias;
}

// The word for `value` ("topk" for RouterKind::kTopK).
template <typename E> const char* choice_name(E value) {
  return Choices<E>::names[static_cast<std::size_t>(value)];
}

// True and *out set when `text` is one of E's words.
template <typename E> bool parse_choice(const std::string& text, E* out) {
  for (std::size_t i = 0; i < Choices<E>::names.size(); ++i) {
    if (text == Choices<E>::names[i]) {
      *out = static_cast<E>(i);
      return true;
    }
  }
  return false;
}

// "switch, topk, topk_logits, ..." for error messages.
template <typename E> std::string choice_list() {
  std::string list;
  for (const char* name : Choices<E>::names) list += (list.empty() ? "" : ", ") + std::string(name);
  return list;
}

// As parse_choice, or an error "unknown <what> '<text>': expected one of <list>" (for words
// that come from elsewhere than a config file, e.g. `generate --device`).
template <typename E> E parse_choice_or_throw(const std::string& text, const std::string& what) {
  E value{};
  if (!parse_choice(text, &value)) {
    SY_THROW("unknown ", what, " '", text, "': expected one of ", choice_list<E>());
  }
  return value;
}

}  // namespace sy
