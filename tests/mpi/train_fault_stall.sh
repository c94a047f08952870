#!/usr/bin/env bash
# A rank that stops making progress ends the job through the watchdog instead of hanging it
# (registered by tests/CMakeLists.txt):   train_fault_stall.sh SWITCHYARD_BINARY SOURCE_DIR
# `mpirun -np 4 switchyard train` with debug.stall_rank=2, debug.stall_step=3 and
# parallel.timeout_s=5 (docs/parallel.md#faults): rank 2 stops outside any collective, its peers
# wait for it in the first all-to-all of step 3, and their watchdogs must end the job within
# timeout + 10 s, non-zero (status 12), with the dump in the output: for each waiting rank its
# step, where, group, operation and splits; rank 2 named as the rank that did not arrive, with
# its step, collective count and stall, read from its heartbeat file; and an [error] line naming
# the timeout and rank 2. Rank 2 must not be among the waiting ranks (it is the one that stopped)
# and prints no dump. No rank process may survive.
# Exits 77 (ctest SKIP) with the reason when mpirun is missing.
set -euo pipefail
# shellcheck source=tests/mpi/mpi_common.sh
source "$(dirname "$0")/mpi_common.sh"
mpi_script_args "$@"
np=4
timeout_s=5
limit_s=$((timeout_s + 10))

mpi_setup "$np" --need-timeout --bind-none

work=$(mktemp -d "${TMPDIR:-/tmp}/sy_stall_XXXXXX")
trap 'rm -rf "$work"' EXIT
log="$work/stall.log"
args=(train --config "$src/configs/debug-cpu.yaml" --set model.n_layers=2 --set model.d_model=32
      --set data.batch_size=4 --set train.max_steps=20 --set train.log_interval=5
      --set train.eval_interval=0 --set debug.stall_rank=2 --set debug.stall_step=3
      --set "parallel.timeout_s=$timeout_s" --set "train.out_dir=$work/run")
echo "+ timeout -k 5 $limit_s mpirun ${mpi_args[*]} $bin ${args[*]}"
rc=0
start=$SECONDS
timeout -k 5 "$limit_s" mpirun "${mpi_args[@]}" "$bin" "${args[@]}" >"$log" 2>&1 || rc=$?
took=$((SECONDS - start))

problems=()
exit_status_problem=$(exit_problem "$rc" "$took")
if [ -n "$exit_status_problem" ]; then problems+=("$exit_status_problem"); fi
if [ "$took" -lt "$timeout_s" ]; then
  problems+=("the job ended after ${took}s, before parallel.timeout_s = $timeout_s")
fi
if ! grep -qE '^\[r02/04\] \[debug\] rank 2: injected stall at step 3 ' "$log"; then
  problems+=("no [debug] line of rank 2's stall")
fi
if ! grep -qE '^\[r0[0-3]/04\] \[watchdog\] collective timeout: an operation has been in flight for more than 5 s \(parallel\.timeout_s\)' "$log"; then
  problems+=("no watchdog dump header")
fi
# The dump: one line per waiting rank (rank | step | where | group | operation | splits |
# waiting), in the first collective after the stall (today block 0's dispatch all-to-all).
dump_re='^\[r0([0-3])/04\] \[watchdog\] rank \1 \| step 3 \| [a-z][^|]+ \| (world|ep|dp) \(4 ranks\) \| [a-z_]+ \| [^|]+ \| waiting [0-9.]+ s$'
if ! grep -qE "$dump_re" "$log"; then
  problems+=("no dump line of a waiting rank (rank | step 3 | where | group (4 ranks) | operation | splits | waiting)")
fi
if ! grep -qE '\[watchdog\] rank [013] \| step 3 \| moe block 0: dispatch \| ep \(4 ranks\) \| all_to_all_single \| equal splits \|' "$log"; then
  echo "note: the waiting ranks are not in block 0's dispatch all-to-all (a collective was added before it?)"
fi
# The ranks that did not arrive: under MPI a process sees only its own operations, so each
# waiting rank reads its peers' heartbeat files in <out_dir>/heartbeats (Note [Heartbeats]) and
# names rank 2, with what it is doing; rank 2 has no dump line of its own.
missing_re='^\[r0([013])/04\] \[watchdog\] ranks that did not reach .[a-z_]+. \(group (world|ep|dp), step 3, at .[a-z][^)]+.\): 2 \(by their heartbeat files in [^ ]+/run/heartbeats\)$'
if ! grep -qE "$missing_re" "$log"; then
  problems+=("no dump line naming rank 2 as the rank that did not arrive (ranks that did not reach ...: 2)")
fi
behind_re='^\[r0([013])/04\] \[watchdog\] rank 2 \(host [^,]+, pid [0-9]+; heartbeat [0-9.]+ s old\): step 3, [0-9]+ of (world|ep|dp) 0,1,2,3 #0.s collectives begun \(the overdue one is [0-9]+\); busy: stalled \(not in a collective\) at .rank 2: injected stall at step 3'
if ! grep -qE "$behind_re" "$log"; then
  problems+=("no dump line saying what rank 2 does (its step, count and stall, from its heartbeat)")
fi
if grep -qE '\[watchdog\] .*not known whether these ranks arrived' "$log"; then
  problems+=("a waiting rank could not read a peer's heartbeat")
fi
if grep -qE '^\[r02/04\] \[watchdog\]' "$log"; then
  problems+=("rank 2, the stalled rank, printed a dump")
fi
if grep -E "$dump_re" "$log" | grep -qE '\] rank 2 \|'; then
  problems+=("rank 2, the stalled rank, is listed as waiting in a collective")
fi
if ! grep -qE '^\[r0([013])/04\] \[error\] collective timeout: rank \1 waited [0-9.]+ s in [a-z_]+ \(group (world|ep|dp), step 3, at .[a-z][^;]+.; parallel\.timeout_s = 5\); did not arrive: 2; ending the job \(exit status 12\)$' "$log"; then
  problems+=("no [error] line naming the timeout")
fi
if grep -qE "$crash_re" "$log"; then
  problems+=("a crash, not a clean failure")
fi
if ranks_left_behind; then
  problems+=("rank processes still alive after mpirun returned")
fi

fail_on_problems "$rc" "$took" "$log"
echo "ok   exit $rc in ${took}s; the dump:"
grep -E '\[watchdog\]|\[error\]' "$log" | sed 's/^/    /'
echo "PASS: a stalled rank ended the mpirun job through the watchdog with the dump"
