// Token datasets and batch sampling.
//
// The corpus is a text file (`data.path`) or, when no path is given, the embedded synthetic
// corpus (synthetic_corpus()), so the default run needs no download. The last `val_fraction`
// of the tokens is the validation split. Batches are random contiguous blocks drawn from a
// seeded generator owned by the caller (each rank seeds its own, so ranks read different data).
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "data/tokenizer.h"

namespace sy {

// A deterministic corpus of several generated "languages" (each with its own alphabet, word
// shapes and grammar), interleaved in paragraphs. It is learnable and its structure rewards
// experts that specialise. The same seed gives the same text on every machine.
std::string synthetic_corpus(uint64_t seed, int64_t num_chars);

// Reads a whole file; throws naming the file when it is missing, unreadable or empty.
std::string read_text_file(const std::string& path);

enum class Split { kTrain, kVal };

struct Batch {
  at::Tensor x;  // [B, T] int64 token ids
  at::Tensor y;  // [B, T] int64 next-token targets (x shifted by one)
};

class TokenDataset {
 public:
  // `source` names the data in error messages (the file path or "synthetic corpus").
  TokenDataset(std::vector<int64_t> tokens, double val_fraction, int64_t block_size,
               const std::string& source);

  // B random blocks of T = block_size tokens from the split, on the CPU.
  Batch sample(Split split, int64_t batch_size, std::mt19937_64& rng) const;

  int64_t num_tokens(Split split) const;

 private:
  std::vector<int64_t> tokens_;
  int64_t val_begin_;  // first validation token
  int64_t block_size_;
};

}  // namespace sy
