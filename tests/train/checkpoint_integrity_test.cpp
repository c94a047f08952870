// Checkpoint integrity beyond CRC (docs/checkpoints.md#integrity-note-checkpoint-integrity), on
// in-process ranks: the manifest records each expert file's global id and shapes and the config
// hash (also in meta.json); expert files swapped, a manifest that records an expert under another
// id or shape, a config.yaml edited after the save or a meta.json that contradicts it are refused
// with one error naming the file and what differs, on every rank, even with every size and CRC-32
// in the manifest fixed up. A format 1 checkpoint (written before these fields) loads with a
// warning; a run config that differs from the checkpoint's in other keys than the shape ones loads
// with a warning listing them. A failed save (an injected ENOSPC) removes its .partial folder and
// leaves the previous checkpoint byte for byte.
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <list>
#include <map>
#include <mutex>
#include <regex>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#include "common/files.h"
#include "config/config.h"
#include "data/tokenizer.h"
#include "model/gpt.h"
#include "parallel/groups.h"
#include "parallel/inproc_comm.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/trainer.h"
#include "temp_folder.h"

namespace sy {
namespace {

using sy::testing::TempFolder;

bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

Config small_config(const std::string& out_dir) {
  return load_config_from_string(
      "model: {n_layers: 2, d_model: 16, n_heads: 2, d_ff: 32, block_size: 8}\n"
      "moe: {num_experts: 4, top_k: 2}\n"
      "data: {batch_size: 4, synthetic_chars: 20000}\n"
      "train: {max_steps: 4, log_interval: 2, eval_interval: 0, checkpoint_interval: 2,\n"
      "        seed: 3, device: cpu, out_dir: '" +
          out_dir + "'}\nparallel: {ep_size: 4}\n",
      "checkpoint_integrity_test");
}

// Trains on `ranks` in-process ranks; each rank's error ("" when it finished).
std::vector<std::string> train_errors(int ranks, const Config& cfg,
                                      const std::string& resume = "") {
  std::vector<std::string> errors(ranks);
  run_inproc_ranks(ranks, [&](CommPtr world) {
    ParallelGroups g = make_groups(world, cfg.parallel.ep_size);
    try {
      train(cfg, g, TrainOptions{resume});
    } catch (const Error& e) {
      errors[g.world_rank] = e.message();
    }
  });
  return errors;
}

struct Built {
  GPT model{nullptr};
  AdamW optimizer{0.9, 0.95};
};

// Every file below `dir`: relative path -> bytes.
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (e.is_regular_file())
      out[std::filesystem::relative(e.path(), dir).string()] = read_file(e.path().string());
  }
  return out;
}

// Sets an environment variable for the lifetime of the object.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    ::setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() { ::unsetenv(name_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
};

class CheckpointIntegrity : public ::testing::Test {
 protected:
  // One checkpoint written by 4 EP ranks after 4 steps (one expert file per rank).
  static void SetUpTestSuite() {
    folder_ = new TempFolder("integrity_shared");
    dir_ = folder_->path();
    cfg_ = small_config(dir_ + "/run");
    for (const std::string& e : train_errors(4, cfg_)) ASSERT_EQ(e, "");
    ckpt_ = dir_ + "/run/checkpoints/step_4";
  }
  static void TearDownTestSuite() {
    delete folder_;
    folder_ = nullptr;
  }

  static CharTokenizer vocab() { return CharTokenizer::load(ckpt_ + "/vocab.json"); }

  // A copy of the shared checkpoint to damage, in a folder of its own that the test removes.
  std::string copy_checkpoint(const std::string& tag) {
    const std::string copy = copies_.emplace_back("integrity_" + tag) / "step_4";
    std::filesystem::copy(ckpt_, copy, std::filesystem::copy_options::recursive);
    return copy;
  }

  // Rewrites the manifest's size and CRC-32 of `rel` to those of the file now on disk, as
  // someone covering up an edit would.
  static void fix_up_crc(const std::string& dir, const std::string& rel) {
    const std::string bytes = read_file(dir + "/" + rel);
    char crc[16];
    std::snprintf(crc, sizeof(crc), "%08x", crc32(bytes.data(), bytes.size()));
    const std::string path = dir + "/manifest.json";
    const std::regex entry("(\"path\": \"" + std::regex_replace(rel, std::regex("\\."), "\\.") +
                           "\", \"bytes\": )[0-9]+(, \"crc32\": \")[0-9a-f]+\"");
    const std::string manifest = read_file(path);
    const std::string fixed = std::regex_replace(
        manifest, entry, "$01" + std::to_string(bytes.size()) + "$02" + crc + "\"");
    ASSERT_NE(fixed, manifest) << "no entry for " << rel;
    write_file_atomic(path, fixed);
  }

