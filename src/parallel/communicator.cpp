// The self communicator (a world of one, used by single-process runs and as the reference side of
// the EP-invariance checks) and the argument checks that every backend shares (comm_util.h).
#include "parallel/communicator.h"

#include <numeric>
#include <sstream>

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

namespace {

// Every collective over one rank is a copy or nothing; the checks are those of the real backends
// so that single-process runs catch the same caller mistakes.
class SelfCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "self"; }

  void all_to_all_single(at::Tensor& output, const at::Tensor& input,
                         const std::vector<int64_t>& send_splits,
                         const std::vector<int64_t>& recv_splits) override {
    detail::check_tensor(input, "all_to_all_single: input", 1);
    detail::check_tensor(output, "all_to_all_single: output", 1);
    detail::check_same_rows(input, output, "all_to_all_single");
    detail::resolve_splits(send_splits, input.size(0), 1, "all_to_all_single: send_splits");
    detail::resolve_splits(recv_splits, output.size(0), 1, "all_to_all_single: recv_splits");
    SY_CHECK(input.size(0) == output.size(0), "all_to_all_single: input has ", input.size(0),
             " rows but output has ", output.size(0));
    if (!output.is_same(input)) output.copy_(input);
  }

  void all_reduce(at::Tensor& tensor, ReduceOp /*op*/) override {
    detail::check_tensor(tensor, "all_reduce: tensor");
  }

  void all_gather(at::Tensor& output, const at::Tensor& input) override {
    detail::check_tensor(input, "all_gather: input", 1);
    detail::check_tensor(output, "all_gather: output", 1);
    detail::check_same_rows(input, output, "all_gather");
    SY_CHECK(output.size(0) == input.size(0), "all_gather: output has ", output.size(0),
             " rows, expected 1 x ", input.size(0));
    if (!output.is_same(input)) output.copy_(input);
  }

  void broadcast(at::Tensor& tensor, int root) override {
    detail::check_tensor(tensor, "broadcast: tensor");
    SY_CHECK(root == 0, "broadcast: root ", root, " is not a rank of a world of 1");
  }

  void barrier() override {}

  std::shared_ptr<Communicator> split(int color, int /*key*/) override {
    SY_CHECK(color >= 0, "split: color must be >= 0, got ", color);
    return std::make_shared<SelfCommunicator>();
  }

  void abort(const std::string& /*reason*/) override {}
};

}  // namespace

CommPtr make_self_communicator() { return std::make_shared<SelfCommunicator>(); }

}  // namespace sy
