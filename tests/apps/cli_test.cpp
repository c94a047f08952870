// The switchyard command line on bad input: every mistake a user can make in a command, a config
// file, an override or a data file ends in one [error] line that names the key or file and what
// was expected, and a normal non-zero exit (never a signal, a hang or a backtrace). Also --help.
//
// Each case runs the built binary (SWITCHYARD_BINARY) in one shared temporary folder that holds
// the bad files below; paths in the arguments are relative to it, so the messages show them as
// typed. Cases that could start training also set max_steps=1 and an out_dir inside the folder.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <string>
#include <vector>

#include "apps/cli_util.h"

namespace sy::cli {
namespace {

struct BadInput {
  const char* name;
  std::vector<std::string> args;
  std::vector<std::string> expected;  // each must appear in the error line
  bool needs_no_gpu = false;          // the case is an error only where no GPU is visible
};

std::ostream& operator<<(std::ostream& os, const BadInput& c) { return os << c.name; }

// The shared folder and its files, made once for all cases.
class CliErrorTest : public ::testing::TestWithParam<BadInput> {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempFolder();
    ASSERT_FALSE(dir_->path().empty()) << "mkdtemp failed";
    const TempFolder& d = *dir_;
    write_text(d / "unknown_key.yaml", "model:\n  n_layers: 2\nmoe:\n  num_expert: 4\n");
    write_text(d / "wrong_type.yaml", "train:\n  max_steps: 10\n  lr: fast\n");
    write_text(d / "wrong_bool.yaml", "model:\n  bias: yes\n");
    write_text(d / "malformed.yaml", "model:\n  n_layers: [1, 2\nmoe:\n  top_k: 1\n");
    write_text(d / "empty.txt", "");
    write_text(d / "short.txt", "hello world");                     // 11 tokens < block_size + 1
    write_text(d / "short_val.txt", std::string(400, 'a') + "\n");  // val split: 40 tokens
    std::filesystem::create_directory(d / "empty_run");
    std::filesystem::create_directory(d / "run_without_model");
    std::filesystem::copy_file(kDebugConfig, d / "run_without_model/config.yaml");
    write_text(d / "run_without_model/vocab.json", R"({"type": "char", "chars": [10, 97, 98]})");
    write_text(d / "tagged.yaml", "model:\n  n_layers: !!str 2\n");
    write_text(d / "twice.yaml", "model:\n  n_layers: 2\nmoe:\n  top_k: 1\nmodel:\n  d_ff: 8\n");
    write_text(d / "nested.yaml", "model: {n_layers: {a: 1}}\n");
    ASSERT_EQ(mkfifo((d / "fifo.yaml").c_str(), 0600), 0);  // no writer: opening it would block
    std::string random_bytes(4096, 'a');
    for (size_t i = 100; i < random_bytes.size(); ++i) {
      random_bytes[i] = static_cast<char>((i * 2654435761u) >> 13);
    }
    random_bytes[100] = '\xff';                  // never in UTF-8
    write_text(d / "random.txt", random_bytes);  // text up to byte 100, then no UTF-8
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static TempFolder* dir_;
};
TempFolder* CliErrorTest::dir_ = nullptr;

bool gpu_visible() { return std::system("nvidia-smi -L 2>/dev/null | grep -q '^GPU'") == 0; }

TEST_P(CliErrorTest, OneClearErrorLineAndNonZeroExit) {
  const BadInput& c = GetParam();
  if (c.needs_no_gpu && gpu_visible()) GTEST_SKIP() << "a GPU is visible: not an error here";
  expect_clean_error(run_switchyard(dir_->path(), c.args, /*timeout_s=*/120), c.expected);
}

const std::string& cfg = kDebugConfig;
// Settings that keep a case short should its error not come before training starts.
const std::vector<std::string> kShort = {"--set", "train.max_steps=1",
                                         "--set", "train.eval_interval=0",
                                         "--set", "train.out_dir=should_not_run"};

std::vector<std::string> train_with(std::vector<std::string> args) {
  std::vector<std::string> all = {"train", "--config", cfg};
  all.insert(all.end(), args.begin(), args.end());
  all.insert(all.end(), kShort.begin(), kShort.end());
  return all;
}

const BadInput kBadInputs[] = {
    // The command line itself.
    {"NoCommand",
     {},
     {"no command given", "train, generate, verify, bench, sweep, report or params"}},
    {"UnknownCommand",
     {"frobnicate"},
     {"'frobnicate'", "train, generate, verify, bench, sweep, report or params"}},
    {"UnknownOption", {"train", "--config", cfg, "--frobnicate"}, {"'--frobnicate'", "train"}},
    {"OptionWithoutValue", {"train", "--config"}, {"--config", "expects a value"}},
    {"TrainWithoutConfig", {"train"}, {"--config"}},
    {"RanksNotANumber", {"train", "--config", cfg, "--ranks", "x"}, {"--ranks", "integer", "'x'"}},
    {"RanksOutOfRange",
     {"train", "--config", cfg, "--ranks", "4294967300"},
     {"--ranks", "integer", "'4294967300'", "too large", "at most 2147483647"}},
    {"RanksBeyondLong",
     {"train", "--config", cfg, "--ranks", "99999999999999999999999"},
     {"--ranks", "too large", "at most 2147483647"}},
    {"TokensTooLarge",
     {"generate", "--run", "empty_run", "--tokens", "3000000000"},
     {"--tokens", "'3000000000'", "too large", "at most 2147483647"}},
    {"SeedTooSmall",
     {"generate", "--run", "empty_run", "--seed", "-3000000000"},
     {"--seed", "too small", "at least -2147483648"}},
    // Options a command does not take: named with the command (issue 19 item 6).
    {"GenerateTakesNoRanks",
     {"generate", "--run", "empty_run", "--ranks", "2"},
     {"unknown option '--ranks' for 'switchyard generate'", "train, verify, bench and params"}},
    {"BenchTakesNoResume",
     {"bench", "layer", "--config", cfg, "--resume", "auto"},
     {"unknown option '--resume' for 'switchyard bench'", "an option of train"}},
    {"ReportTakesNoRanks", {"report", ".", "--ranks", "2"}, {"'--ranks'", "'switchyard report'"}},
    {"ParamsTakesNoLogAllRanks",
     {"params", "--config", cfg, "--log-all-ranks"},
     {"'--log-all-ranks'", "'switchyard params'"}},
    {"VerifyTakesNoOverwrite",
     {"verify", "--config", cfg, "--ranks", "2", "--overwrite"},
     {"'--overwrite'", "'switchyard verify'", "an option of train"}},
    {"StrayArgument",
     {"train", "--config", cfg, "second.yaml"},
     {"unexpected argument 'second.yaml'", "'switchyard train'"}},
    {"OverwriteWithResume",
     {"train", "--config", cfg, "--overwrite", "--resume", "auto"},
     {"--overwrite", "--resume", "give one of them"}},
    {"VerifyOnOneCpuRank",
     {"verify", "--config", cfg},
     {"switchyard verify on one CPU rank", "--ranks N", "mpirun -np N", "--layouts"},
     /*needs_no_gpu=*/true},
    {"ConfigUnderTildeUser",
     {"train", "--config", "~nobody_here/x.yaml"},
     {"--config '~nobody_here/x.yaml'", "not ~user"}},
    {"RanksZero", {"train", "--config", cfg, "--ranks", "0"}, {"--ranks", ">= 1"}},
    {"MalformedOverride", train_with({"--set", "moe.top_k"}), {"'moe.top_k'", "section.key=value"}},
    {"SweepWithoutGrid", {"sweep", "--config", cfg}, {"switchyard sweep needs --grid FILE"}},
    {"SweepMissingGridFile",
     {"sweep", "--config", cfg, "--grid", "no_such_grid.yaml"},
     {"no_such_grid.yaml"}},
    {"SweepRanksOption", {"sweep", "--config", cfg, "--ranks", "2"}, {"'--ranks'", "sweep"}},
    {"ReportWithoutFolder", {"report"}, {"switchyard report needs a sweep or run folder"}},
    {"ReportOfNoRun", {"report", "."}, {"'.' is neither a sweep folder", "nor a run folder"}},

    // Config keys and types.
    {"UnknownKeyInSet",
     train_with({"--set", "moe.num_expert=4"}),
     {"'moe.num_expert'", "--set", "did you mean 'moe.num_experts'"}},
    {"UnknownKeyInFile",
     {"train", "--config", "unknown_key.yaml"},
     {"'moe.num_expert'", "unknown_key.yaml:4", "did you mean 'moe.num_experts'"}},
    {"UnknownSection", train_with({"--set", "trian.lr=1"}), {"'trian.lr'", "'train.lr'"}},
    {"WrongTypeInFile",
     {"train", "--config", "wrong_type.yaml"},
     {"wrong_type.yaml:3", "train.lr", "expected a number", "'fast'"}},
    {"WrongBoolInFile",
     {"train", "--config", "wrong_bool.yaml"},
     {"wrong_bool.yaml:2", "model.bias", "a boolean", "'yes'"}},
    {"WrongTypeInSet",
     train_with({"--set", "model.n_layers=1.5"}),
     {"--set", "model.n_layers", "expected an integer", "'1.5'"}},

    // Cross-field rules.
    {"TopKAboveNumExperts",
     train_with({"--set", "moe.top_k=9"}),
     {"moe.top_k (9)", "moe.num_experts (8)"}},
    {"DModelNotDivisibleByHeads",
     train_with({"--set", "model.n_heads=5"}),
     {"model.d_model (64)", "divisible", "model.n_heads (5)"}},
    {"UnknownRouter",
     train_with({"--set", "moe.router=foo"}),
     {"moe.router", "'foo'", "expected one of", "topk"}},
    {"NumExpertsNotDivisibleByEp",
     train_with({"--set", "parallel.ep_size=3"}),
     {"moe.num_experts (8)", "divisible", "parallel.ep_size (3)"}},
    {"RanksNotDividingExperts",
     train_with({"--ranks", "3"}),
     {"moe.num_experts (8)", "world size (3)"}},
    {"RanksNotMultipleOfEp",
     train_with({"--ranks", "6", "--set", "parallel.ep_size=4"}),
     {"parallel.ep_size (4)", "world size (6)"}},
    {"VerifyRanksNotDividingExperts",
     {"verify", "--config", cfg, "--ranks", "3"},
     {"moe.num_experts (8)", "world size (3)"}},
    {"CudaOnCpuOnlyMachine",
     train_with({"--set", "train.device=cuda"}),
     {"train.device", "cuda"},
     /*needs_no_gpu=*/true},

    // Files.
    {"MissingConfigFile",
     {"train", "--config", "no_such_config.yaml"},
     {"config file", "'no_such_config.yaml'"}},
    {"ConfigFileIsFolder", {"train", "--config", "empty_run"}, {"'empty_run'", "directory"}},
    {"MalformedYaml",
     {"train", "--config", "malformed.yaml"},
     {"malformed.yaml:", "malformed YAML"}},
    {"MissingDataFile",
     train_with({"--set", "data.path=no_such_corpus.txt"}),
     {"data file", "'no_such_corpus.txt'"}},
    {"EmptyDataFile", train_with({"--set", "data.path=empty.txt"}), {"'empty.txt'", "empty"}},
    {"DataShorterThanBlock",
     train_with({"--set", "data.path=short.txt"}),
     {"'short.txt'", "11 tokens", "model.block_size"}},
    {"ValidationSplitShorterThanBlock",
     train_with({"--set", "data.path=short_val.txt"}),
     {"'short_val.txt'", "validation split", "data.val_fraction"}},

    // Impossible sizes, refused before anything is allocated (issue 19 item 4).
    {"LayersTooMany",
     train_with({"--set", "model.n_layers=5000"}),
     {"model.n_layers (5000) is too large: at most 1024"}},
    {"BatchTooLarge",
     train_with({"--set", "data.batch_size=2000000"}),
     {"data.batch_size (2000000) is too large: at most 1048576"}},
    {"GradAccumTooLarge",
     train_with({"--set", "train.grad_accum=100000"}),
     {"train.grad_accum (100000) is too large: at most 65536"}},
    {"SyntheticCorpusTooLarge",
     train_with({"--set", "data.synthetic_chars=10000000000"}),
     {"data.synthetic_chars (10000000000) is too large: at most 4294967296"}},
    {"ExpertsTooMany",
     train_with({"--set", "moe.num_experts=100000"}),
     {"moe.num_experts (100000) is too large: at most 65536"}},
    {"SizeProductOverflows",
     train_with({"--set", "data.batch_size=1048576", "--set", "model.block_size=1048576", "--set",
                 "model.n_heads=65536", "--set", "model.d_model=65536"}),
     {"data.batch_size (1048576) * model.n_heads (65536) * model.block_size (1048576) * "
      "model.block_size (1048576) overflows a 64-bit integer"}},
    {"CapacityFactorOverflows",
     train_with({"--set", "moe.capacity_factor=1e300"}),
     {"moe.capacity_factor (1e+300) is too large: at most 65536.0"}},
    {"MemoryEstimateTooLarge",
     train_with({"--set", "model.n_layers=1000", "--set", "model.d_model=16384", "--set",
                 "model.d_ff=65536", "--set", "model.n_heads=64"}),
     {"the memory estimate of this run, ", " per rank, exceeds the ", " available on this host",
      "the biggest: optimizer state", "(model.n_layers, model.d_model, model.d_ff",
      "docs/config.md#memory-estimate"}},
    {"RanksTooMany",
     {"train", "--config", cfg, "--ranks", "5000"},
     {"--ranks (5000) is too large: at most 1024 in-process ranks (one thread each)"}},
    {"BenchRepsTooMany",
     {"bench", "layer", "--config", cfg, "--reps", "2000000000"},
     {"--reps (2000000000) is too large: at most 1048576"}},

    // Strict config files (issue 19 item 5).
    {"YamlTag",
     {"train", "--config", "tagged.yaml"},
     {"tagged.yaml:2: model.n_layers: the YAML tag '!!str' is not allowed"}},
    {"SectionTwice",
     {"train", "--config", "twice.yaml"},
     {"twice.yaml:5: section 'model' appears twice in twice.yaml (first on line 1)"}},
    {"NestedTooDeep",
     {"train", "--config", "nested.yaml"},
     {"nested.yaml:1: model.n_layers: expected an integer, got a mapping (nested deeper than "
      "the config allows"}},
    {"ConfigIsFifo",
     {"train", "--config", "fifo.yaml"},
     {"cannot read config file 'fifo.yaml': it is a FIFO (named pipe), not a regular file"}},
    {"ConfigIsProcFile",
     {"train", "--config", "/proc/self/status"},
     {"cannot read config file '/proc/self/status': its size is 0 but it holds"}},

    // Data (issue 19 item 7).
    {"CorpusNotUtf8",
     train_with({"--set", "data.path=random.txt"}),
     {"data file 'random.txt' is not UTF-8 text: the byte sequence at byte offset 100"}},

    // generate.
    {"GenerateWithoutRun", {"generate"}, {"--run"}},
    {"GenerateMissingRunFolder",
     {"generate", "--run", "no_such_run"},
     {"'no_such_run'", "does not exist"}},
    {"GenerateEmptyRunFolder", {"generate", "--run", "empty_run"}, {"empty_run/config.yaml"}},
    {"GenerateRunWithoutModel",
     {"generate", "--run", "run_without_model"},
     {"run_without_model/model.pt"}},
    {"GenerateNegativeTemperature",
     {"generate", "--run", "run_without_model", "--temperature", "-1"},
     {"--temperature"}},
    {"GenerateNanTemperature",
     {"generate", "--run", "run_without_model", "--temperature", "nan"},
     {"--temperature expects a finite number >= 0", "'nan'"}},
    {"GenerateInfiniteTemperature",
     {"generate", "--run", "run_without_model", "--temperature", "inf"},
     {"--temperature expects a finite number >= 0", "'inf'"}},
    {"GenerateUnknownDevice",
     {"generate", "--run", "run_without_model", "--device", "gpu"},
     {"--device", "cpu, cuda or auto", "'gpu'"}},
    {"GenerateCudaWithoutGpu",
     {"generate", "--run", "run_without_model", "--device", "cuda"},
     {"--device cuda", "cpu, cuda, auto"},
     /*needs_no_gpu=*/true},
    {"GenerateNegativeTokens",
     {"generate", "--run", "run_without_model", "--tokens", "-3"},
     {"--tokens must be >= 0, got -3"}},
    {"GenerateTakesNoConfig",
     {"generate", "--run", "empty_run", "--config", cfg},
     {"'--config'", "generate"}},

    // Options a mode of a command takes no part in.
    {"VerifyLayoutsTakesNoRanks",
     {"verify", "--layouts", "--config", cfg, "--ranks", "4"},
     {"verify --layouts", "4 in-process ranks of its own", "takes no --ranks"}},
    {"SummarizeTakesNoGrid",
     {"sweep", "--summarize", "empty_run", "--grid", "grid.yaml"},
     {"--summarize DIR rebuilds", "takes no --grid"}},
    {"SummarizeTakesNoSet",
     {"sweep", "--summarize", "empty_run", "--set", "train.max_steps=3"},
     {"takes no --set"}},
};

INSTANTIATE_TEST_SUITE_P(BadInput, CliErrorTest, ::testing::ValuesIn(kBadInputs),
                         [](const ::testing::TestParamInfo<BadInput>& info) {
                           return std::string(info.param.name);
                         });

TEST(CliHelpTest, ListsTheCommands) {
  TempFolder dir;
  for (const char* flag : {"--help", "-h", "help"}) {
    const RunResult r = run_switchyard(dir.path(), {flag}, /*timeout_s=*/60);
    ASSERT_FALSE(r.crashed) << r.describe();
    EXPECT_EQ(r.exit_code, 0) << flag << "\n" << r.describe();
    for (const char* command : {"train", "generate", "verify", "--config", "--ranks", "--run"}) {
      EXPECT_NE(r.out.find(command), std::string::npos) << flag << " lacks " << command;
    }
  }
  // Each command's own options, not the list of commands.
  const std::vector<std::pair<const char*, std::vector<const char*>>> own = {
      {"train", {"usage: switchyard train", "--resume", "--log-all-ranks"}},
      {"generate", {"usage: switchyard generate", "--temperature", "--top-k", "default 200"}},
      {"verify", {"usage: switchyard verify", "--ranks", "mpirun -np N"}},
      {"bench", {"usage: switchyard bench layer", "--min-bytes", "--warmup"}}};
  for (const auto& [command, words] : own) {
    const RunResult r = run_switchyard(dir.path(), {command, "--help"}, /*timeout_s=*/60);
    EXPECT_EQ(r.exit_code, 0) << command << " --help\n" << r.describe();
    for (const char* w : words)
      EXPECT_NE(r.out.find(w), std::string::npos) << command << " --help lacks " << w;
    EXPECT_EQ(r.out.find("commands:"), std::string::npos)
        << command << " --help printed the global usage";
  }
}

}  // namespace
}  // namespace sy::cli
