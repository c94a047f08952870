#include "train/metrics.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/log.h"

namespace sy {

MetricsWriter::MetricsWriter(const std::string& path) : out_(path, std::ios::trunc), path_(path) {
  SY_CHECK(out_.good(), "cannot write metrics file '", path, "'");
}

MetricsWriter::MetricsWriter(const std::string& path, int64_t step) : path_(path) {
  std::vector<std::string> kept;
  int64_t foreign = 0;  // non-empty lines that are not metrics lines
  {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      // Lines start with {"step": N (JsonObject, written above); anything else is kept as is.
      const std::string prefix = "{\"step\": ";
      if (line.rfind(prefix, 0) != 0) {
        kept.push_back(line);
        if (!line.empty()) ++foreign;
        continue;
      }
      const int64_t s = std::strtoll(line.c_str() + prefix.size(), nullptr, 10);
      const bool train_line = line.find("\"train_loss\"") != std::string::npos;
      if (s < step || (s == step && train_line)) kept.push_back(line);
    }
  }
  if (foreign > 0) {
    SY_LOG("train", "warning: metrics file '", path, "' holds ", foreign,
           " line(s) that are not metrics lines ({\"step\": N, ...}); kept as they are "
           "(switchyard report skips them)");
  }
  out_.open(path, std::ios::trunc);
  SY_CHECK(out_.good(), "cannot write metrics file '", path, "'");
  for (const std::string& line : kept) out_ << line << '\n';
  out_.flush();
}

void MetricsWriter::write(const JsonObject& line) {
  if (!out_.is_open()) return;
  out_ << line.str() << '\n';
  out_.flush();
  SY_CHECK(out_.good(), "writing metrics file '", path_, "' failed");
}

}  // namespace sy
