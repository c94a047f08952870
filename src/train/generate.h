// Sampling text from a trained run folder (config.yaml, vocab.json, model.pt).
#pragma once

#include <cstdint>
#include <string>

#include "common/device_kind.h"

namespace sy {

struct GenerateOptions {
  std::string run_dir;
  std::string prompt;  // empty: start from the first vocabulary character ("\n" if present)
  std::string source;  // model.kind encoder_decoder: the sequence to translate
  int64_t num_tokens = 200;
  double temperature = 1.0;  // 0: greedy
  int64_t top_k = 0;         // 0: no top-k filter
  int64_t seed = 0;
  std::string task;  // data.tasks runs: the task whose mask and head to use (empty: none/first)
  DeviceKind device = DeviceKind::kCpu;
};

// Returns the prompt followed by the sampled continuation; for an encoder_decoder run, the target
// decoded from `source` (up to EOS, num_tokens or model.block_size - 1 characters).
std::string generate_text(const GenerateOptions& options);

}  // namespace sy
