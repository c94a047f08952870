#include "train/metrics.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/error.h"

namespace sy {
namespace {
std::string number(double v) {
  if (!std::isfinite(v)) return "null";  // JSON has no NaN/Inf
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.8g", v);
  return buf;
}
}  // namespace

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out;
}

void JsonObject::key(const std::string& k) {
  if (!body_.empty()) body_ += ", ";
  body_ += "\"" + json_escape(k) + "\": ";
}

JsonObject& JsonObject::add(const std::string& k, double value) {
  key(k);
  body_ += number(value);
  return *this;
}

JsonObject& JsonObject::add(const std::string& k, int64_t value) {
  key(k);
  body_ += std::to_string(value);
  return *this;
}

JsonObject& JsonObject::add(const std::string& k, const std::string& value) {
  key(k);
  body_ += "\"" + json_escape(value) + "\"";
  return *this;
}

JsonObject& JsonObject::add(const std::string& k, const std::vector<double>& values) {
  key(k);
  body_ += "[";
  for (size_t i = 0; i < values.size(); ++i) body_ += (i ? ", " : "") + number(values[i]);
  body_ += "]";
  return *this;
}

JsonObject& JsonObject::add(const std::string& k, const std::vector<std::vector<double>>& rows) {
  key(k);
  body_ += "[";
  for (size_t r = 0; r < rows.size(); ++r) {
    body_ += r ? ", [" : "[";
    for (size_t i = 0; i < rows[r].size(); ++i) body_ += (i ? ", " : "") + number(rows[r][i]);
    body_ += "]";
  }
  body_ += "]";
  return *this;
}

MetricsWriter::MetricsWriter(const std::string& path) : out_(path, std::ios::trunc), path_(path) {
  SY_CHECK(out_.good(), "cannot write metrics file '", path, "'");
}

MetricsWriter::MetricsWriter(const std::string& path, int64_t step) : path_(path) {
  std::vector<std::string> kept;
  {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      // Lines start with {"step": N (JsonObject, written above); anything else is kept as is.
      const std::string prefix = "{\"step\": ";
      if (line.rfind(prefix, 0) != 0) {
        kept.push_back(line);
        continue;
      }
      const int64_t s = std::strtoll(line.c_str() + prefix.size(), nullptr, 10);
      const bool train_line = line.find("\"train_loss\"") != std::string::npos;
      if (s < step || (s == step && train_line)) kept.push_back(line);
    }
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
