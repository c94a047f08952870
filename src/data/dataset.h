// Token datasets and batch sampling.
//
// The corpus is a text file (`data.path`) or, when no path is given, the embedded synthetic
// corpus (synthetic_corpus()), so the default run needs no download; or, with `data.format`, a
// binary file of token ids (uint16/uint32) or random tokens. The last `val_fraction`
// of the tokens is the validation split. Batches are random contiguous blocks drawn from a
// seeded generator owned by the caller (each rank seeds its own, so ranks read different data).
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "data/tokenizer.h"

namespace sy {

// A deterministic corpus of several generated "languages" (each with its own alphabet, word
// shapes and grammar), interleaved in paragraphs. It is learnable and its structure rewards
// experts that specialise. The same seed gives the same text on every machine. `language` >= 0
// (below kSyntheticLanguages, config.h): paragraphs of that language only (a data.tasks corpus);
// the languages are the same ones as in the mixed corpus of that seed.
std::string synthetic_corpus(uint64_t seed, int64_t num_chars, int language = -1);

// The seed of the embedded corpus and the embedded pairs that runs train on (fixed: every run sees
// the same data).
inline constexpr uint64_t kEmbeddedCorpusSeed = 0x5717C4;

// Reads a whole text corpus (data.path text, a text task, a pair file); throws naming the file
// when it is missing, not a regular file (a FIFO is never opened), unreadable, empty, or not
// valid UTF-8 (naming the byte offset of the first bad sequence).
std::string read_text_file(const std::string& path);

// The byte offset of the first byte sequence of `text` that is not valid UTF-8 (a stray
// continuation byte, a truncated sequence, an overlong form, a surrogate, or a code point above
// U+10FFFF), or -1 when it is all valid.
int64_t first_invalid_utf8(const std::string& text);

enum class Split { kTrain, kVal };

struct Batch {
  at::Tensor x;     // [B, T] int64 token ids
  at::Tensor y;     // [B, T] int64 next-token targets (x shifted by one)
  at::Tensor task;  // [B] int64: each sequence's task (data.tasks), undefined without tasks
};

// Where batches come from: a tokenized text in memory, a memory-mapped file of token ids, or
// uniformly random tokens. Every source draws its offsets (or tokens) from the caller's rng
// only, so a sampler's state is that rng's state (checkpoints save it).
class TokenSource {
 public:
  virtual ~TokenSource() = default;
  // B random blocks of T = block_size tokens from the split, on the CPU.
  virtual Batch sample(Split split, int64_t batch_size, std::mt19937_64& rng) const = 0;
  virtual int64_t num_tokens(Split split) const = 0;  // -1: unbounded (random tokens)
};

class TokenDataset : public TokenSource {
 public:
  // `source` names the data in error messages (the file path or "synthetic corpus").
  TokenDataset(std::vector<int64_t> tokens, double val_fraction, int64_t block_size,
               const std::string& source);

  Batch sample(Split split, int64_t batch_size, std::mt19937_64& rng) const override;
  int64_t num_tokens(Split split) const override;

 private:
  std::vector<int64_t> tokens_;
  int64_t val_begin_;  // first validation token
  int64_t block_size_;
};

// A flat binary file of token ids, little-endian uint16 or uint32 (`bytes_per_token` 2 or 4), as
// nanoGPT's prepare.py (train.bin, val.bin) and Megatron's preprocessing (the .bin of a dataset)
// write; memory-mapped, so a corpus larger than memory works. The validation split is the file
// `val_path`, or when that is empty the last `val_fraction` of `path` (Note [Split boundary]).
// Every id is checked against `vocab_size` when the file is opened; an empty file, a size that is
// not a whole number of tokens, a split shorter than a block and an id >= vocab_size are errors
// naming the file (and the offset of the bad id).
std::unique_ptr<TokenSource> open_token_file(const std::string& path, const std::string& val_path,
                                             int bytes_per_token, double val_fraction,
                                             int64_t block_size, int64_t vocab_size);

// data.tasks: one source per task. A batch's rows are drawn one by one: a task by the weights
// (from the caller's rng, as a 53-bit uniform against the cumulative weights), then a block of
// that task's split; Batch::task says which. A task of weight 0 is never drawn for training but
// sample_task() still evaluates it.
class TaskMixture : public TokenSource {
 public:
  TaskMixture(std::vector<std::unique_ptr<TokenSource>> tasks, std::vector<double> weights);

  Batch sample(Split split, int64_t batch_size, std::mt19937_64& rng) const override;
  int64_t num_tokens(Split split) const override;  // over all tasks
  // B blocks of task `task` only (per-task evaluation).
  Batch sample_task(int64_t task, Split split, int64_t batch_size, std::mt19937_64& rng) const;
  int64_t num_tasks() const { return static_cast<int64_t>(tasks_.size()); }

 private:
  std::vector<std::unique_ptr<TokenSource>> tasks_;
  std::vector<double> cumulative_;  // normalised running sum of the weights
};

// A target that does not count: LibTorch's cross-entropy ignore_index, which GPTImpl::loss uses.
inline constexpr int64_t kIgnoreTarget = -100;

// train.objective mlm (BERT's masking) of a batch's x, y ignored: in each row exactly
// `per_row` positions, chosen uniformly without replacement, become targets (y = the original
// token there, kIgnoreTarget elsewhere); of them 80% are replaced by `mask_id`, 10% by a
// uniformly random token of [0, vocab) and 10% stay as they were. Draws from `rng` only (so the
// masking is part of the checkpointed data stream); the task ids are kept.
Batch mask_for_mlm(const Batch& b, int64_t per_row, int64_t mask_id, int64_t vocab,
                   std::mt19937_64& rng);

// Uniformly random tokens in [0, vocab_size), for benchmarks and scaling runs of any vocabulary
// size (nothing to learn beyond the unigram distribution: the loss stays near ln(vocab_size)).
std::unique_ptr<TokenSource> random_tokens(int64_t vocab_size, int64_t block_size);

}  // namespace sy
