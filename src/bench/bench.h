// `switchyard bench`: the MoE layer and the all-to-all, measured against the hardware
// (docs/bench.md). Both are collective over the world and print from world rank 0.
//
//   bench layer     forward + backward of one MoE layer (router through combine, input requiring
//                   grad, a random upstream gradient, aux loss included); median of --reps timed
//                   repetitions after --warmup, the maximum over ranks; tokens/s per rank, expert
//                   TFLOP/s, peak memory, a breakdown, and the floor measured in the same run:
//                   the six expert GEMMs of the routed tokens at the measured batched-GEMM rate
//                   plus four all-to-alls of the dispatch buffer at the measured time.
//                   efficiency = floor / measured. The timed steps and the floor's pieces run
//                   in turn (one of each per repetition), so that both meet the same state of
//                   the GPU, in --rounds rounds: the round of the median efficiency is printed,
//                   and the spread.
//   bench alltoall  nccl-tests-style table (size, time, algbw, busbw, #wrong) for our
//                   communicator's all_to_all_single, checked with rank-tagged payloads, beside
//                   raw NCCL on the same buffers where there is NCCL (bench/raw_nccl.h).
//
// Timing (common/device_timing.h): CUDA events around each repetition on the current stream (on
// the CPU, the host clock), median of --reps after --warmup, the maximum over ranks. The breakdown
// comes from separate runs that synchronize the device at every phase boundary. With
// train.cuda_graph on a CUDA device (one rank), the timed steps and the trace replay one captured
// step, as the trainer does; the breakdown still runs eagerly.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <c10/core/Device.h>

#include "config/config.h"
#include "parallel/groups.h"

namespace sy {

struct BenchOptions {
  int warmup = 5;
  int reps = 20;
  // layer: rounds of repetitions that run the timed step and the floor's pieces in turn; the
  // round of the median efficiency is reported, with the spread over all of them.
  int rounds = 3;
  int64_t min_bytes = int64_t{1} << 20;  // alltoall: per-rank buffer sizes, doubling
  int64_t max_bytes = int64_t{1} << 30;
  std::string trace_path;  // layer: a Chrome trace of a few steps there (bench/trace.h); "": none
};

struct LayerBenchResult {
  bool cuda_graph = false;        // train.cuda_graph: the timed steps replay one captured step
  double ms = 0;                  // median forward + backward, maximum over ranks
  double tokens_per_s = 0;        // per rank
  double expert_flops = 0;        // forward + backward of the routed tokens, per rank
  double expert_tflops = 0;       // expert_flops / time
  double gemm_tflops = 0;         // measured batched-GEMM rate for the expert shapes
  double alltoall_ms = 0;         // one all-to-all of the dispatch buffer (0 with one rank)
  double shared_flops = 0;        // moe.shared_experts: forward + backward of every token, per rank
  double shared_gemm_tflops = 0;  // measured GEMM rate for the shared experts' shapes
  // routed flops at gemm rate + shared flops at their rate + 4 all-to-alls
  double floor_ms = 0;
  double efficiency = 0;  // floor / measured
  // Every number above is that of the round of the median efficiency (BenchOptions::rounds);
  // the spread of the efficiency over all rounds:
  int rounds = 1;
  double efficiency_min = 0, efficiency_max = 0;
  double peak_mib = 0;  // peak device memory (CUDA), MiB; 0 on the CPU
  // moe.dedup_dispatch: dispatch rows sent across nodes in one forward, summed over ranks, and
  // what the flat exchange sends; 0 without it.
  double rows_across_nodes = 0, flat_rows_across_nodes = 0;
  std::vector<std::pair<std::string, double>> breakdown_ms;  // per phase, median-free mean
  // How the last step ran the experts (moe_layer.h MoePath), and the padded buffer's rows per
  // expert (the capacity, fewer when trimmed; 0 on the grouped and dropless paths).
  std::string path;
  int64_t capacity = 0, buffer_capacity = 0;
};

LayerBenchResult bench_layer(const Config& config, const ParallelGroups& groups,
                             const c10::Device& device, const BenchOptions& options);

struct AlltoallRow {
  int64_t bytes = 0;  // per rank: what each rank sends in total
  double ms = 0, algbw_gbs = 0, busbw_gbs = 0;
  int64_t wrong = 0;  // received elements that are not what their sender wrote
  // Raw NCCL (bench/raw_nccl.h) on the same buffers; 0 where there is none to compare with.
  double raw_ms = 0, raw_busbw_gbs = 0;
  int64_t raw_wrong = 0;  // elements where raw NCCL's result differs from ours
  double peak_mib = 0;    // peak device memory while this size ran (max over ranks); 0 on the CPU
};

std::vector<AlltoallRow> bench_alltoall(const ParallelGroups& groups, const c10::Device& device,
                                        const BenchOptions& options);

// The printed tables (what `switchyard bench` shows on rank 0).
std::string format_layer_result(const Config& config, const ParallelGroups& groups,
                                const LayerBenchResult& r);
std::string format_alltoall(const ParallelGroups& groups, const std::vector<AlltoallRow>& rows);

}  // namespace sy
