// The training data of a run, as the config names it (data.format, data.path): a character
// vocabulary and its tokenized text (a file, or the embedded synthetic corpus), or token ids (a
// nanoGPT-style token file, or random tokens) whose vocabulary is model.vocab_size ids and which
// have no tokenizer. Used by the trainer and by the tools that rebuild a run's data.
#pragma once

#include <cstdint>
#include <memory>

#include "config/config.h"
#include "data/dataset.h"
#include "data/tokenizer.h"

namespace sy {

struct Corpus {
  std::unique_ptr<CharTokenizer> tokenizer;  // text runs only
  int64_t vocab_size = 0;
  std::unique_ptr<TokenSource> dataset;
  // data.tasks: `dataset` is this mixture (per-task evaluation samples it task by task).
  const TaskMixture* tasks = nullptr;
  // train.objective mlm: the mask token's id, one past the data's ids (vocab_size counts it);
  // -1 otherwise.
  int64_t mask_id = -1;
};

// The masked positions per sequence of train.objective mlm: max(1, round(mask_prob * block_size)).
int64_t masked_per_sequence(const Config& config);

// The run's batches as the objective needs them: for mlm, `b` masked by mask_for_mlm() with
// `corpus.mask_id`, drawing from `rng`; otherwise `b` itself.
Batch objective_batch(const Config& config, const Corpus& corpus, Batch b, std::mt19937_64& rng);

// Reads (or generates) the corpus of `config`; errors name the file and the key. With data.tasks
// the text tasks share one character vocabulary: every language of the embedded corpus when any
// task takes one (so configs naming different languages agree, as train.init_from needs), plus
// the characters of the tasks' text files.
Corpus load_corpus(const Config& config);

}  // namespace sy
