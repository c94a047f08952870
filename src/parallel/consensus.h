// Turning one rank's failure into the same failure on every rank.
//
// Work such as reading a checkpoint shard can fail on some ranks and not others; if the failing
// rank threw alone, its peers would wait in their next collective for a rank that is gone.
// agree_or_throw() is a collective: every rank passes its own error ("" when it succeeded), and
// if any rank failed, every rank throws the same sy::Error, the message of the lowest failing
// rank, prefixed with that rank.
#pragma once

#include <string>

#include <c10/core/Device.h>

#include "parallel/communicator.h"

namespace sy {

// Collective over `comm`; `device` is where the communicator takes tensors (CUDA for NCCL).
void agree_or_throw(Communicator& comm, const std::string& local_error, const c10::Device& device);

// Collective over `comm`: `root`'s `text` on every rank (the others' argument is ignored), one
// character per int64 so that every backend carries it.
std::string broadcast_text(Communicator& comm, const std::string& text, int root,
                           const c10::Device& device);

// Runs `work` and returns its sy::Error / std::exception message, or "" when it did not throw.
template <typename F> std::string error_of(F&& work) {
  try {
    work();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace sy
