// Helpers for the config tests: a fresh temporary folder to write YAML files into, and the
// message of the sy::Error a call throws.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "common/error.h"
#include "common/files.h"
#include "temp_folder.h"

namespace sy::testing {

// A fresh folder under GoogleTest's temp dir, removed with the fixture.
class ConfigFiles : public ::testing::Test {
 protected:
  // Writes `text` to `name` in the folder and returns its path.
  std::string write(const std::string& name, const std::string& text) {
    const std::string path = folder_ / name;
    std::ofstream(path) << text;
    return path;
  }
  TempFolder folder_{"config"};
  const std::string& dir_ = folder_.path();
};

// The message of the sy::Error that `fn` throws, or "<no error>" (which no test expects).
template <typename F> std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const sy::Error& e) {
    return e.message();
  }
  return "<no error>";
}

}  // namespace sy::testing

// EXPECT_CONTAINS(message, "moe.top_k"): `part` occurs in `text`.
#define EXPECT_CONTAINS(text, part)                          \
  EXPECT_NE(std::string(text).find(part), std::string::npos) \
      << "expected to find \"" << (part) << "\" in \"" << (text) << "\""
#define EXPECT_NOT_CONTAINS(text, part)                      \
  EXPECT_EQ(std::string(text).find(part), std::string::npos) \
      << "did not expect \"" << (part) << "\" in \"" << (text) << "\""