  static void replace_in(const std::string& path, const std::string& from, const std::string& to) {
    std::string text = read_file(path);
    const size_t at = text.find(from);
    ASSERT_NE(at, std::string::npos) << "'" << from << "' not in " << path;
    text.replace(at, from.size(), to);
    write_file_atomic(path, text);
  }

  // Loads `dir` on 2 EP ranks; each rank's error message ("" when it loaded).
  static std::vector<std::string> load_errors(const std::string& dir, const Config& cfg,
                                              int ranks = 2) {
    const CharTokenizer tok = vocab();
    std::vector<std::string> errors(ranks);
    run_inproc_ranks(ranks, [&](CommPtr world) {
      ParallelGroups g = make_groups(world, ranks);
      Built b;
      b.model = GPT(cfg.model, cfg.moe, tok.vocab_size(), g.ep, 1);
      for (const auto& item : b.model->named_parameters())
        b.optimizer.add(item.key(), item.value(), 0.1);
      try {
        load_checkpoint(dir, cfg, &tok, tok.vocab_size(), *b.model, b.optimizer, g, at::kCPU);
      } catch (const Error& e) {
        errors[g.world_rank] = e.message();
      }
    });
    return errors;
  }

  // Every rank fails with the same message, which holds every part of `expected`.
  static void expect_refused(const std::string& dir, const std::vector<std::string>& expected,
                             const Config& cfg = cfg_) {
    const std::vector<std::string> errors = load_errors(dir, cfg);
    for (size_t r = 0; r < errors.size(); ++r) {
      ASSERT_FALSE(errors[r].empty()) << "rank " << r << " loaded a tampered checkpoint";
      EXPECT_EQ(errors[r], errors[0]);
      for (const std::string& part : expected) {
        EXPECT_NE(errors[r].find(part), std::string::npos) << "rank " << r << ": " << errors[r];
      }
    }
  }

  std::list<TempFolder> copies_;  // copy_checkpoint's folders
  static TempFolder* folder_;
  static std::string dir_, ckpt_;
  static Config cfg_;
};

TempFolder* CheckpointIntegrity::folder_ = nullptr;
std::string CheckpointIntegrity::dir_, CheckpointIntegrity::ckpt_;
Config CheckpointIntegrity::cfg_;

TEST_F(CheckpointIntegrity, ManifestRecordsExpertIdsShapesAndTheConfigHash) {
  const std::string manifest = read_file(ckpt_ + "/manifest.json");
  const std::string meta = read_file(ckpt_ + "/meta.json");
  EXPECT_NE(manifest.find("{\"format\": 2, \"step\": 4, \"config_hash\": \"fnv1a64:"),
            std::string::npos)
      << manifest;
  const std::smatch hash = [&] {
    std::smatch m;
    std::regex_search(manifest, m, std::regex("\"config_hash\": \"(fnv1a64:[0-9a-f]{16})\""));
    return m;
  }();
  ASSERT_EQ(hash.size(), 2u) << manifest;
  EXPECT_NE(meta.find("\"config_hash\": \"" + hash[1].str() + "\""), std::string::npos) << meta;
  for (int e = 0; e < 4; ++e) {
    const std::string head = str("{\"path\": \"experts/expert_0000", e, ".pt\", \"bytes\": ");
    const size_t at = manifest.find(head);
    ASSERT_NE(at, std::string::npos) << manifest;
    const std::string line = manifest.substr(at, manifest.find('\n', at) - at);
    EXPECT_NE(line.find(str("\"expert\": ", e, ", \"shapes\": {")), std::string::npos) << line;
    // d_model 16, moe.d_ff = model.d_ff 32: one expert's w1 and w2.
    EXPECT_NE(line.find("\"blocks.0.moe.experts.w1\": [16, 32]"), std::string::npos) << line;
    EXPECT_NE(line.find("\"blocks.1.moe.experts.w2\": [32, 16]"), std::string::npos) << line;
  }
  EXPECT_EQ(load_errors(ckpt_, cfg_), (std::vector<std::string>{"", ""}));
}

