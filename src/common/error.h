// The project's one error type and the checks that throw it.
//
// Everything below main() reports failure by throwing sy::Error through SY_CHECK / SY_THROW;
// main() catches once, prints the message on every rank and aborts the communicators so that no
// peer hangs (see apps/switchyard.cpp). Never assert() on user input and never exit() below main.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace sy {

class Error : public std::runtime_error {
 public:
  Error(std::string message, const char* file, int line)
      : std::runtime_error(message), message_(std::move(message)), file_(file), line_(line) {}
  // The user-facing sentence, without location.
  const std::string& message() const { return message_; }
  // "src/foo.cpp:12": where it was thrown, for bug reports.
  std::string where() const { return std::string(file_) + ":" + std::to_string(line_); }

 private:
  std::string message_;
  const char* file_;
  int line_;
};

// Concatenates its arguments with operator<<: str("x = ", 3) == "x = 3".
template <typename... Args> std::string str(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

}  // namespace sy

#define SY_THROW(...) throw ::sy::Error(::sy::str(__VA_ARGS__), __FILE__, __LINE__)
#define SY_CHECK(cond, ...)  \
  do {                       \
    if (!(cond)) {           \
      SY_THROW(__VA_ARGS__); \
    }                        \
  } while (0)
