// MpiCommunicator (mpi_comm.h): the collectives of communicator.h over MPI, for CPU tensors.
// The arguments arrive checked (Communicator's public collectives); what is left here is MPI's own:
// CPU tensors, the dtypes of MPI_Allreduce, counts that fit an int. Mismatches between ranks are
// not seen (MPI cannot see a peer's arguments without another collective); the in-process backend
// checks the same rules across ranks, so tests catch them there.
#include "parallel/mpi_comm.h"

#include <algorithm>
#include <climits>

#include <torch/torch.h>

#include "common/error.h"
#include "common/log.h"
#include "parallel/comm_util.h"

namespace sy {

void throw_mpi_error(const char* call, int code, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) {
    std::snprintf(text, sizeof(text), "MPI error code %d", code);
  }
  throw Error(str("MPI call ", call, " failed: ", text), file, line);
}

namespace {

// Large reductions and broadcasts go in pieces of at most this many elements (MPI counts are int).
constexpr int64_t kMaxCount = int64_t{1} << 30;

void check_cpu(const at::Tensor& t, const std::string& what) {
  SY_CHECK(t.device().is_cpu(), what, " is on ", t.device(),
           ": the MPI communicator takes CPU tensors (use NCCL for CUDA tensors)");
}

int to_int(int64_t v, const std::string& what) {
  SY_CHECK(v >= 0 && v <= INT_MAX, what, " (", v, ") does not fit MPI's int counts");
  return static_cast<int>(v);
}

MPI_Datatype mpi_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return MPI_FLOAT;
    case at::kDouble: return MPI_DOUBLE;
    case at::kLong: return MPI_INT64_T;
    case at::kInt: return MPI_INT32_T;
    default:
      SY_THROW("all_reduce over MPI supports float32, float64, int64 and int32, got ", t,
               " (reduce bfloat16/float16 in float32)");
  }
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return MPI_SUM;
    case ReduceOp::kMax: return MPI_MAX;
    case ReduceOp::kMin: return MPI_MIN;
  }
  SY_THROW("unknown ReduceOp");
}

// A committed contiguous datatype of `bytes` bytes (one tensor row), freed on scope exit.
class RowType {
 public:
  explicit RowType(int64_t bytes) {
    SY_MPI(MPI_Type_contiguous(to_int(bytes, "bytes per row"), MPI_BYTE, &type_));
    SY_MPI(MPI_Type_commit(&type_));
  }
  ~RowType() { MPI_Type_free(&type_); }
  RowType(const RowType&) = delete;
  RowType& operator=(const RowType&) = delete;
  MPI_Datatype get() const { return type_; }

 private:
  MPI_Datatype type_ = MPI_DATATYPE_NULL;
};

// The checks of the constructor, MPI_ERRORS_RETURN on `comm`, then this rank and the size.
std::pair<int, int> prepare_comm(MPI_Comm comm) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  SY_CHECK(initialized, "MpiCommunicator: MPI is not initialized (construct sy::MpiRuntime first)");
  SY_CHECK(comm != MPI_COMM_NULL, "MpiCommunicator: MPI_COMM_NULL");
  SY_MPI(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN));
  int rank = 0, size = 1;
  SY_MPI(MPI_Comm_rank(comm, &rank));
  SY_MPI(MPI_Comm_size(comm, &size));
  return {rank, size};
}

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm comm) : MpiCommunicator(comm, prepare_comm(comm)) {}

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::pair<int, int> rank_size)
    : Communicator(rank_size.first, rank_size.second, "mpi"), comm_(comm) {}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_WORLD && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void MpiCommunicator::do_all_to_all(at::Tensor& output, const at::Tensor& input,
                                    const std::vector<int64_t>& send,
                                    const std::vector<int64_t>& recv) {
  check_cpu(input, "all_to_all_single: input");
  check_cpu(output, "all_to_all_single: output");
  detail::check_self_splits(send, recv, rank());
  const int64_t bytes = detail::row_bytes(input);
  if (bytes == 0) return;  // rows of no elements: nothing moves (same row shape on every rank)

  // Counts and displacements in rows, as MPI's ints.
  const int n = size();
  std::vector<int> send_counts(n), send_displs(n), recv_counts(n), recv_displs(n);
  const std::vector<int64_t> send_offsets = detail::offsets_of(send);
  const std::vector<int64_t> recv_offsets = detail::offsets_of(recv);
  for (int r = 0; r < n; ++r) {
    send_counts[r] = to_int(send[r], "all_to_all_single: rows sent to one rank");
    recv_counts[r] = to_int(recv[r], "all_to_all_single: rows received from one rank");
    send_displs[r] = to_int(send_offsets[r], "all_to_all_single: input rows");
    recv_displs[r] = to_int(recv_offsets[r], "all_to_all_single: output rows");
  }
  RowType row(bytes);
  SY_MPI(MPI_Alltoallv(input.data_ptr(), send_counts.data(), send_displs.data(), row.get(),
                       output.data_ptr(), recv_counts.data(), recv_displs.data(), row.get(),
                       comm_));
}

void MpiCommunicator::do_all_reduce(at::Tensor& tensor, ReduceOp op) {
  check_cpu(tensor, "all_reduce: tensor");
  const MPI_Datatype type = mpi_dtype(tensor.scalar_type());
  auto* base = static_cast<char*>(tensor.data_ptr());
  const int64_t numel = tensor.numel();
  for (int64_t begin = 0; begin < numel; begin += kMaxCount) {
    const int count = static_cast<int>(std::min(kMaxCount, numel - begin));
    SY_MPI(MPI_Allreduce(MPI_IN_PLACE, base + begin * tensor.element_size(), count, type,
                         mpi_op(op), comm_));
  }
}

void MpiCommunicator::do_all_gather(at::Tensor& output, const at::Tensor& input) {
  check_cpu(input, "all_gather: input");
  check_cpu(output, "all_gather: output");
  const int64_t bytes = detail::row_bytes(input);
  if (bytes == 0 || input.size(0) == 0) return;
  const int rows = to_int(input.size(0), "all_gather: input rows");
  to_int(output.size(0), "all_gather: output rows");  // MPI addresses the output in rows
  RowType row(bytes);
  SY_MPI(
      MPI_Allgather(input.data_ptr(), rows, row.get(), output.data_ptr(), rows, row.get(), comm_));
}

void MpiCommunicator::do_broadcast(at::Tensor& tensor, int root) {
  check_cpu(tensor, "broadcast: tensor");
  auto* base = static_cast<char*>(tensor.data_ptr());
  const int64_t bytes = tensor.numel() * static_cast<int64_t>(tensor.element_size());
  for (int64_t begin = 0; begin < bytes; begin += kMaxCount) {
    const int count = static_cast<int>(std::min(kMaxCount, bytes - begin));
    SY_MPI(MPI_Bcast(base + begin, count, MPI_BYTE, root, comm_));
  }
}

std::shared_ptr<Communicator> MpiCommunicator::do_split(int color, int key) {
  MPI_Comm sub = MPI_COMM_NULL;
  SY_MPI(MPI_Comm_split(comm_, color, key, &sub));
  return std::make_shared<MpiCommunicator>(sub);
}

void MpiCommunicator::abort(const std::string& reason) {
  SY_LOG_ALL("mpi", "aborting the job: ", reason);
  MPI_Abort(comm_, 1);
}

}  // namespace sy
