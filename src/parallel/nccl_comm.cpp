// NcclCommunicator (nccl_comm.h). Only LibTorch CUDA APIs present in both 1.13 and 2.x are used:
// c10::cuda::current_device, getCurrentCUDAStream(device).stream(), CUDAGuard. The arguments arrive
// checked (Communicator's public collectives); what is left here is NCCL's own: tensors on this
// communicator's device, a communicator not aborted, the dtypes of ncclAllReduce.
#include "parallel/nccl_comm.h"

#include <exception>

#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>  // older nccl.h declare ncclBfloat16 only when the CUDA bf16 type exists
#include <nccl.h>
#include <torch/torch.h>

#include "common/error.h"
#include "common/log.h"
#include "parallel/comm_util.h"

namespace sy {
namespace {

std::string nccl_version() {
  int v = 0;
  if (ncclGetVersion(&v) != ncclSuccess) return "unknown";
  // NCCL_VERSION(X, Y, Z) is X*1000 + Y*100 + Z up to 2.8, X*10000 + Y*100 + Z after.
  const int major = v >= 10000 ? v / 10000 : v / 1000;
  const int minor = v >= 10000 ? (v % 10000) / 100 : (v % 1000) / 100;
  return str(major, ".", minor, ".", v % 100);
}

[[noreturn]] void throw_nccl_error(const char* call, ncclResult_t rc, ncclComm_t comm,
                                   const char* file, int line) {
  std::string detail;
#if defined(NCCL_VERSION_CODE) && NCCL_VERSION_CODE >= NCCL_VERSION(2, 13, 0)
  const char* last = ncclGetLastError(comm);
  if (last != nullptr && *last != '\0') detail = str(": ", last);
#else
  (void)comm;
#endif
  throw Error(str("NCCL call ", call, " failed: ", ncclGetErrorString(rc), detail, " (NCCL ",
                  nccl_version(), ")"),
              file, line);
}

#define SY_NCCL(call, comm)                                             \
  do {                                                                  \
    const ncclResult_t sy_nccl_rc_ = (call);                            \
    if (sy_nccl_rc_ != ncclSuccess) {                                   \
      throw_nccl_error(#call, sy_nccl_rc_, (comm), __FILE__, __LINE__); \
    }                                                                   \
  } while (0)

ncclDataType_t nccl_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return ncclFloat32;
    case at::kDouble: return ncclFloat64;
    case at::kHalf: return ncclFloat16;
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 19, 0) || defined(__CUDA_BF16_TYPES_EXIST__)
    case at::kBFloat16: return ncclBfloat16;
#endif
    case at::kInt: return ncclInt32;
    case at::kLong: return ncclInt64;
    case at::kByte: return ncclUint8;
    case at::kChar: return ncclInt8;
    default: SY_THROW("all_reduce over NCCL does not support dtype ", t);
  }
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kMin: return ncclMin;
  }
  SY_THROW("unknown ReduceOp");
}

cudaStream_t current_stream(int device) {
  return c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream();
}

size_t nbytes(const at::Tensor& t) {
  return static_cast<size_t>(t.numel()) * static_cast<size_t>(t.element_size());
}

const MpiCommunicator& require_bootstrap(const std::shared_ptr<MpiCommunicator>& bootstrap) {
  SY_CHECK(bootstrap != nullptr, "NcclCommunicator: no bootstrap MPI communicator");
  return *bootstrap;
}

}  // namespace

NcclCommunicator::NcclCommunicator(std::shared_ptr<MpiCommunicator> bootstrap)
    : Communicator(require_bootstrap(bootstrap).rank(), require_bootstrap(bootstrap).size(), "nccl",
                   c10::Device(c10::kCUDA, c10::cuda::current_device())),
      bootstrap_(std::move(bootstrap)),
      device_(static_cast<int>(c10::cuda::current_device())) {
  ncclUniqueId id;
  if (rank() == 0) SY_NCCL(ncclGetUniqueId(&id), nullptr);
  SY_MPI(MPI_Bcast(&id, static_cast<int>(sizeof(id)), MPI_BYTE, 0, bootstrap_->mpi_comm()));
  ncclComm_t comm = nullptr;
  SY_NCCL(ncclCommInitRank(&comm, size(), id, rank()), nullptr);
  comm_ = comm;
  SY_LOG("nccl", "communicator of ", size(), " ranks on cuda:", device_, " (NCCL ", nccl_version(),
         ")");
}

