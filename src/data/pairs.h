// Pairs of sequences for model.kind encoder_decoder: the embedded translation task, text files
// of "source<TAB>target" lines, and their batches.
//
// Note [Seq2seq batches]
// A batch of pairs travels as every other batch does (Batch: x, y), so the trainer, the data
// stream's checkpointed rng, evaluation, verify and the CUDA graph treat it alike:
//   x: [B, 2T] = [source | decoder input], each half T = model.block_size tokens: the source,
//      then BOS followed by the target, each half filled up with PAD;
//   y: [B, T], the decoder's targets: the target followed by EOS, then kIgnoreTarget.
// So a target of L characters (L <= T - 1) is predicted at decoder positions 0 .. L - 1 and EOS at
// position L; a source holds 1 .. T characters. The model splits x in two (GPTImpl::forward) and
// masks PAD out of the encoder's attention and the decoder's cross-attention. PAD, BOS and EOS
// are the last three ids of the vocabulary (seq2seq_ids() in config/config.h).
//
// Token accuracy is the share of y's counted positions whose most likely prediction is right
// (teacher forcing). Exact match is the share of pairs with every counted position right, which
// is also the share that greedy decoding reproduces exactly: with every prediction right given the
// true prefix, greedy decoding's prefix stays the true one, step by step up to EOS (and the other
// way round). The MoE blocks leave the padding positions of both halves out of routing unless
// moe.route_padding (Note [Padding out of routing] in moe/moe_layer.h).
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "config/config.h"
#include "data/dataset.h"

namespace sy {

struct TextPair {
  std::string source, target;
};

// The embedded task: sentences of `source_language` (the grammar of synthetic_corpus(), one
// sentence per pair, no line breaks) until their sources hold num_chars characters, each paired
// with the same sentence said in `target_language` (its words by their lexicon index, in that
// language's word order, agreement and adjective place) or with its characters reversed.
// Sentences longer than max_len characters on either side are left out. Deterministic in `seed`.
std::vector<TextPair> synthetic_pairs(uint64_t seed, int64_t num_chars, PairTask task,
                                      int source_language, int target_language, int64_t max_len);

// A text file of pairs, one "source<TAB>target" per line (a final newline optional, "\r\n"
// accepted). Errors name the file and line: no TAB, an empty side, a side longer than max_len
// characters (the target needs room for EOS: max_len is block_size - 1 for it, see
// PairDataset), or no pairs at all.
std::vector<TextPair> read_pairs_file(const std::string& path, int64_t source_max,
                                      int64_t target_max);

// Encoded pairs, split into train (the first pairs) and validation (the last
// floor(n * val_fraction) pairs, at least one of each); sample() draws pairs uniformly, with
// replacement, by `rng() % n`, and lays them out as Note [Seq2seq batches] says.
class PairDataset : public TokenSource {
 public:
  PairDataset(std::vector<std::vector<int64_t>> sources, std::vector<std::vector<int64_t>> targets,
              Seq2SeqIds ids, double val_fraction, int64_t block_size, const std::string& source);

  Batch sample(Split split, int64_t batch_size, std::mt19937_64& rng) const override;
  int64_t num_tokens(Split split) const override;  // source and target characters of the split
  int64_t num_pairs(Split split) const;

 private:
  std::vector<std::vector<int64_t>> sources_, targets_;
  Seq2SeqIds ids_;
  int64_t val_begin_;  // first validation pair
  int64_t block_size_;
};

}  // namespace sy
