// CUDA builds only (CMake skips *cuda*.cpp otherwise); bench.cpp has the CPU build's stub.
#include <memory>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAFunctions.h>
#include <mpi.h>
#include <nccl.h>

#include "bench/raw_nccl.h"
#include "common/error.h"

namespace sy {
namespace {

void check_nccl(ncclResult_t r, const char* what) {
  SY_CHECK(r == ncclSuccess, "bench alltoall (raw NCCL): ", what,
           " failed: ", ncclGetErrorString(r));
}

}  // namespace

RawAllToAll make_raw_nccl_all_to_all(const ParallelGroups& groups, const c10::Device& device) {
  if (!device.is_cuda()) return {};
  ncclComm_t comm = nullptr;
  const int n = groups.ep->size();
  if (groups.world_size == 1) {
    int dev = device.has_index() ? device.index() : c10::cuda::current_device();
    check_nccl(ncclCommInitAll(&comm, 1, &dev), "ncclCommInitAll");
  } else {
    int mpi_up = 0;
    MPI_Initialized(&mpi_up);
    if (groups.ep->backend() != "nccl" || n != groups.world_size || !mpi_up) return {};
    ncclUniqueId id;
    if (groups.world_rank == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD);
    check_nccl(ncclCommInitRank(&comm, n, id, groups.world_rank), "ncclCommInitRank");
  }
  std::shared_ptr<ncclComm> owner(comm, [](ncclComm_t c) { ncclCommDestroy(c); });
  return [owner, n](at::Tensor& out, const at::Tensor& in) {
    const size_t block =
        static_cast<size_t>(in.numel() * in.element_size()) / static_cast<size_t>(n);
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    const auto* src = static_cast<const char*>(in.data_ptr());
    auto* dst = static_cast<char*>(out.data_ptr());
    check_nccl(ncclGroupStart(), "ncclGroupStart");
    for (int p = 0; p < n; ++p) {
      check_nccl(ncclSend(src + p * block, block, ncclInt8, p, owner.get(), stream), "ncclSend");
      check_nccl(ncclRecv(dst + p * block, block, ncclInt8, p, owner.get(), stream), "ncclRecv");
    }
    check_nccl(ncclGroupEnd(), "ncclGroupEnd");
  };
}

}  // namespace sy
