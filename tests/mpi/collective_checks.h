// Collective checks shared by the in-process tests (tests/parallel) and the mpirun tests
// (tests/mpi), so that every backend passes exactly the same checks. Each check is called by every
// rank of a communicator, runs the same collectives in the same order on every rank (no early
// return, whatever the results), and returns the number of wrong values this rank saw ("#wrong",
// as nccl-tests). Expected values are independent of the backend: rank-tagged payloads that prove
// where each row came from, and closed forms in the rank.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <random>
#include <vector>

#include <torch/torch.h>

#include "common/error.h"
#include "parallel/communicator.h"
#include "parallel/groups.h"
#include "parallel/inproc_comm.h"

namespace sy::checks {

// Rows that rank `src` sends to rank `dst` in the uneven exchange: some pairs send nothing, the
// last rank sends nothing at all and rank 0 receives nothing at all (for n > 2).
inline int64_t uneven_count(int src, int dst, int n) {
  if (n > 2 && (src == n - 1 || dst == 0)) return 0;
  return (3 * src + 5 * dst + 1) % 4;
}

// Row i of the block from src to dst: [src, dst, i, 100 src + 10 dst + i] as a [2, 2] row.
inline at::Tensor tagged_rows(int src, int dst, int64_t rows, at::ScalarType dtype) {
  at::Tensor i = at::arange(rows, at::kLong);
  at::Tensor t =
      at::stack({at::full_like(i, src), at::full_like(i, dst), i, i + 100 * src + 10 * dst},
                /*dim=*/1);
  return t.view({rows, 2, 2}).to(dtype);
}

inline int64_t count_wrong(const at::Tensor& got, const at::Tensor& expected) {
  if (got.sizes() != expected.sizes()) return std::max<int64_t>(1, expected.numel());
  return got.ne(expected).sum().item<int64_t>();
}

// all_to_all_single with splits counts[src][dst] (send = counts[me][*], recv = counts[*][me]);
// `equal` passes empty split lists instead (counts must then be uniform).
inline int64_t check_all_to_all(Communicator& c, const std::vector<std::vector<int64_t>>& counts,
                                bool equal, at::ScalarType dtype) {
  const int n = c.size(), me = c.rank();
  std::vector<at::Tensor> sent, expected;
  std::vector<int64_t> send(n), recv(n);
  for (int peer = 0; peer < n; ++peer) {
    send[peer] = counts[me][peer];
    recv[peer] = counts[peer][me];
    sent.push_back(tagged_rows(me, peer, send[peer], dtype));
    expected.push_back(tagged_rows(peer, me, recv[peer], dtype));
  }
  at::Tensor input = at::cat(sent), want = at::cat(expected);
  at::Tensor output = at::full(want.sizes(), -1, at::TensorOptions().dtype(dtype));
  c.all_to_all_single(output, input, equal ? std::vector<int64_t>{} : send,
                      equal ? std::vector<int64_t>{} : recv);
  return count_wrong(output, want);
}

inline int64_t check_all_to_all_equal(Communicator& c, int64_t rows_per_peer,
                                      at::ScalarType dtype) {
  std::vector<std::vector<int64_t>> counts(c.size(), std::vector<int64_t>(c.size(), rows_per_peer));
  return check_all_to_all(c, counts, /*equal=*/true, dtype);
}

inline int64_t check_all_to_all_uneven(Communicator& c, at::ScalarType dtype) {
  const int n = c.size();
  std::vector<std::vector<int64_t>> counts(n, std::vector<int64_t>(n));
  for (int s = 0; s < n; ++s) {
    for (int d = 0; d < n; ++d) counts[s][d] = uneven_count(s, d, n);
  }
  return check_all_to_all(c, counts, /*equal=*/false, dtype);
}

// An exchange with counts drawn from `seed` (the same on every rank), 0..max_rows per pair.
inline int64_t check_all_to_all_random(Communicator& c, uint32_t seed, int64_t max_rows,
                                       at::ScalarType dtype) {
  const int n = c.size();
  std::mt19937 rng(seed);
  std::vector<std::vector<int64_t>> counts(n, std::vector<int64_t>(n));
  for (int s = 0; s < n; ++s) {
    for (int d = 0; d < n; ++d) counts[s][d] = static_cast<int64_t>(rng() % (max_rows + 1));
  }
  return check_all_to_all(c, counts, /*equal=*/false, dtype);
}

// Gathers `t` ([k]) from every rank and counts the ranks whose bits differ from rank 0's.
inline int64_t count_bitwise_mismatch(Communicator& c, const at::Tensor& t) {
  at::Tensor bits = t.element_size() == 8 ? t.view(at::kLong) : t.view(at::kInt);
  at::Tensor all = at::empty({c.size(), t.numel()}, bits.options());
  c.all_gather(all, bits.reshape({1, -1}));
  return all.ne(all[0]).any(/*dim=*/1).sum().item<int64_t>();
}

// Sum, max and min for float64/float32/int64/int32 against closed forms; float sums must also be
// bitwise identical on every rank, and with `exact_rank_order` equal to the sum in rank order.
inline int64_t check_all_reduce(Communicator& c, bool exact_rank_order) {
  const int n = c.size(), r = c.rank();
  const int64_t k = 5;
  int64_t wrong = 0;
  at::Tensor j = at::arange(k, at::kDouble);
  for (at::ScalarType dtype : {at::kDouble, at::kFloat}) {
    auto value = [&](int rank) { return ((rank + 1) * 0.1 + j * 1e-3).to(dtype); };
    at::Tensor sum = value(r), mx = value(r), mn = value(r);
    c.all_reduce(sum, ReduceOp::kSum);
    c.all_reduce(mx, ReduceOp::kMax);
    c.all_reduce(mn, ReduceOp::kMin);
    at::Tensor in_order = value(0);
    for (int q = 1; q < n; ++q) in_order = in_order + value(q);
    const at::Tensor closed = (0.1 * n * (n + 1) / 2 + n * j * 1e-3).to(dtype);
    wrong += (sum - closed).abs().gt(1e-5 * n).sum().item<int64_t>();
    if (exact_rank_order) wrong += count_wrong(sum, in_order);
    wrong += count_wrong(mx, value(n - 1)) + count_wrong(mn, value(0));
    wrong += count_bitwise_mismatch(c, sum);
  }
  for (at::ScalarType dtype : {at::kLong, at::kInt}) {
    at::Tensor ji = j.to(at::kLong);
    auto value = [&](int rank) { return (ji * 7 - 3 * rank).to(dtype); };
    at::Tensor sum = value(r), mx = value(r), mn = value(r);
    c.all_reduce(sum, ReduceOp::kSum);
    c.all_reduce(mx, ReduceOp::kMax);
    c.all_reduce(mn, ReduceOp::kMin);
    wrong += count_wrong(sum, (ji * 7 * n - 3 * n * (n - 1) / 2).to(dtype));
    wrong += count_wrong(mx, value(0)) + count_wrong(mn, value(n - 1));
  }
  at::Tensor scalar = at::full({}, r + 1.0, at::kDouble);  // 0-d tensors reduce too
  c.all_reduce(scalar, ReduceOp::kSum);
  wrong += scalar.item<double>() != n * (n + 1) / 2.0;
  return wrong;
}

// Rank q contributes rows (q, i, 10 q + i); 0-row inputs gather to 0-row outputs.
inline int64_t check_all_gather(Communicator& c) {
  const int n = c.size(), r = c.rank();
  int64_t wrong = 0;
  for (at::ScalarType dtype : {at::kLong, at::kFloat}) {
    auto rows_of = [&](int q) {
      at::Tensor i = at::arange(3, at::kLong);
      return at::stack({at::full_like(i, q), i, i + 10 * q}, /*dim=*/1).to(dtype);
    };
    at::Tensor out = at::full({3 * n, 3}, -1, at::TensorOptions().dtype(dtype));
    c.all_gather(out, rows_of(r));
    std::vector<at::Tensor> want;
    for (int q = 0; q < n; ++q) want.push_back(rows_of(q));
    wrong += count_wrong(out, at::cat(want));
  }
  at::Tensor empty_out = at::empty({0, 4}, at::kFloat);
  c.all_gather(empty_out, at::empty({0, 4}, at::kFloat));
  wrong += empty_out.size(0) != 0;
  return wrong;
}

// Every rank takes a turn as the root.
inline int64_t check_broadcast(Communicator& c) {
  int64_t wrong = 0;
  for (int root = 0; root < c.size(); ++root) {
    at::Tensor t = at::arange(6, at::kDouble).view({2, 3}) + 10.0 * c.rank();
    c.broadcast(t, root);
    wrong += count_wrong(t, at::arange(6, at::kDouble).view({2, 3}) + 10.0 * root);
    at::Tensor s = at::full({}, c.rank(), at::kLong);
    c.broadcast(s, root);
    wrong += s.item<int64_t>() != root;
  }
  return wrong;
}

// world ranks of a communicator's members, in its rank order, via all_gather.
inline std::vector<int64_t> gather_ints(Communicator& c, int64_t value) {
  at::Tensor out = at::empty({c.size()}, at::kLong);
  c.all_gather(out, at::full({1}, value, at::kLong));
  return std::vector<int64_t>(out.data_ptr<int64_t>(), out.data_ptr<int64_t>() + c.size());
}

// split(color = rank % 2, key = -rank): members of a color ordered by descending world rank;
// collectives inside; then a nested split into one group per rank.
inline int64_t check_split(Communicator& c) {
  const int n = c.size(), r = c.rank();
  std::vector<int64_t> members;  // expected, in new-rank order
  for (int q = n - 1; q >= 0; --q) {
    if (q % 2 == r % 2) members.push_back(q);
  }
  std::shared_ptr<Communicator> sub = c.split(/*color=*/r % 2, /*key=*/-r);
  int64_t wrong = 0;
  wrong += sub->size() != static_cast<int>(members.size());
  const auto pos = std::find(members.begin(), members.end(), r) - members.begin();
  wrong += sub->rank() != pos;
  wrong += gather_ints(*sub, r) != members;
  at::Tensor sum = at::full({1}, r, at::kLong);
  sub->all_reduce(sum, ReduceOp::kSum);
  int64_t want = 0;
  for (int64_t m : members) want += m;
  wrong += sum.item<int64_t>() != want;
  wrong += check_all_to_all_uneven(*sub, at::kLong);
  sub->barrier();
  std::shared_ptr<Communicator> single = sub->split(/*color=*/sub->rank(), /*key=*/0);
  wrong += single->size() != 1 || single->rank() != 0;
  wrong += gather_ints(*single, r) != std::vector<int64_t>{r};
  return wrong;
}

// make_groups(world, ep_size): ranks and sizes per Note [Groups], and the members of each group
// (gathered world ranks) and a reduction inside each.
inline int64_t check_groups(const CommPtr& world, int64_t ep_size) {
  const int n = world->size(), r = world->rank();
  const int ep = static_cast<int>(ep_size == 0 ? n : ep_size);
  const ParallelGroups g = make_groups(world, ep_size);
  int64_t wrong = 0;
  wrong += g.world_rank != r || g.world_size != n || g.world.get() != world.get();
  wrong += g.ep_size != ep || g.ep_rank != r % ep || g.ep->size() != ep || g.ep->rank() != r % ep;
  wrong += g.dp_size != n / ep || g.dp_rank != r / ep || g.dp->size() != n / ep ||
           g.dp->rank() != r / ep;
  std::vector<int64_t> ep_members, dp_members;
  for (int i = 0; i < ep; ++i) ep_members.push_back((r / ep) * ep + i);
  for (int i = 0; i < n / ep; ++i) dp_members.push_back(i * ep + r % ep);
  wrong += gather_ints(*g.ep, r) != ep_members;
  wrong += gather_ints(*g.dp, r) != dp_members;
  at::Tensor s = at::full({1}, r, at::kLong);
  g.ep->all_reduce(s, ReduceOp::kSum);
  const int first = (r / ep) * ep;
  wrong += s.item<int64_t>() != static_cast<int64_t>(ep) * first + ep * (ep - 1) / 2;
  wrong += check_all_to_all_uneven(*g.ep, at::kFloat);
  return wrong;
}

// run_inproc_ranks(n, body), but a hang ends the process (hung threads cannot be joined, and a
// test binary that never returns is worse than one that fails): the ctest log shows the message.
inline void run_ranks(int n, const std::function<void(CommPtr)>& body, double seconds = 60) {
  std::future<void> done = std::async(std::launch::async, [&] { run_inproc_ranks(n, body); });
  if (done.wait_for(std::chrono::duration<double>(seconds)) != std::future_status::ready) {
    std::fprintf(stderr, "FATAL: run_inproc_ranks(%d) did not return within %.0f s (hang)\n", n,
                 seconds);
    std::abort();
  }
  done.get();
}

}  // namespace sy::checks
