#include "moe/init.h"

#include <cmath>

#include <ATen/CPUGeneratorImpl.h>

#include "common/error.h"

namespace sy {

InitSpec make_init_spec(InitKind init, uint64_t seed) {
  return InitSpec{init == InitKind::kKaiming, seed};
}

double init_std(const InitSpec& spec, int64_t fan_in) {
  return spec.kaiming ? std::sqrt(2.0 / static_cast<double>(fan_in)) : 0.02;
}

namespace {
uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}
}  // namespace

uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  uint64_t h = splitmix64(seed);
  h = splitmix64(h ^ a);
  h = splitmix64(h ^ b);
  return splitmix64(h ^ c);
}

at::Generator make_cpu_generator(uint64_t seed) { return at::detail::createCPUGenerator(seed); }

}  // namespace sy
