// train.init_from: a run starts from the weights of a finished run (fine-tuning, sparse
// upcycling, growing the experts), not from random ones. Only weights (and the routers' score
// biases) are taken: the optimizer, the step and the data position start afresh (that is what
// --resume keeps).
//
// Note [Initialising from a run]: the source is a model.pt (src/train/model_io.h: every tensor
// unsharded, experts by global id), so any EP layout of the source loads into any EP layout of
// the new run. Each parameter of the new model is taken from the tensor of the same name, with
// two mappings where the configs differ:
//   - more experts (moe.num_experts grew from E to E'): experts 0..E-1 and their router rows are
//     the source's, bitwise; expert e >= E is, with moe.new_expert_init copy, source expert
//     e mod E plus Gaussian noise of 1% of that tensor's std (seeded by train.seed, layer and
//     expert), its router row likewise; with random it keeps this model's initialisation;
//   - upcycling (Komatsuzaki et al. 2022): a block that is dense in the source and MoE here gets
//     every expert = the source block's FFN (fc and proj, transposed into the experts' [in, out]
//     layout), its router (and shared experts, if any) freshly initialised. With dropless
//     routing whose gates sum to 1 the upcycled model computes what the dense one did.
// A task head (heads.<task>, data.tasks head own) or learned task gate the source lacks starts
// fresh: a task added after the source run. Anything else that differs is an error naming the tensor and both shapes (another d_model,
// d_ff or vocabulary), and so is a source MoE block that is dense here, fewer experts than the
// source, or a source tensor missing. For text runs the source's vocab.json must equal this
// corpus's vocabulary.
#pragma once

#include <cstdint>
#include <string>

#include "config/config.h"
#include "data/tokenizer.h"
#include "model/gpt.h"
#include "parallel/groups.h"

namespace sy {

struct InitFromReport {
  std::string path;      // the model.pt read
  int64_t loaded = 0;    // tensors taken as they are (or this rank's slice of their experts)
  int64_t upcycled = 0;  // MoE layers whose experts start as a dense FFN
  int64_t grown = 0;     // experts added beyond the source's, over all MoE layers
  int64_t fresh = 0;     // tensors left at this model's initialisation (routers of upcycled
                         // layers, new shared experts, new tasks' heads and gates)
};

// The model.pt of `source` (a run folder or the file itself); throws naming what is missing.
std::string init_from_path(const std::string& source);

// Loads `cfg.train.init_from` into `model` (built for this rank's EP slice, on any device).
// `tokenizer`: this run's character vocabulary (nullptr for token-id data), checked against the
// source's vocab.json when it has one.
InitFromReport init_weights_from(const Config& cfg, const CharTokenizer* tokenizer, GPTImpl& model,
                                 const ParallelGroups& groups);

}  // namespace sy
