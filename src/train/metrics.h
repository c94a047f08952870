// metrics.jsonl: one JSON object per line (train lines carry "train_loss", eval lines
// "val_loss"), written by world rank 0 and flushed after every line so a crashed run keeps them.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

#include "common/json.h"

namespace sy {

class MetricsWriter {
 public:
  MetricsWriter() = default;
  explicit MetricsWriter(const std::string& path);  // truncates; throws naming the file
  // Continues a resumed run: keeps the lines of the steps before `step` (and the train line at
  // `step` itself, which the checkpoint's run logged), drops the rest (logged by an attempt that
  // died after the checkpoint) and appends.
  MetricsWriter(const std::string& path, int64_t step);
  void write(const JsonObject& line);
  bool is_open() const { return out_.is_open(); }

 private:
  std::ofstream out_;
  std::string path_;
};

}  // namespace sy
