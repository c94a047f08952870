// train.objective mlm's masking (mask_for_mlm, masked_per_sequence, objective_batch): exact
// counts per row, targets at the masked positions only, the 80/10/10 replacement and uniform
// positions within binomial tolerances, and the same draws from the same stream.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include <torch/torch.h>

#include "config/config.h"
#include "data/corpus.h"
#include "data/dataset.h"

namespace sy {
namespace {

Batch random_batch(int64_t B, int64_t T, int64_t vocab, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const at::Tensor x = at::randint(0, vocab, {B, T}, gen, at::kLong);
  return {x, x.clone(), at::Tensor()};
}

// |observed - n p| within 5 standard deviations of Binomial(n, p).
void expect_binomial(int64_t observed, int64_t n, double p, const char* what) {
  const double sd = std::sqrt(static_cast<double>(n) * p * (1 - p));
  EXPECT_NEAR(static_cast<double>(observed), static_cast<double>(n) * p, 5 * sd) << what;
}

TEST(MaskedLm, CountsTargetsAndReplacements) {
  const int64_t B = 2000, T = 64, V = 40, per_row = 10, mask_id = V;
  const Batch b = random_batch(B, T, V, 7);
  std::mt19937_64 rng(11);
  const Batch m = mask_for_mlm(b, per_row, mask_id, V, rng);
  const auto x0 = b.x.accessor<int64_t, 2>();
  const auto x = m.x.accessor<int64_t, 2>();
  const auto y = m.y.accessor<int64_t, 2>();
  int64_t masked = 0, replaced_by_mask = 0, random_other = 0, kept = 0;
  std::vector<int64_t> per_position(T, 0);
  for (int64_t r = 0; r < B; ++r) {
    int64_t in_row = 0;
    for (int64_t t = 0; t < T; ++t) {
      if (y[r][t] == kIgnoreTarget) {
        EXPECT_EQ(x[r][t], x0[r][t]) << "an unmasked position changed";
        continue;
      }
      ++in_row;
      ++per_position[t];
      EXPECT_EQ(y[r][t], x0[r][t]) << "the target is the original token";
      if (x[r][t] == mask_id) {
        ++replaced_by_mask;
      } else if (x[r][t] == x0[r][t]) {
        ++kept;  // kept, or a random token that happened to be the same
      } else {
        ++random_other;
        EXPECT_TRUE(x[r][t] >= 0 && x[r][t] < V);
      }
    }
    ASSERT_EQ(in_row, per_row) << "row " << r;
    masked += in_row;
  }
  ASSERT_EQ(masked, B * per_row);
  expect_binomial(replaced_by_mask, masked, 0.8, "[MASK]");
  expect_binomial(random_other, masked, 0.1 * (V - 1) / V, "a random other token");
  expect_binomial(kept, masked, 0.1 + 0.1 / V, "unchanged");
  for (int64_t t = 0; t < T; ++t) {
    expect_binomial(per_position[t], B, static_cast<double>(per_row) / T, "position");
  }
}

TEST(MaskedLm, SameStreamSameMaskAndTasksKept) {
  Batch b = random_batch(8, 16, 20, 3);
  b.task = at::arange(8, at::kLong);
  std::mt19937_64 r1(5), r2(5), r3(6);
  const Batch a = mask_for_mlm(b, 3, 20, 20, r1), c = mask_for_mlm(b, 3, 20, 20, r2);
  EXPECT_TRUE(at::equal(a.x, c.x));
  EXPECT_TRUE(at::equal(a.y, c.y));
  EXPECT_TRUE(at::equal(a.task, b.task));
  EXPECT_FALSE(at::equal(mask_for_mlm(b, 3, 20, 20, r3).y, a.y));
}

TEST(MaskedLm, PerSequenceCountAndObjectiveBatch) {
  Config cfg;
  cfg.model.block_size = 64;
  cfg.data.mask_prob = 0.15;
  EXPECT_EQ(masked_per_sequence(cfg), 10);  // round(9.6)
  cfg.data.mask_prob = 0.001;
  EXPECT_EQ(masked_per_sequence(cfg), 1);  // at least one
  cfg.data.mask_prob = 0.999;
  EXPECT_EQ(masked_per_sequence(cfg), 64);

  // lm: the batch as sampled, no draw from the stream; mlm: masked, mask id past the data's ids.
  cfg.data.mask_prob = 0.25;
  cfg.data.synthetic_chars = 20000;
  const Corpus lm = load_corpus(cfg);
  EXPECT_EQ(lm.mask_id, -1);
  const Batch b = random_batch(4, 64, lm.vocab_size, 9);
  std::mt19937_64 rng(1), untouched(1);
  const Batch same = objective_batch(cfg, lm, b, rng);
  EXPECT_TRUE(at::equal(same.x, b.x));
  EXPECT_EQ(rng(), untouched());
  cfg.model.kind = ModelKind::kEncoder;
  cfg.train.objective = Objective::kMlm;
  const Corpus mlm = load_corpus(cfg);
  EXPECT_EQ(mlm.mask_id, lm.vocab_size);
  EXPECT_EQ(mlm.vocab_size, lm.vocab_size + 1);
  const Batch masked = objective_batch(cfg, mlm, b, rng);
  EXPECT_EQ((masked.y != kIgnoreTarget).sum().item<int64_t>(), 4 * 16);
}

}  // namespace
}  // namespace sy
