// The two-level all-to-all for jobs across nodes (parallel.a2a: hierarchical).
//
// Note [Two-level all-to-all]: a flat all-to-all over W = N nodes x L ranks per node sends W - L
// messages per rank across nodes, each 1/W of the rank's rows; at scale these small messages,
// not the bytes, bound the exchange. The two-level exchange (as Tutel's 2D all-to-all) groups
// them. Rank (n, l) (node n, local rank l; world rank n * L + l):
//   1. within the node: (n, l) sends local rank l' its rows for every rank (n', l'), n' = 0..N-1
//      (one message per local peer, over NVLink); (n, l') then holds, from each local rank l,
//      the rows for (n', l') of every node n';
//   2. across nodes, among the ranks of local index l': (n, l') sends node n' the rows of all L
//      local sources for (n', l'): one message per node pair and local index, L times larger.
// The rows arrive in the order (source node, source local rank), which is source-rank order: the
// output is the flat all-to-all's, bitwise (rows are moved, never added). Between the steps the
// rows are reordered once (a gather on the device). Step 1 needs every local rank's send splits,
// so each all-to-all with variable splits (dropless) first all-gathers the node's split lists (a
// few integers, within the node, and one host read of them); with equal splits (capacity mode:
// empty split lists on every rank) every peer's list is known and neither is needed. The bytes
// across nodes are the flat exchange's; what changes is their message count and size
// (docs/parallel.md has the cost model).
#pragma once

#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace sy {

// `flat` with its all-to-alls done in two levels, ranks_per_node consecutive ranks forming a
// node (group ranks [n * L, (n + 1) * L)); the other collectives are flat's own. Collective over
// flat (two splits, named "<name>/node" and "<name>/cross" when flat is watched). Throws unless
// ranks_per_node >= 1 divides flat's size.
CommPtr make_hierarchical(const CommPtr& flat, int ranks_per_node, const std::string& name);

// The two levels of a communicator that make_hierarchical made, for exchanges that need them
// apart (the node-deduplicated dispatch, moe/dedup_dispatch.h).
struct TwoLevelGroups {
  CommPtr intra;  // this rank's node: L ranks, ordered by local index
  CommPtr cross;  // the ranks of this local index: N ranks, one per node, ordered by node
  int nodes = 0;
  int ranks_per_node = 0;
};
// nullptr when `c` is not a two-level communicator.
const TwoLevelGroups* two_level_groups(const Communicator& c);

}  // namespace sy
