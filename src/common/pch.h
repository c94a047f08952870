// Precompiled header for every LibTorch translation unit (see CMakeLists.txt): parsing
// <torch/torch.h> dominates compile time, and sharing one parse roughly halves a full build.
#pragma once

#include <torch/torch.h>
