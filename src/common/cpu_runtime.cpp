// See cpu_runtime.h.
#include "common/cpu_runtime.h"

#include <cstdlib>
#include <thread>

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
  // Under a launcher with at least one rank per core, every rank runs one thread (apps/launch.cpp
  // shares the cores out), so there is no pool whose waits could matter: skip the second start
  // (loading LibTorch again costs about half a CPU-second per process).
  for (const char* var :
       {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"}) {
    const char* value = std::getenv(var);
    const unsigned cores = std::thread::hardware_concurrency();
    if (value != nullptr && cores > 0 &&
        std::strtol(value, nullptr, 10) >= static_cast<long>(cores)) {
      return;
    }
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
