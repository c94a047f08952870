#!/usr/bin/env bash
# Runs an MPI GoogleTest binary on NP ranks under mpirun (registered by tests/CMakeLists.txt):
#   run_mpi_gtest.sh NP BINARY [gtest flags...]
# Exits 77 (ctest SKIP) with the reason when mpirun is missing. mpirun exits non-zero when any
# rank fails; the binary itself makes every rank return the job-wide result.
set -u
if [ $# -lt 2 ]; then
  echo "usage: $0 NP BINARY [gtest flags...]" >&2
  exit 2
fi
np=$1
binary=$2
shift 2

if ! command -v mpirun >/dev/null 2>&1; then
  echo "SKIP: mpirun is not on PATH (install Open MPI to run the MPI tests)"
  exit 77
fi

export GTEST_COLOR="${GTEST_COLOR:-no}"  # plain text in ctest logs
args=(-np "$np")
if mpirun --version 2>&1 | grep -q "Open MPI"; then
  # More ranks than cores is fine for tests; a hung job is killed instead of blocking ctest.
  args+=(--oversubscribe --timeout 240)
  if [ "$(id -u)" = 0 ]; then
    args+=(--allow-run-as-root)  # containers run as root; Open MPI refuses without this
  fi
fi

exec mpirun "${args[@]}" "$binary" "$@"
