// The two-level all-to-all (Note [Two-level all-to-all] in hierarchical_comm.h).
#include "parallel/hierarchical_comm.h"

#include <vector>

#include <ATen/ATen.h>

#include "common/error.h"
#include "parallel/comm_util.h"
#include "parallel/watchdog.h"

namespace sy {
namespace {

// Rows [offsets[b], offsets[b] + sizes[b]) of `t` for the blocks b in `order`, concatenated (one
// copy on t's device; no per-row index built on the host).
at::Tensor gather_blocks(const at::Tensor& t, const std::vector<int64_t>& offsets,
                         const std::vector<int64_t>& sizes, const std::vector<int64_t>& order) {
  std::vector<at::Tensor> blocks;
  blocks.reserve(order.size());
  for (const int64_t b : order) {
    if (sizes[b] > 0) blocks.push_back(t.narrow(0, offsets[b], sizes[b]));
  }
  if (blocks.empty()) return t.narrow(0, 0, 0);
  return at::cat(blocks);
}

class HierarchicalCommunicator final : public Communicator {
 public:
  HierarchicalCommunicator(CommPtr flat, int ranks_per_node, const std::string& name)
      : Communicator(flat->rank(), flat->size(), flat->backend(), barrier_device_of(*flat)),
        flat_(std::move(flat)),
        local_size_(ranks_per_node),
        nodes_(size() / ranks_per_node),
        node_(rank() / ranks_per_node),
        local_(rank() % ranks_per_node) {
    // Both splits are collective over flat, on every rank in the same order.
    intra_ = watched_split(flat_, /*color=*/node_, /*key=*/local_, name + "/node");
    cross_ = watched_split(flat_, /*color=*/local_, /*key=*/node_, name + "/cross");
    SY_CHECK(intra_->size() == local_size_ && intra_->rank() == local_ &&
                 cross_->size() == nodes_ && cross_->rank() == node_,
             "two-level all-to-all: rank ", rank(), " got node group rank ", intra_->rank(), " of ",
             intra_->size(), " and cross-node rank ", cross_->rank(), " of ", cross_->size(),
             ", expected ", local_, " of ", local_size_, " and ", node_, " of ", nodes_);
    groups_ = TwoLevelGroups{intra_, cross_, nodes_, local_size_};
  }

  const TwoLevelGroups& groups() const { return groups_; }

  void abort(const std::string& reason) override { flat_->abort(reason); }

 protected:
  void do_all_to_all(at::Tensor& output, const at::Tensor& input,
                     const std::vector<int64_t>& send_splits,
                     const std::vector<int64_t>& recv_splits) override {
    const int L = local_size_, W = size();
    // Every local rank's send splits: S[l][d] rows from local rank l to world rank d.
    const at::Tensor mine =
        at::tensor(send_splits, at::TensorOptions().dtype(at::kLong)).view({1, W});
    at::Tensor all = at::empty({L, W}, mine.options().device(barrier_device_of(*intra_)));
    intra_->all_gather(all, mine.to(all.device()));
    all = all.to(at::kCPU).contiguous();
    exchange(output, input, send_splits, recv_splits, all.data_ptr<int64_t>());
  }

  // Equal splits on every rank: every local rank's split list is this rank's, so neither the
  // all-gather nor its host read (a wait for the device on NCCL) is needed.
  void do_all_to_all_equal(at::Tensor& output, const at::Tensor& input,
                           const std::vector<int64_t>& send_splits,
                           const std::vector<int64_t>& recv_splits) override {
    std::vector<int64_t> all;
    for (int l = 0; l < local_size_; ++l)
      all.insert(all.end(), send_splits.begin(), send_splits.end());
    exchange(output, input, send_splits, recv_splits, all.data());
  }

