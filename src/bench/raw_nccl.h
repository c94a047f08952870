// The raw-NCCL baseline of `switchyard bench alltoall`: ncclSend/ncclRecv to every peer inside
// one ncclGroupStart/End on LibTorch's current stream, over a communicator of its own, with
// nothing of ours around it (no splits, checks, labels or watchdog).
#pragma once

#include <functional>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "parallel/groups.h"

namespace sy {

// out/in: contiguous, same size, size divisible by the group size; equal blocks per peer.
using RawAllToAll = std::function<void(at::Tensor& out, const at::Tensor& in)>;

// Empty where there is no raw NCCL to compare with: CPU builds or tensors, in-process or MPI
// ranks, or an EP group that is not the whole world. On one process, a one-rank communicator.
RawAllToAll make_raw_nccl_all_to_all(const ParallelGroups& groups, const c10::Device& device);

}  // namespace sy
