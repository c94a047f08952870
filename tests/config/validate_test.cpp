// validate(): each rule family breaks on one changed field, with a message naming the key and
// value; values on the boundary are accepted.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "config/config.h"
#include "config/config_internal.h"
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

// Every size key has an upper bound (config.h, namespace limits); the bound itself is accepted.
TEST(Validate, SizesHaveUpperBounds) {
  struct Case {
    const char* key;
    std::function<void(Config&, int64_t)> set;
    int64_t limit;
  };
  const std::vector<Case> cases = {
      {"model.n_layers", [](Config& c, int64_t v) { c.model.n_layers = v; }, 1024},
      {"model.d_model", [](Config& c, int64_t v) { c.model.d_model = v; }, 1 << 20},
      {"model.n_heads", [](Config& c, int64_t v) { c.model.n_heads = v; }, 1 << 20},
      {"model.d_ff", [](Config& c, int64_t v) { c.model.d_ff = v; }, 1 << 20},
      {"model.block_size", [](Config& c, int64_t v) { c.model.block_size = v; }, 1 << 20},
      {"model.vocab_size", [](Config& c, int64_t v) { c.model.vocab_size = v; }, int64_t{1} << 31},
      {"moe.num_experts", [](Config& c, int64_t v) { c.moe.num_experts = v; }, 65536},
      {"moe.d_ff", [](Config& c, int64_t v) { c.moe.d_ff = v; }, 1 << 20},
      {"moe.shared_experts", [](Config& c, int64_t v) { c.moe.shared_experts = v; }, 65536},
      {"moe.shared_d_ff", [](Config& c, int64_t v) { c.moe.shared_d_ff = v; }, 1 << 20},
      {"moe.route_groups", [](Config& c, int64_t v) { c.moe.route_groups = v; }, 65536},
      {"moe.min_capacity", [](Config& c, int64_t v) { c.moe.min_capacity = v; }, 1 << 30},
      {"moe.a2a_chunks", [](Config& c, int64_t v) { c.moe.a2a_chunks = v; }, 64},
      {"data.batch_size", [](Config& c, int64_t v) { c.data.batch_size = v; }, 1 << 20},
      {"data.synthetic_chars", [](Config& c, int64_t v) { c.data.synthetic_chars = v; },
       int64_t{1} << 32},
      {"train.grad_accum", [](Config& c, int64_t v) { c.train.grad_accum = v; }, 1 << 16},
      {"train.eval_iters", [](Config& c, int64_t v) { c.train.eval_iters = v; }, 1 << 20},
      {"parallel.ep_size", [](Config& c, int64_t v) { c.parallel.ep_size = v; }, 65536},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.key);
    EXPECT_EQ(error_after([&](Config& c) { k.set(c, k.limit + 1); }),
              std::string(k.key) + " (" + std::to_string(k.limit + 1) + ") is too large: at most " +
                  std::to_string(k.limit));
    // Far beyond, where a product would have wrapped: the same error, not an overflow.
    EXPECT_CONTAINS(error_after([&](Config& c) { k.set(c, int64_t{1} << 62); }), "is too large");
  }
  // The limits themselves pass the per-key check (other rules may still apply).
  expect_valid([](Config& c) {
    c.model.n_layers = 1024;
    c.moe.every = 1;
  });
  expect_valid([](Config& c) { c.train.grad_accum = 1 << 16; });
  expect_valid([](Config& c) { c.data.synthetic_chars = int64_t{1} << 32; });
  Config tasks;
  tasks.data.tasks.resize(1025,
                          TaskConfig{"t", "", DataFormat::kText, 0, 1.0, {}, TaskHead::kShared});
  EXPECT_EQ(error_of([&] { validate(tasks); }),
            "data.tasks has 1025 tasks: too many, at most 1024");
}

TEST(Validate, CapacityFactorsThatWouldOverflowAreRefused) {
  EXPECT_EQ(error_after([](Config& c) { c.moe.capacity_factor = 1e300; }),
            "moe.capacity_factor (1e+300) is too large: at most 65536.0 (a factor of "
            "moe.num_experts / moe.top_k already keeps every token)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.moe.eval_capacity_factor = 1e20; }),
                  "moe.eval_capacity_factor (1e+20) is too large: at most 65536.0");
  expect_valid([](Config& c) { c.moe.capacity_factor = 65536; });
}

