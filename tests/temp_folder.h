// A fresh folder for one test, under GoogleTest's temp dir, removed with the object (kept when
// SWITCHYARD_KEEP_TEST_DIRS is set, to look at a failure).
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "common/files.h"

namespace sy::testing {

class TempFolder {
 public:
  // `tag` is part of the folder's name (sy_<tag>_XXXXXX), to tell the tests' folders apart.
  explicit TempFolder(const std::string& tag = "test") {
    std::string pattern = ::testing::TempDir() + "/sy_" + tag + "_XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp " + pattern);
    path_ = pattern;
  }
  ~TempFolder() {
    if (std::getenv("SWITCHYARD_KEEP_TEST_DIRS") != nullptr) return;
    try {
      remove_tree(path_);  // Note [No std::filesystem::remove_all]
    } catch (const std::exception& e) {
      ADD_FAILURE() << e.what();
    }
  }
  TempFolder(const TempFolder&) = delete;
  TempFolder& operator=(const TempFolder&) = delete;

  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace sy::testing
