// CharTokenizer: the vocabulary checked by hand, encode/decode round trips, the unknown-character
// error, and vocab.json save/load with the errors for missing and malformed files.
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>

#include "common/error.h"
#include "data/data_test_util.h"
#include "data/tokenizer.h"

namespace sy {
namespace {

using test::error_of;

std::string temp_path(const std::string& name) { return ::testing::TempDir() + name; }

std::string write_file(const std::string& name, const std::string& text) {
  const std::string path = temp_path(name);
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

TEST(CharTokenizer, VocabularyIsSortedDistinctBytes) {
  const CharTokenizer tok = CharTokenizer::from_text("hello");
  EXPECT_EQ(tok.chars(), "ehlo");
  EXPECT_EQ(tok.vocab_size(), 4);
  EXPECT_EQ(tok.encode("hello"), (std::vector<int64_t>{1, 0, 2, 2, 3}));
  EXPECT_EQ(tok.encode("ole"), (std::vector<int64_t>{3, 2, 0}));
  EXPECT_EQ(tok.decode({3, 0, 2, 2}), "oell");
  EXPECT_TRUE(tok.encode("").empty());
}

TEST(CharTokenizer, RoundTripsAllBytes) {
  std::string text;
  for (int b = 255; b >= 0; --b) text += static_cast<char>(b);
  text += "\n\tzz\x01";
  const CharTokenizer tok = CharTokenizer::from_text(text);
  EXPECT_EQ(tok.vocab_size(), 256);
  const std::vector<int64_t> ids = tok.encode(text);
  EXPECT_EQ(ids.front(), 255);  // byte 255 has the highest id
  EXPECT_EQ(ids[255], 0);       // byte 0 the lowest
  EXPECT_EQ(tok.decode(ids), text);
}

TEST(CharTokenizer, EmptyTextIsAnError) {
  EXPECT_NE(error_of([] { CharTokenizer::from_text(""); }).find("empty"), std::string::npos);
}

TEST(CharTokenizer, UnknownCharacterNamesItAndItsPosition) {
  const CharTokenizer tok = CharTokenizer::from_text("abc");
  const std::string e = error_of([&] { tok.encode("abcaXb"); });
  EXPECT_NE(e.find("'X' at position 4"), std::string::npos) << e;
  const std::string nl = error_of([&] { tok.encode("ab\n"); });
  EXPECT_NE(nl.find("'\\x0a' at position 2"), std::string::npos) << nl;
  const std::string high = error_of([&] { tok.encode(std::string("a\xe9")); });
  EXPECT_NE(high.find("'\\xe9' at position 1"), std::string::npos) << high;
}

TEST(CharTokenizer, DecodeRejectsOutOfRangeIds) {
  const CharTokenizer tok = CharTokenizer::from_text("ab");
  EXPECT_NE(error_of([&] { tok.decode({0, 2}); }).find("token id 2"), std::string::npos);
  EXPECT_NE(error_of([&] { tok.decode({-1}); }).find("token id -1"), std::string::npos);
}

TEST(CharTokenizer, SaveLoadRoundTrip) {
  const std::string text = "Hello, \"world\"!\n\\ tab\there \x7f\xff";
  const CharTokenizer tok = CharTokenizer::from_text(text);
  const std::string path = temp_path("vocab_roundtrip.json");
  tok.save(path);
  const CharTokenizer back = CharTokenizer::load(path);
  EXPECT_EQ(back.chars(), tok.chars());
  EXPECT_EQ(back.encode(text), tok.encode(text));
  EXPECT_EQ(back.decode(back.encode(text)), text);
}

TEST(CharTokenizer, SavedFileIsTheDocumentedJson) {
  const std::string path = temp_path("vocab_format.json");
  CharTokenizer::from_text("ba\n").save(path);
  std::ifstream in(path);
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(content, "{\"type\": \"char\", \"chars\": [10, 97, 98]}\n");
}

TEST(CharTokenizer, LoadAcceptsWhitespaceAndKeyOrder) {
  const std::string path =
      write_file("vocab_spaced.json", "\n{ \"chars\" :[ 104,105 ] ,\n  \"type\":\"char\" }\n");
  EXPECT_EQ(CharTokenizer::load(path).chars(), "hi");
}

TEST(CharTokenizer, LoadMissingFileNamesIt) {
  const std::string path = temp_path("no_such_vocab.json");
  const std::string e = error_of([&] { CharTokenizer::load(path); });
  EXPECT_NE(e.find("'" + path + "'"), std::string::npos) << e;
}

TEST(CharTokenizer, LoadMalformedFilesNameTheFile) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "expected '{'"},
      {"{\"type\": \"char\", \"chars\": [1, 2]", "expected '}'"},
      {"{\"type\": \"char\", \"chars\": [1, 2,]}", "expected a byte value"},
      {"{\"type\": \"char\", \"chars\": [1 2]}", "expected ']'"},
      {"{\"type\": \"char\", \"chars\": [256]}", "out of range"},
      {"{\"type\": \"char\", \"chars\": [-1]}", "expected a byte value"},
      {"{\"type\": \"char\", \"chars\": [01]}", "leading zero"},
      {"{\"type\": \"char\", \"chars\": [98, 97]}", "strictly increasing"},
      {"{\"type\": \"char\", \"chars\": [97, 97]}", "strictly increasing"},
      {"{\"type\": \"char\", \"chars\": []}", "\"chars\" is empty"},
      {"{\"type\": \"bpe\", \"chars\": [97]}", "unsupported tokenizer type \"bpe\""},
      {"{\"chars\": [97]}", "missing key \"type\""},
      {"{\"type\": \"char\"}", "missing key \"chars\""},
      {"{\"type\": \"char\", \"type\": \"char\", \"chars\": [97]}", "unexpected key \"type\""},
      {"{\"type\": \"char\", \"chars\": [97], \"extra\": 1}", "unexpected key \"extra\""},
      {"{\"type\": \"char\", \"chars\": [97]} x", "trailing characters"},
      {"{\"type\": \"char\", \"chars\": [97]}{}", "trailing characters"},
      {"{\"type: \"char\"}", "expected ':'"},
      {"{\"type\": \"char", "unterminated string"},
  };
  int i = 0;
  for (const auto& [content, reason] : cases) {
    const std::string path = write_file("bad_vocab_" + std::to_string(i++) + ".json", content);
    const std::string e = error_of([&] { CharTokenizer::load(path); });
    EXPECT_NE(e.find("vocabulary file '" + path + "' is malformed"), std::string::npos)
        << content << " -> " << e;
    EXPECT_NE(e.find(reason), std::string::npos) << content << " -> " << e;
  }
}

TEST(CharTokenizer, SaveToUnwritablePathNamesIt) {
  const std::string path = temp_path("no_such_dir/vocab.json");
  const std::string e = error_of([&] { CharTokenizer::from_text("a").save(path); });
  EXPECT_NE(e.find("'" + path + "'"), std::string::npos) << e;
}

}  // namespace
}  // namespace sy
