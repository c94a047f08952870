// The argument checks of Communicator's public collectives (communicator.cpp), made once for every
// backend so that all of them reject the same mistakes with the same sentences, and helpers the
// backends share (rows, offsets; the in-process backend's checks between ranks). Internal to
// src/parallel.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace sy::detail {

// The split list for `rows` rows over `size` ranks: `splits` itself, checked (one entry per rank,
// none negative, summing to `rows`), or equal splits when it is empty (rows divisible by size).
// `what` names the list in errors, e.g. "all_to_all_single: send_splits".
std::vector<int64_t> resolve_splits(const std::vector<int64_t>& splits, int64_t rows, int size,
                                    const std::string& what);

// Throws unless rank `rank` sends itself as many rows as it expects from itself: the one pair of an
// all-to-all's splits that a rank can check without its peers. For backends that cannot compare
// ranks' splits (self, MPI, NCCL); the in-process backend checks every pair between ranks instead,
// so that every rank throws the same error.
void check_self_splits(const std::vector<int64_t>& send, const std::vector<int64_t>& recv,
                       int rank);

// Throws unless `t` is defined, contiguous and has at least `min_dim` dimensions.
void check_tensor(const at::Tensor& t, const std::string& what, int64_t min_dim = 0);

// Throws unless `a` and `b` have the same dtype and the same shape past dim 0 (one row).
void check_same_rows(const at::Tensor& a, const at::Tensor& b, const std::string& what);

// Bytes of one dim-0 row of `t` (the whole tensor for a 0-d tensor).
int64_t row_bytes(const at::Tensor& t);

// "[4, 3]"
std::string shape_string(const at::Tensor& t);

// Exclusive prefix sums: offsets[i] = splits[0] + ... + splits[i-1].
std::vector<int64_t> offsets_of(const std::vector<int64_t>& splits);

}  // namespace sy::detail
