// `switchyard params --config F`: the model's parameters as the trainer names them (the names
// that train.init_from maps and that freezing patterns will match), with shapes, element counts,
// and for expert tensors which EP rank holds which experts under parallel.ep_size.
#pragma once

#include <string>

#include "config/config.h"

namespace sy {

// The table for `config` on `world_size` ranks (parallel.ep_size 0: all of them), built on the
// CPU from the config and its corpus's vocabulary; nothing is trained.
std::string describe_parameters(const Config& config, int world_size);

}  // namespace sy
