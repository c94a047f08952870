// trace_to_file (trace.h) with LibTorch's Kineto profiler API, the same in 1.13 and 2.x:
// prepareProfiler, enableProfiler, disableProfiler()->save().
#include "bench/trace.h"

#include <filesystem>
#include <set>
#include <string>

#include <torch/csrc/autograd/profiler_kineto.h>

#include "common/error.h"

namespace sy {
namespace {

// The first line of LibTorch's message: some versions append a backtrace to it.
std::string message_of(const c10::Error& e) {
  const std::string text = e.what_without_backtrace();
  return text.substr(0, text.find("\n"));
}

}  // namespace

void trace_to_file(const std::string& path, const c10::Device& device, bool write,
                   const std::function<void()>& work) {
  namespace prof = torch::profiler::impl;
  namespace autograd_prof = torch::autograd::profiler;
  const prof::ProfilerConfig config(prof::ProfilerState::KINETO);
  std::set<prof::ActivityType> activities = {prof::ActivityType::CPU};
  if (device.is_cuda()) activities.insert(prof::ActivityType::CUDA);
  try {
    autograd_prof::prepareProfiler(config, activities);
    autograd_prof::enableProfiler(config, activities);
  } catch (const c10::Error& e) {
    SY_THROW("--trace ", path, ": LibTorch's profiler did not start: ", message_of(e));
  }
  try {
    work();
  } catch (...) {
    autograd_prof::disableProfiler();
    throw;
  }
  std::unique_ptr<autograd_prof::ProfilerResult> result = autograd_prof::disableProfiler();
  if (!write) return;
  SY_CHECK(result != nullptr, "--trace ", path, ": the profiler returned no result");
  try {
    result->save(path);
  } catch (const c10::Error& e) {
    SY_THROW("--trace ", path,
             ": LibTorch could not write the trace (a LibTorch built without "
             "Kineto, USE_KINETO=0, cannot; PyTorch's own builds have it): ",
             message_of(e));
  }
  SY_CHECK(std::filesystem::exists(path), "--trace ", path,
           ": LibTorch's profiler wrote no trace there");
}

}  // namespace sy
