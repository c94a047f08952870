// Grid files (study/grid.h): parsing, the expansion into runs (order, count, zip groups, names),
// the errors that name the entry, check_points() against the config schema, point_sets() order;
// and launch_command() (study/grid.h).
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "config/config_test_util.h"
#include "study/grid.h"
#include "study/sweep.h"

namespace sy::study {
namespace {

using sy::testing::error_of;
using Values = std::vector<std::pair<std::string, std::string>>;

Grid parse(const std::string& yaml) { return parse_grid(yaml, "g.yaml"); }

std::vector<std::string> names_of(const std::vector<SweepPoint>& points) {
  std::vector<std::string> names;
  for (const SweepPoint& p : points) names.push_back(p.name);
  return names;
}

// ---- parsing ----

TEST(GridParse, EveryEntry) {
  const Grid g = parse(
      "grid:\n"
      "  moe.num_experts: [4, 8, 16]\n"
      "  zip:\n"
      "    model.d_model: [64, 128]\n"
      "    model.n_heads: [4, 8]\n"
      "  train.lr: [1e-3, \"3e-4\"]\n"
      "set:\n"
      "  train.max_steps: 500\n"
      "  moe.router: topk\n"
      "launch: \"mpirun -np {ranks} {switchyard} train --config {config}\"\n"
      "ranks: 4\n"
      "parallel: 2\n");
  EXPECT_EQ(g.path, "g.yaml");
  ASSERT_EQ(g.axes.size(), 3u);
  EXPECT_EQ(g.axes[0].keys, std::vector<std::string>({"moe.num_experts"}));
  EXPECT_EQ(g.axes[0].values, std::vector<std::vector<std::string>>({{"4"}, {"8"}, {"16"}}));
  // A zip group is one axis: values[i] holds every key's i-th value.
  EXPECT_EQ(g.axes[1].keys, std::vector<std::string>({"model.d_model", "model.n_heads"}));
  EXPECT_EQ(g.axes[1].values, std::vector<std::vector<std::string>>({{"64", "4"}, {"128", "8"}}));
  EXPECT_EQ(g.axes[2].values, std::vector<std::vector<std::string>>({{"1e-3"}, {"3e-4"}}));
  EXPECT_EQ(g.sets, std::vector<std::string>({"train.max_steps=500", "moe.router=topk"}));
  EXPECT_EQ(g.launch, "mpirun -np {ranks} {switchyard} train --config {config}");
  EXPECT_EQ(g.ranks, 4);
  EXPECT_EQ(g.parallel, 2);
  EXPECT_EQ(varied_keys(g), std::vector<std::string>(
                                {"moe.num_experts", "model.d_model", "model.n_heads", "train.lr"}));
}

TEST(GridParse, DefaultsWhenOnlyAxesAreGiven) {
  const Grid g = parse("grid:\n  train.seed: [1]\n");
  EXPECT_TRUE(g.sets.empty());
  EXPECT_EQ(g.launch, "");
  EXPECT_EQ(g.ranks, 1);
  EXPECT_EQ(g.parallel, 0);
}

class GridFile : public sy::testing::ConfigFiles {};

TEST_F(GridFile, LoadGridReadsTheFileAndNamesIt) {
  const std::string path = write("mine.yaml", "grid:\n  train.seed: [1, 2]\n");
  const Grid g = load_grid(path);
  EXPECT_EQ(g.path, path);
  ASSERT_EQ(g.axes.size(), 1u);
  EXPECT_EQ(g.axes[0].values, std::vector<std::vector<std::string>>({{"1"}, {"2"}}));
  // A missing file: an error naming it.
  EXPECT_CONTAINS(error_of([&] { load_grid(dir_ + "/none.yaml"); }), "none.yaml");
}

// ---- expand ----

TEST(GridExpand, CartesianProductLastAxisFastest) {
  const Grid g = parse("grid:\n  moe.num_experts: [4, 8, 16]\n  train.seed: [1, 2]\n");
  const std::vector<SweepPoint> points = expand(g);
  ASSERT_EQ(points.size(), 6u);  // 3 x 2
  EXPECT_EQ(names_of(points),
            std::vector<std::string>({"num_experts=4_seed=1", "num_experts=4_seed=2",
                                      "num_experts=8_seed=1", "num_experts=8_seed=2",
                                      "num_experts=16_seed=1", "num_experts=16_seed=2"}));
  EXPECT_EQ(points[3].values, Values({{"moe.num_experts", "8"}, {"train.seed", "2"}}));
  EXPECT_EQ(points[4].values, Values({{"moe.num_experts", "16"}, {"train.seed", "1"}}));
}

TEST(GridExpand, ThreeAxesCount) {
  const Grid g = parse("grid:\n  a.x: [1, 2]\n  a.y: [1, 2, 3]\n  a.z: [1, 2, 3, 4, 5]\n");
  const std::vector<SweepPoint> points = expand(g);
  ASSERT_EQ(points.size(), 30u);
  // Index 17 in mixed radix (2, 3, 5): 17 = 1*15 + 0*5 + 2 -> x=2, y=1, z=3.
  EXPECT_EQ(points[17].name, "x=2_y=1_z=3");
  EXPECT_EQ(points.back().name, "x=2_y=3_z=5");
}

TEST(GridExpand, ZipGroupVariesItsKeysTogether) {
  const Grid g = parse(
      "grid:\n"
      "  zip:\n"
      "    model.d_model: [64, 128, 256]\n"
      "    model.n_heads: [4, 8, 16]\n"
      "  train.seed: [1, 2]\n");
  const std::vector<SweepPoint> points = expand(g);
  ASSERT_EQ(points.size(), 6u);  // 3 zipped positions x 2 seeds, not 3 x 3 x 2
  EXPECT_EQ(
      names_of(points),
      std::vector<std::string>({"d_model=64_n_heads=4_seed=1", "d_model=64_n_heads=4_seed=2",
                                "d_model=128_n_heads=8_seed=1", "d_model=128_n_heads=8_seed=2",
                                "d_model=256_n_heads=16_seed=1", "d_model=256_n_heads=16_seed=2"}));
  EXPECT_EQ(points[2].values,
            Values({{"model.d_model", "128"}, {"model.n_heads", "8"}, {"train.seed", "1"}}));
}

TEST(GridExpand, TwoZipGroupsAreTwoAxes) {
  const Grid g = parse(
      "grid:\n"
      "  zip_a:\n"
      "    model.d_model: [64, 128]\n"
      "    model.n_heads: [4, 8]\n"
      "  zip_b:\n"
      "    moe.num_experts: [4, 8]\n"
      "    moe.top_k: [1, 2]\n");
  ASSERT_EQ(g.axes.size(), 2u);
  const std::vector<SweepPoint> points = expand(g);
  ASSERT_EQ(points.size(), 4u);
  EXPECT_EQ(points[1].name, "d_model=64_n_heads=4_num_experts=8_top_k=2");
}

TEST(GridExpand, FullKeyWhereTwoKeysShareTheLastComponent) {
  const Grid g = parse("grid:\n  model.d_ff: [256]\n  moe.d_ff: [64, 128]\n  train.seed: [3]\n");
  EXPECT_EQ(names_of(expand(g)), std::vector<std::string>({"model.d_ff=256_moe.d_ff=64_seed=3",
                                                           "model.d_ff=256_moe.d_ff=128_seed=3"}));
}

TEST(GridExpand, NamesSanitizeCharacters) {
  // Kept: letters, digits, '.', '+', '-'; everything else becomes '_'; an empty value "empty".
  const Grid g = parse(
      "grid:\n"
      "  data.path: [\"a b/c:d\", \"1.5e+3\", \"x,y=z\", \"\"]\n");
  EXPECT_EQ(names_of(expand(g)),
            std::vector<std::string>({"path=a_b_c_d", "path=1.5e+3", "path=x_y_z", "path=empty"}));
  // The values themselves are not changed.
  EXPECT_EQ(expand(g)[0].values, Values({{"data.path", "a b/c:d"}}));
}

TEST(GridExpand, ValuesThatSanitizeAlikeGetDistinctNames) {
  const Grid g = parse("grid:\n  data.path: [\"a/b\", \"a_b\", \"a:b\"]\n");
  // The first keeps the name, the others add their point index.
  EXPECT_EQ(names_of(expand(g)),
            std::vector<std::string>({"path=a_b", "path=a_b_1", "path=a_b_2"}));
}

TEST(GridExpand, NoAxesIsOneRunNamedRun) {
  for (const char* yaml :
       {"set:\n  train.max_steps: 5\n", "grid:\nset:\n  train.seed: 2\n", "grid: {}\n"}) {
    const Grid g = parse(yaml);
    EXPECT_TRUE(g.axes.empty()) << yaml;
    const std::vector<SweepPoint> points = expand(g);
    ASSERT_EQ(points.size(), 1u) << yaml;
    EXPECT_EQ(points[0].name, "run");
    EXPECT_TRUE(points[0].values.empty());
  }
}

TEST(GridExpand, LabelNamesAZipGroupsPoints) {
  const Grid g = parse(
      "grid:\n"
      "  zip:\n"
      "    moe.num_experts: [4, 8]\n"
      "    moe.top_k: [1, 2]\n"
      "    label: [small, big one]\n"
      "  train.seed: [1, 2]\n");
  EXPECT_EQ(varied_keys(g),
            std::vector<std::string>({"moe.num_experts", "moe.top_k", "label", "train.seed"}));
  const std::vector<SweepPoint> points = expand(g);
  // The label alone stands for its group's keys in the name.
  EXPECT_EQ(names_of(points), std::vector<std::string>({"small_seed=1", "small_seed=2",
                                                        "big_one_seed=1", "big_one_seed=2"}));
  EXPECT_EQ(points[2].values, Values({{"moe.num_experts", "8"},
                                      {"moe.top_k", "2"},
                                      {"label", "big one"},
                                      {"train.seed", "1"}}));
  // A label is no config key: point_sets leaves it out.
  EXPECT_EQ(point_sets(g, points[2], {}, "d"),
            std::vector<std::string>(
                {"moe.num_experts=8", "moe.top_k=2", "train.seed=1", "train.out_dir=d"}));
  EXPECT_TRUE(is_label("label"));
  EXPECT_TRUE(is_label("label.width"));
  EXPECT_FALSE(is_label("labels"));
  EXPECT_FALSE(is_label("moe.label"));
}

TEST(GridExpand, TwoLabelledGroups) {
  const Grid g = parse(
      "grid:\n"
      "  zip_w:\n"
      "    model.d_model: [64, 128]\n"
      "    label.width: [narrow, wide]\n"
      "  zip_r:\n"
      "    moe.router: [topk, expert_choice]\n"
      "    label.router: [tk, ec]\n");
  EXPECT_EQ(names_of(expand(g)),
            std::vector<std::string>({"narrow_tk", "narrow_ec", "wide_tk", "wide_ec"}));
}

// ---- errors ----

TEST(GridErrors, EmptyList) {
  const std::string e = error_of([] { parse("grid:\n  moe.num_experts: []\n"); });
  EXPECT_CONTAINS(e, "g.yaml:2");
  EXPECT_CONTAINS(e, "'moe.num_experts'");
  EXPECT_CONTAINS(e, "empty list");
}

TEST(GridErrors, NotAList) {
  const std::string e = error_of([] { parse("grid:\n  train.seed: [1]\n  moe.num_experts: 4\n"); });
  EXPECT_CONTAINS(e, "g.yaml:3");
  EXPECT_CONTAINS(e, "'moe.num_experts' must be a list");
  const std::string m = error_of([] { parse("grid:\n  moe.num_experts: {a: 1}\n"); });
  EXPECT_CONTAINS(m, "'moe.num_experts' must be a list");
}

TEST(GridErrors, ValueNotAScalar) {
  const std::string e = error_of([] { parse("grid:\n  moe.num_experts: [4, [8, 16]]\n"); });
  EXPECT_CONTAINS(e, "'moe.num_experts'");
  EXPECT_CONTAINS(e, "scalar");
}

TEST(GridErrors, ZipListsOfDifferentLengths) {
  const std::string e = error_of([] {
    parse(
        "grid:\n"
        "  zip:\n"
        "    model.d_model: [64, 128]\n"
        "    model.n_heads: [4, 8, 16]\n");
  });
  EXPECT_CONTAINS(e, "g.yaml:4");
  EXPECT_CONTAINS(e, "zip group 'zip'");
  EXPECT_CONTAINS(e, "'model.n_heads' has 3 values but the keys before it have 2");
}

TEST(GridErrors, EmptyZipGroup) {
  EXPECT_CONTAINS(error_of([] { parse("grid:\n  zip2: {}\n"); }), "zip group 'zip2' has no keys");
}

TEST(GridErrors, DuplicateKey) {
  // Once in a zip group and once as an axis of its own.
  const std::string e = error_of([] {
    parse(
        "grid:\n"
        "  zip:\n"
        "    model.d_model: [64, 128]\n"
        "    model.n_heads: [4, 8]\n"
        "  model.d_model: [32]\n");
  });
  EXPECT_CONTAINS(e, "g.yaml:5");
  EXPECT_CONTAINS(e, "key 'model.d_model' appears twice");
  // In two zip groups.
  EXPECT_CONTAINS(error_of([] {
                    parse(
                        "grid:\n"
                        "  zip_a:\n"
                        "    train.seed: [1, 2]\n"
                        "  zip_b:\n"
                        "    train.seed: [3, 4]\n");
                  }),
                  "key 'train.seed' appears twice");
}

TEST(GridErrors, UnknownTopLevelEntry) {
  const std::string e = error_of([] { parse("grid:\n  train.seed: [1]\nsets:\n  a.b: 1\n"); });
  EXPECT_CONTAINS(e, "g.yaml:3");
  EXPECT_CONTAINS(e, "unknown grid entry 'sets'");
}

TEST(GridErrors, BadParallelAndRanks) {
  EXPECT_CONTAINS(error_of([] { parse("parallel: 0\n"); }), "'parallel' must be >= 1, got 0");
  EXPECT_CONTAINS(error_of([] { parse("parallel: -3\n"); }), "'parallel' must be >= 1, got -3");
  EXPECT_CONTAINS(error_of([] { parse("parallel: two\n"); }),
                  "'parallel' must be an integer, got 'two'");
  EXPECT_CONTAINS(error_of([] { parse("parallel: [1, 2]\n"); }), "'parallel' must be an integer");
  EXPECT_CONTAINS(error_of([] { parse("ranks: 0\n"); }), "'ranks' must be >= 1, got 0");
}

TEST(GridErrors, LabelOutsideAZipGroup) {
  const std::string e = error_of([] { parse("grid:\n  train.seed: [1]\n  label: [a, b]\n"); });
  EXPECT_CONTAINS(e, "g.yaml:3");
  EXPECT_CONTAINS(e, "'label' names the points of a zip group and belongs inside one");
  EXPECT_CONTAINS(error_of([] { parse("grid:\n  label.x: [a]\n"); }), "'label.x' names the points");
}

TEST(GridErrors, MalformedFile) {
  EXPECT_CONTAINS(error_of([] { parse("grid: [1, 2\n"); }), "g.yaml:2:1: malformed YAML");
  EXPECT_CONTAINS(error_of([] { parse("- 1\n- 2\n"); }), "a grid file is a YAML map");
  EXPECT_CONTAINS(error_of([] { parse("grid: [1, 2]\n"); }), "'grid' must map config keys");
  EXPECT_CONTAINS(error_of([] { parse("set: [1]\n"); }), "'set' must map config keys");
  EXPECT_CONTAINS(error_of([] { parse("set:\n  train.seed: [1, 2]\n"); }),
                  "set 'train.seed' must be a single value");
  EXPECT_CONTAINS(error_of([] { parse("launch: [a]\n"); }), "'launch' must be a command template");
}

// As a config file (Note [No YAML tags], one document, no key twice), with the same messages.
TEST(GridErrors, SecondYamlDocument) {
  EXPECT_EQ(error_of([] { parse("grid:\n  train.seed: [1]\n---\ngrid:\n  train.seed: [2]\n"); }),
            "g.yaml: holds 2 YAML documents; a grid file must hold one");
}

TEST(GridErrors, KeyTwiceInSetOrAtTheTop) {
  EXPECT_EQ(error_of([] { parse("set:\n  train.seed: 1\n  train.lr: 0.1\n  train.seed: 2\n"); }),
            "g.yaml:4: key 'train.seed' appears twice in 'set' (first on line 2)");
  EXPECT_EQ(error_of([] {
              parse("launch: \"{switchyard} train --config {config}\"\nranks: 2\nlaunch: x\n");
            }),
            "g.yaml:3: key 'launch' appears twice in the grid file (first on line 1)");
  // A key both in `set` and varied stays allowed: the point's value comes last.
  EXPECT_EQ(parse("grid:\n  train.seed: [1, 2]\nset:\n  train.seed: 9\n").sets,
            std::vector<std::string>({"train.seed=9"}));
}

TEST(GridErrors, YamlTagsAreRefused) {
  EXPECT_EQ(error_of([] { parse("grid:\n  moe.top_k: !!str [1, 2]\n"); }),
            "g.yaml:2: grid.moe.top_k: the YAML tag '!!str' is not allowed: a value's type is its "
            "key's (write the value without a tag)");
  EXPECT_CONTAINS(error_of([] { parse("grid:\n  moe.top_k: [1, !!int 2]\n"); }),
                  "g.yaml:2: grid.moe.top_k[1]: the YAML tag '!!int' is not allowed");
  EXPECT_CONTAINS(error_of([] { parse("set:\n  train.seed: !foo 5\n"); }),
                  "g.yaml:2: set.train.seed: the YAML tag '!foo' is not allowed");
  EXPECT_CONTAINS(error_of([] { parse("grid:\n  zip: !!map\n    train.seed: [1]\n"); }),
                  "grid.zip: the YAML tag '!!map' is not allowed");
  EXPECT_CONTAINS(error_of([] { parse("ranks: !!int 2\n"); }), "g.yaml:1: ranks: the YAML tag");
}

TEST(GridErrors, OutDirIsTheSweeps) {
  const std::string why =
      ": train.out_dir cannot be set in a grid: the sweep sets each run's folder (SWEEP/<run "
      "name>); choose the sweep's folder with --out";
  EXPECT_EQ(error_of([] { parse("grid:\n  train.seed: [1]\n  train.out_dir: [a, b]\n"); }),
            "g.yaml:3" + why);
  EXPECT_EQ(error_of([] { parse("grid:\n  zip:\n    train.seed: [1]\n    train.out_dir: [a]\n"); }),
            "g.yaml:4" + why);
  EXPECT_EQ(error_of([] { parse("set:\n  train.out_dir: runs/x\n"); }), "g.yaml:2" + why);
}

TEST(GridErrors, LaunchTemplateCheckedWhenParsed) {
  EXPECT_EQ(error_of([] {
              parse(
                  "grid:\n  train.seed: [1]\nlaunch: \"{switchyard} train --config {config} "
                  "{bogus}\"\n");
            }),
            "g.yaml:3: launch template '{switchyard} train --config {config} {bogus}': unknown "
            "placeholder {bogus}: expected {switchyard}, {config}, {run_dir}, {name}, {ranks} or "
            "{slot}");
  EXPECT_CONTAINS(error_of([] { parse("launch: \"{switchyard} train --config {config\"\n"); }),
                  "g.yaml:1: launch template '{switchyard} train --config {config': a '{' is not "
                  "closed");
  EXPECT_EQ(error_of([] { parse("launch: \"{switchyard} train\"\n"); }),
            "g.yaml:1: the launch template '{switchyard} train' must pass the run's config: "
            "{config}");
  EXPECT_EQ(
      parse("launch: \"CUDA_VISIBLE_DEVICES={slot} {switchyard} --config {config}\"\n").launch,
      "CUDA_VISIBLE_DEVICES={slot} {switchyard} --config {config}");
}

// ---- check_points: the config schema ----

class GridCheck : public sy::testing::ConfigFiles {
 protected:
  void SetUp() override {
    ConfigFiles::SetUp();
    base_ = write("base.yaml", "moe:\n  num_experts: 8\n  top_k: 2\n");
  }
  // check_points of the grid `yaml`, written to grid.yaml; its error ("<no error>" when none).
  std::string check(const std::string& yaml, const std::vector<std::string>& extra = {}) {
    const Grid g = load_grid(write("grid.yaml", yaml));
    return error_of([&] { check_points(g, expand(g), {base_}, extra); });
  }
  std::string base_;
};

TEST_F(GridCheck, GoodGridPasses) {
  EXPECT_EQ(check("grid:\n  moe.num_experts: [2, 4]\n  moe.top_k: [1, 2]\nset:\n"
                  "  train.max_steps: 10\n"),
            "<no error>");
}

TEST_F(GridCheck, LabelIsNotCheckedAsAConfigKey) {
  EXPECT_EQ(check("grid:\n  zip:\n    moe.num_experts: [2, 4]\n    label: [two, four]\n"),
            "<no error>");
}

TEST_F(GridCheck, UnknownKeyNamedWithTheGridFile) {
  const std::string e = check("grid:\n  moe.nonsense: [1, 2]\n");
  EXPECT_CONTAINS(e, dir_ + "/grid.yaml");
  EXPECT_CONTAINS(e, "moe.nonsense");
  EXPECT_CONTAINS(e, "unknown key");
}

TEST_F(GridCheck, TypeMismatchNamedWithTheKey) {
  const std::string e = check("grid:\n  moe.top_k: [1, x]\n");
  EXPECT_CONTAINS(e, dir_ + "/grid.yaml");
  EXPECT_CONTAINS(e, "run 'top_k=x' (moe.top_k=x)");
  EXPECT_CONTAINS(e, "moe.top_k: expected an integer, got 'x'");
}

TEST_F(GridCheck, CrossFieldViolationNamedWithTheRun) {
  // Alone each value is fine (top_k 4 of 8 experts; 2 experts with top_k 2); together not.
  const std::string e = check("grid:\n  moe.num_experts: [8, 2]\n  moe.top_k: [2, 4]\n");
  EXPECT_CONTAINS(e, dir_ + "/grid.yaml");
  EXPECT_CONTAINS(e, "run 'num_experts=2_top_k=4' (moe.num_experts=2, moe.top_k=4)");
  EXPECT_CONTAINS(e, "moe.top_k (4) must be <= moe.num_experts (2)");
}

TEST_F(GridCheck, ZipGroupValueNamedWithAllItsKeys) {
  const std::string e =
      check("grid:\n  zip:\n    moe.num_experts: [4, 8]\n    moe.top_k: [2, nine]\n");
  EXPECT_CONTAINS(e, "run 'num_experts=8_top_k=nine' (moe.num_experts=8, moe.top_k=nine)");
  EXPECT_CONTAINS(e, "moe.top_k: expected an integer, got 'nine'");
}

TEST_F(GridCheck, BaseWithSetsIsCheckedFirst) {
  const std::string e = check("grid:\n  train.seed: [1]\nset:\n  moe.top_k: 9\n");
  EXPECT_CONTAINS(e, "the base config with the grid's 'set' and --set");
  EXPECT_CONTAINS(e, "moe.top_k (9) must be <= moe.num_experts (8)");
  // The command line's --set comes after the grid's set: it repairs it here.
  EXPECT_EQ(check("grid:\n  train.seed: [1]\nset:\n  moe.top_k: 9\n", {"moe.top_k=2"}),
            "<no error>");
  EXPECT_CONTAINS(check("grid:\n  train.seed: [1]\n", {"moe.bogus=1"}), "moe.bogus");
}

TEST_F(GridCheck, OutDirOnTheCommandLineIsRefused) {
  EXPECT_EQ(check("grid:\n  train.seed: [1]\n", {"train.lr=0.1", " train.out_dir = x"}),
            "--set  train.out_dir = x: the sweep sets each run's train.out_dir (SWEEP/<run name>); "
            "choose the sweep's folder with --out");
}

// ---- point_sets ----

TEST(GridPointSets, GridSetThenExtraThenPointThenOutDir) {
  const Grid g = parse(
      "grid:\n  moe.num_experts: [4, 8]\n  train.seed: [1]\nset:\n  train.max_steps: 500\n"
      "  train.seed: 9\n");
  const std::vector<SweepPoint> points = expand(g);
  ASSERT_EQ(points.size(), 2u);
  EXPECT_EQ(point_sets(g, points[1], {"train.lr=0.01", "train.seed=5"}, "sweeps/x/run dir"),
            std::vector<std::string>({"train.max_steps=500", "train.seed=9", "train.lr=0.01",
                                      "train.seed=5", "moe.num_experts=8", "train.seed=1",
                                      "train.out_dir=sweeps/x/run dir"}));
}

// ---- launch_command ----

TEST(LaunchCommand, PlaceholdersSubstituted) {
  const LaunchFields f{"/opt/sy/switchyard", "/s/run/config.yaml", "/s/run", "num_experts=8", 4, 1};
  EXPECT_EQ(launch_command(kDefaultLaunch, f),
            "/opt/sy/switchyard train --config /s/run/config.yaml --resume auto");
  EXPECT_EQ(launch_command("CUDA_VISIBLE_DEVICES={slot} mpirun -np {ranks} {switchyard} train "
                           "--config {config} # {name} in {run_dir}",
                           f),
            "CUDA_VISIBLE_DEVICES=1 mpirun -np 4 /opt/sy/switchyard train --config "
            "/s/run/config.yaml # num_experts=8 in /s/run");
  EXPECT_EQ(launch_command("no placeholders", f), "no placeholders");
}

TEST(LaunchCommand, PathsWithSpacesAndQuotesAreSingleQuoted) {
  const LaunchFields f{"/my bin/switchyard", "/s w/it's/config.yaml", "/s w/it's", "a b", 1, 0};
  EXPECT_EQ(launch_command("{switchyard} --config {config} {run_dir} {name}", f),
            "'/my bin/switchyard' --config '/s w/it'\\''s/config.yaml' '/s w/it'\\''s' 'a b'");
  const LaunchFields empty{"sy", "", "d", "n", 1, 0};
  EXPECT_EQ(launch_command("{switchyard} --config {config}", empty), "sy --config ''");
}

TEST(LaunchCommand, UnknownPlaceholderNamed) {
  const LaunchFields f{"sy", "c.yaml", "d", "n", 1, 0};
  const std::string e = error_of([&] { launch_command("{switchyard} --gpu {gpu} {config}", f); });
  EXPECT_CONTAINS(e, "unknown placeholder {gpu}");
  EXPECT_CONTAINS(e, "{switchyard} --gpu {gpu} {config}");
  EXPECT_CONTAINS(error_of([&] { launch_command("{switchyard --config {config}", f); }),
                  "unknown placeholder {switchyard --config {config}");
  EXPECT_CONTAINS(error_of([&] { launch_command("{switchyard} {config", f); }), "is not closed");
}

}  // namespace
}  // namespace sy::study
