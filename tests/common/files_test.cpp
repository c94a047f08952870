// File helpers: CRC-32 against its published check value, atomic replacement, reading, and
// errors that name the file.
#include <sys/stat.h>

#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "common/error.h"
#include "common/files.h"
#include "temp_folder.h"

namespace sy {
namespace {

using sy::testing::TempFolder;

TEST(Crc32, CheckValues) {
  // The CRC-32/ISO-HDLC check value (the CRC of "123456789"), as zlib computes it.
  const std::string digits = "123456789";
  EXPECT_EQ(crc32(digits.data(), digits.size()), 0xCBF43926u);
  EXPECT_EQ(crc32("", 0), 0u);
  const std::string fox = "The quick brown fox jumps over the lazy dog";
  EXPECT_EQ(crc32(fox.data(), fox.size()), 0x414FA339u);
  // Continuing a CRC over two pieces equals the CRC of the whole.
  EXPECT_EQ(crc32(fox.data() + 10, fox.size() - 10, crc32(fox.data(), 10)), 0x414FA339u);
}

TEST(Files, AtomicWriteReplacesAndLeavesNoTemporary) {
  const TempFolder folder("files");
  const std::string& dir = folder.path();
  const std::string path = dir + "/a.bin";
  write_file_atomic(path, std::string("first"));
  EXPECT_EQ(read_file(path), "first");
  const std::string binary("x\0y\0z", 5);
  write_file_atomic(path, binary);
  EXPECT_EQ(read_file(path), binary);
  struct stat st;
  EXPECT_NE(::stat((path + ".tmp").c_str(), &st), 0);
}

TEST(Files, ErrorsNameTheFile) {
  const TempFolder folder("files");
  const std::string& dir = folder.path();
  try {
    read_file(dir + "/missing.txt");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("missing.txt"), std::string::npos) << e.message();
  }
  try {
    write_file_atomic(dir + "/no/such/folder/f", std::string("x"));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("no/such/folder/f.tmp"), std::string::npos) << e.message();
  }
  make_directories(dir + "/p/q/r");
  struct stat st;
  EXPECT_EQ(::stat((dir + "/p/q/r").c_str(), &st), 0);
  make_directories(dir + "/p/q/r");  // exists: fine
  std::ofstream(dir + "/file") << "x";
  EXPECT_THROW(make_directories(dir + "/file"), Error);
}

}  // namespace
}  // namespace sy
