// The continual-learning recipe of docs/tasks.md as a user runs it (configs/continual/), shortened:
// phase 1 trains task A on 4 experts; phase 2 starts from it with 8 experts and trains task B on
// the new ones with the old experts, A's head and the shared layers frozen. Everything A computes
// with must come out of phase 2 bitwise as phase 1 left it (model.pt compared tensor by tensor),
// while B's experts and head moved. Then `generate` needs --task for a run with task masks.
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include "apps/cli_util.h"

namespace sy::cli {
namespace {

at::Tensor stored(const std::string& model_pt, const std::string& name) {
  torch::serialize::InputArchive a;
  a.load_from(model_pt);
  at::Tensor t;
  EXPECT_TRUE(a.try_read(name, t)) << model_pt << ": " << name;
  return t;
}

std::vector<std::string> stored_names(const std::string& model_pt) {
  torch::serialize::InputArchive a;
  a.load_from(model_pt);
  return a.keys();
}

// Both phases with `extra` appended to their arguments (the device, the dtypes).
void run_recipe(const TempFolder& dir, const std::vector<std::string>& extra) {
  const std::string conf = kSourceDir + "/configs/continual/";
  std::vector<std::string> args_a = {"train",
                                     "--config",
                                     conf + "task-a.yaml",
                                     "--set",
                                     "train.max_steps=30",
                                     "--set",
                                     "train.eval_interval=0",
                                     "--set",
                                     "train.out_dir=a"};
  args_a.insert(args_a.end(), extra.begin(), extra.end());
  const RunResult a = run_switchyard(dir.path(), args_a);
  ASSERT_EQ(a.exit_code, 0) << a.describe();
  std::vector<std::string> args_b = {"train",
                                     "--config",
                                     conf + "task-b.yaml",
                                     "--set",
                                     "train.max_steps=20",
                                     "--set",
                                     "train.eval_interval=10",
                                     "--set",
                                     "train.eval_iters=2",
                                     "--set",
                                     "train.init_from=a",
                                     "--set",
                                     "train.out_dir=b"};
  args_b.insert(args_b.end(), extra.begin(), extra.end());
  const RunResult b = run_switchyard(dir.path(), args_b);
  ASSERT_EQ(b.exit_code, 0) << b.describe();
  const std::string log = b.out + b.err;
  EXPECT_NE(log.find("trainable parameters: "), std::string::npos) << log;
  EXPECT_NE(log.find("val per task: a "), std::string::npos) << log;

  const std::string pa = dir / "a/model.pt", pb = dir / "b/model.pt";
  int experts_checked = 0, frozen_checked = 0;
  for (const std::string& name : stored_names(pb)) {
    const at::Tensor after = stored(pb, name);
    if (name.find("experts.") != std::string::npos) {
      // [8, ...]: experts 0-3 are phase 1's, bitwise; 4-7 trained on B.
      const at::Tensor before = stored(pa, name);
      ASSERT_EQ(before.size(0), 4) << name;
      ASSERT_EQ(after.size(0), 8) << name;
      EXPECT_TRUE(at::equal(after.narrow(0, 0, 4), before)) << name;
      EXPECT_FALSE(at::equal(after.narrow(0, 4, 4), before)) << name;
      ++experts_checked;
    } else if (name.find("router.") != std::string::npos) {
      // [64, 8]: A's columns as before (its tokens only ever see these); B's grown from them.
      const at::Tensor before = stored(pa, name);
      EXPECT_TRUE(at::equal(after.narrow(-1, 0, 4), before)) << name;
      ++frozen_checked;
    } else if (name.rfind("heads.b", 0) == 0) {
      EXPECT_FALSE(at::equal(after, stored(pa, name))) << name << " did not train";
    } else {
      // Embeddings, attention, norms, A's head: frozen.
      EXPECT_TRUE(at::equal(after, stored(pa, name))) << name;
      ++frozen_checked;
    }
  }
  EXPECT_EQ(experts_checked, 8);  // w1, b1, w2, b2 of 2 MoE blocks
  EXPECT_GT(frozen_checked, 20);
}

TEST(CliTasks, ContinualRecipeLeavesTaskAUntouched) {
  TempFolder dir;
  ASSERT_FALSE(dir.path().empty());
  run_recipe(dir, {});
  if (::testing::Test::HasFatalFailure()) return;

  // A run with task masks generates for a named task only.
  const RunResult no_task = run_switchyard(dir.path(), {"generate", "--run", "b", "--tokens", "5"});
  EXPECT_NE(no_task.exit_code, 0) << no_task.describe();
  EXPECT_NE(no_task.err.find("choose a task with --task (a, b)"), std::string::npos)
      << no_task.describe();
  const RunResult bad = run_switchyard(dir.path(), {"generate", "--run", "b", "--task", "c"});
  EXPECT_NE(bad.exit_code, 0) << bad.describe();
  EXPECT_NE(bad.err.find("--task 'c'"), std::string::npos) << bad.describe();
  const RunResult ok = run_switchyard(dir.path(), {"generate", "--run", "b", "--task", "a",
                                                   "--tokens", "20", "--temperature", "0"});
  EXPECT_EQ(ok.exit_code, 0) << ok.describe();
}

// On the GPU with bf16 parameters: the frozen expert rows go through the fp32-master AdamW kernel
// and must still come back bitwise.
TEST(CliTasksCuda, ContinualRecipeWithBf16Parameters) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device (LibTorch sees none)";
  TempFolder dir;
  ASSERT_FALSE(dir.path().empty());
  run_recipe(dir, {"--set", "train.device=cuda", "--set", "train.dtype=bf16", "--set",
                   "train.param_dtype=bf16"});
}

}  // namespace
}  // namespace sy::cli
