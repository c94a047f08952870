// Token sources beside text: flat binary files of uint16/uint32 ids (nanoGPT's train.bin /
// val.bin) and random tokens. Files whose ids encode their own position let the tests check the
// exact offsets a batch came from, the split boundary, and the little-endian byte order.
#include <cstdint>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#include "common/files.h"
#include "data/dataset.h"
#include "temp_folder.h"

namespace sy {
namespace {

class TokenFiles : public ::testing::Test {
 protected:
  template <typename T> std::string write_ids(const std::string& name, const std::vector<T>& ids) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(ids.data()),
               static_cast<std::streamsize>(ids.size() * sizeof(T)));
    return path;
  }

  std::string error_of(const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return e.message();
    }
    return "(no error)";
  }

  sy::testing::TempFolder folder_{"tokens"};
  const std::string& dir_ = folder_.path();
};

TEST_F(TokenFiles, Uint32BlocksComeFromTheirSplit) {
  // id = position: a row's first id is the offset it was read from.
  std::vector<uint32_t> ids(1000);
  for (uint32_t i = 0; i < ids.size(); ++i) ids[i] = i;
  const std::string path = write_ids("train.bin", ids);
  const int64_t T = 8;
  auto src = open_token_file(path, "", 4, 0.1, T, 1000);
  EXPECT_EQ(src->num_tokens(Split::kTrain), 900);
  EXPECT_EQ(src->num_tokens(Split::kVal), 100);
  std::mt19937_64 rng(5);
  for (const Split split : {Split::kTrain, Split::kVal}) {
    const Batch b = src->sample(split, 64, rng);
    ASSERT_EQ(b.x.sizes(), (std::vector<int64_t>{64, T}));
    for (int64_t i = 0; i < 64; ++i) {
      const int64_t o = b.x[i][0].item<int64_t>();
      // Inside the split, with the target's last token too.
      if (split == Split::kTrain) {
        EXPECT_LE(o + T, 899) << o;
      } else {
        EXPECT_GE(o, 900);
        EXPECT_LE(o + T, 999);
      }
      for (int64_t t = 0; t < T; ++t) {
        EXPECT_EQ(b.x[i][t].item<int64_t>(), o + t);
        EXPECT_EQ(b.y[i][t].item<int64_t>(), o + t + 1);
      }
    }
  }
  // The same rng state gives the same batch.
  std::mt19937_64 a(9), b(9);
  EXPECT_TRUE(at::equal(src->sample(Split::kTrain, 4, a).x, src->sample(Split::kTrain, 4, b).x));
}

TEST_F(TokenFiles, Uint16IsLittleEndianAndValFileIsSeparate) {
  // Bytes 01 02 read as 0x0201 = 513 in a little-endian uint16 file.
  std::vector<uint8_t> bytes;
  for (int i = 0; i < 40; ++i) {
    bytes.push_back(0x01);
    bytes.push_back(0x02);
  }
  const std::string train = write_ids("train.bin", bytes);
  std::vector<uint16_t> val_ids(20, 7);
  const std::string val = write_ids("val.bin", val_ids);
  auto src = open_token_file(train, val, 2, 0.1, 4, 1024);
  EXPECT_EQ(src->num_tokens(Split::kTrain), 40);  // all of train.bin: the split is the other file
  EXPECT_EQ(src->num_tokens(Split::kVal), 20);
  std::mt19937_64 rng(1);
  EXPECT_TRUE(at::equal(src->sample(Split::kTrain, 2, rng).x, at::full({2, 4}, 513, at::kLong)));
  EXPECT_TRUE(at::equal(src->sample(Split::kVal, 2, rng).y, at::full({2, 4}, 7, at::kLong)));
}

TEST_F(TokenFiles, BadFilesAreNamed) {
  const std::string empty = write_ids("empty.bin", std::vector<uint16_t>{});
  EXPECT_EQ(error_of([&] { open_token_file(empty, "", 2, 0.1, 4, 100); }),
            "token file '" + empty + "' is empty");
  const std::string odd = write_ids("odd.bin", std::vector<uint8_t>{1, 2, 3});
  EXPECT_NE(error_of([&] {
              open_token_file(odd, "", 2, 0.1, 1, 100);
            }).find("has 3 bytes, not a whole number of 2-byte tokens"),
            std::string::npos);
  std::vector<uint16_t> ids(100, 3);
  ids[37] = 100;
  const std::string bad = write_ids("bad.bin", ids);
  EXPECT_EQ(error_of([&] { open_token_file(bad, "", 2, 0.1, 4, 100); }),
            "token file '" + bad +
                "': token 37 (byte offset 74) is 100, not below model.vocab_size (100)");
  const std::string small = write_ids("small.bin", std::vector<uint16_t>(20, 1));
  EXPECT_NE(error_of([&] {
              open_token_file(small, "", 2, 0.1, 4, 100);
            }).find("the validation split (2)"),
            std::string::npos);
  EXPECT_NE(
      error_of([&] { open_token_file(dir_ + "/none.bin", "", 2, 0.1, 4, 100); }).find("none.bin"),
      std::string::npos);
  EXPECT_NE(error_of([&] { open_token_file(dir_, "", 2, 0.1, 4, 100); }).find("is a directory"),
            std::string::npos);
  const std::string ok = write_ids("ok.bin", std::vector<uint16_t>(100, 1));
  EXPECT_NE(error_of([&] {
              open_token_file(ok, dir_ + "/missing_val.bin", 2, 0.1, 4, 100);
            }).find("missing_val.bin"),
            std::string::npos);
}

TEST(RandomTokens, UniformIdsShiftedTargetsDeterministic) {
  auto src = random_tokens(50, 16);
  EXPECT_EQ(src->num_tokens(Split::kTrain), -1);
  std::mt19937_64 a(3), b(3), c(4);
  const Batch x = src->sample(Split::kTrain, 64, a);
  EXPECT_TRUE(at::equal(x.x, src->sample(Split::kTrain, 64, b).x));
  EXPECT_FALSE(at::equal(x.x, src->sample(Split::kTrain, 64, c).x));
  EXPECT_TRUE(at::equal(x.x.narrow(1, 1, 15), x.y.narrow(1, 0, 15)));
  EXPECT_GE(x.x.min().item<int64_t>(), 0);
  EXPECT_LT(x.x.max().item<int64_t>(), 50);
  // 1024 draws over 50 ids: every id appears (a missing one has probability < 1e-7).
  EXPECT_EQ(std::get<0>(at::_unique(x.x.reshape({-1}))).numel(), 50);
}

}  // namespace
}  // namespace sy
