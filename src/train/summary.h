// summary.json: a run's totals, written by world rank 0 into the run folder when the run ends
// (after max_steps, or stopped at train.stop_at_step): what the sweep's results table
// (src/study/results.h) reads beside metrics.jsonl. Keys:
//   status           "complete" (max_steps done) or "stopped" (train.stop_at_step)
//   steps, max_steps steps done / planned; tokens = steps x tokens per step (all ranks)
//   params_total     every parameter of the model (experts counted once, over all EP ranks),
//                    embeddings and LM head included
//   params_active    what one token uses: params_total less, in each MoE layer, the routed
//                    experts it is not sent to (top_k of num_experts; all of them for the dense
//                    router); shared experts, routers, attention and embeddings count in full
//   flops_per_token  training FLOPs per token (train/throughput.h)
//   ms_per_step, tokens_per_s   this process's steady steps (after its first)
//   peak_mib, peak_memory       rank 0's peak: "cuda" (allocator peak) or "cpu_rss" (max RSS)
//   final_val_loss   the last evaluation's validation loss (null without one)
//   final_val_loss.<task>  data.tasks: each task's
//   final_val_accuracy     train.objective mlm: masked-token accuracy; model.kind
//                          encoder_decoder: target-token accuracy (absent otherwise)
//   final_val_exact_match  model.kind encoder_decoder: the share of pairs whose every target
//                          token (and EOS) is predicted (absent otherwise)
#pragma once

#include <cstdint>

namespace sy {

struct Run;

void write_summary(const Run& run, int64_t steps_done);

}  // namespace sy
