// Learning-rate schedule: linear warm-up from 0 to train.lr over train.warmup_steps, then cosine
// decay to train.min_lr at train.max_steps (constant min_lr after that).
#pragma once

#include <cstdint>

#include "config/config.h"

namespace sy {

double learning_rate(const TrainConfig& cfg, int64_t step);

}  // namespace sy