NcclCommunicator::~NcclCommunicator() {
  if (comm_ == nullptr || aborted_) return;
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
  // Destroyed while an error unwinds the stack: a peer may be blocked in a collective that this
  // rank will never join, and ncclCommDestroy would wait for it, so the error would never be
  // printed. ncclCommAbort returns at once and releases the pending operations.
  if (std::uncaught_exceptions() > 0) {
    aborted_ = true;
    ncclCommAbort(comm_);
  } else {
    ncclCommDestroy(comm_);
  }
}

void NcclCommunicator::check_device(const at::Tensor& t, const std::string& what) const {
  SY_CHECK(t.is_cuda() && t.device().index() == device_, what, " is on ", t.device(),
           ": this NCCL communicator takes tensors on cuda:", device_);
  SY_CHECK(!aborted_, what, ": the NCCL communicator was aborted");
}

void NcclCommunicator::do_all_to_all(at::Tensor& output, const at::Tensor& input,
                                     const std::vector<int64_t>& send,
                                     const std::vector<int64_t>& recv) {
  check_device(input, "all_to_all_single: input");
  check_device(output, "all_to_all_single: output");
  detail::check_self_splits(send, recv, rank());
  const size_t row = static_cast<size_t>(detail::row_bytes(input));
  if (row == 0) return;
  const int me = rank(), n = size();
  const std::vector<int64_t> send_offsets = detail::offsets_of(send);
  const std::vector<int64_t> recv_offsets = detail::offsets_of(recv);
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
  if (send[me] > 0) {  // our own rows: a copy on the current stream
    output.narrow(0, recv_offsets[me], recv[me]).copy_(input.narrow(0, send_offsets[me], send[me]));
  }
  const cudaStream_t stream = current_stream(device_);
  const char* in = static_cast<const char*>(input.data_ptr());
  char* out = static_cast<char*>(output.data_ptr());
  SY_NCCL(ncclGroupStart(), comm_);
  for (int peer = 0; peer < n; ++peer) {
    if (peer == me) continue;
    if (send[peer] > 0) {
      SY_NCCL(
          ncclSend(in + send_offsets[peer] * row, send[peer] * row, ncclUint8, peer, comm_, stream),
          comm_);
    }
    if (recv[peer] > 0) {
      SY_NCCL(ncclRecv(out + recv_offsets[peer] * row, recv[peer] * row, ncclUint8, peer, comm_,
                       stream),
              comm_);
    }
  }
  SY_NCCL(ncclGroupEnd(), comm_);
}

void NcclCommunicator::do_all_reduce(at::Tensor& tensor, ReduceOp op) {
  check_device(tensor, "all_reduce: tensor");
  if (tensor.numel() == 0) return;
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
  void* data = tensor.data_ptr();
  SY_NCCL(
      ncclAllReduce(data, data, static_cast<size_t>(tensor.numel()),
                    nccl_dtype(tensor.scalar_type()), nccl_op(op), comm_, current_stream(device_)),
      comm_);
}

void NcclCommunicator::do_all_gather(at::Tensor& output, const at::Tensor& input) {
  check_device(input, "all_gather: input");
  check_device(output, "all_gather: output");
  if (input.numel() == 0) return;
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
  SY_NCCL(ncclAllGather(input.data_ptr(), output.data_ptr(), nbytes(input), ncclUint8, comm_,
                        current_stream(device_)),
          comm_);
}

void NcclCommunicator::do_broadcast(at::Tensor& tensor, int root) {
  check_device(tensor, "broadcast: tensor");
  if (tensor.numel() == 0) return;
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
  void* data = tensor.data_ptr();
  SY_NCCL(
      ncclBroadcast(data, data, nbytes(tensor), ncclUint8, root, comm_, current_stream(device_)),
      comm_);
}

std::shared_ptr<Communicator> NcclCommunicator::do_split(int color, int key) {
  auto sub = std::dynamic_pointer_cast<MpiCommunicator>(bootstrap_->split(color, key));
  SY_CHECK(sub != nullptr,
           "NcclCommunicator::split: the bootstrap split is not an MPI communicator");
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
  return std::make_shared<NcclCommunicator>(sub);
}

void NcclCommunicator::abort(const std::string& reason) {
  if (comm_ == nullptr || aborted_.exchange(true)) return;  // once, whichever thread comes first
  SY_LOG_ALL("nccl", "aborting the NCCL communicator: ", reason);
  ncclCommAbort(comm_);
}

CommPtr make_nccl_communicator(const CommPtr& bootstrap) {
  auto mpi = std::dynamic_pointer_cast<MpiCommunicator>(bootstrap);
  SY_CHECK(mpi != nullptr,
           "make_nccl_communicator: the bootstrap must be an MPI communicator, got ",
           bootstrap ? bootstrap->backend() : std::string("none"));
  return std::make_shared<NcclCommunicator>(mpi);
}

}  // namespace sy
