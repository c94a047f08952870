// JSON written by hand, one object at a time: the lines of metrics.jsonl, summary.json and the
// sweep's results.jsonl. Numbers print with 8 significant digits (%.8g, enough for the float
// values they carry); NaN and Inf, which JSON lacks, print as null.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sy {

class JsonObject {
 public:
  JsonObject& add(const std::string& key, double value);
  JsonObject& add(const std::string& key, int64_t value);
  JsonObject& add(const std::string& key, const std::string& value);
  JsonObject& add(const std::string& key, const std::vector<double>& values);
  JsonObject& add(const std::string& key, const std::vector<std::vector<double>>& rows);
  // A value that is JSON already (a nested object or array, true/false, null).
  JsonObject& add_raw(const std::string& key, const std::string& json);
  bool empty() const { return body_.empty(); }
  std::string str() const { return "{" + body_ + "}"; }

 private:
  void key(const std::string& k);
  std::string body_;
};

std::string json_escape(const std::string& s);
// A number as JSON: %.8g, or null when not finite.
std::string json_number(double v);

}  // namespace sy