  void do_all_reduce(at::Tensor& tensor, ReduceOp op) override { flat_->all_reduce(tensor, op); }
  void do_all_gather(at::Tensor& output, const at::Tensor& input) override {
    flat_->all_gather(output, input);
  }
  void do_broadcast(at::Tensor& tensor, int root) override { flat_->broadcast(tensor, root); }
  std::shared_ptr<Communicator> do_split(int color, int key) override {
    return flat_->split(color, key);
  }

 private:
  // The two levels, given S: [L, W] row-major, S[l * W + d] rows from local rank l of this node
  // to world rank d.
  void exchange(at::Tensor& output, const at::Tensor& input,
                const std::vector<int64_t>& send_splits, const std::vector<int64_t>& recv_splits,
                const int64_t* S) {
    const int L = local_size_, N = nodes_, W = size();
    auto dest = [L](int n, int l) { return n * L + l; };

    // Step 1, within the node: to local rank l' the blocks for (n', l'), n' ascending.
    std::vector<int64_t> order1, send1(L, 0), recv1(L, 0);
    for (int lp = 0; lp < L; ++lp) {
      for (int np = 0; np < N; ++np) {
        order1.push_back(dest(np, lp));
        send1[lp] += send_splits[dest(np, lp)];
      }
    }
    // From local rank l: its blocks for (n', my local index), n' ascending.
    for (int l = 0; l < L; ++l) {
      for (int np = 0; np < N; ++np) recv1[l] += S[l * W + dest(np, local_)];
    }
    const at::Tensor packed =
        gather_blocks(input, detail::offsets_of(send_splits), send_splits, order1);
    int64_t mid_rows = 0;
    for (const int64_t r : recv1) mid_rows += r;
    std::vector<int64_t> out_shape = input.sizes().vec();
    out_shape[0] = mid_rows;
    at::Tensor mid = at::empty(out_shape, input.options());
    intra_->all_to_all_single(mid, packed, send1, recv1);

    // mid holds, for l = 0..L-1, blocks (l -> (n', me)) for n' = 0..N-1. Step 2 sends node n'
    // the blocks of every l for (n', my local index): reorder to n'-major.
    std::vector<int64_t> mid_sizes, mid_order, send2(N, 0);
    for (int l = 0; l < L; ++l) {
      for (int np = 0; np < N; ++np) mid_sizes.push_back(S[l * W + dest(np, local_)]);
    }
    for (int np = 0; np < N; ++np) {
      for (int l = 0; l < L; ++l) {
        mid_order.push_back(static_cast<int64_t>(l) * N + np);
        send2[np] += mid_sizes[static_cast<size_t>(l) * N + np];
      }
    }
    const at::Tensor regrouped =
        gather_blocks(mid, detail::offsets_of(mid_sizes), mid_sizes, mid_order);
    // From node n'': the blocks of its L local ranks for me, which is source-rank order.
    std::vector<int64_t> recv2(N, 0);
    for (int np = 0; np < N; ++np) {
      for (int l = 0; l < L; ++l) recv2[np] += recv_splits[dest(np, l)];
    }
    cross_->all_to_all_single(output, regrouped, send2, recv2);
  }

  CommPtr flat_, intra_, cross_;
  int local_size_, nodes_, node_, local_;
  TwoLevelGroups groups_;
};

}  // namespace

const TwoLevelGroups* two_level_groups(const Communicator& c) {
  const auto* h = dynamic_cast<const HierarchicalCommunicator*>(&c);
  return h == nullptr ? nullptr : &h->groups();
}

CommPtr make_hierarchical(const CommPtr& flat, int ranks_per_node, const std::string& name) {
  SY_CHECK(flat != nullptr, "make_hierarchical: no communicator");
  SY_CHECK(ranks_per_node >= 1 && flat->size() % ranks_per_node == 0, "parallel.ranks_per_node (",
           ranks_per_node, ") must divide the ", name, " group's size (", flat->size(),
           ") for parallel.a2a hierarchical");
  return std::make_shared<HierarchicalCommunicator>(flat, ranks_per_node, name);
}

}  // namespace sy
