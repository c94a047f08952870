// Allocation failures reported as one line naming what the run was doing and the config keys that
// size it, never as bare allocator text (std::bad_alloc, "DefaultCPUAllocator: can't allocate
// memory", "CUDA out of memory").
#pragma once

#include <exception>
#include <new>
#include <string>

#include <c10/util/Exception.h>

#include "common/error.h"

namespace sy {

// True when `text` is an allocator's complaint (LibTorch's CPU or CUDA allocator).
inline bool is_out_of_memory_text(const std::string& text) {
  return text.find("out of memory") != std::string::npos ||
         text.find("can't allocate") != std::string::npos ||
         text.find("not enough memory") != std::string::npos;
}

// The error for an allocation failure during `phase` ("building the model"), whose sizes come
// from `keys`.
[[noreturn]] inline void throw_out_of_memory(const std::string& phase, const std::string& keys) {
  SY_THROW("out of memory while ", phase, ": its size comes from ", keys,
           "; lower them or run on more ranks (docs/config.md#memory-estimate)");
}

// Runs `work`, turning an allocation failure into throw_out_of_memory(phase, keys); any other
// error passes unchanged.
template <typename F> auto in_phase(const std::string& phase, const std::string& keys, F&& work) {
  try {
    return work();
  } catch (const std::bad_alloc&) {
    throw_out_of_memory(phase, keys);
  } catch (const c10::Error& e) {
    if (!is_out_of_memory_text(e.what_without_backtrace())) throw;
    throw_out_of_memory(phase, keys);
  }
}

}  // namespace sy
