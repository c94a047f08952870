// Saving and loading model weights in the unsharded layout: every expert tensor is stored whole,
// [num_experts, ...] by global expert id, whatever the EP size of the run that wrote it. A model
// on any EP layout loads it by taking its own slice of experts, so `generate` (one process) reads
// what an EP=N run wrote. (Sharded, resumable training checkpoints are a separate format.)
#pragma once

#include <string>

#include "model/gpt.h"
#include "parallel/groups.h"

namespace sy {

// Collective over the EP group (experts are gathered); world rank 0 writes `path` atomically
// (temporary file, then rename).
void save_model(const std::string& path, GPTImpl& model, const ParallelGroups& groups);

// Loads into `model` (built for EP rank ep_rank of ep_size). Throws naming the file and the
// tensor when something is missing or has the wrong shape.
void load_model(const std::string& path, GPTImpl& model, int64_t ep_rank, int64_t ep_size);

}  // namespace sy
