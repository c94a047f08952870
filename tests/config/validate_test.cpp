// validate(): each rule family breaks on one changed field, with a message naming the key and
// value; values on the boundary are accepted.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "config/config.h"
#include "config/config_test_util.h"

namespace sy {
namespace {

using testing::error_of;

// The message validate() gives for the default config changed by `change`.
std::string error_after(const std::function<void(Config&)>& change, int world_size = 0) {
  Config c;
  change(c);
  return error_of([&] { validate(c, world_size); });
}

void expect_valid(const std::function<void(Config&)>& change, int world_size = 0) {
  Config c;
  change(c);
  EXPECT_NO_THROW(validate(c, world_size));
}

TEST(Validate, DefaultsAreValid) {
  EXPECT_NO_THROW(validate(Config{}));
  for (int world_size : {1, 2, 4, 8}) EXPECT_NO_THROW(validate(Config{}, world_size));
}

TEST(Validate, SizesMustBePositive) {
  EXPECT_EQ(error_after([](Config& c) { c.model.n_layers = 0; }),
            "model.n_layers (0) must be >= 1");
  EXPECT_EQ(error_after([](Config& c) { c.model.d_model = -64; }),
            "model.d_model (-64) must be >= 1");
  EXPECT_CONTAINS(error_after([](Config& c) { c.model.n_heads = 0; }), "model.n_heads (0)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.model.d_ff = 0; }), "model.d_ff (0)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.model.block_size = 0; }), "model.block_size (0)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.data.batch_size = 0; }), "data.batch_size (0)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.moe.num_experts = 0; }), "moe.num_experts (0)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.moe.top_k = 0; }), "moe.top_k (0) must be >= 1");
  EXPECT_CONTAINS(error_after([](Config& c) { c.train.max_steps = 0; }), "train.max_steps (0)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.train.grad_accum = 0; }), "train.grad_accum (0)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.train.log_interval = 0; }),
                  "train.log_interval (0)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.data.synthetic_chars = 0; }),
                  "data.synthetic_chars (0)");
  expect_valid([](Config& c) { c.model.n_layers = 1; });
}

TEST(Validate, CountsMayBeZeroButNotNegative) {
  EXPECT_EQ(error_after([](Config& c) { c.train.eval_interval = -1; }),
            "train.eval_interval (-1) must be >= 0");
  EXPECT_CONTAINS(error_after([](Config& c) { c.train.eval_iters = -1; }), "train.eval_iters (-1)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.moe.min_capacity = -1; }),
                  "moe.min_capacity (-1)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.moe.every = -2; }), "moe.every (-2) must be >= 0");
  EXPECT_CONTAINS(error_after([](Config& c) { c.moe.d_ff = -1; }), "moe.d_ff (-1) must be >= 0");
  EXPECT_CONTAINS(error_after([](Config& c) { c.train.warmup_steps = -1; }),
                  "train.warmup_steps (-1)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.parallel.ep_size = -1; }),
                  "parallel.ep_size (-1) must be >= 0");
  expect_valid([](Config& c) {
    c.train.eval_interval = 0;
    c.train.eval_iters = 0;
    c.moe.min_capacity = 0;
    c.moe.every = 0;
    c.moe.d_ff = 0;
    c.train.warmup_steps = 0;
  });
}

TEST(Validate, HeadsDivideModelWidth) {
  EXPECT_EQ(error_after([](Config& c) { c.model.n_heads = 5; }),
            "model.d_model (64) must be divisible by model.n_heads (5)");
  expect_valid([](Config& c) { c.model.n_heads = 8; });
}

TEST(Validate, DropoutAndBetasInUnitInterval) {
  EXPECT_EQ(error_after([](Config& c) { c.model.dropout = 1.0; }),
            "model.dropout (1.0) must be in [0, 1)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.model.dropout = -0.1; }), "model.dropout (-0.1)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.train.beta1 = 1.0; }), "train.beta1 (1.0)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.train.beta2 = -0.5; }), "train.beta2 (-0.5)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.moe.jitter_eps = 1.0; }), "moe.jitter_eps (1.0)");
  expect_valid([](Config& c) {
    c.model.dropout = 0.999;
    c.train.beta1 = 0.0;
    c.moe.jitter_eps = 0.5;
  });
}

TEST(Validate, LearningRates) {
  EXPECT_EQ(error_after([](Config& c) { c.train.lr = 0; }), "train.lr (0.0) must be > 0");
  EXPECT_CONTAINS(error_after([](Config& c) { c.train.lr = std::nan(""); }), "train.lr (nan)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.train.min_lr = -1e-5; }),
                  "train.min_lr (-1e-05) must be >= 0");
  EXPECT_EQ(error_after([](Config& c) { c.train.min_lr = 0.01; }),
            "train.min_lr (0.01) must be <= train.lr (0.001)");
  expect_valid([](Config& c) { c.train.min_lr = c.train.lr; });
  expect_valid([](Config& c) { c.train.min_lr = 0; });
}

