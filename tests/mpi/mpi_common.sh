# Sourced by tests/mpi/train_*.sh. mpi_setup NP [--need-timeout] [--bind-none]:
#   - exits 77 (ctest SKIP) with the reason when mpirun is missing, or timeout (coreutils) when
#     the test bounds its jobs' time with it (--need-timeout);
#   - sets the array mpi_args for NP ranks: -np NP, and for Open MPI --allow-run-as-root as root
#     (containers), --oversubscribe when NP exceeds the physical cores Open MPI counts as slots,
#     and --bind-to none when asked (jobs that must not pin several ranks to one core).
mpi_setup() {
  local np=$1
  shift
  local need_timeout=0 bind_none=0 arg
  for arg in "$@"; do
    case $arg in
      --need-timeout) need_timeout=1 ;;
      --bind-none) bind_none=1 ;;
      *) echo "mpi_setup: unknown option $arg" >&2; exit 2 ;;
    esac
  done
  if ! command -v mpirun >/dev/null 2>&1; then
    echo "SKIP: mpirun is not on PATH (install Open MPI to run the MPI tests)"
    exit 77
  fi
  if [ "$need_timeout" = 1 ] && ! command -v timeout >/dev/null 2>&1; then
    echo "SKIP: timeout (coreutils) is not on PATH; this test bounds each job's time with it"
    exit 77
  fi
  # Cores Open MPI counts as slots: physical cores, within what this process may use.
  local cores physical
  cores=$(nproc)
  if command -v lscpu >/dev/null 2>&1; then
    physical=$(lscpu -p=Core,Socket 2>/dev/null | grep -v '^#' | sort -u | wc -l)
    if [ "$physical" -gt 0 ] && [ "$physical" -lt "$cores" ]; then cores=$physical; fi
  fi
  mpi_args=(-np "$np")
  if mpirun --version 2>&1 | grep -q "Open MPI"; then
    if [ "$(id -u)" = 0 ]; then mpi_args+=(--allow-run-as-root); fi
    if [ "$np" -gt "$cores" ]; then mpi_args+=(--oversubscribe); fi
    if [ "$bind_none" = 1 ]; then mpi_args+=(--bind-to none); fi
  fi
}
