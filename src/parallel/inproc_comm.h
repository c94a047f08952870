// In-process ranks: N threads of one process, each holding a communicator of the same world, meet
// at a shared rendezvous and compute real results (Note [Communicators]). This is how multi-rank
// code runs under plain ctest and with `switchyard train --ranks N`, without MPI.
//
// Semantics match the MPI and NCCL backends, with two guarantees that make tests exact:
//   - all_reduce reduces in rank order 0..n-1, so every rank gets bitwise identical values and
//     repeated runs are bitwise reproducible;
//   - every rank's arguments are checked against every other rank's (splits, shapes, dtypes, the
//     collective called), and all ranks throw the same error on a mismatch.
#pragma once

#include <functional>
#include <vector>

#include "parallel/communicator.h"

namespace sy {

// Runs `body` on n threads, rank r getting the world communicator of rank r (and
// sy::set_log_rank(r, n) for its log lines). Returns when every rank has returned.
//
// If a rank throws, the world is aborted: ranks blocked in a collective (or entering one later)
// are woken and throw as well. All threads are joined, then the first original exception is
// rethrown: for n > 1 as a sy::Error whose message starts with "rank r: " (a sy::Error keeps its
// message and location; LibTorch and std exceptions become a sy::Error with their text); for
// n == 1 unchanged. A rank that returns while peers wait for it in a collective is reported as
// an error ("collectives out of step") instead of a hang.
void run_inproc_ranks(int n, const std::function<void(CommPtr world)>& body);

// The n communicators of one in-process world, for callers that manage their own threads.
// communicators[r] must only be used by one thread at a time, and collectives must be called in
// the same order on every rank. abort() on any of them releases all of them.
std::vector<CommPtr> make_inproc_communicators(int n);

}  // namespace sy
