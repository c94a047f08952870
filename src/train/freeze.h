// Which parameters train: train.trainable, train.frozen and moe.frozen_experts.
//
// Note [Freezing]: a pattern names parameters as `switchyard params` lists them; `*` matches any
// run of characters (dots too), and a pattern matches a parameter when it matches its whole name
// or the name of a module that holds it ("lm_head" matches lm_head.weight, "blocks.*.moe.experts"
// every expert tensor). With train.trainable non-empty only the parameters it matches train;
// train.frozen then takes parameters out. Every pattern must match something (a typo is an
// error, not a silently full fine-tune). A frozen parameter is a constant of the run:
// requires_grad is off (no gradient is computed or stored for it), it is not in the gradient
// all-reduce or the norm, and the optimizer allocates no moments (nor, with train.param_dtype
// bf16, an fp32 master) for it. Checkpoints still store it, so a resumed run sees the same model.
//
// moe.frozen_experts freezes experts by global id inside the stacked expert tensors [E_local, ..].
// Each EP rank freezes the ids it holds: on a rank that holds only frozen experts the tensors are
// frozen whole, as above; on a rank that holds some, a gradient hook zeroes the frozen rows (so
// the norm and the all-reduce see zeros) and the optimizer restores those rows after each step
// (weight decay would otherwise shrink them), so they stay bitwise unchanged. Their moments stay
// allocated (they are rows of one tensor) and stay zero. The routers' score biases (moe.balance
// bias) are buffers, not parameters: they keep balancing whatever is frozen.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/config.h"
#include "model/gpt.h"
#include "train/optimizer.h"

namespace sy {

// Whether `pattern` matches parameter `name` (Note [Freezing]).
bool pattern_matches(const std::string& pattern, const std::string& name);

// What trains on this rank.
struct FreezePlan {
  std::vector<std::string> frozen;  // whole parameters frozen on this rank
  std::vector<int64_t>
      frozen_local_rows;         // local expert rows frozen in the trainable expert tensors
  int64_t total_params = 0;      // the model's parameters, every expert counted once
  int64_t trainable_params = 0;  // ... of which train
  bool frozen_whole(const std::string& name) const;
};

// Resolves the config's patterns and frozen experts against `model`, the shard of EP rank
// `ep_rank` (it holds experts [ep_rank * E_local, (ep_rank + 1) * E_local)). Throws
// naming the key when a pattern matches nothing or nothing is left to train.
FreezePlan plan_freezing(const Config& config, const GPTImpl& model, int ep_rank);

// Applies `plan`: frozen parameters lose requires_grad and become frozen optimizer slots (add
// them to `optimizer` first); expert tensors with frozen rows get the gradient hook and the
// optimizer's row restore. Returns the bytes of optimizer state this rank does not allocate.
int64_t apply_freezing(const FreezePlan& plan, GPTImpl& model, AdamW& optimizer, bool fp32_masters);

}  // namespace sy
