// dedup_dispatch (Note [Node-deduplicated dispatch] in dedup_dispatch.h).
#include "moe/dedup_dispatch.h"

#include <tuple>
#include <vector>

#include <torch/torch.h>

#include "common/error.h"
#include "moe/alltoall.h"

namespace sy {

at::Tensor dedup_dispatch(const at::Tensor& rows, const at::Tensor& row_token, int64_t num_tokens,
                          const TwoLevelGroups& g, DedupStats* stats) {
  const int64_t N = g.nodes, L = g.ranks_per_node, W = N * L;
  SY_CHECK(rows.dim() == 2 && rows.size(0) % W == 0,
           "dedup_dispatch: expected [W * B, H] rows for W = ", W, " ranks, got ", rows.sizes());
  const int64_t R = rows.size(0), B = R / W, H = rows.size(1);
  SY_CHECK(row_token.dim() == 1 && row_token.size(0) == R, "dedup_dispatch: row_token has ",
           row_token.sizes(), ", expected [", R, "]");
  const int64_t S = std::max<int64_t>(num_tokens, 1);
  const auto lo = at::TensorOptions().dtype(at::kLong).device(rows.device());

  // 1. Each row's key (destination node, token), empty rows last; the distinct keys in order.
  const at::Tensor node_of_row = at::arange(N, lo).repeat_interleave(L * B);
  const at::Tensor valid = row_token.ge(0);
  const at::Tensor key = at::where(valid, node_of_row * S + row_token, at::full({}, N * S, lo));
  at::Tensor sorted, perm;
  std::tie(sorted, perm) = key.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor is_start =
      R == 0 ? at::zeros({0}, lo.dtype(at::kBool))
             : at::cat({at::ones({1}, lo.dtype(at::kBool)),
                        sorted.narrow(0, 1, R - 1).ne(sorted.narrow(0, 0, R - 1))});
  const at::Tensor group_sorted = is_start.to(at::kLong).cumsum(0) - 1;
  const at::Tensor group_of_row = at::empty({R}, lo).index_copy_(0, perm, group_sorted);
  // A row holding each key's values, by key: the first of its sorted run (the other positions
  // write a spare entry R). The first `distinct` entries are the non-empty keys, in order.
  const at::Tensor first_row =
      at::empty({R + 1}, lo)
          .index_copy_(0, at::where(is_start, group_sorted, at::full({}, R, lo)), perm);
  // Distinct tokens per destination node: the run starts counted by node (bin N: the empty
  // rows' key). Counted on the device, so the host reads once, in step 2.
  const at::Tensor counts =
      at::bincount(at::clamp_max(at::div(sorted, S, /*rounding_mode=*/"floor"), N),
                   is_start.to(at::kDouble), N + 1)
          .narrow(0, 0, N)
          .to(at::kLong);
  const at::Tensor node_start = counts.cumsum(0) - counts;
  // Each row's index in its node's list of distinct tokens, -1 for an empty row.
  const at::Tensor meta = at::where(valid, group_of_row - node_start.index_select(0, node_of_row),
                                    at::full({}, -1, lo));

  // 2. Across nodes: the counts (to size the exchange), the distinct rows, the index lists.
  at::Tensor recv_counts = at::empty_like(counts);
  g.cross->all_to_all_single(recv_counts, counts, {}, {});
  const at::Tensor both = at::cat({counts, recv_counts}).to(at::kCPU);
  const int64_t* c = both.data_ptr<int64_t>();
  const std::vector<int64_t> send(c, c + N), recv(c + N, c + 2 * N);
  int64_t distinct = 0, received = 0;
  for (int64_t n = 0; n < N; ++n) {
    distinct += send[n];
    received += recv[n];
  }
  const at::Tensor payload = all_to_all(rows.index_select(0, first_row.narrow(0, 0, distinct)),
                                        *g.cross, send, recv);  // source-node-major
  at::Tensor recv_meta = at::empty({N * L * B}, lo);
  g.cross->all_to_all_single(recv_meta, meta, {}, {});

  // 3. On this node: the rows for each local destination l', from every source node m, rebuilt
  // from the distinct rows (index `received`: an appended zero row), sent within the node.
  std::vector<int64_t> recv_start(N, 0);
  for (int64_t m = 1; m < N; ++m) recv_start[m] = recv_start[m - 1] + recv[m - 1];
  const at::Tensor offset = at::tensor(recv_start, at::TensorOptions().dtype(at::kLong))
                                .to(rows.device())
                                .view({N, 1, 1});
  const at::Tensor m_view = recv_meta.view({N, L, B});
  const at::Tensor index =
      at::where(m_view.ge(0), m_view + offset, at::full({}, received, lo))  // [m, l', i]
          .transpose(0, 1)                                                  // [l', m, i]
          .reshape({-1});
  const at::Tensor with_zero = at::cat({payload, at::zeros({1, H}, payload.options())});
  const at::Tensor expanded = with_zero.index_select(0, index);  // [L * N * B, H]
  const at::Tensor arrived = all_to_all(expanded, *g.intra, {}, {});
  // From local source l: its N * B rows (m, i) for source rank m * L + l: source-rank order.
  const at::Tensor out = arrived.view({L, N, B, H}).transpose(0, 1).reshape({R, H});

  if (stats != nullptr) {
    const int64_t node = g.cross->rank();
    stats->rows_across = distinct - send[node];
    stats->flat_rows_across = (N - 1) * L * B;
  }
  return out;
}

}  // namespace sy