TEST(Validate, ProductsBeyond64BitsNameTheirKeys) {
  // Each within its bound, their product is not: the attention scores of a micro-batch.
  EXPECT_EQ(error_after([](Config& c) {
              c.data.batch_size = 1 << 20;
              c.model.block_size = 1 << 20;
              c.model.d_model = 1 << 16;
              c.model.n_heads = 1 << 16;
            }),
            "data.batch_size (1048576) * model.n_heads (65536) * model.block_size (1048576) * "
            "model.block_size (1048576) overflows a 64-bit integer (the attention scores of a "
            "micro-batch)");
  EXPECT_EQ(error_after([](Config& c) {
              c.data.batch_size = 1 << 20;
              c.model.block_size = 1 << 20;
              c.model.n_heads = 1;
              c.model.vocab_size = int64_t{1} << 31;
            }),
            "data.batch_size (1048576) * model.block_size (1048576) * model.vocab_size "
            "(2147483648) overflows a 64-bit integer (the logits of a micro-batch)");
  EXPECT_CONTAINS(error_after([](Config& c) {
                    c.model.n_layers = 1024;
                    c.moe.num_experts = 65536;
                    c.model.d_model = 1 << 20;
                    c.model.n_heads = 1;
                    c.moe.d_ff = 1 << 20;
                  }),
                  "model.n_layers (1024) * moe.num_experts (65536) * model.d_model (1048576) * "
                  "moe.d_ff (1048576) * 3 (the expert matrices) (3) overflows a 64-bit integer");
  EXPECT_CONTAINS(error_after(
                      [](Config& c) {
                        c.data.batch_size = 1 << 20;
                        c.model.block_size = 1 << 18;
                        c.model.n_heads = 1;
                        c.train.grad_accum = 1 << 16;
                        c.moe.num_experts = 1024;
                      },
                      1024),
                  "train.grad_accum (65536) * the world size (1024) overflows a 64-bit integer "
                  "(the tokens of a step)");
}

TEST(Validate, CountsMayBeZeroButNotNegative) {
  EXPECT_EQ(error_after([](Config& c) { c.train.eval_interval = -1; }),
            "train.eval_interval (-1) must be >= 0");
  EXPECT_CONTAINS(error_after([](Config& c) { c.train.eval_iters = -1; }), "train.eval_iters (-1)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.moe.min_capacity = -1; }), "moe.min_capacity (-1)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.moe.every = -2; }), "moe.every (-2) must be >= 0");
  EXPECT_EQ(error_after([](Config& c) { c.moe.a2a_chunks = 0; }),
            "moe.a2a_chunks (0) must be >= 1");
  EXPECT_EQ(
      error_after([](Config& c) { c.moe.dedup_dispatch = true; }),
      "moe.dedup_dispatch sends each token once per node of the two-level all-to-all: it "
      "needs parallel.a2a hierarchical (with parallel.ranks_per_node), got parallel.a2a flat");
  expect_valid([](Config& c) {
    c.moe.dedup_dispatch = true;
    c.parallel.a2a = A2aKind::kHierarchical;
    c.parallel.ranks_per_node = 1;
  });
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

