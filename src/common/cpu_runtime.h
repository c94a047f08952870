// Process-level settings for CPU runs, applied at the top of main() before anything else starts.
#pragma once

namespace sy {

// Note [CPU thread waits]: LibTorch's CPU kernels run on an OpenMP pool (libgomp) while its
// matrix products run on OpenBLAS's own pthreads. libgomp's default wait policy spins for a while
// before sleeping, so between two parallel regions its idle workers burn the cores that
// OpenBLAS's threads need; on a 2-core machine most of a training step went to that spinning.
// OMP_WAIT_POLICY=PASSIVE makes the workers sleep at once. libgomp reads the variable when it is
// loaded, before main() runs, so setting it from inside the process is too late: this function
// sets it and re-executes the program (same pid, same arguments, before MPI starts), once.
// It does nothing when the user already chose (OMP_WAIT_POLICY or GOMP_SPINCOUNT set), when
// SWITCHYARD_NO_REEXEC is set, under mpirun/srun with at least as many ranks on the node as
// cores (each rank then runs one thread), or where the program cannot find itself
// (/proc/self/exe).
// Results do not change: the policy decides how threads wait, not what they compute.
void prefer_passive_openmp_wait(char** argv);

// Note [CPU allocator]: glibc's malloc returns blocks above its mmap threshold (128 KiB at first,
// growing as freed blocks show bigger is better) to the kernel on every free, so each step
// re-faults the pages of its activations. Raising the thresholds keeps them in the heap.
// Called once at start; affects speed and resident memory only.
void tune_cpu_allocator();

}  // namespace sy
