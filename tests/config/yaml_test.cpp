// to_yaml() and config_keys(): every key printed in declaration order, doubles printed so they
// read back exactly, and a round trip through load_config() giving back the same Config.
#include <gtest/gtest.h>

#include <set>
#include <sstream>

#include "config/config.h"
#include "config/config_test_util.h"

namespace sy {
namespace {

using testing::error_of;
using YamlTest = testing::ConfigFiles;

// Field-by-field equality, written out independently of the loader's key table: a key missing
// from the table would not survive the round trip below and fails here.
void expect_same(const Config& a, const Config& b) {
  EXPECT_EQ(a.model.kind, b.model.kind);
  EXPECT_EQ(a.model.n_layers, b.model.n_layers);
  EXPECT_EQ(a.model.d_model, b.model.d_model);
  EXPECT_EQ(a.model.n_heads, b.model.n_heads);
  EXPECT_EQ(a.model.d_ff, b.model.d_ff);
  EXPECT_EQ(a.model.block_size, b.model.block_size);
  EXPECT_EQ(a.model.dropout, b.model.dropout);
  EXPECT_EQ(a.model.init, b.model.init);
  EXPECT_EQ(a.model.bias, b.model.bias);
  EXPECT_EQ(a.model.vocab_size, b.model.vocab_size);
  EXPECT_EQ(a.moe.num_experts, b.moe.num_experts);
  EXPECT_EQ(a.moe.top_k, b.moe.top_k);
  EXPECT_EQ(a.moe.router, b.moe.router);
  EXPECT_EQ(a.moe.renormalize, b.moe.renormalize);
  EXPECT_EQ(a.moe.every, b.moe.every);
  EXPECT_EQ(a.moe.capacity_factor, b.moe.capacity_factor);
  EXPECT_EQ(a.moe.eval_capacity_factor, b.moe.eval_capacity_factor);
  EXPECT_EQ(a.moe.min_capacity, b.moe.min_capacity);
  EXPECT_EQ(a.moe.aux_loss_coef, b.moe.aux_loss_coef);
  EXPECT_EQ(a.moe.z_loss_coef, b.moe.z_loss_coef);
  EXPECT_EQ(a.moe.activation, b.moe.activation);
  EXPECT_EQ(a.moe.d_ff, b.moe.d_ff);
  EXPECT_EQ(a.moe.jitter_eps, b.moe.jitter_eps);
  EXPECT_EQ(a.moe.priority, b.moe.priority);
  EXPECT_EQ(a.moe.expert_gemm, b.moe.expert_gemm);
  EXPECT_EQ(a.moe.fused_kernels, b.moe.fused_kernels);
  EXPECT_EQ(a.moe.a2a_chunks, b.moe.a2a_chunks);
  EXPECT_EQ(a.moe.dedup_dispatch, b.moe.dedup_dispatch);
  EXPECT_EQ(a.moe.route_padding, b.moe.route_padding);
  EXPECT_EQ(a.moe.shared_experts, b.moe.shared_experts);
  EXPECT_EQ(a.moe.shared_d_ff, b.moe.shared_d_ff);
  EXPECT_EQ(a.moe.score, b.moe.score);
  EXPECT_EQ(a.moe.route_scale, b.moe.route_scale);
  EXPECT_EQ(a.moe.balance, b.moe.balance);
  EXPECT_EQ(a.moe.bias_update_rate, b.moe.bias_update_rate);
  EXPECT_EQ(a.moe.aux_loss, b.moe.aux_loss);
  EXPECT_EQ(a.moe.aux_loss_scope, b.moe.aux_loss_scope);
  EXPECT_EQ(a.moe.route_groups, b.moe.route_groups);
  EXPECT_EQ(a.moe.route_group_limit, b.moe.route_group_limit);
  EXPECT_EQ(a.moe.new_expert_init, b.moe.new_expert_init);
  EXPECT_EQ(a.moe.frozen_experts, b.moe.frozen_experts);
  EXPECT_EQ(a.moe.task_masks, b.moe.task_masks);
  EXPECT_EQ(a.data.path, b.data.path);
  EXPECT_EQ(a.data.batch_size, b.data.batch_size);
  EXPECT_EQ(a.data.val_fraction, b.data.val_fraction);
  EXPECT_EQ(a.data.synthetic_chars, b.data.synthetic_chars);
  EXPECT_EQ(a.data.tasks, b.data.tasks);
  EXPECT_EQ(a.data.mask_prob, b.data.mask_prob);
  EXPECT_EQ(a.data.pairs, b.data.pairs);
  EXPECT_EQ(a.data.source_language, b.data.source_language);
  EXPECT_EQ(a.data.target_language, b.data.target_language);
  EXPECT_EQ(a.moe.where, b.moe.where);
  EXPECT_EQ(a.train.activation_checkpointing, b.train.activation_checkpointing);
  EXPECT_EQ(a.train.objective, b.train.objective);
  EXPECT_EQ(a.train.max_steps, b.train.max_steps);
  EXPECT_EQ(a.train.lr, b.train.lr);
  EXPECT_EQ(a.train.min_lr, b.train.min_lr);
  EXPECT_EQ(a.train.warmup_steps, b.train.warmup_steps);
  EXPECT_EQ(a.train.weight_decay, b.train.weight_decay);
  EXPECT_EQ(a.train.beta1, b.train.beta1);
  EXPECT_EQ(a.train.beta2, b.train.beta2);
  EXPECT_EQ(a.train.grad_clip, b.train.grad_clip);
  EXPECT_EQ(a.train.grad_accum, b.train.grad_accum);
  EXPECT_EQ(a.train.eval_interval, b.train.eval_interval);
  EXPECT_EQ(a.train.eval_iters, b.train.eval_iters);
  EXPECT_EQ(a.train.log_interval, b.train.log_interval);
  EXPECT_EQ(a.train.seed, b.train.seed);
  EXPECT_EQ(a.train.device, b.train.device);
  EXPECT_EQ(a.train.dtype, b.train.dtype);
  EXPECT_EQ(a.train.param_dtype, b.train.param_dtype);
  EXPECT_EQ(a.train.out_dir, b.train.out_dir);
  EXPECT_EQ(a.train.checkpoint_interval, b.train.checkpoint_interval);
  EXPECT_EQ(a.train.keep_checkpoints, b.train.keep_checkpoints);
  EXPECT_EQ(a.train.stop_at_step, b.train.stop_at_step);
  EXPECT_EQ(a.train.skip_nonfinite, b.train.skip_nonfinite);
  EXPECT_EQ(a.train.cuda_graph, b.train.cuda_graph);
  EXPECT_EQ(a.train.tf32, b.train.tf32);
  EXPECT_EQ(a.train.tensorboard, b.train.tensorboard);
  EXPECT_EQ(a.train.init_from, b.train.init_from);
  EXPECT_EQ(a.train.trainable, b.train.trainable);
  EXPECT_EQ(a.train.frozen, b.train.frozen);
  EXPECT_EQ(a.data.format, b.data.format);
  EXPECT_EQ(a.data.val_path, b.data.val_path);
  EXPECT_EQ(a.parallel.ep_size, b.parallel.ep_size);
  EXPECT_EQ(a.parallel.timeout_s, b.parallel.timeout_s);
  EXPECT_EQ(a.parallel.check_splits, b.parallel.check_splits);
  EXPECT_EQ(a.parallel.a2a, b.parallel.a2a);
  EXPECT_EQ(a.parallel.ranks_per_node, b.parallel.ranks_per_node);
  EXPECT_EQ(a.debug.crash_rank, b.debug.crash_rank);
  EXPECT_EQ(a.debug.crash_step, b.debug.crash_step);
  EXPECT_EQ(a.debug.crash_mode, b.debug.crash_mode);
  EXPECT_EQ(a.debug.stall_rank, b.debug.stall_rank);
  EXPECT_EQ(a.debug.stall_step, b.debug.stall_step);
  EXPECT_EQ(a.debug.nan_rank, b.debug.nan_rank);
  EXPECT_EQ(a.debug.nan_step, b.debug.nan_step);
  EXPECT_EQ(a.debug.kill_in_save_step, b.debug.kill_in_save_step);
}

// A valid config in which every field differs from its default, with doubles that need all 17
// digits and strings that need quoting.
Config every_field_changed() {
  Config c;
  c.model = {ModelKind::kEncoder, 3, 96, 6, 384, 128, 0.1, InitKind::kKaiming, false, 65};
  c.moe.num_experts = 16;
  c.moe.top_k = 1;
  c.moe.router = RouterKind::kSwitch;
  c.moe.renormalize = false;
  c.moe.every = 2;
  c.moe.capacity_factor = 1.0 / 3.0;
  c.moe.eval_capacity_factor = -1.0;
  c.moe.min_capacity = 0;
  c.moe.aux_loss_coef = 0.0123456789012345;
  c.moe.z_loss_coef = 2.5e-7;
  c.moe.activation = Activation::kSwiGlu;
  c.moe.d_ff = 100;
  c.moe.jitter_eps = 0.1 + 0.2;  // 0.30000000000000004
  c.moe.priority = SlotPriority::kScore;
  c.moe.expert_gemm = ExpertGemm::kGrouped;
  c.moe.fused_kernels = false;
  c.moe.a2a_chunks = 3;
  c.moe.dedup_dispatch = true;
  c.moe.shared_experts = 2;
  c.moe.shared_d_ff = 48;
  c.moe.score = ScoreKind::kSigmoid;
  c.moe.route_scale = 2.5;
  c.moe.balance = BalanceKind::kAuxBias;  // "aux+bias": a word with a '+' prints plain
  c.moe.bias_update_rate = 0.003;
  c.moe.aux_loss = AuxLossKind::kVariance;
  c.moe.aux_loss_scope = AuxScope::kSequence;
  c.moe.route_groups = 4;
  c.moe.route_group_limit = 2;
  c.data = {DataFormat::kUint32,
            "my data/a: b #c \"q\" \\ \xc3\xa9",
            "v a l.bin",
            4,
            0.05,
            1000,
            {},
            0.3,
            PairTask::kReverse,
            2,
            3};
  c.model.vocab_size = 70000;
  c.train = {Objective::kMlm,
             9,  // max_steps (stop_at_step below is 5)
             6e-4,
             6e-5,
             0,
             0.0,
             0.8,
             0.999,
             0.5,
             3,
             0,
             0,
             1,
             -42,
             DeviceKind::kCpu,
             Precision::kBf16,
             Precision::kBf16,
             "",
             7,
             0,
             5,
             2,
             true,
             true,
             true,
             "runs/base run",
             {},
             {},
             Recompute::kNone};  // (not with train.cuda_graph: YamlTest.RecomputeRoundTrips)
  c.moe.new_expert_init = NewExpertInit::kRandom;
  c.moe.where = MoeWhere::kBoth;  // (encoder and decoder need model.kind encoder_decoder)
  // Lists (data.tasks needs data.path unset: see TaskListsRoundTrip); patterns with '*' and
  // strings that need quoting print in flow style and read back.
  c.moe.frozen_experts = {15, 0, 7};
  c.train.trainable = {"lm_head", "blocks.*.attn", "*.router.*"};
  c.train.frozen = {"wte", "a b", "x: y", "[q]", "#c"};
  c.parallel.timeout_s = 12.5;
  c.parallel.check_splits = true;
  c.debug = {3, 4, CrashMode::kExit, 1, 2, 5, 6, 7};
  c.parallel.ep_size = 4;
  c.parallel.a2a = A2aKind::kHierarchical;
  c.parallel.ranks_per_node = 2;
  return c;
}

TEST_F(YamlTest, RoundTripGivesIdenticalConfig) {
  const Config original = every_field_changed();
  const std::string text = to_yaml(original);
  const Config loaded = load_config({write("resolved.yaml", text)}, {});
  expect_same(original, loaded);
  EXPECT_EQ(to_yaml(loaded), text);
  expect_same(Config{}, load_config({write("defaults.yaml", to_yaml(Config{}))}, {}));
}

TEST_F(YamlTest, RecomputeRoundTrips) {
  for (const Recompute r : {Recompute::kNone, Recompute::kMoe, Recompute::kBlock}) {
    Config c;
    c.train.activation_checkpointing = r;
    c.model.kind = ModelKind::kEncoderDecoder;
    c.moe.where = MoeWhere::kEncoder;
    const Config loaded = load_config({write("recompute.yaml", to_yaml(c))}, {});
    EXPECT_EQ(loaded.train.activation_checkpointing, r);
    EXPECT_EQ(loaded.moe.where, MoeWhere::kEncoder);
    EXPECT_EQ(loaded.model.kind, ModelKind::kEncoderDecoder);
  }
}

TEST_F(YamlTest, StringsThatNeedQuotingRoundTrip) {
  for (const std::string path : {"", "null", "~", "Null", "true", "123", "-x", "a b", "a:b", "#x",
                                 "'q'", "x\ny", "[a]", "{b}", "*a", "&a", "!t", "%p"}) {
    Config c;
    c.data.path = path;
    EXPECT_EQ(load_config_from_string(to_yaml(c), "saved.yaml").data.path, path)
        << "path '" << path << "' printed as:\n"
        << to_yaml(c);
  }
}

TEST_F(YamlTest, DoublesPrintShortestExactForm) {
  Config c;
  c.train.lr = 1e-5;
  c.train.min_lr = 1e-6;
  c.moe.capacity_factor = 2.0;
  c.moe.eval_capacity_factor = 1e20;
  c.moe.jitter_eps = 0.1 + 0.2;
  c.moe.aux_loss_coef = 1.0 / 3.0;
  const std::string text = to_yaml(c);
  EXPECT_CONTAINS(text, "  lr: 1e-05\n");
  EXPECT_CONTAINS(text, "  min_lr: 1e-06\n");
  EXPECT_CONTAINS(text, "  capacity_factor: 2.0\n");
  EXPECT_CONTAINS(text, "  eval_capacity_factor: 1e+20\n");
  EXPECT_CONTAINS(text, "  jitter_eps: 0.30000000000000004\n");
  EXPECT_CONTAINS(text, "  aux_loss_coef: 0.3333333333333333\n");
  EXPECT_CONTAINS(to_yaml(Config{}), "  lr: 0.001\n");
  EXPECT_CONTAINS(to_yaml(Config{}), "  dropout: 0.0\n");
}

TEST_F(YamlTest, DefaultYamlHasEveryKeyInOrder) {
  const std::string text = to_yaml(Config{});
  EXPECT_EQ(text.substr(0, 37), "model:\n  kind: decoder\n  n_layers: 2\n");
  EXPECT_CONTAINS(text, "  bias: true\n");
  EXPECT_CONTAINS(text, "  path: \"\"\n");
  EXPECT_CONTAINS(text, "  router: topk\n");
  EXPECT_CONTAINS(text, "  out_dir: runs/default\n");
  // One "section:" line per section, then "  key: value" per key, in config_keys() order.
  std::istringstream lines(text);
  std::string line;
  std::string section;
  std::vector<std::string> printed;
  while (std::getline(lines, line)) {
    if (line.rfind("  ", 0) == 0) {
      printed.push_back(section + "." + line.substr(2, line.find(':') - 2));
    } else {
      ASSERT_EQ(line.back(), ':') << line;
      section = line.substr(0, line.size() - 1);
    }
  }
  EXPECT_EQ(printed, config_keys());
}

// Tasks with every field set (each differing from its default in one task or another), the
// learned masks that need them, and a name and a path that need quoting.
Config tasks_config() {
  Config c;
  c.moe.num_experts = 8;
  c.moe.top_k = 2;
  c.moe.task_masks = TaskMaskKind::kLearned;
  c.data.tasks = {
      TaskConfig{"code", "", DataFormat::kText, 2, 3.0, {0, 1, 2}, TaskHead::kOwn},
      TaskConfig{
          "prose-2", "my corpus/a: b.txt", DataFormat::kText, -1, 0.0, {}, TaskHead::kShared},
      TaskConfig{"q_a", "", DataFormat::kText, 0, 0.1 + 0.2, {7, 3}, TaskHead::kOwn},
  };
  return c;
}

TEST_F(YamlTest, TaskListsRoundTrip) {
  const Config original = tasks_config();
  ASSERT_NO_THROW(validate(original));
  const std::string text = to_yaml(original);
  const Config loaded = load_config_from_string(text, "saved.yaml");
  expect_same(original, loaded);
  ASSERT_EQ(loaded.data.tasks.size(), 3u);
  EXPECT_EQ(loaded.data.tasks[2].weight, 0.1 + 0.2);  // all 17 digits
  EXPECT_EQ(loaded.data.tasks[1].path, "my corpus/a: b.txt");
  EXPECT_EQ(loaded.data.tasks[2].experts, (std::vector<int64_t>{7, 3}));  // order kept
  EXPECT_EQ(loaded.moe.task_masks, TaskMaskKind::kLearned);
  EXPECT_EQ(to_yaml(loaded), text);
  // Empty lists print as [] and read back empty.
  EXPECT_CONTAINS(to_yaml(Config{}), "  tasks: []\n");
  EXPECT_CONTAINS(to_yaml(Config{}), "  frozen_experts: []\n");
  EXPECT_CONTAINS(to_yaml(Config{}), "  trainable: []\n");
  EXPECT_CONTAINS(to_yaml(Config{}), "  frozen: []\n");
}

TEST_F(YamlTest, BlockAndFlowListsParse) {
  const Config block = load_config_from_string(
      "moe:\n"
      "  frozen_experts:\n"
      "    - 1\n"
      "    - 5\n"
      "data:\n"
      "  tasks:\n"
      "    - name: a\n"
      "      synthetic: 0\n"
      "      experts: [0, 1]\n"
      "    - name: b\n"
      "      synthetic: 3\n"
      "      weight: 0.25\n"
      "      head: own\n"
      "      experts:\n"
      "        - 6\n"
      "        - 7\n"
      "train:\n"
      "  frozen:\n"
      "    - lm_head\n"
      "    - \"blocks.*.attn\"\n",
      "block.yaml");
  EXPECT_EQ(block.moe.frozen_experts, (std::vector<int64_t>{1, 5}));
  EXPECT_EQ(block.train.frozen, (std::vector<std::string>{"lm_head", "blocks.*.attn"}));
  EXPECT_TRUE(block.train.trainable.empty());
  ASSERT_EQ(block.data.tasks.size(), 2u);
  // Keys a task leaves out keep TaskConfig's defaults.
  const TaskConfig a{"a", "", DataFormat::kText, 0, 1.0, {0, 1}, TaskHead::kShared};
  const TaskConfig b{"b", "", DataFormat::kText, 3, 0.25, {6, 7}, TaskHead::kOwn};
  EXPECT_EQ(block.data.tasks[0], a);
  EXPECT_EQ(block.data.tasks[1], b);

  const Config flow = load_config_from_string(
      "moe: {frozen_experts: [1, 5]}\n"
      "data: {tasks: [{name: a, synthetic: 0, experts: [0, 1]},\n"
      "               {name: b, synthetic: 3, weight: 0.25, head: own, experts: [6, 7]}]}\n"
      "train: {frozen: [lm_head, \"blocks.*.attn\"]}\n",
      "flow.yaml");
  expect_same(block, flow);
  EXPECT_EQ(to_yaml(flow), to_yaml(block));
}

TEST_F(YamlTest, SetTakesFlowLists) {
  const Config c = load_config(
      {}, {"train.frozen=[lm_head, \"blocks.*.attn\"]", "train.trainable=[\"blocks.*\"]",
           "moe.frozen_experts=[7, 2]", "data.tasks=[{name: t0, synthetic: 1}]"});
  EXPECT_EQ(c.train.frozen, (std::vector<std::string>{"lm_head", "blocks.*.attn"}));
  EXPECT_EQ(c.train.trainable, (std::vector<std::string>{"blocks.*"}));
  EXPECT_EQ(c.moe.frozen_experts, (std::vector<int64_t>{7, 2}));
  ASSERT_EQ(c.data.tasks.size(), 1u);
  EXPECT_EQ(c.data.tasks[0].name, "t0");
  EXPECT_EQ(c.data.tasks[0].synthetic, 1);
  // A later --set replaces the whole list (no append), and [] empties it.
  const std::string f = write("f.yaml", "train: {frozen: [wte, wpe]}\n");
  EXPECT_EQ(load_config({f}, {"train.frozen=[lm_head]"}).train.frozen,
            (std::vector<std::string>{"lm_head"}));
  EXPECT_TRUE(load_config({f}, {"train.frozen=[]"}).train.frozen.empty());
}

TEST_F(YamlTest, ListTypeErrorsNameTheKey) {
  // A scalar where a list is expected: the key, "a list of", and what was given.
  EXPECT_EQ(error_of([] { load_config({}, {"train.frozen=lm_head"}); }),
            "--set: train.frozen: expected a list of strings (e.g. [lm_head, "
            "\"blocks.*.moe.experts\"]), got 'lm_head'");
  EXPECT_EQ(error_of([] { load_config({}, {"moe.frozen_experts=3"}); }),
            "--set: moe.frozen_experts: expected a list of integers (e.g. [0, 1]), got '3'");
  const std::string t = write("t.yaml", "data:\n  tasks: code\n");
  const std::string tasks_msg = error_of([&] { load_config({t}, {}); });
  EXPECT_CONTAINS(tasks_msg, t + ":2: data.tasks: expected a list of tasks");
  EXPECT_CONTAINS(tasks_msg, "got 'code'");
  EXPECT_CONTAINS(error_of([] { load_config({}, {"train.trainable={a: 1}"}); }),
                  "--set: train.trainable: expected a list of strings");
  // A bad element names its index.
  EXPECT_EQ(error_of([] { load_config({}, {"moe.frozen_experts=[1, two]"}); }),
            "--set: moe.frozen_experts[1]: expected an integer, got 'two'");
  EXPECT_CONTAINS(error_of([] { load_config({}, {"train.frozen=[a, [b]]"}); }),
                  "--set: train.frozen[1]: expected a string, got a sequence");
  // Inside a task: the entry must be a mapping, and its values are typed.
  EXPECT_CONTAINS(error_of([] { load_config({}, {"data.tasks=[code]"}); }),
                  "--set: data.tasks[0]: expected a mapping");
  const std::string f = write("f.yaml",
                              "data:\n"
                              "  tasks:\n"
                              "    - name: a\n"
                              "      synthetic: 0\n"
                              "    - name: b\n"
                              "      synthetic: 1\n"
                              "      weight: heavy\n");
  const std::string weight = error_of([&] { load_config({f}, {}); });
  EXPECT_EQ(weight.rfind(f + ":", 0), 0u) << weight;  // the file (the line: see below)
  EXPECT_CONTAINS(weight, ": data.tasks[1].weight: expected a number, got 'heavy'");
  EXPECT_CONTAINS(error_of([] { load_config({}, {"data.tasks=[{name: a, experts: 3}]"}); }),
                  "--set: data.tasks[0].experts: expected a list of integers");
  EXPECT_CONTAINS(error_of([] { load_config({}, {"data.tasks=[{name: a, head: mine}]"}); }),
                  "--set: data.tasks[0].head: expected one of");
}

// A bad value inside a list points at its own line, as a bad scalar key does (not at the line
// where the list starts).
TEST_F(YamlTest, ErrorInsideAListNamesTheElementsLine) {
  const std::string f = write("f.yaml",
                              "data:\n"
                              "  tasks:\n"
                              "    - name: a\n"
                              "      synthetic: 0\n"
                              "    - name: b\n"
                              "      synthetic: 1\n"
                              "      weight: heavy\n"
                              "train:\n"
                              "  frozen:\n"
                              "    - lm_head\n"
                              "    - [wte]\n");
  EXPECT_EQ(error_of([&] { load_config({f}, {}); }),
            f + ":7: data.tasks[1].weight: expected a number, got 'heavy'");
  const std::string g = write("g.yaml", "moe:\n  frozen_experts:\n    - 1\n    - 2\n    - x\n");
  EXPECT_EQ(error_of([&] { load_config({g}, {}); }),
            g + ":5: moe.frozen_experts[2]: expected an integer, got 'x'");
}

TEST_F(YamlTest, UnknownTaskKeySuggestsNearest) {
  const std::string msg =
      error_of([] { load_config({}, {"data.tasks=[{name: a, synthetic: 0, wieght: 2}]"}); });
  EXPECT_CONTAINS(msg, "unknown key 'wieght' in data.tasks[0]");
  EXPECT_CONTAINS(msg, "did you mean 'weight'?");
  const std::string second = error_of([] {
    load_config({}, {"data.tasks=[{name: a, synthetic: 0}, {name: b, synthetic: 1, expert: [1]}]"});
  });
  EXPECT_CONTAINS(second, "unknown key 'expert' in data.tasks[1]");
  EXPECT_CONTAINS(second, "did you mean 'experts'?");
  const std::string far =
      error_of([] { load_config({}, {"data.tasks=[{name: a, qqqqqqqqqq: 1}]"}); });
  EXPECT_CONTAINS(far, "unknown key 'qqqqqqqqqq' in data.tasks[0]");
  EXPECT_NOT_CONTAINS(far, "did you mean");
}

TEST(ConfigKeys, ListsEverySectionKeyInDeclarationOrder) {
  const std::vector<std::string> keys = config_keys();
  ASSERT_EQ(keys.size(), 96u);
  EXPECT_EQ(keys.front(), "model.kind");
  EXPECT_EQ(keys[1], "model.n_layers");
  EXPECT_EQ(keys[10], "moe.num_experts");
  EXPECT_EQ(keys[11], "moe.top_k");
  EXPECT_EQ(keys[24], "moe.expert_gemm");
  EXPECT_EQ(keys[25], "moe.fused_kernels");
  EXPECT_EQ(keys[26], "moe.a2a_chunks");
  EXPECT_EQ(keys[27], "moe.dedup_dispatch");
  EXPECT_EQ(keys[28], "moe.route_padding");
  EXPECT_EQ(keys[29], "moe.shared_experts");
  EXPECT_EQ(keys[38], "moe.route_group_limit");
  EXPECT_EQ(keys[39], "moe.new_expert_init");
  EXPECT_EQ(keys[40], "moe.frozen_experts");
  EXPECT_EQ(keys[41], "moe.task_masks");
  EXPECT_EQ(keys[42], "moe.where");
  EXPECT_EQ(keys[43], "data.format");
  EXPECT_EQ(keys[44], "data.path");
  EXPECT_EQ(keys[49], "data.tasks");
  EXPECT_EQ(keys[50], "data.mask_prob");
  EXPECT_EQ(keys[51], "data.pairs");
  EXPECT_EQ(keys[52], "data.source_language");
  EXPECT_EQ(keys[53], "data.target_language");
  EXPECT_EQ(keys[54], "train.objective");
  EXPECT_EQ(keys[55], "train.max_steps");
  EXPECT_EQ(keys[76], "train.cuda_graph");
  EXPECT_EQ(keys[77], "train.tf32");
  EXPECT_EQ(keys[78], "train.tensorboard");
  EXPECT_EQ(keys[79], "train.init_from");
  EXPECT_EQ(keys[80], "train.trainable");
  EXPECT_EQ(keys[81], "train.frozen");
  EXPECT_EQ(keys[82], "train.activation_checkpointing");
  EXPECT_EQ(keys[83], "parallel.ep_size");
  EXPECT_EQ(keys[86], "parallel.a2a");
  EXPECT_EQ(keys[87], "parallel.ranks_per_node");
  EXPECT_EQ(keys[88], "debug.crash_rank");
  EXPECT_EQ(keys.back(), "debug.kill_in_save_step");
  EXPECT_EQ(std::set<std::string>(keys.begin(), keys.end()).size(), keys.size());
}

TEST(ConfigKeys, EveryListedKeyIsLoadableAndTyped) {
  // A mapping is no key's type (data.tasks takes a sequence of mappings), so each key must be
  // known to the loader and report its type.
  const std::set<std::string> lists = {"moe.frozen_experts", "data.tasks", "train.trainable",
                                       "train.frozen"};
  for (const std::string& key : config_keys()) {
    const std::string msg = error_of([&] { load_config({}, {key + "={a: 1}"}); });
    EXPECT_EQ(msg.rfind("--set: " + key + ": expected ", 0), 0u) << msg;
    EXPECT_EQ(msg.find("expected a list of") != std::string::npos, lists.count(key) == 1) << msg;
    // A sequence is the type of the list keys only.
    const std::string seq = error_of([&] { load_config({}, {key + "=[1]"}); });
    if (lists.count(key) == 0) {
      EXPECT_EQ(seq.rfind("--set: " + key + ": expected ", 0), 0u) << seq;
    }
  }
}

}  // namespace
}  // namespace sy
