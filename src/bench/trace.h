// A Chrome trace of some work, from LibTorch's profiler (Kineto): the operators on the host and,
// on CUDA, every kernel with its stream and time. `switchyard bench layer --trace FILE` writes
// one; scripts/trace_summary.py sums its kernels (docs/bench.md#traces).
#pragma once

#include <functional>
#include <string>

#include <c10/core/Device.h>

namespace sy {

// Runs `work` under the profiler (host operators; CUDA kernels too when `device` is CUDA), then
// writes the trace to `path` (Chrome trace JSON, for chrome://tracing or Perfetto) when `write`.
// Throws, naming the file, when the profiler cannot start or the trace cannot be written (a
// LibTorch built without Kineto, as Debian's 1.13, cannot write one).
void trace_to_file(const std::string& path, const c10::Device& device, bool write,
                   const std::function<void()>& work);

}  // namespace sy
