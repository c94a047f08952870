// Parameter initialisation shared by the model and the MoE layer.
//
// Note [Sharding-independent init]: dense parameters are drawn from one generator in module
// construction order (the same on every rank), and each expert's weights from a generator
// seeded by (seed, layer, global expert id). A model sharded over any number of EP ranks
// therefore starts from exactly the weights of the single-process model.
#pragma once

#include <cstdint>
#include <string>

#include <ATen/core/Generator.h>

#include "config/choices.h"

namespace sy {

struct InitSpec {
  bool kaiming = false;  // kaiming-normal (std sqrt(2 / fan_in)) instead of N(0, 0.02)
  uint64_t seed = 0;
};

InitSpec make_init_spec(InitKind init, uint64_t seed);

// Standard deviation for a weight with the given fan-in.
double init_std(const InitSpec& spec, int64_t fan_in);

// splitmix64-style mixing of a seed with a stream of values.
uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b = 0, uint64_t c = 0);

at::Generator make_cpu_generator(uint64_t seed);

}  // namespace sy
