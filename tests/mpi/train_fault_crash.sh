#!/usr/bin/env bash
# A rank that fails mid-training ends the whole mpirun job promptly (registered by
# tests/CMakeLists.txt):   train_fault_crash.sh SWITCHYARD_BINARY SOURCE_DIR
# `mpirun -np 4 switchyard train` with debug.crash_rank=1 and debug.crash_step=5 (docs/parallel.md
# #faults), in both crash modes: "throw" (rank 1 throws; it prints its [error] line and calls
# MPI_Abort) and "exit" (rank 1 dies with status 13 without any cleanup, while its peers wait in a
# collective for it; mpirun must end them). Each job must exit non-zero within 30 s with rank 1
# and the cause in its output, and no rank process may survive it.
# Exits 77 (ctest SKIP) with the reason when mpirun is missing.
set -euo pipefail
# shellcheck source=tests/mpi/mpi_common.sh
source "$(dirname "$0")/mpi_common.sh"
mpi_script_args "$@"
np=4
limit_s=30

mpi_setup "$np" --need-timeout --bind-none

work=$(mktemp -d "${TMPDIR:-/tmp}/sy_crash_XXXXXX")
trap 'rm -rf "$work"' EXIT
failures=0

# expect_crash NAME EXPECTED_LINE_PATTERN [--set ...]: one job that rank 1 must end.
expect_crash() {
  local name=$1 expected=$2
  shift 2
  local log="$work/$name.log"
  # Small and fast: 2 layers of width 32, 4 sequences per rank, no evaluation.
  local args=(train --config "$src/configs/debug-cpu.yaml" --set model.n_layers=2
              --set model.d_model=32 --set data.batch_size=4 --set train.max_steps=20
              --set train.log_interval=5 --set train.eval_interval=0
              --set debug.crash_rank=1 --set debug.crash_step=5
              --set "train.out_dir=$work/$name.run" "$@")
  echo "+ timeout -k 5 $limit_s mpirun ${mpi_args[*]} $bin ${args[*]}"
  local rc=0 start=$SECONDS
  timeout -k 5 "$limit_s" mpirun "${mpi_args[@]}" "$bin" "${args[@]}" >"$log" 2>&1 || rc=$?
  local took=$((SECONDS - start))
  local problem
  problem=$(exit_problem "$rc" "$took")
  if [ -n "$problem" ]; then
    :  # the exit status already says what is wrong
  elif ! grep -qE -- "$expected" "$log"; then
    problem="no line matching '$expected'"
  elif grep -qE "$crash_re" "$log"; then
    problem="a crash, not a clean failure"
  fi
  if ranks_left_behind; then
    problem="${problem:+$problem; }rank processes still alive after mpirun returned"
  fi
  if [ -n "$problem" ]; then
    echo "FAIL [$name]: $problem (exit $rc); output:"
    sed 's/^/    /' "$log" | tail -n 30
    failures=$((failures + 1))
  else
    echo "ok   [$name] exit $rc in ${took}s:"
    grep -E -- "$expected" "$log" | head -n 1 | sed 's/^/    /'
  fi
}

expect_crash throw '^\[r01/04\] \[error\] rank 1: injected crash at step 5 \(debug\.crash_rank/crash_step\)$'
expect_crash exit '^\[r01/04\] \[debug\] rank 1: injected exit at step 5 .*status 13' \
  --set debug.crash_mode=exit

if [ "$failures" -gt 0 ]; then
  echo "FAIL: $failures case(s)"
  exit 1
fi
echo "PASS: a rank failing at step 5 (throw or exit) ended the whole mpirun job"
