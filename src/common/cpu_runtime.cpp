// See cpu_runtime.h.
#include "common/cpu_runtime.h"

#include <cstdlib>

#include <unistd.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace sy {

void prefer_passive_openmp_wait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("GOMP_SPINCOUNT") != nullptr ||
      std::getenv("SWITCHYARD_NO_REEXEC") != nullptr) {
    return;
  }
  // Mark first: should the exec fail, or the program come back here, it will not try again.
  setenv("SWITCHYARD_NO_REEXEC", "1", /*overwrite=*/1);
  setenv("OMP_WAIT_POLICY", "PASSIVE", /*overwrite=*/1);
#if defined(__linux__)
  execv("/proc/self/exe", argv);
#else
  (void)argv;
#endif
  // Only reached when the exec failed: run on with the default policy (the variables set above
  // still reach child processes, which is harmless).
}

void tune_cpu_allocator() {
#if defined(__GLIBC__)
  constexpr int kThreshold = 256 << 20;  // 256 MiB: activations of the CPU configs stay in the heap
  mallopt(M_MMAP_THRESHOLD, kThreshold);
  mallopt(M_TRIM_THRESHOLD, 2 * kThreshold);
#endif
}

}  // namespace sy
