// Shared GoogleTest main: single-threaded LibTorch by default keeps CPU results reproducible and
// stops the in-process-rank tests from oversubscribing the cores.
#include <gtest/gtest.h>
#include <torch/torch.h>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  torch::set_num_threads(1);
  return RUN_ALL_TESTS();
}