TEST_F(CheckpointIntegrity, SwappedExpertFilesAreRefusedEvenWithFixedCrcs) {
  const std::string dir = copy_checkpoint("swapped");
  const std::string one = dir + "/experts/expert_00001.pt", two = dir + "/experts/expert_00002.pt";
  const std::string bytes_one = read_file(one), bytes_two = read_file(two);
  write_file_atomic(one, bytes_two);
  write_file_atomic(two, bytes_one);
  fix_up_crc(dir, "experts/expert_00001.pt");
  fix_up_crc(dir, "experts/expert_00002.pt");
  // Expert 1 is read by EP rank 0 of 2 (experts 0 and 1), expert 2 by rank 1.
  expect_refused(dir, {"rank 0: checkpoint file '" + dir +
                       "/experts/expert_00001.pt' holds expert 2, not expert 1 (expert files "
                       "swapped or renamed)"});
  // On 4 ranks the lowest failing rank is 1 (it reads expert 1), and every rank says so.
  const std::vector<std::string> errors = load_errors(dir, cfg_, 4);
  for (const std::string& e : errors) {
    EXPECT_NE(e.find("rank 1: checkpoint file '" + one + "' holds expert 2, not expert 1"),
              std::string::npos)
        << e;
  }
}

TEST_F(CheckpointIntegrity, ManifestRecordingAnotherIdOrShapeIsRefused) {
  const std::string dir = copy_checkpoint("ids");
  replace_in(dir + "/manifest.json", "\"expert\": 3,", "\"expert\": 2,");
  expect_refused(dir, {"'" + dir +
                       "/manifest.json' records 'experts/expert_00003.pt' as expert 2 (whose file "
                       "is 'experts/expert_00002.pt')"});

  const std::string shapes = copy_checkpoint("shapes");
  replace_in(shapes + "/manifest.json", "\"blocks.0.moe.experts.w1\": [16, 32]",
             "\"blocks.0.moe.experts.w1\": [16, 64]");
  expect_refused(shapes, {"checkpoint file '" + shapes +
                          "/experts/expert_00000.pt': 'blocks.0.moe.experts.w1' has shape [16, "
                          "32], manifest.json records [16, 64]"});
}

TEST_F(CheckpointIntegrity, EditedConfigIsRefusedEvenWithAFixedCrc) {
  const std::string dir = copy_checkpoint("config");
  const std::string config = read_file(dir + "/config.yaml");
  const std::smatch lr = [&] {
    std::smatch m;
    std::regex_search(config, m, std::regex("\n  lr: [^\n]+"));
    return m;
  }();
  ASSERT_FALSE(lr.empty()) << config;
  replace_in(dir + "/config.yaml", lr[0].str(), "\n  lr: 0.5");
  fix_up_crc(dir, "config.yaml");
  expect_refused(dir, {"checkpoint file '" + dir + "/config.yaml' hashes to fnv1a64:",
                       ", manifest.json records fnv1a64:",
                       ": config.yaml was edited or replaced after the save"});
}

TEST_F(CheckpointIntegrity, MetaJsonContradictingTheConfigIsRefused) {
  const std::string dir = copy_checkpoint("meta");
  replace_in(dir + "/meta.json", "\"num_experts\": 4", "\"num_experts\": 8");
  fix_up_crc(dir, "meta.json");
  expect_refused(dir, {"checkpoint file '" + dir +
                       "/meta.json': num_experts is 8, its config.yaml has moe.num_experts 4 "
                       "(meta.json contradicts the config)"});

  const std::string hash = copy_checkpoint("metahash");
  replace_in(hash + "/meta.json", "\"config_hash\": \"fnv1a64:", "\"config_hash\": \"fnv1a64:0");
  fix_up_crc(hash, "meta.json");
  expect_refused(hash, {"checkpoint file '" + hash + "/meta.json': config_hash is fnv1a64:0",
                        "(meta.json contradicts the config)"});

  const std::string layout = copy_checkpoint("layout");
  replace_in(layout + "/meta.json", "\"ep_size\": 4", "\"ep_size\": 3");
  fix_up_crc(layout, "meta.json");
  expect_refused(layout, {"checkpoint file '" + layout +
                          "/meta.json': world_size 4 and ep_size 3 are not a layout of 4 experts"});
}

// Decision (docs/checkpoints.md#integrity-note-checkpoint-integrity): checkpoints of format 1,
// written before the ids, shapes and config hash were recorded, still load, with a warning saying
// what is not checked.
TEST_F(CheckpointIntegrity, FormatOneLoadsWithAWarning) {
  const std::string dir = copy_checkpoint("format1");
  std::string manifest = read_file(dir + "/manifest.json");
  manifest = std::regex_replace(manifest, std::regex("\"format\": 2"), "\"format\": 1");
  manifest = std::regex_replace(manifest, std::regex(", \"config_hash\": \"[^\"]+\""), "");
  manifest =
      std::regex_replace(manifest, std::regex(", \"expert\": [0-9]+, \"shapes\": \\{[^}]*\\}"), "");
  write_file_atomic(dir + "/manifest.json", manifest);
  ASSERT_EQ(manifest.find("expert\":"), std::string::npos) << manifest;
  ::testing::internal::CaptureStderr();
  const std::vector<std::string> errors = load_errors(dir, cfg_);
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(errors, (std::vector<std::string>{"", ""}));
  EXPECT_NE(err.find("warning: checkpoint '" + dir +
                     "' has format 1, written before expert ids, shapes and the config hash were "
                     "recorded: only sizes and CRCs are checked"),
            std::string::npos)
      << err;
  // A format this build does not know is refused.
  replace_in(dir + "/manifest.json", "\"format\": 1", "\"format\": 3");
  expect_refused(dir,
                 {"'" + dir + "/manifest.json': format 3 is not one this build reads (1 to 2)"});
}