// The keys that take one word of a fixed set are enums (Note [Typed choices]): loading reads the
// word once, and an unknown one is an error that lists the allowed words.
TEST(Choices, UnknownWordsListTheAllowedValues) {
  auto load_error = [](const std::string& set) {
    try {
      load_config_from_string("", "test.yaml", {set});
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_EQ(
      load_error("moe.router=foo"),
      "--set: moe.router: expected one of switch, topk, topk_logits, noisy_topk, dense, hash, "
      "random, expert_choice, got 'foo'");
  EXPECT_EQ(load_error("moe.activation=tanh"),
            "--set: moe.activation: expected one of gelu, relu, swiglu, got 'tanh'");
  EXPECT_EQ(load_error("model.init=xavier"),
            "--set: model.init: expected one of normal, kaiming, got 'xavier'");
  EXPECT_EQ(load_error("moe.priority=random"),
            "--set: moe.priority: expected one of token, score, got 'random'");
  EXPECT_EQ(load_error("train.device=tpu"),
            "--set: train.device: expected one of cpu, cuda, auto, got 'tpu'");
  EXPECT_EQ(load_error("train.dtype=fp16"),
            "--set: train.dtype: expected one of fp32, bf16, got 'fp16'");
  EXPECT_EQ(load_error("train.param_dtype=fp8"),
            "--set: train.param_dtype: expected one of fp32, bf16, got 'fp8'");
  EXPECT_EQ(
      load_error("moe.expert_gemm=cutlass"),
      "--set: moe.expert_gemm: expected one of auto, batched, grouped, trimmed, got 'cutlass'");
  EXPECT_EQ(load_error("data.format=bin"),
            "--set: data.format: expected one of text, uint16, uint32, random, got 'bin'");
  EXPECT_EQ(load_error("debug.crash_mode=segv"),
            "--set: debug.crash_mode: expected one of throw, exit, got 'segv'");
  EXPECT_EQ(
      load_error("moe.router=[topk]"),
      "--set: moe.router: expected one of switch, topk, topk_logits, noisy_topk, dense, hash, "
      "random, expert_choice, got a sequence (nested deeper than the config allows: nothing "
      "nests under moe.router)");
  // Words are case-sensitive, as YAML keys are.
  EXPECT_CONTAINS(load_error("moe.router=TopK"), "got 'TopK'");
}

TEST(Choices, EveryWordReadsToItsEnumeratorAndPrintsBack) {
  const std::pair<const char*, RouterKind> routers[] = {
      {"switch", RouterKind::kSwitch},
      {"topk", RouterKind::kTopK},
      {"topk_logits", RouterKind::kTopKLogits},
      {"noisy_topk", RouterKind::kNoisyTopK},
      {"dense", RouterKind::kDense},
      {"hash", RouterKind::kHash},
      {"random", RouterKind::kRandom},
      {"expert_choice", RouterKind::kExpertChoice}};
  for (const auto& [word, kind] : routers) {
    const std::string top_k = kind == RouterKind::kSwitch ? "1" : "2";
    const Config c = load_config_from_string(
        "", "test.yaml", {std::string("moe.router=") + word, "moe.top_k=" + top_k});
    EXPECT_EQ(c.moe.router, kind) << word;
    EXPECT_STREQ(choice_name(kind), word);
    EXPECT_CONTAINS(to_yaml(c), std::string("  router: ") + word + "\n");
  }
  const Config c = load_config_from_string(
      "moe:\n  activation: swiglu\n  priority: score\n  expert_gemm: grouped\nmodel:\n  init: "
      "kaiming\n"
      "train:\n  device: cuda\n  dtype: bf16\n  param_dtype: bf16\ndebug:\n  crash_mode: exit\n",
      "test.yaml");
  EXPECT_EQ(c.moe.activation, Activation::kSwiGlu);
  EXPECT_EQ(c.moe.priority, SlotPriority::kScore);
  EXPECT_EQ(c.moe.expert_gemm, ExpertGemm::kGrouped);
  EXPECT_EQ(c.model.init, InitKind::kKaiming);
  EXPECT_EQ(c.train.device, DeviceKind::kCuda);
  EXPECT_EQ(c.train.dtype, Precision::kBf16);
  EXPECT_EQ(c.train.param_dtype, Precision::kBf16);
  EXPECT_EQ(c.debug.crash_mode, CrashMode::kExit);
  // Printed and read back, every enum keeps its value.
  const Config back = load_config_from_string(to_yaml(c), "printed.yaml");
  EXPECT_EQ(to_yaml(back), to_yaml(c));
  EXPECT_EQ(back.debug.crash_mode, CrashMode::kExit);
  // The defaults.
  const Config d;
  EXPECT_EQ(d.moe.router, RouterKind::kTopK);
  EXPECT_EQ(d.train.device, DeviceKind::kAuto);
  EXPECT_EQ(d.data.format, DataFormat::kText);
}

TEST(Choices, ParseOrThrowNamesWhatWasRead) {
  EXPECT_EQ(parse_choice_or_throw<DeviceKind>("cuda", "--device"), DeviceKind::kCuda);
  try {
    parse_choice_or_throw<DeviceKind>("gpu", "--device");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "unknown --device 'gpu': expected one of cpu, cuda, auto");
  }
}

TEST(Validate, SwitchRouterNeedsTopOne) {
  const std::string msg = error_after([](Config& c) { c.moe.router = RouterKind::kSwitch; });
  EXPECT_CONTAINS(msg, "moe.router 'switch'");
  EXPECT_CONTAINS(msg, "moe.top_k (2) must be 1");
  expect_valid([](Config& c) {
    c.moe.router = RouterKind::kSwitch;
    c.moe.top_k = 1;
  });
}

TEST(Validate, ModernMoeKeys) {
  EXPECT_EQ(error_after([](Config& c) {
              c.moe.router = RouterKind::kTopKLogits;
              c.moe.score = ScoreKind::kSigmoid;
            }),
            "moe.score 'sigmoid' applies to the switch and topk routers, not moe.router "
            "'topk_logits'");
  EXPECT_EQ(error_after([](Config& c) {
              c.moe.router = RouterKind::kHash;
              c.moe.balance = BalanceKind::kAuxBias;
            }),
            "moe.balance 'aux+bias' adds a bias to the scores of the switch and topk routers, not "
            "moe.router 'hash'");
  EXPECT_EQ(error_after([](Config& c) { c.moe.route_scale = 0; }),
            "moe.route_scale (0.0) must be > 0");
  EXPECT_EQ(error_after([](Config& c) { c.moe.shared_experts = -1; }),
            "moe.shared_experts (-1) must be >= 0");
  EXPECT_EQ(error_after([](Config& c) { c.moe.bias_update_rate = -0.1; }),
            "moe.bias_update_rate (-0.1) must be >= 0");
  EXPECT_EQ(error_after([](Config& c) { c.moe.route_groups = 3; }),
            "moe.num_experts (8) must be divisible by moe.route_groups (3)");
  EXPECT_EQ(error_after([](Config& c) { c.moe.route_groups = 4; }),
            "moe.route_group_limit (0) must be in [1, moe.route_groups (4)]");
  EXPECT_EQ(error_after([](Config& c) { c.moe.route_group_limit = 2; }),
            "moe.route_group_limit (2) needs moe.route_groups > 1, the number of expert groups; it "
            "is 0");
  EXPECT_EQ(error_after([](Config& c) {
              c.moe.route_groups = 8;
              c.moe.route_group_limit = 1;
            }),
            "moe.top_k (2) must be <= the experts in 1 of 8 groups (1)");
  expect_valid([](Config& c) {
    c.moe.score = ScoreKind::kSigmoid;
    c.moe.balance = BalanceKind::kBias;
    c.moe.route_groups = 4;
    c.moe.route_group_limit = 1;
    c.moe.shared_experts = 2;
    c.moe.aux_loss = AuxLossKind::kVariance;
    c.moe.aux_loss_scope = AuxScope::kSequence;
  });
  EXPECT_CONTAINS(error_after([](Config& c) {
                    c.moe.aux_loss_scope = AuxScope::kGlobalBatch;
                    c.moe.aux_loss = AuxLossKind::kVariance;
                  }),
                  "counts f over the global batch for the switch aux loss");
  EXPECT_CONTAINS(error_after([](Config& c) {
                    c.moe.aux_loss_scope = AuxScope::kGlobalBatch;
                    c.model.dropout = 0.1;
                  }),
                  "model.dropout must be 0, not 0.1");
  EXPECT_CONTAINS(error_after([](Config& c) {
                    c.moe.aux_loss_scope = AuxScope::kGlobalBatch;
                    c.moe.router = RouterKind::kNoisyTopK;
                  }),
                  "draws no random numbers: not moe.router 'noisy_topk'");
  expect_valid([](Config& c) { c.moe.aux_loss_scope = AuxScope::kGlobalBatch; });
  EXPECT_EQ(error_after([](Config& c) {
              c.moe.router = RouterKind::kExpertChoice;
              c.moe.capacity_factor = 0;
            }),
            "moe.router 'expert_choice' fills every expert to its capacity: moe.capacity_factor "
            "(0.0) and moe.eval_capacity_factor (2.0) must be > 0");
  EXPECT_CONTAINS(error_after([](Config& c) {
                    c.moe.router = RouterKind::kExpertChoice;
                    c.moe.score = ScoreKind::kSigmoid;
                  }),
                  "not moe.router 'expert_choice'");
  expect_valid([](Config& c) { c.moe.router = RouterKind::kExpertChoice; });
  // Without scores to bias, group or renormalize, the other routers still take the aux options.
  expect_valid([](Config& c) {
    c.moe.router = RouterKind::kTopKLogits;
    c.moe.aux_loss_scope = AuxScope::kSequence;
    c.moe.balance = BalanceKind::kNone;
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
  expect_valid(
      [](Config& c) {
        c.moe.num_experts = 4;
        c.parallel.ep_size = 4;
      },
      /*world_size=*/8);
}

TEST(Validate, DataFormats) {
  EXPECT_CONTAINS(error_after([](Config& c) { c.data.format = DataFormat::kRandom; }),
                  "data.format 'random' needs model.vocab_size");
  EXPECT_CONTAINS(error_after([](Config& c) {
                    c.data.format = DataFormat::kUint16;
                    c.model.vocab_size = 100;
                  }),
                  "data.format 'uint16' needs data.path");
  EXPECT_CONTAINS(error_after([](Config& c) {
                    c.data.format = DataFormat::kUint16;
                    c.data.path = "train.bin";
                    c.model.vocab_size = 65537;
                  }),
                  "model.vocab_size is 65537; use uint32");
  expect_valid([](Config& c) {
    c.data.format = DataFormat::kUint16;
    c.data.path = "train.bin";
    c.data.val_path = "val.bin";
    c.model.vocab_size = 65536;
  });
  EXPECT_CONTAINS(error_after([](Config& c) { c.data.val_path = "val.bin"; }),
                  "data.val_path is for token files");
  EXPECT_CONTAINS(error_after([](Config& c) {
                    c.data.format = DataFormat::kRandom;
                    c.model.vocab_size = 50;
                    c.data.path = "x.txt";
                  }),
                  "data.format 'random' reads no file");
  expect_valid([](Config& c) {
    c.data.format = DataFormat::kRandom;
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
  EXPECT_CONTAINS(error_after([](Config& c) { c.train.keep_checkpoints = -2; }),
                  "train.keep_checkpoints (-2)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.train.stop_at_step = -1; }),
                  "train.stop_at_step (-1)");
  EXPECT_CONTAINS(error_after([](Config& c) { c.train.skip_nonfinite = -1; }),
                  "train.skip_nonfinite (-1)");
  EXPECT_EQ(error_after([](Config& c) { c.debug.crash_step = -2; }),
            "debug.crash_step (-2) must be >= -1");
  EXPECT_CONTAINS(error_after([](Config& c) { c.parallel.timeout_s = -1; }),
                  "parallel.timeout_s (-1.0) must be >= 0");
  expect_valid([](Config& c) {
    c.train.checkpoint_interval = 10;
    c.debug.crash_rank = 1;
    c.debug.crash_step = 5;
    c.parallel.timeout_s = 0;
  });
}

// data.tasks: two synthetic tasks, each masked to one half of the default 8 experts.
void two_tasks(Config& c) {
  c.data.tasks = {TaskConfig{"a", "", DataFormat::kText, 0, 1.0, {0, 1, 2, 3}, TaskHead::kShared},
                  TaskConfig{"b", "", DataFormat::kText, 1, 1.0, {4, 5, 6, 7}, TaskHead::kOwn}};
}

// The message validate() gives for the default config with two_tasks() and then `change`.
std::string task_error(const std::function<void(Config&)>& change) {
  return error_after([&](Config& c) {
    two_tasks(c);
    change(c);
  });
}

TEST(Validate, TasksEachNeedOneCorpusAndAUniqueName) {
  expect_valid(two_tasks);
  expect_valid([](Config& c) {
    two_tasks(c);
    c.data.tasks[0].synthetic = -1;
    c.data.tasks[0].path = "code.txt";  // a text file instead of a language
    c.data.tasks[1].synthetic = 3;      // the last language
  });
  const std::string dup = task_error([](Config& c) { c.data.tasks[1].name = "a"; });
  EXPECT_CONTAINS(dup, "data.tasks[1].name");
  EXPECT_CONTAINS(dup, "task 'a' is declared twice");
  const std::string both = task_error([](Config& c) { c.data.tasks[1].path = "b.txt"; });
  EXPECT_CONTAINS(both, "data.tasks[1] (b) needs exactly one corpus");
  const std::string neither = task_error([](Config& c) { c.data.tasks[0].synthetic = -1; });
  EXPECT_CONTAINS(neither, "data.tasks[0] (a) needs exactly one corpus");
  const std::string language = task_error([](Config& c) { c.data.tasks[1].synthetic = 4; });
  EXPECT_CONTAINS(language, "data.tasks[1].synthetic (4)");
  EXPECT_CONTAINS(language, "0 to 3");
  EXPECT_CONTAINS(task_error([](Config& c) { c.data.tasks[0].name = "a b"; }),
                  "data.tasks[0].name ('a b')");
  EXPECT_CONTAINS(task_error([](Config& c) { c.data.tasks[0].name = ""; }),
                  "data.tasks[0].name ('')");
  EXPECT_CONTAINS(task_error([](Config& c) { c.data.tasks[1].weight = -1; }),
                  "data.tasks[1].weight (-1.0) must be >= 0");
}

TEST(Validate, TaskWeightsAndDataPath) {
  expect_valid([](Config& c) {
    two_tasks(c);
    c.data.tasks[0].weight = 0;  // evaluated only
  });
  const std::string zero = task_error([](Config& c) {
    c.data.tasks[0].weight = 0;
    c.data.tasks[1].weight = 0;
  });
  EXPECT_CONTAINS(zero, "data.tasks");
  EXPECT_CONTAINS(zero, "at least one task needs a weight > 0");
  const std::string path = task_error([](Config& c) { c.data.path = "corpus.txt"; });
  EXPECT_CONTAINS(path, "data.path ('corpus.txt')");
  EXPECT_CONTAINS(path, "data.tasks");
  const std::string format = task_error([](Config& c) {
    c.data.format = DataFormat::kUint16;
    c.data.path = "train.bin";
    c.model.vocab_size = 100;
  });
  EXPECT_CONTAINS(format, "data.path ('train.bin') and data.format ('uint16') must be left unset");
}

TEST(Validate, TaskExpertIds) {
  const std::string range = task_error([](Config& c) { c.data.tasks[1].experts = {4, 8}; });
  EXPECT_CONTAINS(range, "data.tasks[1].experts[1] (8) is not an expert id");
  EXPECT_CONTAINS(range, "moe.num_experts is 8");
  EXPECT_CONTAINS(task_error([](Config& c) {
                    c.data.tasks[0].experts = {-1, 0};
                  }),
                  "data.tasks[0].experts[0] (-1) is not an expert id");
  EXPECT_CONTAINS(task_error([](Config& c) {
                    c.data.tasks[0].experts = {2, 3, 2};
                  }),
                  "data.tasks[0].experts names expert 2 twice");
  const std::string few = task_error([](Config& c) { c.data.tasks[1].experts = {5}; });
  EXPECT_CONTAINS(few, "data.tasks[1].experts allows 1 expert(s)");
  EXPECT_CONTAINS(few, "moe.top_k");
  // Exactly top_k experts is enough; an empty list allows all of them.
  expect_valid([](Config& c) {
    two_tasks(c);
    c.data.tasks[0].experts = {6, 1};
    c.data.tasks[1].experts = {};
  });
  EXPECT_CONTAINS(task_error([](Config& c) { c.moe.every = 0; }),
                  "data.tasks[0].experts masks the experts, but the model has no MoE layer");
}

// With route groups a task's experts must leave k of them in any route_group_limit groups that
// hold some (8 experts in 4 groups of 2, limit 2, top-2): {0, 3} spans groups 0 and 1 (both
// reachable), {0, 2, 4} spans three groups of one each, of which two hold only 2 (enough), and
// {0, 2, 4, 6} with top-3 leaves only 2 in the worst two groups.
TEST(Validate, TaskMasksAndGroupLimits) {
  auto groups = [](Config& c) {
    two_tasks(c);
    c.moe.router = RouterKind::kTopK;
    c.moe.route_groups = 4;
    c.moe.route_group_limit = 2;
  };
  expect_valid([&](Config& c) {
    groups(c);
    c.data.tasks[0].experts = {0, 3};
  });
  expect_valid([&](Config& c) {
    groups(c);
    c.data.tasks[0].experts = {0, 2, 4};
  });
  const std::string e = error_after([&](Config& c) {
    groups(c);
    c.moe.top_k = 3;
    c.data.tasks[0].experts = {0, 2, 4, 6};
    c.data.tasks[1].experts = {};
  });
  EXPECT_CONTAINS(e, "data.tasks[0].experts spreads over 4 of the 4 expert groups");
  EXPECT_CONTAINS(e, "can hold only 2 of them, fewer than moe.top_k (3)");
  EXPECT_CONTAINS(error_after([](Config& c) {
                    c.moe.every = 0;
                    c.moe.frozen_experts = {1};
                  }),
                  "moe.frozen_experts freezes experts, but the model has no MoE layer");
}

// Values the run could not honour (issue: runs that do what the config says or refuse).
TEST(Validate, ValuesTheRunCannotHonour) {
  Config c;
  c.model.n_layers = 2;
  c.moe.every = 3;
  EXPECT_CONTAINS(
      error_of([&] { validate(c); }),
      "moe.every (3) is larger than model.n_layers (2): no block would be an MoE block");
  c.moe.every = 2;  // block 2 is MoE
  EXPECT_NO_THROW(validate(c));
  c.train.max_steps = 100;
  c.train.checkpoint_interval = 0;
  c.train.stop_at_step = 101;
  EXPECT_CONTAINS(error_of([&] { validate(c); }),
                  "train.stop_at_step (101) is past train.max_steps (100)");
  c.train.stop_at_step = 100;
  EXPECT_NO_THROW(validate(c));
  c.debug.crash_step = 3;
  c.debug.crash_rank = 4;
  EXPECT_NO_THROW(validate(c));     // no world size: not checked
  EXPECT_NO_THROW(validate(c, 8));  // rank 4 of 8
  EXPECT_CONTAINS(error_of([&] { validate(c, 4); }),
                  "debug.crash_rank (4) is not a rank of this job: it has 4 rank(s), 0 to 3");
  c.debug.crash_step = -1;  // off: any rank
  EXPECT_NO_THROW(validate(c, 4));
  c.debug.nan_step = 1;
  c.debug.nan_rank = 2;
  EXPECT_CONTAINS(error_of([&] { validate(c, 2); }), "debug.nan_rank (2) is not a rank");
}

TEST(Validate, ModelKindAndObjectiveGoTogether) {
  expect_valid([](Config& c) {
    c.model.kind = ModelKind::kEncoder;
    c.train.objective = Objective::kMlm;
  });
  EXPECT_CONTAINS(error_after([](Config& c) { c.model.kind = ModelKind::kEncoder; }),
                  "model.kind 'encoder' trains with train.objective mlm");
  EXPECT_CONTAINS(error_after([](Config& c) { c.train.objective = Objective::kMlm; }),
                  "model.kind 'decoder' trains with train.objective lm");
  for (const double p : {0.0, 1.0, -0.1}) {
    EXPECT_CONTAINS(error_after([&](Config& c) { c.data.mask_prob = p; }),
                    "data.mask_prob (" + config_detail::format_number(p) + ") must be in (0, 1)");
  }
}

TEST(Validate, EncoderDecoderKeys) {
  auto seq2seq = [](Config& c) { c.model.kind = ModelKind::kEncoderDecoder; };
  expect_valid(seq2seq);
  expect_valid([&](Config& c) {
    seq2seq(c);
    c.moe.where = MoeWhere::kDecoder;
    c.data.pairs = PairTask::kReverse;
    c.data.target_language = c.data.source_language;  // reverse reads one language
  });
  EXPECT_CONTAINS(error_after([&](Config& c) {
                    seq2seq(c);
                    c.train.objective = Objective::kMlm;
                  }),
                  "model.kind 'encoder_decoder' trains with train.objective lm");
  EXPECT_CONTAINS(error_after([&](Config& c) {
                    seq2seq(c);
                    c.data.target_language = 0;
                  }),
                  "data.pairs 'translate' needs two languages: data.source_language and "
                  "data.target_language are both 0");
  EXPECT_CONTAINS(error_after([&](Config& c) {
                    seq2seq(c);
                    c.data.format = DataFormat::kRandom;
                    c.model.vocab_size = 50;
                  }),
                  "model.kind encoder_decoder trains on pairs of sequences: data.format must be "
                  "text");
  const std::string with_tasks = error_after([&](Config& c) {
    seq2seq(c);
    TaskConfig task;
    task.name = "a";
    task.synthetic = 0;
    c.data.tasks = {task};
  });
  EXPECT_CONTAINS(with_tasks, "data.tasks is not supported with model.kind encoder_decoder");
  EXPECT_CONTAINS(error_after([](Config& c) { c.moe.where = MoeWhere::kEncoder; }),
                  "moe.where 'encoder' chooses between the stacks of model.kind "
                  "encoder_decoder; model.kind 'decoder' has one stack");
  EXPECT_CONTAINS(error_after([](Config& c) { c.data.source_language = 4; }),
                  "data.source_language (4) is not a language of the embedded corpus: 0 to 3");
  EXPECT_CONTAINS(error_after([](Config& c) {
                    c.train.cuda_graph = true;
                    c.train.activation_checkpointing = Recompute::kMoe;
                  }),
                  "train.activation_checkpointing 'moe' rewinds the random generators");
  EXPECT_CONTAINS(error_after([](Config& c) {
                    c.train.cuda_graph = true;
                    c.moe.expert_gemm = ExpertGemm::kTrimmed;
                  }),
                  "moe.expert_gemm 'trimmed' reads each step's expert loads on the host");
  expect_valid([](Config& c) { c.moe.expert_gemm = ExpertGemm::kTrimmed; });
}

TEST(Validate, FrozenExpertIdsAndPatterns) {
  expect_valid([](Config& c) { c.moe.frozen_experts = {0, 7}; });
  const std::string range = error_after([](Config& c) { c.moe.frozen_experts = {1, 8}; });
  EXPECT_CONTAINS(range, "moe.frozen_experts[1] (8) is not an expert id");
  EXPECT_CONTAINS(range, "ids are 0 to 7");
  EXPECT_CONTAINS(error_after([](Config& c) { c.moe.frozen_experts = {-2}; }),
                  "moe.frozen_experts[0] (-2) is not an expert id");
  EXPECT_CONTAINS(error_after([](Config& c) {
                    c.moe.frozen_experts = {3, 1, 3};
                  }),
                  "moe.frozen_experts names expert 3 twice");
  EXPECT_CONTAINS(error_after([](Config& c) {
                    c.train.frozen = {"lm_head", ""};
                  }),
                  "train.frozen[1] is an empty pattern");
  EXPECT_CONTAINS(error_after([](Config& c) { c.train.trainable = {""}; }),
                  "train.trainable[0] is an empty pattern");
  expect_valid([](Config& c) {
    c.train.trainable = {"blocks.*"};
    c.train.frozen = {"*.attn"};
  });
}

TEST(Validate, TaskMasksNeedPerTokenRoutersAndTasks) {
  for (RouterKind router : {RouterKind::kHash, RouterKind::kRandom, RouterKind::kExpertChoice}) {
    const std::string msg = task_error([&](Config& c) { c.moe.router = router; });
    EXPECT_CONTAINS(msg, "data.tasks expert masks");
    EXPECT_CONTAINS(msg, std::string("not '") + choice_name(router) + "'");
  }
  // dense: every token sees every expert; a mask is refused even when it lists them all.
  const std::string dense = task_error([](Config& c) {
    c.moe.router = RouterKind::kDense;
    c.data.tasks[0].experts = {0, 1, 2, 3, 4, 5, 6, 7};
    c.data.tasks[1].experts = {};
  });
  EXPECT_CONTAINS(dense, "not 'dense'");
  EXPECT_NE(task_error([](Config& c) { c.moe.router = RouterKind::kDense; }), "<no error>");
  for (RouterKind router : {RouterKind::kTopKLogits, RouterKind::kNoisyTopK}) {
    expect_valid([&](Config& c) {
      two_tasks(c);
      c.moe.router = router;
    });
  }
  expect_valid([](Config& c) {
    two_tasks(c);
    c.moe.router = RouterKind::kSwitch;
    c.moe.top_k = 1;
  });
  // Tasks without expert lists mask nothing: any router.
  expect_valid([](Config& c) {
    two_tasks(c);
    c.data.tasks[0].experts = {};
    c.data.tasks[1].experts = {};
    c.moe.router = RouterKind::kHash;
  });
  const std::string learned =
      error_after([](Config& c) { c.moe.task_masks = TaskMaskKind::kLearned; });
  EXPECT_CONTAINS(learned, "moe.task_masks 'learned'");
  EXPECT_CONTAINS(learned, "needs data.tasks");
  expect_valid([](Config& c) {
    two_tasks(c);
    c.moe.task_masks = TaskMaskKind::kLearned;
  });
  // The aux loss per task cannot be counted over the global batch.
  for (TaskMaskKind kind : {TaskMaskKind::kFixed, TaskMaskKind::kLearned}) {
    const std::string global = task_error([&](Config& c) {
      c.moe.task_masks = kind;
      c.moe.aux_loss_scope = AuxScope::kGlobalBatch;
    });
    EXPECT_CONTAINS(global, "moe.aux_loss_scope 'global_batch'");
    EXPECT_CONTAINS(global, "data.tasks expert masks");
  }
  expect_valid([](Config& c) {
    two_tasks(c);
    c.moe.aux_loss_scope = AuxScope::kSequence;
  });
}

}  // namespace
}  // namespace sy
