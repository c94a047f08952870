// Character-level tokenizer: the vocabulary is the sorted set of distinct bytes of the corpus.
// It is saved with every run (vocab.json) so that `generate` decodes what `train` encoded.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sy {

class CharTokenizer {
 public:
  CharTokenizer() = default;
  static CharTokenizer from_text(const std::string& text);  // throws on empty text
  static CharTokenizer load(const std::string& path);       // throws naming the file
  void save(const std::string& path) const;

  int64_t vocab_size() const { return static_cast<int64_t>(chars_.size()); }
  // Throws naming the first character that is not in the vocabulary.
  std::vector<int64_t> encode(const std::string& text) const;
  std::string decode(const std::vector<int64_t>& ids) const;
  const std::string& chars() const { return chars_; }

 private:
  std::string chars_;        // id -> byte
  int16_t index_[256] = {};  // byte -> id + 1 (0: absent)
};

}  // namespace sy
