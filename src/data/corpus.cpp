// load_corpus(): data.format and data.path to a tokenizer and a token source.
#include "data/corpus.h"

#include <string>

#include "common/error.h"

namespace sy {
namespace {

constexpr uint64_t kSyntheticSeed = 0x5717C4;  // fixed: every run sees the same default corpus

}  // namespace

Corpus load_corpus(const Config& cfg) {
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
      synthetic ? synthetic_corpus(kSyntheticSeed, d.synthetic_chars) : read_text_file(d.path);
  const std::string source = synthetic ? "synthetic corpus" : "data file '" + d.path + "'";
  c.tokenizer = std::make_unique<CharTokenizer>(CharTokenizer::from_text(text));
  c.vocab_size = c.tokenizer->vocab_size();
  SY_CHECK(cfg.model.vocab_size == 0 || cfg.model.vocab_size == c.vocab_size, "model.vocab_size (",
           cfg.model.vocab_size, ") differs from the data's vocabulary (", c.vocab_size, ")");
  c.dataset = std::make_unique<TokenDataset>(c.tokenizer->encode(text), d.val_fraction,
                                             cfg.model.block_size, source);
  return c;
}

}  // namespace sy
