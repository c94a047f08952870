// The checks of the public collectives (communicator.h) and their helpers (comm_util.h), barrier(),
// and the self communicator (a world of one, used by single-process runs and as the reference side
// of the EP-invariance checks).
#include "parallel/communicator.h"

#include <numeric>
#include <sstream>
#include <utility>

#include <torch/torch.h>

#include "common/error.h"
#include "parallel/comm_util.h"

namespace sy {
namespace detail {

std::vector<int64_t> resolve_splits(const std::vector<int64_t>& splits, int64_t rows, int size,
                                    const std::string& what) {
  if (splits.empty()) {
    SY_CHECK(rows % size == 0, what, " is empty (equal splits), but ", rows,
             " rows are not divisible by ", size, " ranks");
    return std::vector<int64_t>(static_cast<size_t>(size), rows / size);
  }
  SY_CHECK(static_cast<int64_t>(splits.size()) == size, what, " has ", splits.size(),
           " entries, but the communicator has ", size, " ranks");
  int64_t total = 0;
  for (size_t r = 0; r < splits.size(); ++r) {
    SY_CHECK(splits[r] >= 0, what, "[", r, "] is negative (", splits[r], ")");
    total += splits[r];
  }
  SY_CHECK(total == rows, what, " sum to ", total, ", but the tensor has ", rows, " rows");
  return splits;
}

void check_self_splits(const std::vector<int64_t>& send, const std::vector<int64_t>& recv,
                       int rank) {
  SY_CHECK(send[rank] == recv[rank], "all_to_all_single: rank ", rank, " sends itself ", send[rank],
           " rows but expects ", recv[rank], " from itself");
}

void check_tensor(const at::Tensor& t, const std::string& what, int64_t min_dim) {
  SY_CHECK(t.defined(), what, " is an undefined tensor");
  SY_CHECK(t.is_contiguous(), what, " must be contiguous (shape ", shape_string(t), ")");
  SY_CHECK(t.dim() >= min_dim, what, " must have at least ", min_dim, " dimension(s), got shape ",
           shape_string(t));
}

void check_same_rows(const at::Tensor& a, const at::Tensor& b, const std::string& what) {
  SY_CHECK(a.scalar_type() == b.scalar_type(), what, ": dtypes differ (", a.scalar_type(), " vs ",
           b.scalar_type(), ")");
  const bool same = a.dim() == b.dim() && a.dim() >= 1 && a.sizes().slice(1) == b.sizes().slice(1);
  SY_CHECK(same, what, ": row shapes differ (", shape_string(a), " vs ", shape_string(b),
           "; all dimensions but the first must match)");
}

int64_t row_bytes(const at::Tensor& t) {
  int64_t n = 1;
  for (int64_t d = 1; d < t.dim(); ++d) n *= t.size(d);
  return n * static_cast<int64_t>(t.element_size());
}

std::string shape_string(const at::Tensor& t) {
  if (!t.defined()) return "undefined";
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

std::vector<int64_t> offsets_of(const std::vector<int64_t>& splits) {
  std::vector<int64_t> offsets(splits.size(), 0);
  for (size_t i = 1; i < splits.size(); ++i) offsets[i] = offsets[i - 1] + splits[i - 1];
  return offsets;
}

}  // namespace detail

Communicator::Communicator(int rank, int size, std::string backend, c10::Device barrier_device)
    : rank_(rank), size_(size), backend_(std::move(backend)), barrier_device_(barrier_device) {
  SY_CHECK(size_ >= 1 && rank_ >= 0 && rank_ < size_, "communicator (", backend_, "): rank ", rank_,
           " of a world of ", size_);
}

void Communicator::all_to_all_single(at::Tensor& output, const at::Tensor& input,
                                     const std::vector<int64_t>& send_splits,
                                     const std::vector<int64_t>& recv_splits) {
  detail::check_tensor(input, "all_to_all_single: input", 1);
  detail::check_tensor(output, "all_to_all_single: output", 1);
  detail::check_same_rows(input, output, "all_to_all_single: input and output");
  SY_CHECK(input.numel() == 0 || output.numel() == 0 || !output.is_same(input),
           "all_to_all_single: output must not be the input tensor");
  const std::vector<int64_t> send =
      detail::resolve_splits(send_splits, input.size(0), size_, "all_to_all_single: send_splits");
  const std::vector<int64_t> recv =
      detail::resolve_splits(recv_splits, output.size(0), size_, "all_to_all_single: recv_splits");
  if (send_splits.empty() && recv_splits.empty()) {
    do_all_to_all_equal(output, input, send, recv);
  } else {
    do_all_to_all(output, input, send, recv);
  }
}

void Communicator::all_reduce(at::Tensor& tensor, ReduceOp op) {
  detail::check_tensor(tensor, "all_reduce: tensor");
  do_all_reduce(tensor, op);
}

void Communicator::all_gather(at::Tensor& output, const at::Tensor& input) {
  detail::check_tensor(input, "all_gather: input", 1);
  detail::check_tensor(output, "all_gather: output", 1);
  detail::check_same_rows(input, output, "all_gather: input and output");
  SY_CHECK(output.size(0) == size_ * input.size(0), "all_gather: output has ", output.size(0),
           " rows, expected ", size_, " x ", input.size(0));
  do_all_gather(output, input);
}

void Communicator::broadcast(at::Tensor& tensor, int root) {
  detail::check_tensor(tensor, "broadcast: tensor");
  SY_CHECK(root >= 0 && root < size_, "broadcast: root ", root, " is not a rank of a world of ",
           size_);
  do_broadcast(tensor, root);
}

void Communicator::barrier() {
  at::Tensor one = at::ones({1}, at::TensorOptions().dtype(at::kFloat).device(barrier_device_));
  all_reduce(one, ReduceOp::kSum);
  // Reading the result back makes the host wait for the all-reduce itself, not only for its
  // enqueueing (NCCL; on the CPU backends it has completed already).
  (void)one.item<float>();
}

std::shared_ptr<Communicator> Communicator::split(int color, int key) {
  SY_CHECK(color >= 0, "split: color must be >= 0, got ", color);
  return do_split(color, key);
}

namespace {

// Every collective over one rank is a copy or nothing; the base class's checks are those of the
// real backends, so single-process runs catch the same caller mistakes.
class SelfCommunicator final : public Communicator {
 public:
  SelfCommunicator() : Communicator(0, 1, "self") {}

  void abort(const std::string& /*reason*/) override {}

 protected:
  void do_all_to_all(at::Tensor& output, const at::Tensor& input,
                     const std::vector<int64_t>& send_splits,
                     const std::vector<int64_t>& recv_splits) override {
    detail::check_self_splits(send_splits, recv_splits, 0);  // [input rows] and [output rows]
    if (!output.is_same(input)) output.copy_(input);
  }

  void do_all_reduce(at::Tensor& /*tensor*/, ReduceOp /*op*/) override {}

  void do_all_gather(at::Tensor& output, const at::Tensor& input) override {
    if (!output.is_same(input)) output.copy_(input);
  }

  void do_broadcast(at::Tensor& /*tensor*/, int /*root*/) override {}

  std::shared_ptr<Communicator> do_split(int /*color*/, int /*key*/) override {
    return std::make_shared<SelfCommunicator>();
  }
};

}  // namespace

CommPtr make_self_communicator() { return std::make_shared<SelfCommunicator>(); }

}  // namespace sy
