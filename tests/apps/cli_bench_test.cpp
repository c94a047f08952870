// `switchyard bench` on the CPU (docs/bench.md): the printed numbers follow from their
// definitions (expert FLOPs of the routed tokens in closed form, efficiency = floor / time), the
// breakdown names the layer's phases, the all-to-all table is complete with no wrong element,
// and bad arguments end in one clear error. Speed itself is measured on GPUs (bench/results/).
#include <cmath>
#include <cstdio>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "cli_util.h"

namespace sy::cli {
namespace {

// The number after `label` in `text` (the first match); NaN when absent.
double number_after(const std::string& text, const std::string& label) {
  const size_t at = text.find(label);
  if (at == std::string::npos) return std::nan("");
  return std::strtod(text.c_str() + at + label.size(), nullptr);
}

// B 4 x T 16 = 64 tokens per rank, H 32, F 64, 4 experts top-2, no drops (capacity factor 100).
const std::vector<std::string> kLayer = {"bench",    "layer",
                                         "--config", kDebugConfig,
                                         "--set",    "model.d_model=32",
                                         "--set",    "moe.d_ff=64",
                                         "--set",    "model.block_size=16",
                                         "--set",    "data.batch_size=4",
                                         "--set",    "moe.num_experts=4",
                                         "--set",    "moe.capacity_factor=100",
                                         "--reps",   "3",
                                         "--warmup", "1"};

void check_layer_output(const RunResult& r, int ranks) {
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  const std::string& out = r.out;
  const double ms = number_after(out, "time (fwd+bwd, median, max over ranks)");
  const double floor_ms = number_after(out, "floor (GEMMs + 4 all-to-alls)");
  const double eff = number_after(out, "efficiency = floor / measured");
  ASSERT_GT(ms, 0) << out;
  ASSERT_GT(floor_ms, 0) << out;
  // The times are printed to 0.001 ms: the relative rounding of a quotient of them (a GPU's
  // 0.094 ms: 0.5%), on top of the printed digits of the quotient itself.
  const double rounding = 0.0005 / ms + 0.0005 / floor_ms;
  EXPECT_NEAR(eff, floor_ms / ms, 2e-3 + (1e-3 + rounding) * eff) << out;
  // Expert FLOPs: 3 (fwd + bwd) x 64 tokens x 2 choices x 2 GEMMs x 2 H F, all kept.
  const std::smatch m = [&] {
    std::smatch found;
    std::regex_search(out, found, std::regex(R"(\(([0-9.e+]+) FLOP\))"));
    return found;
  }();
  ASSERT_EQ(m.size(), 2u) << out;
  EXPECT_NEAR(std::stod(m[1]), 3.0 * 64 * 2 * 2 * 2 * 32 * 64, 1e3) << out;
  EXPECT_NEAR(number_after(out, "tokens/s per rank"), 64.0 / (ms / 1000.0),
              2.0 + (1e-3 + 0.0005 / ms) * 64.0 / (ms / 1000.0))
      << out;
  for (const char* phase :
       {"router", "plan + permute", "experts", "unpermute + combine", "backward (all parts)"}) {
    EXPECT_NE(out.find("  " + std::string(phase) + " "), std::string::npos) << phase << "\n" << out;
  }
  // Three rounds (the default): the printed efficiency is the median round's, within the spread.
  const std::string spread_label = "efficiency over 3 rounds (median above)";
  const double lo = number_after(out, spread_label);
  const size_t to = out.find(" to ", out.find(spread_label));
  ASSERT_NE(to, std::string::npos) << out;
  const double hi = std::strtod(out.c_str() + to + 4, nullptr);
  EXPECT_LE(lo, eff + 1e-3) << out;
  EXPECT_LE(eff, hi + 1e-3) << out;
  const bool exchanges = out.find("all-to-all dispatch") != std::string::npos;
  EXPECT_EQ(exchanges, ranks > 1) << out;
  EXPECT_EQ(number_after(out, "floor: one all-to-all of the buffer") > 0, ranks > 1) << out;
}

TEST(CliBench, LayerOnOneRank) {
  TempFolder dir;
  check_layer_output(run_switchyard(dir.path(), kLayer), 1);
}

TEST(CliBench, LayerOnTwoEpRanks) {
  TempFolder dir;
  std::vector<std::string> args = kLayer;
  args.insert(args.end(), {"--ranks", "2"});
  const RunResult r = run_switchyard(dir.path(), args);
  check_layer_output(r, 2);
  EXPECT_NE(r.out.find("2 rank(s), ep_size 2\n"), std::string::npos) << r.out;
}

// moe.a2a_chunks: the header says how the exchanges ran, and the phases are still all there.
TEST(CliBench, LayerOnTwoEpRanksWithChunkedExchanges) {
  TempFolder dir;
  std::vector<std::string> args = kLayer;
  args.insert(args.end(), {"--ranks", "2", "--set", "moe.a2a_chunks=2"});
  const RunResult r = run_switchyard(dir.path(), args);
  check_layer_output(r, 2);
  EXPECT_NE(r.out.find("2 rank(s), ep_size 2, all-to-alls in 2 chunks\n"), std::string::npos)
      << r.out;
}

// train.cuda_graph on a GPU: the timed steps replay one captured step (the numbers keep their
// definitions) and the header says so.
TEST(CliBenchCuda, LayerReplayedAsACudaGraph) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device (LibTorch sees none)";
  TempFolder dir;
  std::vector<std::string> args = kLayer;
  args.insert(args.end(), {"--set", "train.device=cuda", "--set", "train.cuda_graph=true"});
  const RunResult r = run_switchyard(dir.path(), args);
  check_layer_output(r, 1);
  EXPECT_NE(r.out.find("ep_size 1, replayed as a CUDA graph (train.cuda_graph)\n"),
            std::string::npos)
      << r.out;
}

TEST(CliBench, AlltoallTableIsCompleteAndCorrect) {
  TempFolder dir;
  const RunResult r = run_switchyard(
      dir.path(), {"bench", "alltoall", "--config", kDebugConfig, "--set", "moe.num_experts=6",
                   "--ranks", "3", "--min-bytes", "1200", "--max-bytes", "40000", "--reps", "3"});
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  // 1200, 2400, ..., 38400: six sizes; each rounded down to whole float32 blocks per rank.
  std::vector<long> sizes, wrong;
  std::istringstream in(r.out);
  for (std::string line; std::getline(in, line);) {
    long size = 0, bad = -1;
    double t, alg, bus, peak = -1;
    const int fields =
        std::sscanf(line.c_str(), "%ld %lf %lf %lf %ld %lf", &size, &t, &alg, &bus, &bad, &peak);
    if (fields >= 5) {
      sizes.push_back(size);
      wrong.push_back(bad);
      EXPECT_NEAR(bus, alg * 2.0 / 3.0, 2e-3 + 1e-3 * alg) << line;  // busbw = algbw (n-1)/n
      EXPECT_EQ(fields, 6) << "no peak memory column: " << line;
      EXPECT_EQ(peak, 0.0) << "peak device memory on the CPU: " << line;
    }
  }
  std::vector<long> expected;
  for (long b = 1200; b <= 40000; b *= 2) expected.push_back(3 * (b / 4 / 3) * 4);
  EXPECT_EQ(sizes, expected) << r.out;
  EXPECT_EQ(wrong, std::vector<long>(expected.size(), 0)) << r.out;
  EXPECT_NE(r.out.find("over 3 rank(s) (inproc)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("peak (MiB)"), std::string::npos) << r.out;
}

TEST(CliBench, BadArguments) {
  TempFolder dir;
  expect_clean_error(run_switchyard(dir.path(), {"bench"}),
                     {"bench needs what to measure: layer or alltoall"});
  expect_clean_error(run_switchyard(dir.path(), {"bench", "gemm"}), {"unknown benchmark 'gemm'"});
  expect_clean_error(run_switchyard(dir.path(), {"bench", "layer"}),
                     {"bench layer needs --config"});
  expect_clean_error(
      run_switchyard(dir.path(), {"bench", "layer", "--config", kDebugConfig, "--reps", "0"}),
      {"--reps must be >= 1"});
  expect_clean_error(
      run_switchyard(dir.path(), {"bench", "layer", "--config", kDebugConfig, "--rounds", "0"}),
      {"--rounds must be >= 1, got 0"});
  expect_clean_error(
      run_switchyard(dir.path(), {"bench", "alltoall", "--min-bytes", "100", "--max-bytes", "10"}),
      {"--min-bytes and --max-bytes"});
  expect_clean_error(
      run_switchyard(dir.path(), {"bench", "layer", "--config", kDebugConfig, "--resume", "auto"}),
      {"unknown option '--resume'"});
  expect_clean_error(
      run_switchyard(dir.path(), {"bench", "alltoall", "--trace", dir.path() + "/t.json"}),
      {"--trace is an option of switchyard bench layer, not of bench alltoall"});
}

// --trace FILE: with a LibTorch whose profiler writes traces (Kineto: PyTorch's builds), a Chrome
// trace holding the layer's operators; without it (Debian's 1.13), one clear error naming the
// file, given before the benchmark runs.
TEST(CliBench, LayerTraceIsWrittenOrRefusedClearly) {
  TempFolder dir;
  const std::string trace = dir.path() + "/layer.json";
  std::vector<std::string> args = kLayer;
  args.insert(args.end(), {"--trace", trace});
  const RunResult r = run_switchyard(dir.path(), args);
  ASSERT_FALSE(r.crashed) << r.describe();
  if (r.exit_code == 0) {
    check_layer_output(r, 1);
    const std::string text = read_text(trace);
    EXPECT_NE(text.find("\"traceEvents\""), std::string::npos) << trace;
    EXPECT_NE(text.find("aten::"), std::string::npos) << "no LibTorch operator in " << trace;
  } else {
    expect_clean_error(r,
                       {"--trace " + trace + ": LibTorch could not write the trace", "USE_KINETO"});
    EXPECT_EQ(r.out.find("time (fwd+bwd"), std::string::npos) << "benchmark ran first";
  }
}

// A failing in-process rank prints its own [error] line, as under train --ranks and mpirun (the
// bf16 check fails on every rank, before any collective).
TEST(CliBench, InProcessErrorOnEveryRank) {
  TempFolder dir;
  std::vector<std::string> args = kLayer;
  args.insert(args.end(), {"--ranks", "2", "--set", "train.dtype=bf16"});
  const RunResult r = run_switchyard(dir.path(), args);
  ASSERT_FALSE(r.crashed) << r.describe();
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  int errors = 0;
  for (const std::string& line : lines_of(r.err)) {
    if (line.find("[error]") == std::string::npos) continue;
    ++errors;
    EXPECT_NE(line.find("train.dtype 'bf16' needs train.device cuda"), std::string::npos) << line;
  }
  EXPECT_EQ(errors, 2) << r.describe();
  EXPECT_NE(r.err.find("[r00/02] [error] "), std::string::npos) << r.describe();
  EXPECT_NE(r.err.find("[r01/02] [error] "), std::string::npos) << r.describe();
}

}  // namespace
}  // namespace sy::cli
