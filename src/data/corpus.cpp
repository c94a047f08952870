// load_corpus(): data.format and data.path to a tokenizer and a token source.
#include "data/corpus.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "common/error.h"
#include "data/pairs.h"

namespace sy {
namespace {

// data.tasks (see corpus.h).
Corpus load_tasks(const Config& cfg) {
  Corpus c;
  const auto& d = cfg.data;
  const int64_t T = cfg.model.block_size;
  std::vector<std::unique_ptr<TokenSource>> sources;
  std::vector<double> weights;
  if (d.tasks.front().format != DataFormat::kText) {  // token files (validate(): all of them)
    c.vocab_size = cfg.model.vocab_size;
    for (const TaskConfig& t : d.tasks) {
      sources.push_back(open_token_file(t.path, "", t.format == DataFormat::kUint16 ? 2 : 4,
                                        d.val_fraction, T, c.vocab_size));
      weights.push_back(t.weight);
    }
  } else {
    // Every language of the embedded corpus once, when any task takes one: the tasks' texts and
    // the shared vocabulary come from the same generation.
    std::vector<std::string> languages;
    for (const TaskConfig& t : d.tasks) {
      if (!t.path.empty() || !languages.empty()) continue;
      for (int l = 0; l < kSyntheticLanguages; ++l) {
        languages.push_back(synthetic_corpus(kEmbeddedCorpusSeed, d.synthetic_chars, l));
      }
    }
    std::vector<std::string> texts;
    std::string alphabet;  // what the shared vocabulary is built from
    for (const std::string& language : languages) alphabet += language;
    for (const TaskConfig& t : d.tasks) {
      texts.push_back(t.path.empty() ? languages[static_cast<size_t>(t.synthetic)]
                                     : read_text_file(t.path));
      if (!t.path.empty()) alphabet += texts.back();
    }
    c.tokenizer = std::make_unique<CharTokenizer>(CharTokenizer::from_text(alphabet));
    c.vocab_size = c.tokenizer->vocab_size();
    SY_CHECK(cfg.model.vocab_size == 0 || cfg.model.vocab_size == c.vocab_size,
             "model.vocab_size (", cfg.model.vocab_size, ") differs from the tasks' vocabulary (",
             c.vocab_size, ")");
    for (size_t i = 0; i < texts.size(); ++i) {
      const TaskConfig& t = d.tasks[i];
      const std::string source =
          "data.tasks[" + std::to_string(i) + "] (" + t.name + "): " +
          (t.path.empty() ? "synthetic language " + std::to_string(t.synthetic)
                          : "data file '" + t.path + "'");
      sources.push_back(
          std::make_unique<TokenDataset>(c.tokenizer->encode(texts[i]), d.val_fraction, T, source));
      weights.push_back(t.weight);
    }
  }
  auto mixture = std::make_unique<TaskMixture>(std::move(sources), std::move(weights));
  c.tasks = mixture.get();
  c.dataset = std::move(mixture);
  return c;
}

// model.kind encoder_decoder: pairs of a text file or of the embedded task, one character
// vocabulary over both sides, then PAD, BOS and EOS (Note [Seq2seq batches]).
Corpus load_pairs(const Config& cfg) {
  const auto& d = cfg.data;
  const int64_t T = cfg.model.block_size;
  const std::vector<TextPair> pairs =
      d.path.empty() ? synthetic_pairs(kEmbeddedCorpusSeed, d.synthetic_chars, d.pairs,
                                       static_cast<int>(d.source_language),
                                       static_cast<int>(d.target_language), T - 1)
                     : read_pairs_file(d.path, T, T - 1);
  std::string alphabet;
  for (const TextPair& p : pairs) alphabet += p.source + p.target;
  Corpus c;
  c.tokenizer = std::make_unique<CharTokenizer>(CharTokenizer::from_text(alphabet));
  c.vocab_size = c.tokenizer->vocab_size() + kSeq2SeqSpecialIds;
  SY_CHECK(cfg.model.vocab_size == 0 || cfg.model.vocab_size == c.vocab_size, "model.vocab_size (",
           cfg.model.vocab_size, ") differs from the pairs' vocabulary (", c.vocab_size,
           ": their characters, PAD, BOS and EOS)");
  std::vector<std::vector<int64_t>> sources, targets;
  for (const TextPair& p : pairs) {
    sources.push_back(c.tokenizer->encode(p.source));
    targets.push_back(c.tokenizer->encode(p.target));
  }
  const std::string source =
      d.path.empty() ? std::string("embedded pairs (data.pairs ") + choice_name(d.pairs) + ")"
                     : "pair file '" + d.path + "'";
  c.dataset = std::make_unique<PairDataset>(std::move(sources), std::move(targets),
                                            seq2seq_ids(c.tokenizer->vocab_size()), d.val_fraction,
                                            T, source);
  return c;
}

// The data of the config, its ids 0 .. vocab_size - 1.
Corpus load_data(const Config& cfg) {
  if (cfg.model.kind == ModelKind::kEncoderDecoder) return load_pairs(cfg);
  if (!cfg.data.tasks.empty()) return load_tasks(cfg);
  Corpus c;
  const auto& d = cfg.data;
  if (d.format == DataFormat::kUint16 || d.format == DataFormat::kUint32) {
    c.vocab_size = cfg.model.vocab_size;
    c.dataset = open_token_file(d.path, d.val_path, d.format == DataFormat::kUint16 ? 2 : 4,
                                d.val_fraction, cfg.model.block_size, c.vocab_size);
    return c;
  }
  if (d.format == DataFormat::kRandom) {
    c.vocab_size = cfg.model.vocab_size;
    c.dataset = random_tokens(c.vocab_size, cfg.model.block_size);
    return c;
  }
  const bool synthetic = d.path.empty();
  const std::string text =
      synthetic ? synthetic_corpus(kEmbeddedCorpusSeed, d.synthetic_chars) : read_text_file(d.path);
  const std::string source = synthetic ? "synthetic corpus" : "data file '" + d.path + "'";
  c.tokenizer = std::make_unique<CharTokenizer>(CharTokenizer::from_text(text));
  c.vocab_size = c.tokenizer->vocab_size();
  SY_CHECK(cfg.model.vocab_size == 0 || cfg.model.vocab_size == c.vocab_size, "model.vocab_size (",
           cfg.model.vocab_size, ") differs from the data's vocabulary (", c.vocab_size, ")");
  c.dataset = std::make_unique<TokenDataset>(c.tokenizer->encode(text), d.val_fraction,
                                             cfg.model.block_size, source);
  return c;
}

}  // namespace

Corpus load_corpus(const Config& cfg) {
  Corpus c = load_data(cfg);
  if (cfg.train.objective == Objective::kMlm) c.mask_id = c.vocab_size++;  // one more id: [MASK]
  return c;
}

int64_t masked_per_sequence(const Config& cfg) {
  const auto n = static_cast<int64_t>(
      std::llround(cfg.data.mask_prob * static_cast<double>(cfg.model.block_size)));
  return std::min(cfg.model.block_size, std::max<int64_t>(1, n));
}

Batch objective_batch(const Config& cfg, const Corpus& corpus, Batch b, std::mt19937_64& rng) {
  if (cfg.train.objective != Objective::kMlm) return b;
  return mask_for_mlm(b, masked_per_sequence(cfg), corpus.mask_id, corpus.mask_id, rng);
}

}  // namespace sy
