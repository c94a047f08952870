// CharTokenizer: byte-level vocabulary, encode/decode, and its vocab.json file.
//
// The file is {"type": "char", "chars": [101, 104, ...]}: the vocabulary's byte values as
// integers in id order, so any byte (quotes, newlines, non-ASCII) survives without string
// escaping. The parser below reads exactly that shape (whitespace anywhere, keys in any order)
// and rejects anything else with the file name and the byte offset of the problem.
#include "data/tokenizer.h"

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/error.h"

namespace sy {
namespace {

// "'a'" for a printable byte, "'\x0a'" otherwise.
std::string describe_byte(unsigned char c) {
  if (std::isprint(c)) return std::string("'") + static_cast<char>(c) + "'";
  char buf[8];
  std::snprintf(buf, sizeof(buf), "'\\x%02x'", c);
  return buf;
}

// A strict reader for the one JSON shape of vocab.json.
class VocabParser {
 public:
  VocabParser(const std::string& text, const std::string& path) : s_(text), path_(path) {}

  // Returns the byte values of "chars"; throws unless the text is exactly one such object.
  std::vector<int> parse() {
    bool seen_type = false, seen_chars = false;
    std::vector<int> chars;
    expect('{');
    do {
      const std::string key = string_literal();
      expect(':');
      if (key == "type" && !seen_type) {
        const size_t at = pos_;
        const std::string type = string_literal();
        if (type != "char") fail(at, str("unsupported tokenizer type \"", type, "\""));
        seen_type = true;
      } else if (key == "chars" && !seen_chars) {
        chars = int_array();
        seen_chars = true;
      } else {
        fail(pos_, str("unexpected key \"", key, "\""));
      }
    } while (accept(','));
    expect('}');
    skip_space();
    if (pos_ != s_.size()) fail(pos_, "trailing characters after the object");
    if (!seen_type) fail(pos_, "missing key \"type\"");
    if (!seen_chars) fail(pos_, "missing key \"chars\"");
    return chars;
  }

  [[noreturn]] void fail(size_t at, const std::string& what) const {
    SY_THROW("vocabulary file '", path_, "' is malformed: ", what, " (at byte ", at, ")");
  }

 private:
  void skip_space() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  bool accept(char c) {
    skip_space();
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!accept(c)) fail(pos_, str("expected '", c, "'"));
  }
  // A string without escapes (the keys and the type name need none).
  std::string string_literal() {
    expect('"');
    const size_t begin = pos_;
    while (pos_ < s_.size() && s_[pos_] != '"') {
      if (s_[pos_] == '\\' || s_[pos_] == '\n') fail(pos_, "unsupported character in a string");
      ++pos_;
    }
    if (pos_ == s_.size()) fail(begin, "unterminated string");
    return s_.substr(begin, pos_++ - begin);
  }
  // "[1, 2, 3]": byte values 0..255 (an empty array is returned as such; the caller rejects it).
  std::vector<int> int_array() {
    std::vector<int> out;
    expect('[');
    if (accept(']')) return out;
    do {
      skip_space();
      const size_t begin = pos_;
      int value = 0;
      while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_])) &&
             pos_ - begin < 4) {
        value = value * 10 + (s_[pos_++] - '0');
      }
      if (pos_ == begin) fail(begin, "expected a byte value (an integer 0..255)");
      if (s_[begin] == '0' && pos_ - begin > 1) fail(begin, "leading zero in a byte value");
      if (value > 255 || (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_])))) {
        fail(begin, "byte value out of range 0..255");
      }
      out.push_back(value);
    } while (accept(','));
    expect(']');
    return out;
  }

  const std::string& s_;
  const std::string& path_;
  size_t pos_ = 0;
};

}  // namespace

CharTokenizer CharTokenizer::from_text(const std::string& text) {
  SY_CHECK(!text.empty(), "cannot build a character vocabulary from empty text");
  bool present[256] = {};
  for (const char c : text) present[static_cast<unsigned char>(c)] = true;
  CharTokenizer tok;
  for (int b = 0; b < 256; ++b) {
    if (!present[b]) continue;
    tok.chars_.push_back(static_cast<char>(b));
    tok.index_[b] = static_cast<int16_t>(tok.chars_.size());  // id + 1
  }
  return tok;
}

std::vector<int64_t> CharTokenizer::encode(const std::string& text) const {
  std::vector<int64_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    SY_CHECK(index_[c] != 0, "character ", describe_byte(c), " at position ", i,
             " is not in the vocabulary (", chars_.size(), " characters)");
    ids[i] = index_[c] - 1;
  }
  return ids;
}

std::string CharTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string text(ids.size(), '\0');
  for (size_t i = 0; i < ids.size(); ++i) {
    SY_CHECK(ids[i] >= 0 && ids[i] < vocab_size(), "token id ", ids[i], " at position ", i,
             " is outside the vocabulary [0, ", vocab_size(), ")");
    text[i] = chars_[static_cast<size_t>(ids[i])];
  }
  return text;
}

void CharTokenizer::save(const std::string& path) const {
  std::ostringstream os;
  os << "{\"type\": \"char\", \"chars\": [";
  for (size_t i = 0; i < chars_.size(); ++i) {
    os << (i ? ", " : "") << static_cast<int>(static_cast<unsigned char>(chars_[i]));
  }
  os << "]}\n";
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  SY_CHECK(out, "cannot write vocabulary file '", path, "': ", std::strerror(errno));
  out << os.str();
  out.close();
  SY_CHECK(!out.fail(), "failed writing vocabulary file '", path, "'");
}

CharTokenizer CharTokenizer::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SY_CHECK(in, "cannot read vocabulary file '", path, "': ", std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  SY_CHECK(!in.bad(), "cannot read vocabulary file '", path, "'");
  const std::string text = ss.str();

  VocabParser parser(text, path);
  const std::vector<int> bytes = parser.parse();
  if (bytes.empty()) parser.fail(text.size(), "\"chars\" is empty");
  CharTokenizer tok;
  for (size_t i = 0; i < bytes.size(); ++i) {
    // Ids follow byte order (from_text's invariant), so the list must be strictly increasing.
    if (i > 0 && bytes[i] <= bytes[i - 1]) {
      parser.fail(text.size(), str("\"chars\" must be strictly increasing (entry ", i, " is ",
                                   bytes[i], " after ", bytes[i - 1], ")"));
    }
    tok.chars_.push_back(static_cast<char>(bytes[i]));
    tok.index_[bytes[i]] = static_cast<int16_t>(i + 1);
  }
  return tok;
}

}  // namespace sy