TEST_F(CheckpointIntegrity, OtherValuesOfHashedKeysLoadWithAWarning) {
  Config other = cfg_;
  other.train.lr = 0.25;
  other.train.max_steps = 40;  // may change on resume: not listed
  ::testing::internal::CaptureStderr();
  const std::vector<std::string> errors = load_errors(ckpt_, other);
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(errors, (std::vector<std::string>{"", ""}));
  const size_t at = err.find("warning: this run's config differs from the checkpoint's (" + ckpt_ +
                             "/config.yaml) in train.lr ");
  ASSERT_NE(at, std::string::npos) << err;
  const std::string line = err.substr(at, err.find('\n', at) - at);
  EXPECT_NE(line.find(" -> 0.25: resuming with the new values"), std::string::npos) << line;
  EXPECT_EQ(line.find("max_steps"), std::string::npos) << line;
}

// A write that fails (ENOSPC, injected by SWITCHYARD_TEST_FAIL_WRITE) in the middle of a save:
// every rank throws the same error naming the file and the system error, the .partial folder is
// gone and the previous checkpoint is unchanged, byte for byte.
TEST(CheckpointSaveFailure, RemovesThePartialFolderAndKeepsThePreviousCheckpoint) {
  const TempFolder folder("integrity_enospc");
  const std::string& dir = folder.path();
  const Config first = small_config(dir + "/run");
  for (const std::string& e : train_errors(4, first)) ASSERT_EQ(e, "");
  const std::string ckpts = dir + "/run/checkpoints";
  const auto before = snapshot(ckpts);
  ASSERT_TRUE(before.count("step_4/manifest.json"));
  ASSERT_TRUE(before.count("step_2/manifest.json"));

  Config more = first;
  more.train.max_steps = 6;
  std::vector<std::string> errors;
  {
    ScopedEnv fail("SWITCHYARD_TEST_FAIL_WRITE", "step_6.partial/experts/expert_00002");
    errors = train_errors(4, more, "auto");
  }
  const std::string file = ckpts + "/step_6.partial/experts/expert_00002.pt.tmp";
  for (size_t r = 0; r < errors.size(); ++r) {
    EXPECT_EQ(errors[r],
              "checkpoint save of step 6 failed: rank 2: cannot write '" + file +
                  "': No space left on device (injected by SWITCHYARD_TEST_FAIL_WRITE); removed '" +
                  ckpts + "/step_6.partial'; the previous checkpoint '" + ckpts +
                  "/step_4' is intact (--resume auto continues from it)")
        << "rank " << r;
  }
  EXPECT_FALSE(exists(ckpts + "/step_6.partial"));
  EXPECT_FALSE(exists(ckpts + "/step_6"));
  EXPECT_EQ(snapshot(ckpts), before);  // nothing of the earlier checkpoints changed

  // Without the fault the run continues from step 4.
  for (const std::string& e : train_errors(4, more, "auto")) EXPECT_EQ(e, "");
  EXPECT_TRUE(exists(ckpts + "/step_6/manifest.json"));

  // The first save of a run fails: there is no earlier checkpoint to speak of.
  Config fresh = small_config(dir + "/fresh");
  {
    ScopedEnv fail("SWITCHYARD_TEST_FAIL_WRITE", "step_2.partial/dense.pt");
    errors = train_errors(4, fresh);
  }
  for (size_t r = 0; r < errors.size(); ++r) {
    EXPECT_EQ(errors[r], "checkpoint save of step 2 failed: rank 0: cannot write '" + dir +
                             "/fresh/checkpoints/step_2.partial/dense.pt.tmp': No space left on "
                             "device (injected by SWITCHYARD_TEST_FAIL_WRITE); removed '" +
                             dir +
                             "/fresh/checkpoints/step_2.partial'; there is no earlier checkpoint "
                             "yet")
        << "rank " << r;
  }
  EXPECT_FALSE(exists(dir + "/fresh/checkpoints/step_2.partial"));
  EXPECT_FALSE(exists(dir + "/fresh/checkpoints/step_2"));
}

}  // namespace
}  // namespace sy
