// read_text_file and TokenDataset: file errors, hand-computed split sizes, and sample() checked
// row by row against the token vector (every row is the slice at some offset inside its split).
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <set>

#include <torch/torch.h>

#include "common/error.h"
#include "data/data_test_util.h"
#include "data/dataset.h"

namespace sy {
namespace {

using test::error_of;

std::string write_file(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + name;
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

// n distinct token values in scrambled order (7919 is prime, so i -> i * 7919 % n is a
// permutation when n is not a multiple of it): a token identifies its position.
std::vector<int64_t> distinct_tokens(int64_t n) {
  std::vector<int64_t> t(n);
  for (int64_t i = 0; i < n; ++i) t[i] = (i * 7919) % n;
  return t;
}

TEST(ReadTextFile, ReadsWholeFileBytes) {
  const std::string text = std::string("line one\nline two\r\n\0caf\xc3\xa9!", 28);
  EXPECT_EQ(read_text_file(write_file("whole.txt", text)), text);
}

TEST(ReadTextFile, MissingFileNamesThePath) {
  const std::string path = ::testing::TempDir() + "no_such_corpus.txt";
  const std::string e = error_of([&] { read_text_file(path); });
  EXPECT_NE(e.find("data file '" + path + "'"), std::string::npos) << e;
}

TEST(ReadTextFile, DirectoryNamesThePath) {
  const std::string path = ::testing::TempDir();
  const std::string e = error_of([&] { read_text_file(path); });
  EXPECT_NE(e.find("'" + path + "'"), std::string::npos) << e;
}

TEST(ReadTextFile, NotUtf8NamesTheByteOffset) {
  // Random bytes: refused at the first bad sequence, with its offset.
  const std::string path = write_file("random.bin", std::string("ok text \xff\xfe\x00\x81", 12));
  EXPECT_EQ(error_of([&] { read_text_file(path); }),
            "data file '" + path +
                "' is not UTF-8 text: the byte sequence at byte offset 8 (0xff) is not valid "
                "UTF-8; a text corpus must be UTF-8 (token ids belong in a uint16/uint32 token "
                "file)");
  // A multi-byte character cut off at the end of the file.
  const std::string cut = write_file("cut.txt", "abc\xe2\x82");
  const std::string e = error_of([&] { read_text_file(cut); });
  EXPECT_NE(e.find("at byte offset 3 (0xe2)"), std::string::npos) << e;
}

TEST(ReadTextFile, FifoIsRefusedWithoutBlocking) {
  const std::string path = ::testing::TempDir() + "corpus_fifo.txt";
  ::unlink(path.c_str());
  ASSERT_EQ(mkfifo(path.c_str(), 0600), 0);
  EXPECT_EQ(error_of([&] { read_text_file(path); }),
            "data file '" + path + "' is not a regular file (a FIFO)");
  ::unlink(path.c_str());
}

TEST(Utf8, FirstInvalidSequence) {
  EXPECT_EQ(first_invalid_utf8(""), -1);
  EXPECT_EQ(first_invalid_utf8("plain ASCII\n"), -1);
  EXPECT_EQ(first_invalid_utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"), -1);  // é € 😀
  EXPECT_EQ(first_invalid_utf8("a\x80"), 1);             // a stray continuation byte
  EXPECT_EQ(first_invalid_utf8("ab\xc0\xaf"), 2);        // overlong '/'
  EXPECT_EQ(first_invalid_utf8("\xe0\x80\xaf"), 0);      // overlong, three bytes
  EXPECT_EQ(first_invalid_utf8("x\xed\xa0\x80"), 1);     // a UTF-16 surrogate
  EXPECT_EQ(first_invalid_utf8("\xf4\x90\x80\x80"), 0);  // above U+10FFFF
  EXPECT_EQ(first_invalid_utf8("\xf5\x80\x80\x80"), 0);  // no such lead byte
  EXPECT_EQ(first_invalid_utf8("abc\xe2\x82"), 3);       // truncated at the end
  EXPECT_EQ(first_invalid_utf8("\xc3\xa9\xc3("), 2);     // a lead byte without its tail
}

TEST(ReadTextFile, EmptyFileIsAnError) {
  const std::string path = write_file("empty.txt", "");
  EXPECT_EQ(error_of([&] { read_text_file(path); }), "data file '" + path + "' is empty");
}

TEST(TokenDataset, SplitSizesHandComputed) {
  // val = floor(n * val_fraction), train = n - val.
  const TokenDataset a(distinct_tokens(100), 0.1, 8, "t");
  EXPECT_EQ(a.num_tokens(Split::kTrain), 90);
  EXPECT_EQ(a.num_tokens(Split::kVal), 10);
  const TokenDataset b(distinct_tokens(1001), 0.25, 8, "t");  // 250.25 -> 250
  EXPECT_EQ(b.num_tokens(Split::kTrain), 751);
  EXPECT_EQ(b.num_tokens(Split::kVal), 250);
  const TokenDataset c(distinct_tokens(100), 0.29, 8, "t");  // 100 * 0.29 is 28.999... in binary
  EXPECT_EQ(c.num_tokens(Split::kTrain), 71);
  EXPECT_EQ(c.num_tokens(Split::kVal), 29);
}

TEST(TokenDataset, TooShortFileNamesTheFileAndSizes) {
  const std::string path = write_file("short.txt", std::string(20, 'a'));
  const std::string text = read_text_file(path);
  const std::string source = "data file '" + path + "'";
  const std::vector<int64_t> tokens(text.size(), 0);
  EXPECT_EQ(error_of([&] { TokenDataset(tokens, 0.1, 64, source); }),
            source +
                " has 20 tokens: the train split (18) is shorter than model.block_size + 1 "
                "(65)");
  // The train split is long enough but validation (10 tokens) is not.
  const std::string e = error_of([&] { TokenDataset(distinct_tokens(100), 0.1, 10, "corpus X"); });
  EXPECT_EQ(e.rfind("corpus X has 100 tokens: the validation split (10) is shorter than "
                    "model.block_size + 1 (11)",
                    0),
            0u)
      << e;
  // Exactly block_size + 1 tokens in each split is enough.
  EXPECT_NO_THROW(TokenDataset(distinct_tokens(100), 0.1, 9, "t"));
}

TEST(TokenDataset, RejectsBadArguments) {
  EXPECT_NE(error_of([] { TokenDataset(distinct_tokens(100), 0.0, 4, "t"); }).find("val_fraction"),
            std::string::npos);
  EXPECT_NE(error_of([] { TokenDataset(distinct_tokens(100), 1.0, 4, "t"); }).find("val_fraction"),
            std::string::npos);
  EXPECT_NE(error_of([] { TokenDataset(distinct_tokens(100), 0.5, 0, "t"); }).find("block_size"),
            std::string::npos);
  const TokenDataset d(distinct_tokens(100), 0.5, 4, "t");
  std::mt19937_64 rng(1);
  EXPECT_NE(error_of([&] { d.sample(Split::kTrain, 0, rng); }).find("batch size"),
            std::string::npos);
}

// For each row of a batch: the offset (within the whole token vector) it was cut from, after
// checking that x is tokens[o, o + T) and y is tokens[o + 1, o + T + 1).
std::vector<int64_t> row_offsets(const Batch& b, const std::vector<int64_t>& tokens) {
  std::map<int64_t, int64_t> position;  // token -> index (tokens are distinct)
  for (size_t i = 0; i < tokens.size(); ++i) position[tokens[i]] = static_cast<int64_t>(i);
  const int64_t B = b.x.size(0), T = b.x.size(1);
  const int64_t* x = b.x.data_ptr<int64_t>();
  const int64_t* y = b.y.data_ptr<int64_t>();
  std::vector<int64_t> offsets;
  for (int64_t i = 0; i < B; ++i) {
    const int64_t o = position.at(x[i * T]);
    for (int64_t t = 0; t < T; ++t) {
      EXPECT_EQ(x[i * T + t], tokens.at(o + t)) << "row " << i << " t " << t;
      EXPECT_EQ(y[i * T + t], tokens.at(o + t + 1)) << "row " << i << " t " << t;
    }
    offsets.push_back(o);
  }
  return offsets;
}

TEST(TokenDataset, SampleShapeAndTargetsShiftedByOne) {
  const std::vector<int64_t> tokens = distinct_tokens(200);
  const TokenDataset d(tokens, 0.2, 16, "t");
  std::mt19937_64 rng(7);
  const Batch b = d.sample(Split::kTrain, 5, rng);
  EXPECT_EQ(b.x.sizes(), (std::vector<int64_t>{5, 16}));
  EXPECT_EQ(b.y.sizes(), (std::vector<int64_t>{5, 16}));
  EXPECT_EQ(b.x.scalar_type(), torch::kInt64);
  EXPECT_EQ(b.y.scalar_type(), torch::kInt64);
  EXPECT_TRUE(b.x.device().is_cpu());
  EXPECT_TRUE(b.x.is_contiguous() && b.y.is_contiguous());
  // y[:, :-1] == x[:, 1:]
  EXPECT_TRUE(torch::equal(b.y.slice(1, 0, 15), b.x.slice(1, 1, 16)));
  row_offsets(b, tokens);
}

TEST(TokenDataset, SplitsDoNotOverlapAndCoverEveryOffset) {
  // 40 tokens at 0.25: train is [0, 30), validation [30, 40); T = 8.
  const std::vector<int64_t> tokens = distinct_tokens(40);
  const TokenDataset d(tokens, 0.25, 8, "t");
  std::mt19937_64 rng(123);
  std::set<int64_t> train_offsets, val_offsets;
  for (int rep = 0; rep < 50; ++rep) {
    for (int64_t o : row_offsets(d.sample(Split::kTrain, 32, rng), tokens)) train_offsets.insert(o);
    for (int64_t o : row_offsets(d.sample(Split::kVal, 32, rng), tokens)) val_offsets.insert(o);
  }
  // Train blocks (x and y) stay in [0, 30): offsets 0..21; validation in [30, 40): 30 and 31.
  std::set<int64_t> expect_train, expect_val = {30, 31};
  for (int64_t o = 0; o <= 21; ++o) expect_train.insert(o);
  EXPECT_EQ(train_offsets, expect_train);
  EXPECT_EQ(val_offsets, expect_val);
}

TEST(TokenDataset, SameSeedSameBatchDifferentSeedDifferent) {
  const TokenDataset d(distinct_tokens(5000), 0.1, 32, "t");
  std::mt19937_64 a(42), b(42), c(43);
  for (const Split split : {Split::kTrain, Split::kVal}) {
    const Batch ba = d.sample(split, 8, a);
    const Batch bb = d.sample(split, 8, b);
    const Batch bc = d.sample(split, 8, c);
    EXPECT_TRUE(torch::equal(ba.x, bb.x) && torch::equal(ba.y, bb.y));
    EXPECT_FALSE(torch::equal(ba.x, bc.x));
  }
  // Successive draws from one generator differ.
  EXPECT_FALSE(torch::equal(d.sample(Split::kTrain, 8, a).x, d.sample(Split::kTrain, 8, a).x));
}

TEST(TokenDataset, OffsetsFollowTheDocumentedRule) {
  // Offset = split begin + rng() % (split_len - T), one draw per row in row order.
  const std::vector<int64_t> tokens = distinct_tokens(1000);
  const TokenDataset d(tokens, 0.3, 10, "t");  // train [0, 700), validation [700, 1000)
  std::mt19937_64 rng(9), replay(9);
  const std::vector<int64_t> train = row_offsets(d.sample(Split::kTrain, 4, rng), tokens);
  const std::vector<int64_t> val = row_offsets(d.sample(Split::kVal, 4, rng), tokens);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(train[i], static_cast<int64_t>(replay() % 690));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(val[i], 700 + static_cast<int64_t>(replay() % 290));
}

}  // namespace
}  // namespace sy
