// Loading: defaults, merging files in order, --set overrides, and the error for each kind of
// bad input (the message must name the key, the file and line, and what was expected).
#include <sys/stat.h>

#include <filesystem>

#include <gtest/gtest.h>

#include "config/config.h"
#include "config/config_test_util.h"

namespace sy {
namespace {

using testing::error_of;
using LoadTest = testing::ConfigFiles;

TEST_F(LoadTest, DefaultsFromEmptyInput) {
  const Config defaults;
  const std::string expected = to_yaml(defaults);
  EXPECT_EQ(to_yaml(load_config({}, {})), expected);
  EXPECT_EQ(to_yaml(load_config({write("empty.yaml", "")}, {})), expected);
  EXPECT_EQ(to_yaml(load_config({write("comments.yaml", "# nothing\n\n# here\n")}, {})), expected);
  EXPECT_EQ(to_yaml(load_config_from_string("moe:\n# top_k: 1\n", "s.yaml")), expected);
  const Config c = load_config({}, {});
  EXPECT_EQ(c.moe.top_k, 2);
  EXPECT_EQ(c.train.lr, 1e-3);
  EXPECT_EQ(c.moe.router, RouterKind::kTopK);
}

TEST_F(LoadTest, FileOverridesDefaults) {
  const std::string a = write("a.yaml",
                              "model:\n"
                              "  bias: false\n"
                              "  dropout: 0.1\n"
                              "moe:\n"
                              "  top_k: 1\n"
                              "  router: switch\n"
                              "  capacity_factor: 1   # a number key accepts an integer form\n"
                              "data:\n"
                              "  path: data/shakespeare.txt\n"
                              "train:\n"
                              "  lr: 3e-4\n");
  const Config c = load_config({a}, {});
  EXPECT_FALSE(c.model.bias);
  EXPECT_EQ(c.model.dropout, 0.1);
  EXPECT_EQ(c.moe.top_k, 1);
  EXPECT_EQ(c.moe.router, RouterKind::kSwitch);
  EXPECT_EQ(c.moe.capacity_factor, 1.0);
  EXPECT_EQ(c.data.path, "data/shakespeare.txt");
  EXPECT_EQ(c.train.lr, 3e-4);
  // Keys the file does not mention keep their defaults.
  EXPECT_EQ(c.moe.num_experts, 8);
  EXPECT_EQ(c.train.max_steps, 200);
  EXPECT_EQ(c.model.d_model, 64);
}

TEST_F(LoadTest, TwoFilesMergeInOrder) {
  const std::string a =
      write("a.yaml", "moe:\n  top_k: 1\n  num_experts: 4\ntrain:\n  lr: 0.002\n");
  const std::string b = write("b.yaml", "moe:\n  num_experts: 16\n");
  const Config ab = load_config({a, b}, {});
  EXPECT_EQ(ab.moe.num_experts, 16);  // b wins
  EXPECT_EQ(ab.moe.top_k, 1);         // only in a: kept, not reset by b's moe section
  EXPECT_EQ(ab.train.lr, 0.002);
  EXPECT_EQ(load_config({b, a}, {}).moe.num_experts, 4);  // a wins
}

TEST_F(LoadTest, SetOverridesFiles) {
  const std::string a = write("a.yaml", "moe:\n  top_k: 2\ndata:\n  path: a.txt\n");
  const Config c =
      load_config({a}, {"moe.top_k=1", "data.path=foo.txt", "model.bias=false", "train.lr=1e-3",
                        "train.min_lr=5e-4", "train.seed=7", "train.seed=8"});
  EXPECT_EQ(c.moe.top_k, 1);
  EXPECT_EQ(c.data.path, "foo.txt");
  EXPECT_FALSE(c.model.bias);
  EXPECT_EQ(c.train.lr, 1e-3);
  EXPECT_EQ(c.train.min_lr, 5e-4);
  EXPECT_EQ(c.train.seed, 8);  // the later --set wins
}

TEST_F(LoadTest, SetValueIsAYamlScalar) {
  // Split at the first '=': the value may hold '='; quotes give an empty string.
  EXPECT_EQ(load_config({}, {"data.path=a=b.txt"}).data.path, "a=b.txt");
  EXPECT_EQ(load_config({}, {"data.path=\"\""}).data.path, "");
  EXPECT_EQ(load_config({}, {" moe.top_k =1"}).moe.top_k, 1);
  EXPECT_EQ(load_config({}, {"train.out_dir='runs/a b'"}).train.out_dir, "runs/a b");
}

TEST_F(LoadTest, MalformedOverrideIsNamed) {
  const std::string no_eq = error_of([] { load_config({}, {"moe.top_k"}); });
  EXPECT_CONTAINS(no_eq, "malformed override 'moe.top_k'");
  EXPECT_CONTAINS(no_eq, "section.key=value");
  EXPECT_CONTAINS(error_of([] { load_config({}, {"top_k=1"}); }), "malformed override 'top_k=1'");
  EXPECT_CONTAINS(error_of([] { load_config({}, {".top_k=1"}); }), "malformed override '.top_k=1'");
  EXPECT_CONTAINS(error_of([] { load_config({}, {"moe.=1"}); }), "malformed override 'moe.=1'");
}

TEST_F(LoadTest, UnknownKeySuggestsNearest) {
  const std::string a = write("a.yaml", "moe:\n  top_k: 1\n  num_expert: 4\n");
  EXPECT_EQ(error_of([&] { load_config({a}, {}); }),
            "unknown key 'moe.num_expert' in " + a + ":3; did you mean 'moe.num_experts'?");
  EXPECT_EQ(error_of([] { load_config({}, {"moe.num_expert=4"}); }),
            "unknown key 'moe.num_expert' in --set; did you mean 'moe.num_experts'?");
  // A key put in the wrong section: the suggestion crosses sections.
  EXPECT_CONTAINS(error_of([] { load_config({}, {"model.top_k=1"}); }),
                  "did you mean 'moe.top_k'?");
  EXPECT_CONTAINS(error_of([] { load_config({}, {"moe.rotuer=topk"}); }),
                  "did you mean 'moe.router'?");
  // Nothing close: no misleading suggestion, but the key is still named.
  const std::string far = error_of([] { load_config({}, {"moe.qqqqqqqqqqqq=1"}); });
  EXPECT_CONTAINS(far, "unknown key 'moe.qqqqqqqqqqqq' in --set");
  EXPECT_NOT_CONTAINS(far, "did you mean");
}

TEST_F(LoadTest, UnknownSectionSuggestsNearest) {
  const std::string a = write("a.yaml", "model:\n  n_layers: 1\ntrian:\n  lr: 0.1\n");
  EXPECT_EQ(error_of([&] { load_config({a}, {}); }),
            "unknown section 'trian' in " + a + ":3; did you mean 'train'?");
  EXPECT_CONTAINS(error_of([] { load_config({}, {"trian.lr=0.1"}); }), "did you mean 'train.lr'?");
}

TEST_F(LoadTest, TypeErrorsNameKeyTypeFileAndLine) {
  const std::string a = write("a.yaml", "# header\nmoe:\n  num_experts: 4\n  top_k: two\n");
  EXPECT_EQ(error_of([&] { load_config({a}, {}); }),
            a + ":4: moe.top_k: expected an integer, got 'two'");
  const std::string b = write("b.yaml", "moe:\n  top_k: 2.5\n");
  EXPECT_EQ(error_of([&] { load_config({b}, {}); }),
            b + ":2: moe.top_k: expected an integer, got '2.5'");
  const std::string c = write("c.yaml", "train:\n  lr: fast\n");
  EXPECT_EQ(error_of([&] { load_config({c}, {}); }),
            c + ":2: train.lr: expected a number, got 'fast'");
  const std::string d = write("d.yaml", "model:\n\n  bias: yes\n");
  EXPECT_CONTAINS(error_of([&] { load_config({d}, {}); }),
                  d + ":3: model.bias: expected a boolean");
  const std::string e = write("e.yaml", "data:\n  path: [a, b]\n");
  EXPECT_EQ(error_of([&] { load_config({e}, {}); }),
            e + ":2: data.path: expected a string, got a sequence (nested deeper than the config "
                "allows: nothing nests under data.path)");
  const std::string f = write("f.yaml", "moe:\n  top_k: {a: 1}\n");
  EXPECT_EQ(error_of([&] { load_config({f}, {}); }),
            f + ":2: moe.top_k: expected an integer, got a mapping (nested deeper than the config "
                "allows: nothing nests under moe.top_k)");
  // An empty value points at its own key's line, not the next line.
  const std::string g = write("g.yaml", "moe:\n  top_k:\n  every: 1\n");
  EXPECT_EQ(error_of([&] { load_config({g}, {}); }),
            g + ":2: moe.top_k: expected an integer, got an empty value");
  EXPECT_EQ(error_of([] { load_config({}, {"moe.top_k=two"}); }),
            "--set: moe.top_k: expected an integer, got 'two'");
  EXPECT_CONTAINS(error_of([] { load_config({}, {"data.path="}); }),
                  "--set: data.path: expected a string, got an empty value");
}

TEST_F(LoadTest, ScalarForms) {
  EXPECT_EQ(load_config({}, {"train.lr=1e-3"}).train.lr, 1e-3);
  EXPECT_EQ(load_config({}, {"train.lr=1"}).train.lr, 1.0);
  EXPECT_EQ(load_config({}, {"train.seed=-5"}).train.seed, -5);
  EXPECT_EQ(load_config({}, {"train.seed=+5"}).train.seed, 5);
  EXPECT_TRUE(load_config({}, {"model.bias=true"}).model.bias);
  EXPECT_CONTAINS(error_of([] { load_config({}, {"train.seed=1e3"}); }), "expected an integer");
  EXPECT_CONTAINS(error_of([] { load_config({}, {"train.seed=99999999999999999999"}); }),
                  "expected an integer");
  EXPECT_CONTAINS(error_of([] { load_config({}, {"train.lr=nan"}); }), "expected a number");
  EXPECT_CONTAINS(error_of([] { load_config({}, {"train.lr=1e999"}); }), "expected a number");
  EXPECT_CONTAINS(error_of([] { load_config({}, {"model.bias=1"}); }), "expected a boolean");
}

TEST_F(LoadTest, LineNumbersCountCommentsAndBlankLines) {
  const std::string a = write("a.yaml",
                              "# Switchyard test config\n"
                              "\n"
                              "model:\n"
                              "  n_layers: 2   # two blocks\n"
                              "\n"
                              "train:\n"
                              "  # the learning rate follows\n"
                              "  lr: 0.001\n"
                              "  warmup_steps: many\n");
  EXPECT_EQ(error_of([&] { load_config({a}, {}); }),
            a + ":9: train.warmup_steps: expected an integer, got 'many'");
  // In the second of two files, the line is that file's own.
  const std::string b = write("b.yaml", "\n\n\ntrain:\n  max_step: 5\n");
  EXPECT_CONTAINS(error_of([&] {
                    load_config({write("ok.yaml", "moe:\n  top_k: 1\n"), b}, {});
                  }),
                  "unknown key 'train.max_step' in " + b + ":5;");
}

TEST_F(LoadTest, MissingOrUnreadableFileIsNamed) {
  const std::string missing = dir_ + "/nope.yaml";
  const std::string msg = error_of([&] { load_config({missing}, {}); });
  EXPECT_CONTAINS(msg, "cannot read config file '" + missing + "'");
  EXPECT_CONTAINS(msg, "No such file");
  EXPECT_CONTAINS(error_of([&] { load_config({dir_}, {}); }),
                  "cannot read config file '" + dir_ + "': it is a directory");
}

TEST_F(LoadTest, MalformedYamlNamesFileAndLine) {
  const std::string a = write("a.yaml", "moe:\n  top_k: 1\n   every: 2\n");
  const std::string msg = error_of([&] { load_config({a}, {}); });
  EXPECT_CONTAINS(msg, a + ":3:");
  EXPECT_CONTAINS(msg, "malformed YAML");
  const std::string two = write("two.yaml", "moe:\n  top_k: 1\n---\nmoe:\n  top_k: 2\n");
  EXPECT_CONTAINS(error_of([&] { load_config({two}, {}); }), two + ": holds 2 YAML documents");
}

TEST_F(LoadTest, NonMappingTopLevelOrSectionIsNamed) {
  const std::string list = write("list.yaml", "- model\n- moe\n");
  const std::string msg = error_of([&] { load_config({list}, {}); });
  EXPECT_CONTAINS(msg, list + ": the top level must be a mapping");
  EXPECT_CONTAINS(msg, "got a sequence");
  const std::string scalar = write("scalar.yaml", "hello\n");
  EXPECT_CONTAINS(error_of([&] { load_config({scalar}, {}); }), "got 'hello'");
  const std::string section = write("section.yaml", "model:\n  n_layers: 1\nmoe: 3\n");
  EXPECT_EQ(error_of([&] { load_config({section}, {}); }),
            section + ":3: section 'moe' must be a mapping of keys, got '3'");
}

TEST_F(LoadTest, DuplicateKeyInOneFileIsRejected) {
  const std::string a = write("a.yaml", "moe:\n  top_k: 1\n  top_k: 2\n");
  EXPECT_EQ(error_of([&] { load_config({a}, {}); }),
            a + ":3: moe.top_k is set twice in " + a + " (first on line 2)");
}

TEST_F(LoadTest, RepeatedSectionInOneFileIsRejected) {
  const std::string a =
      write("a.yaml", "model:\n  n_layers: 2\nmoe:\n  top_k: 1\nmodel:\n  d_model: 32\n");
  EXPECT_EQ(error_of([&] { load_config({a}, {}); }),
            a + ":5: section 'model' appears twice in " + a + " (first on line 1)");
  // The same section in two files is the ordinary merge.
  const std::string b = write("b.yaml", "model:\n  d_model: 32\n");
  EXPECT_EQ(load_config({write("c.yaml", "model:\n  n_layers: 3\n"), b}, {}).model.n_layers, 3);
}

TEST_F(LoadTest, YamlTagsAreRefused) {
  const std::string str_tag = write("str.yaml", "model:\n  n_layers: !!str 5\n");
  EXPECT_EQ(error_of([&] { load_config({str_tag}, {}); }),
            str_tag +
                ":2: model.n_layers: the YAML tag '!!str' is not allowed: a value's type is "
                "its key's (write the value without a tag)");
  const std::string int_tag = write("int.yaml", "train:\n  lr: 0.1\n  out_dir: !!int \"x\"\n");
  EXPECT_CONTAINS(error_of([&] { load_config({int_tag}, {}); }),
                  int_tag + ":3: train.out_dir: the YAML tag '!!int' is not allowed");
  const std::string custom = write("custom.yaml", "moe:\n  top_k: 1\n  router: !foo switch\n");
  EXPECT_CONTAINS(error_of([&] { load_config({custom}, {}); }),
                  custom + ":3: moe.router: the YAML tag '!foo' is not allowed");
  const std::string in_list = write("list.yaml", "moe:\n  frozen_experts: [0, !!int 1]\n");
  EXPECT_CONTAINS(error_of([&] { load_config({in_list}, {}); }),
                  in_list + ":2: moe.frozen_experts[1]: the YAML tag '!!int' is not allowed");
  const std::string section = write("section.yaml", "moe: !!map\n  top_k: 1\n");
  EXPECT_CONTAINS(error_of([&] { load_config({section}, {}); }),
                  "section 'moe': the YAML tag '!!map' is not allowed");
  EXPECT_EQ(error_of([] { load_config({}, {"model.n_layers=!!str 5"}); }),
            "--set: model.n_layers: the YAML tag '!!str' is not allowed: a value's type is its "
            "key's (write the value without a tag)");
  // Quoting is not a tag: a quoted string stays a string value.
  EXPECT_EQ(load_config_from_string("data:\n  path: \"a b.txt\"\n", "q.yaml").data.path, "a b.txt");
}

TEST_F(LoadTest, FifoConfigIsRefusedWithoutBlocking) {
  const std::string fifo = dir_ + "/fifo.yaml";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  // No writer ever opens it: opening it for reading would block forever.
  EXPECT_EQ(
      error_of([&] { load_config({fifo}, {}); }),
      "cannot read config file '" + fifo + "': it is a FIFO (named pipe), not a regular file");
}

TEST_F(LoadTest, ProcFileOfSizeZeroIsRefused) {
  // /proc files report size 0 but hold text: never read as an empty config.
  const std::string msg = error_of([] { load_config({"/proc/self/status"}, {}); });
  EXPECT_CONTAINS(msg, "cannot read config file '/proc/self/status': its size is 0 but it holds ");
  EXPECT_CONTAINS(msg, "(a /proc or /sys file?)");
  EXPECT_CONTAINS(error_of([] { load_config({"/dev/zero"}, {}); }),
                  "cannot read config file '/dev/zero': it is a character device");
  // /dev/null stays the empty config (docs/config.md prints the defaults with it).
  EXPECT_EQ(to_yaml(load_config({"/dev/null"}, {})), to_yaml(Config()));
}

TEST_F(LoadTest, NestingDeeperThanTheSchemaIsNamed) {
  const std::string a = write("a.yaml", "model: {n_layers: {a: 1}}\n");
  EXPECT_EQ(error_of([&] { load_config({a}, {}); }),
            a + ":1: model.n_layers: expected an integer, got a mapping (nested deeper than the "
                "config allows: nothing nests under model.n_layers)");
  const std::string list = write("list.yaml", "moe:\n  frozen_experts:\n    - [1]\n");
  EXPECT_CONTAINS(error_of([&] { load_config({list}, {}); }),
                  list + ":3: moe.frozen_experts[0]: expected an integer, got a sequence (nested");
  // Past the deepest a config goes (a task's list of experts), whatever the keys.
  const std::string task =
      write("task.yaml", "data:\n  tasks:\n    - name: a\n      experts: [[[1]]]\n");
  EXPECT_EQ(error_of([&] { load_config({task}, {}); }),
            task +
                ":4: data.tasks[0].experts[0][0]: nested deeper than a config allows (at most "
                "6 levels: section, key, list element, task key, list element)");
  // A document nested 100 deep names the first level too deep and the line of its value.
  std::string deep = "model:\n";
  for (int i = 0; i < 100; ++i)
    deep += std::string(2 * (i + 1), ' ') + "k" + std::to_string(i) + ":\n";
  deep += std::string(202, ' ') + "x: 1\n";
  EXPECT_EQ(error_of([&] { load_config({write("deep.yaml", deep)}, {}); }),
            dir_ +
                "/deep.yaml:7: model.k0.k1.k2.k3.k4: nested deeper than a config allows (at "
                "most 6 levels: section, key, list element, task key, list element)");
  // Deeper than the YAML parser descends: still one line, with the position.
  const std::string flow =
      write("flow.yaml", "a: " + std::string(5000, '[') + std::string(5000, ']') + "\n");
  const std::string msg = error_of([&] { load_config({flow}, {}); });
  EXPECT_CONTAINS(msg, flow + ":1: nested deeper than a config allows (over ");
  EXPECT_CONTAINS(msg, "a config nests at most 6)");
}

TEST_F(LoadTest, LoadValidates) {
  const std::string a = write("a.yaml", "moe:\n  num_experts: 2\n  top_k: 3\n");
  EXPECT_EQ(error_of([&] { load_config({a}, {}); }),
            "moe.top_k (3) must be <= moe.num_experts (2)");
  EXPECT_EQ(error_of([] { load_config({}, {"moe.router=switch"}); }),
            "moe.router 'switch' routes each token to one expert: moe.top_k (2) must be 1");
}

// Every shipped config loads and passes validation, with the world sizes its header names.
TEST(ShippedConfigs, AllLoadAndValidate) {
  int seen = 0;
  for (const auto& entry :
       std::filesystem::directory_iterator(std::string(SWITCHYARD_SOURCE_DIR) + "/configs")) {
    if (entry.path().extension() != ".yaml") continue;
    ++seen;
    SCOPED_TRACE(entry.path().string());
    Config c;
    ASSERT_NO_THROW(c = load_config({entry.path().string()}, {}));
    for (const int world : {1, 2}) EXPECT_NO_THROW(validate(c, world)) << world;
  }
  EXPECT_GE(seen, 9);  // debug-cpu, makemoe-shakespeare, switch-small, bench-c1, bench-c2, moe-1b,
                       // deepseek-small, deepseek-gpu, bench-c3
}

}  // namespace
}  // namespace sy
