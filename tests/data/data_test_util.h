// Helpers shared by the data tests: the message of an expected error, and the paragraphs of a
// synthetic corpus.
#pragma once

#include <string>
#include <vector>

#include "common/error.h"

namespace sy::test {

// The message of the sy::Error that `f` throws, or a marker that fails any substring check.
template <typename F> std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.message();
  }
  return "<no error thrown>";
}

// Splits the text at blank lines.
inline std::vector<std::string> paragraphs(const std::string& text) {
  std::vector<std::string> out;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find("\n\n", begin);
    if (end == std::string::npos) end = text.size();
    out.push_back(text.substr(begin, end - begin));
    begin = end + 2;
  }
  return out;
}

}  // namespace sy::test
