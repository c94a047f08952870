#include "train/schedule.h"

#include <algorithm>
#include <cmath>

namespace sy {

double learning_rate(const TrainConfig& cfg, int64_t step) {
  if (step < cfg.warmup_steps) {
    return cfg.lr * static_cast<double>(step + 1) / static_cast<double>(cfg.warmup_steps);
  }
  const int64_t decay_steps = std::max<int64_t>(1, cfg.max_steps - cfg.warmup_steps);
  const double progress = std::min(
      1.0, static_cast<double>(step - cfg.warmup_steps) / static_cast<double>(decay_steps));
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
  return cfg.min_lr + (cfg.lr - cfg.min_lr) * cosine;
}

}  // namespace sy
