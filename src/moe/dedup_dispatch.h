// The dispatch all-to-all over a two-level EP group with each token sent once per destination
// node (moe.dedup_dispatch; Note [Node-deduplicated dispatch]).
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "parallel/hierarchical_comm.h"

namespace sy {

// Note [Node-deduplicated dispatch]: in capacity mode a source rank's dispatch buffer holds, for
// every expert, C slots: copies of the rows of the tokens routed there, and zero rows where a slot
// is empty. A token with k choices is in k slots, and with group-limited routing
// (moe.route_groups = nodes) its choices fall on at most moe.route_group_limit nodes. The flat and
// the two-level exchanges move every slot, so the bytes across nodes are the whole buffer's.
// This exchange moves, across nodes, each (token, destination node) pair once and no empty slot,
// as DeepSeek-V3's node-limited dispatch does:
//   1. per destination node, the distinct tokens of the rows bound there (sorted by token), and
//      for every row the index of its token in that list (-1: empty slot);
//   2. across nodes, among the ranks of one local index: the distinct rows (variable splits, after
//      one small exchange of their counts and one host read) and the index lists (equal splits);
//   3. on each node, every row of the destination ranks rebuilt from the received distinct rows
//      (zeros for empty slots) and sent within the node to its destination rank, then put in
//      source-rank order.
// The result is the flat exchange's, bitwise (rows are copied, never summed; zero rows are
// zeros). Backward runs the same steps in reverse through autograd: the gradients of a token's
// copies bound for one node are summed on that node and sent back once, so the input's gradient
// equals the flat exchange's up to the order of those sums. The combine exchange is unchanged
// (one row per slot each way). Tested against the flat exchange on in-process ranks
// (tests/moe/dedup_dispatch_test.cpp) and by `switchyard verify`.

struct DedupStats {
  int64_t rows_across = 0;       // rows this rank sent to other nodes (distinct tokens)
  int64_t flat_rows_across = 0;  // rows the flat exchange would have sent to other nodes
};

// rows: [W * B, H], B rows for each of the W = nodes x ranks_per_node ranks of the group, in rank
// order (equal splits); row_token: [W * B] int64 on rows' device, the token whose values each row
// holds (rows of one token are equal), or -1 for a row of zeros; tokens are in [0, num_tokens).
// Collective over both levels of `groups`. Returns all_to_all(rows, group, {}, {}).
at::Tensor dedup_dispatch(const at::Tensor& rows, const at::Tensor& row_token, int64_t num_tokens,
                          const TwoLevelGroups& groups, DedupStats* stats = nullptr);

}  // namespace sy
