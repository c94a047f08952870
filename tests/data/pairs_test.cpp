// Pairs for model.kind encoder_decoder: the embedded translation and reversal tasks, pair files,
// and the batch layout of Note [Seq2seq batches] against hand-built rows.
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/files.h"
#include "data/data_test_util.h"
#include "data/pairs.h"
#include "temp_folder.h"

namespace sy {
namespace {

using test::error_of;

constexpr uint64_t kSeed = kEmbeddedCorpusSeed;

std::set<char> letters_of(const std::string& text) {
  std::set<char> out;
  for (char c : text) {
    if (std::isalpha(static_cast<unsigned char>(c))) {
      out.insert(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    }
  }
  return out;
}

std::vector<std::string> words_of(const std::string& s) {
  std::vector<std::string> out;
  size_t begin = 0;
  while (begin <= s.size()) {
    size_t end = s.find(' ', begin);
    if (end == std::string::npos) end = s.size();
    out.push_back(s.substr(begin, end - begin));
    begin = end + 1;
  }
  return out;
}

// The same meaning said in another language: the target speaks only the target language's
// letters (the languages' letters are disjoint), has as many words (every role is one word in
// every language), the same end mark, and is a function of the source.
TEST(SyntheticPairs, TranslateSaysTheSentenceInTheOtherLanguage) {
  const std::vector<TextPair> pairs =
      synthetic_pairs(kSeed, 20000, PairTask::kTranslate, 0, 1, /*max_len=*/63);
  ASSERT_GT(pairs.size(), 300u);
  const std::set<char> lang0 = letters_of(synthetic_corpus(kSeed, 50000, 0));
  const std::set<char> lang1 = letters_of(synthetic_corpus(kSeed, 50000, 1));
  std::map<std::string, std::string> seen;
  int64_t source_chars = 0;
  for (const TextPair& p : pairs) {
    source_chars += static_cast<int64_t>(p.source.size());
    ASSERT_LE(p.source.size(), 63u);
    ASSERT_LE(p.target.size(), 63u);
    for (char c : letters_of(p.source)) ASSERT_EQ(lang0.count(c), 1u) << p.source;
    for (char c : letters_of(p.target)) ASSERT_EQ(lang1.count(c), 1u) << p.target;
    EXPECT_EQ(words_of(p.source).size(), words_of(p.target).size())
        << p.source << " | " << p.target;
    EXPECT_EQ(p.source.back(), p.target.back());
    EXPECT_TRUE(std::isupper(static_cast<unsigned char>(p.target[0]))) << p.target;
    EXPECT_EQ(p.source.find('\n'), std::string::npos);
    auto [it, fresh] = seen.emplace(p.source, p.target);
    EXPECT_EQ(it->second, p.target) << "one source, two targets: " << p.source;
  }
  EXPECT_GE(source_chars, 20000);
  // Deterministic, and another language pair says other words.
  const std::vector<TextPair> again = synthetic_pairs(kSeed, 20000, PairTask::kTranslate, 0, 1, 63);
  ASSERT_EQ(again.size(), pairs.size());
  for (size_t i = 0; i < pairs.size(); ++i) EXPECT_EQ(again[i].target, pairs[i].target);
  const std::vector<TextPair> to2 = synthetic_pairs(kSeed, 2000, PairTask::kTranslate, 0, 2, 63);
  EXPECT_EQ(to2[0].source, pairs[0].source);  // the same sentences ...
  EXPECT_NE(to2[0].target, pairs[0].target);  // ... said in language 2
}

TEST(SyntheticPairs, ReverseIsTheSourceBackwards) {
  const std::vector<TextPair> pairs =
      synthetic_pairs(kSeed, 5000, PairTask::kReverse, 2, 2, /*max_len=*/30);
  ASSERT_GT(pairs.size(), 50u);
  for (const TextPair& p : pairs) {
    ASSERT_LE(p.source.size(), 30u);
    EXPECT_EQ(p.target, std::string(p.source.rbegin(), p.source.rend()));
  }
  EXPECT_NE(error_of([] {
              synthetic_pairs(kSeed, 100, PairTask::kReverse, 0, 0, 2);
            }).find("no sentence fits in 2 characters"),
            std::string::npos);
}

// Ids 0..4 characters, PAD 5, BOS 6, EOS 7; T = 4.
PairDataset hand_pairs(double val_fraction = 0.2) {
  std::vector<std::vector<int64_t>> src, tgt;
  for (int64_t i = 0; i < 10; ++i) {
    src.push_back(std::vector<int64_t>(static_cast<size_t>(1 + i % 4), i % 5));    // 1..4 long
    tgt.push_back(std::vector<int64_t>(static_cast<size_t>(i % 4), (i + 1) % 5));  // 0..3 long
  }
  return PairDataset(src, tgt, seq2seq_ids(5), val_fraction, /*block_size=*/4, "hand pairs");
}

// Each row is one pair laid out exactly: x = [source, PAD... | BOS, target, PAD...],
// y = [target, EOS, -100...]; validation rows come from the last pairs only.
TEST(PairDataset, RowsAreLaidOutAsTheNoteSays) {
  const PairDataset data = hand_pairs();
  EXPECT_EQ(data.num_pairs(Split::kTrain), 8);
  EXPECT_EQ(data.num_pairs(Split::kVal), 2);
  std::mt19937_64 rng(5);
  for (const Split split : {Split::kTrain, Split::kVal}) {
    std::set<int64_t> drawn;
    for (int rep = 0; rep < 20; ++rep) {
      const Batch b = data.sample(split, 6, rng);
      ASSERT_EQ(b.x.sizes(), (std::vector<int64_t>{6, 8}));
      ASSERT_EQ(b.y.sizes(), (std::vector<int64_t>{6, 4}));
      for (int64_t r = 0; r < 6; ++r) {
        // Which of the ten pairs it is (each row must be exactly one of them).
        int64_t found = -1;
        for (int64_t i = 0; i < 10; ++i) {
          const int64_t ls = 1 + i % 4, lt = i % 4;
          std::vector<int64_t> x(8, 5), y(4, -100);
          for (int64_t j = 0; j < ls; ++j) x[static_cast<size_t>(j)] = i % 5;
          x[4] = 6;
          for (int64_t j = 0; j < lt; ++j) {
            x[static_cast<size_t>(5 + j)] = (i + 1) % 5;
            y[static_cast<size_t>(j)] = (i + 1) % 5;
          }
          y[static_cast<size_t>(lt)] = 7;
          if (at::equal(b.x[r], at::tensor(x, at::kLong)) &&
              at::equal(b.y[r], at::tensor(y, at::kLong))) {
            found = i;
          }
        }
        ASSERT_GE(found, 0) << b.x[r] << b.y[r];
        drawn.insert(found);
      }
    }
    if (split == Split::kVal) {
      EXPECT_EQ(drawn, (std::set<int64_t>{8, 9}));
    } else {
      EXPECT_EQ(drawn.size(), 8u);  // every train pair, and none of the last two
      EXPECT_EQ(drawn.count(8) + drawn.count(9), 0u);
    }
  }
  // Pairs 8 and 9: sources of 1 and 2 characters, targets of 0 and 1.
  EXPECT_EQ(data.num_tokens(Split::kVal), 4);
}

TEST(PairDataset, RefusesSplitsWithoutPairsAndPairsThatDoNotFit) {
  EXPECT_NE(error_of([] { hand_pairs(0.05); }).find("leaves no pair"), std::string::npos);
  EXPECT_NE(error_of([] {
              PairDataset({{1, 2, 3}}, {{1, 2, 3}}, seq2seq_ids(5), 0.5, 3, "x");
            }).find("pair 0 does not fit model.block_size (3)"),
            std::string::npos);
}

class PairFile : public ::testing::Test {
 protected:
  std::string write(const std::string& text) {
    const std::string path = dir_ + "/pairs.tsv";
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }
  sy::testing::TempFolder folder_{"pairs"};
  const std::string& dir_ = folder_.path();
};

TEST_F(PairFile, ReadsLinesWithCrLfAndWithoutAFinalNewline) {
  const auto pairs = read_pairs_file(write("abc\tcba\r\nhello\tolleh\nx\ty"), 8, 7);
  ASSERT_EQ(pairs.size(), 3u);
  EXPECT_EQ(pairs[0].source, "abc");
  EXPECT_EQ(pairs[0].target, "cba");
  EXPECT_EQ(pairs[1].target, "olleh");
  EXPECT_EQ(pairs[2].source, "x");
  EXPECT_EQ(pairs[2].target, "y");
}

TEST_F(PairFile, ErrorsNameTheFileAndLine) {
  struct Case {
    std::string text, expected;
  };
  for (const Case& c : std::vector<Case>{
           {"a\tb\nno tab here\n", "line 2: expected source<TAB>target, found no TAB"},
           {"a\tb\tc\n", "line 1: expected one TAB between source and target"},
           {"a\tb\n\tb\n", "line 2: the source is empty"},
           {"a\tb\nab\t\n", "line 2: the target is empty"},
           {"a\tb\nabcdefghi\tb\n",
            "line 2: the source has 9 characters, more than "
            "model.block_size (8)"},
           {"a\tb\na\tabcdefgh\n",
            "line 2: the target has 8 characters, more than "
            "model.block_size - 1 (7"},
       }) {
    const std::string path = write(c.text);
    const std::string msg = error_of([&] { read_pairs_file(path, 8, 7); });
    EXPECT_NE(msg.find("pair file '" + path + "' " + c.expected), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace sy
