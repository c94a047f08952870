// Sharded, atomic, resumable training checkpoints (docs/checkpoints.md).
//
// Note [Checkpoint layout]: <out_dir>/checkpoints/step_<N>/ holds
//   dense.pt                 dense parameters and their AdamW state; written once, by world rank 0
//   experts/expert_<e>.pt    expert e (a global id) of every MoE layer and its AdamW state;
//                            written by the rank holding e in the first EP group (dp_rank 0)
//   ranks/rank_<r>.pt        what rank r needs to continue bitwise: data-sampler and RNG states,
//                            the partial log interval (RankState)
//   config.yaml, vocab.json  the resolved config and the character vocabulary (text runs only)
//   meta.json                step, world size, ep_size, number of experts, format version,
//                            config hash
//   manifest.json            every file above with its size and CRC-32, each expert file's
//                            global id and tensor shapes, the config hash; written last
// Expert files are keyed by global expert id, not by rank, so a checkpoint loads on any EP layout
// (each rank reads the experts it holds): resharding is a matter of which files a rank reads.
//
// Note [Atomic checkpoints]: everything is written into step_<N>.partial/, each file through a
// temporary name, fsync and rename; when every rank is done, rank 0 writes manifest.json the same
// way and renames the folder to step_<N>. A kill at any moment leaves either no step_<N> or a
// complete one, and the previous checkpoint untouched. `--resume auto` takes the newest step_<N>
// that has a manifest; leftover .partial folders are removed by the next save.
//
// Note [Checkpoint integrity]: beyond the CRCs, loading refuses an expert file that holds another
// expert than its name says (each records its id as meta.expert_id), tensors whose shapes are not
// the manifest's, and a config.yaml or meta.json that does not match the config hash recorded at
// save time (Note [Config hash] in checkpoint.cpp), even with every size and CRC fixed up.
// Format 1 checkpoints, which lack these records, load with a warning (docs/checkpoints.md).
//
// Save and load are collective over the world: a failure on any rank (disk full, a truncated
// shard) becomes the same error on every rank (parallel/consensus.h), never a hang.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <c10/core/Device.h>

#include "config/config.h"
#include "data/tokenizer.h"
#include "model/gpt.h"
#include "parallel/groups.h"
#include "train/optimizer.h"

namespace sy {

// Per-rank state beside the weights (what the trainer needs to continue the same run).
struct RankState {
  std::map<std::string, at::Tensor> tensors;  // stored on the CPU
  std::map<std::string, std::string> text;
  std::map<std::string, int64_t> ints;
};

struct CheckpointSave {
  std::string root;          // <out_dir>/checkpoints
  int64_t step = 0;          // steps done
  int64_t keep = 0;          // keep the newest `keep` checkpoints; 0: all
  bool kill_midway = false;  // debug.kill_in_save_step: every rank dies before the manifest
};

// Collective over groups.world. Refuses (an error on every rank, nothing written) when a weight
// or optimizer moment is NaN/Inf. A failed write on any rank is the same error on every rank,
// after rank 0 removed step_<N>.partial, naming the newest complete checkpoint (Note [Failed
// saves] in checkpoint.cpp). Returns the checkpoint folder.
// `tokenizer`: the character vocabulary of a text run, saved as vocab.json; nullptr for runs on
// token ids (data.format uint16/uint32/random), whose vocabulary is just `vocab_size` ids.
std::string save_checkpoint(const CheckpointSave& request, const Config& config,
                            const CharTokenizer* tokenizer, int64_t vocab_size, GPTImpl& model,
                            const AdamW& optimizer, const RankState& mine,
                            const ParallelGroups& groups, const c10::Device& comm_device);

struct LoadedCheckpoint {
  std::string dir;
  int64_t step = 0;
  int saved_world_size = 0, saved_ep_size = 0;
  bool has_rank_state = false;  // the world size is the one that saved: `state` is this rank's
  RankState state;
};

// Collective over groups.world. Loads weights and AdamW state into `model` and `optimizer`
// (built for this run's layout), resharding experts by global id. Checks the manifest (every
// file present, sizes, CRC-32 of what this rank reads), the format, the model shape against
// `config` and the vocabulary against `tokenizer` (or, for token ids, `vocab_size`); any failure
// is an error naming the file and the field, on every rank.
LoadedCheckpoint load_checkpoint(const std::string& dir, const Config& config,
                                 const CharTokenizer* tokenizer, int64_t vocab_size, GPTImpl& model,
                                 AdamW& optimizer, const ParallelGroups& groups,
                                 const c10::Device& comm_device);

// The newest complete checkpoint (step_<N> with a manifest.json) under `root`; "" when none.
std::string latest_checkpoint(const std::string& root);

// <out_dir>/checkpoints
std::string checkpoint_root(const Config& config);

}  // namespace sy