TEST(Validate, NonNegativeCoefficients) {
  EXPECT_CONTAINS(error_after([](Config& c) { c.train.weight_decay = -0.1; }),
                  "train.weight_decay (-0.1) must be >= 0");
  EXPECT_CONTAINS(error_after([](Config& c) { c.train.grad_clip = -1; }), "train.grad_clip (-1.0)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.moe.aux_loss_coef = -0.01; }),
                  "moe.aux_loss_coef (-0.01)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.moe.z_loss_coef = -1; }), "moe.z_loss_coef (-1.0)");
  expect_valid([](Config& c) {
    c.train.weight_decay = 0;
    c.train.grad_clip = 0;
    c.moe.aux_loss_coef = 0;
    c.moe.z_loss_coef = 0;
  });
}

TEST(Validate, ValFractionStrictlyInside) {
  EXPECT_EQ(error_after([](Config& c) { c.data.val_fraction = 0; }),
            "data.val_fraction (0.0) must be in (0, 1)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.data.val_fraction = 1; }), "data.val_fraction");
  expect_valid([](Config& c) { c.data.val_fraction = 0.5; });
}

TEST(Validate, TopKAtMostNumExperts) {
  EXPECT_EQ(error_after([](Config& c) {
              c.moe.num_experts = 2;
              c.moe.top_k = 3;
            }),
            "moe.top_k (3) must be <= moe.num_experts (2)");
  expect_valid([](Config& c) {
    c.moe.num_experts = 2;
    c.moe.top_k = 2;
  });
}

TEST(Validate, ChoicesListTheAllowedValues) {
  EXPECT_EQ(error_after([](Config& c) { c.moe.router = "foo"; }),
            "unknown moe.router 'foo': expected one of switch, topk, topk_logits, noisy_topk, "
            "dense, hash, random");
  EXPECT_EQ(error_after([](Config& c) { c.moe.activation = "tanh"; }),
            "unknown moe.activation 'tanh': expected one of gelu, relu, swiglu");
  EXPECT_EQ(error_after([](Config& c) { c.model.init = "xavier"; }),
            "unknown model.init 'xavier': expected one of normal, kaiming");
  EXPECT_EQ(error_after([](Config& c) { c.moe.priority = "random"; }),
            "unknown moe.priority 'random': expected one of token, score");
  EXPECT_EQ(error_after([](Config& c) { c.train.device = "tpu"; }),
            "unknown train.device 'tpu': expected one of cpu, cuda, auto");
  EXPECT_EQ(error_after([](Config& c) { c.train.dtype = "fp16"; }),
            "unknown train.dtype 'fp16': expected one of fp32, bf16");
  EXPECT_EQ(error_after([](Config& c) { c.train.param_dtype = "fp8"; }),
            "unknown train.param_dtype 'fp8': expected one of fp32, bf16");
  EXPECT_EQ(error_after([](Config& c) { c.moe.expert_gemm = "cutlass"; }),
            "unknown moe.expert_gemm 'cutlass': expected one of auto, batched, grouped");
  for (const char* router : {"topk", "topk_logits", "noisy_topk", "dense", "hash", "random"}) {
    expect_valid([&](Config& c) { c.moe.router = router; });
  }
  expect_valid([](Config& c) {
    c.moe.activation = "swiglu";
    c.model.init = "kaiming";
    c.moe.priority = "score";
    c.train.device = "cuda";
    c.train.dtype = "bf16";
    c.train.param_dtype = "bf16";
    c.moe.expert_gemm = "grouped";
  });
}

TEST(Validate, SwitchRouterNeedsTopOne) {
  const std::string msg = error_after([](Config& c) { c.moe.router = "switch"; });
  EXPECT_CONTAINS(msg, "moe.router 'switch'");
  EXPECT_CONTAINS(msg, "moe.top_k (2) must be 1");
  expect_valid([](Config& c) {
    c.moe.router = "switch";
    c.moe.top_k = 1;
  });
}

TEST(Validate, CapacityFactorsMayBeAnything) {
  expect_valid([](Config& c) {
    c.moe.capacity_factor = 0;  // dropless
    c.moe.eval_capacity_factor = -1;
  });
}

TEST(Validate, ExpertsDivideIntoEpGroups) {
  EXPECT_EQ(error_after([](Config& c) {
              c.moe.num_experts = 6;
              c.parallel.ep_size = 4;
            }),
            "moe.num_experts (6) must be divisible by parallel.ep_size (4)");
  expect_valid([](Config& c) { c.parallel.ep_size = 4; });
}

TEST(Validate, LayoutAgainstWorldSize) {
  // ep_size 0 means one group over the world: the world size must divide the experts.
  const std::string msg = error_after([](Config& c) { c.moe.num_experts = 6; }, /*world_size=*/4);
  EXPECT_CONTAINS(msg, "moe.num_experts (6) must be divisible by the world size (4)");
  EXPECT_CONTAINS(msg, "parallel.ep_size is 0");
  expect_valid([](Config& c) { c.moe.num_experts = 6; }, /*world_size=*/3);
  expect_valid([](Config& c) { c.moe.num_experts = 6; });  // no world: nothing to check
  // An explicit ep_size must divide the world.
  EXPECT_EQ(error_after([](Config& c) { c.parallel.ep_size = 4; }, /*world_size=*/6),
            "parallel.ep_size (4) must divide the world size (6)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.parallel.ep_size = 8; }, /*world_size=*/4),
                  "parallel.ep_size (8) must divide the world size (4)");
  expect_valid([](Config& c) { c.parallel.ep_size = 2; }, /*world_size=*/8);
  expect_valid([](Config& c) {
    c.moe.num_experts = 4;
    c.parallel.ep_size = 4;
  }, /*world_size=*/8);
}

TEST(Validate, DataFormats) {
  EXPECT_EQ(error_after([](Config& c) { c.data.format = "bin"; }),
            "unknown data.format 'bin': expected one of text, uint16, uint32, random");
  EXPECT_CONTAINS(error_after([](Config& c) { c.data.format = "random"; }),
                  "data.format 'random' needs model.vocab_size");
  EXPECT_CONTAINS(error_after([](Config& c) {
                    c.data.format = "uint16";
                    c.model.vocab_size = 100;
                  }),
                  "data.format 'uint16' needs data.path");
  EXPECT_CONTAINS(error_after([](Config& c) {
                    c.data.format = "uint16";
                    c.data.path = "train.bin";
                    c.model.vocab_size = 65537;
                  }),
                  "model.vocab_size is 65537; use uint32");
  expect_valid([](Config& c) {
    c.data.format = "uint16";
    c.data.path = "train.bin";
    c.data.val_path = "val.bin";
    c.model.vocab_size = 65536;
  });
  EXPECT_CONTAINS(error_after([](Config& c) { c.data.val_path = "val.bin"; }),
                  "data.val_path is for token files");
  EXPECT_CONTAINS(error_after([](Config& c) {
                    c.data.format = "random";
                    c.model.vocab_size = 50;
                    c.data.path = "x.txt";
                  }),
                  "data.format 'random' reads no file");
  expect_valid([](Config& c) {
    c.data.format = "random";
    c.model.vocab_size = 32000;
  });
}

TEST(Validate, CheckpointAndFaultKeys) {
  EXPECT_EQ(error_after([](Config& c) { c.train.checkpoint_interval = -2; }),
            "train.checkpoint_interval (-2) must be >= -1");
  EXPECT_EQ(error_after([](Config& c) {
              c.train.checkpoint_interval = -1;
              c.train.stop_at_step = 5;
            }),
            "train.stop_at_step (5) ends the run with a checkpoint to resume from, but "
            "train.checkpoint_interval is -1 (none)");
  expect_valid([](Config& c) { c.train.checkpoint_interval = -1; });
  EXPECT_CONTAINS(error_after([](Config& c) { c.train.keep_checkpoints = -2; }), "train.keep_checkpoints (-2)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.train.stop_at_step = -1; }), "train.stop_at_step (-1)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.train.skip_nonfinite = -1; }), "train.skip_nonfinite (-1)");
  EXPECT_EQ(error_after([](Config& c) { c.debug.crash_step = -2; }), "debug.crash_step (-2) must be >= -1");
  EXPECT_CONTAINS(error_after([](Config& c) { c.debug.crash_mode = "segv"; }),
                  "unknown debug.crash_mode 'segv': expected one of throw, exit");
  EXPECT_CONTAINS(error_after([](Config& c) { c.parallel.timeout_s = -1; }), "parallel.timeout_s (-1.0) must be >= 0");
  expect_valid([](Config& c) {
    c.train.checkpoint_interval = 10;
    c.debug.crash_rank = 1;
    c.debug.crash_step = 5;
    c.parallel.timeout_s = 0;
  });
}

}  // namespace
}  // namespace sy
