# Sourced by tests/mpi/train_*.sh: their arguments (mpi_script_args), the mpirun set-up
# (mpi_setup), a logged command (run), and the checks every failing job gets (crash_re,
# ranks_left_behind, fail_on_problems).
#
# mpi_setup NP [--need-timeout] [--bind-none]:
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

# mpi_script_args "$@": every train_*.sh takes SWITCHYARD_BINARY SOURCE_DIR; sets $bin and $src.
mpi_script_args() {
  if [ $# -ne 2 ]; then
    echo "usage: $0 SWITCHYARD_BINARY SOURCE_DIR" >&2
    exit 2
  fi
  bin=$1
  src=$2
}

# run NAME COMMAND...: runs it with its log in $work/NAME.log; on failure shows the log's end
# and exits 1.
run() {
  local name=$1
  shift
  echo "+ $*"
  if ! "$@" >"$work/$name.log" 2>&1; then
    echo "FAIL: $name exited non-zero; its log:"
    tail -n 40 "$work/$name.log"
    exit 1
  fi
}

# Output of a process that crashed instead of failing cleanly.
crash_re="terminate called|Segmentation fault|core dumped|Exception raised from"

# ranks_left_behind: true when a process whose arguments hold a path below $work still runs a
# second after the job ended (each job's arguments name $work; the jobs run one by one).
ranks_left_behind() {
  sleep 1
  pgrep -f -- "$work/" >/dev/null 2>&1
}

# exit_problem RC SECONDS: what is wrong, if anything, with the exit status of a job that must
# fail on its own (empty: a non-zero exit that timeout did not cause).
exit_problem() {
  if [ "$1" = 0 ]; then
    echo "the job exited 0"
  elif [ "$1" = 124 ] || [ "$1" = 137 ]; then
    echo "the job hung: killed by timeout after ${2}s"
  fi
}

# fail_on_problems RC SECONDS LOG: when the array `problems` holds anything, prints them and the
# end of LOG, and exits 1.
fail_on_problems() {
  if [ ${#problems[@]} -gt 0 ]; then
    echo "FAIL (exit $1 in ${2}s):"
    printf '  - %s\n' "${problems[@]}"
    echo "output:"
    sed 's/^/    /' "$3" | tail -n 40
    exit 1
  fi
}
