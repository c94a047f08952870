#!/usr/bin/env bash
# A checkpoint save that fails on one rank ends the job on every rank, removes the .partial folder
# and leaves the previous checkpoint intact (registered by tests/CMakeLists.txt):
#   train_fault_save.sh SWITCHYARD_BINARY SOURCE_DIR
# `mpirun -np 2 switchyard train` saves step 5, then rank 1's write of its rank file in the save of
# step 10 fails with ENOSPC (injected by SWITCHYARD_TEST_FAIL_WRITE, docs/testing.md). The job
# must end within 60 s with status 1 (MPI_Abort), an [error] line naming the save, the file, the
# system error and the previous checkpoint, no step_10 or step_10.partial folder, step_5 byte for
# byte as before, and no rank process left; `--resume auto` then continues from step 5.
# Exits 77 (ctest SKIP) with the reason when mpirun is missing.
set -euo pipefail
# shellcheck source=tests/mpi/mpi_common.sh
source "$(dirname "$0")/mpi_common.sh"
mpi_script_args "$@"
np=2
limit_s=60

mpi_setup "$np" --need-timeout --bind-none

work=$(mktemp -d "${TMPDIR:-/tmp}/sy_save_XXXXXX")
trap 'rm -rf "$work"' EXIT
ckpts="$work/run/checkpoints"
args=(train --config "$src/configs/debug-cpu.yaml" --set model.n_layers=2 --set model.d_model=32
      --set data.batch_size=4 --set train.log_interval=5 --set train.eval_interval=0
      --set train.checkpoint_interval=5 --set "train.out_dir=$work/run")
run first mpirun "${mpi_args[@]}" "$bin" "${args[@]}" --set train.max_steps=5
sum_before=$(cd "$ckpts" && find step_5 -type f -print0 | sort -z | xargs -0 sha256sum)

log="$work/fail.log"
echo "+ SWITCHYARD_TEST_FAIL_WRITE=step_10.partial/ranks/rank_00001 timeout -k 5 $limit_s mpirun ..."
rc=0
start=$SECONDS
SWITCHYARD_TEST_FAIL_WRITE=step_10.partial/ranks/rank_00001 timeout -k 5 "$limit_s" \
  mpirun "${mpi_args[@]}" -x SWITCHYARD_TEST_FAIL_WRITE "$bin" "${args[@]}" \
  --set train.max_steps=20 --resume auto >"$log" 2>&1 || rc=$?
took=$((SECONDS - start))

problems=()
exit_status_problem=$(exit_problem "$rc" "$took")
if [ -n "$exit_status_problem" ]; then problems+=("$exit_status_problem"); fi
if [ "$rc" != 1 ]; then problems+=("exit status $rc, expected 1"); fi
expected="checkpoint save of step 10 failed: rank 1: cannot write '$ckpts/step_10.partial/ranks/rank_00001.pt.tmp': No space left on device (injected by SWITCHYARD_TEST_FAIL_WRITE); removed '$ckpts/step_10.partial'; the previous checkpoint '$ckpts/step_5' is intact (--resume auto continues from it)"
if ! grep -qF "[error] $expected" "$log"; then
  problems+=("no [error] line: $expected")
fi
if [ -e "$ckpts/step_10.partial" ]; then problems+=("step_10.partial was left behind"); fi
if [ -e "$ckpts/step_10" ]; then problems+=("a step_10 checkpoint exists"); fi
sum_after=$(cd "$ckpts" && find step_5 -type f -print0 | sort -z | xargs -0 sha256sum)
if [ "$sum_before" != "$sum_after" ]; then problems+=("step_5 changed"); fi
if grep -qE "$crash_re" "$log"; then problems+=("a crash, not a clean failure"); fi
if ranks_left_behind; then problems+=("rank processes still alive after mpirun returned"); fi

fail_on_problems "$rc" "$took" "$log"
echo "ok   exit $rc in ${took}s:"
grep -F '[error]' "$log" | sed 's/^/    /'

run resumed mpirun "${mpi_args[@]}" "$bin" "${args[@]}" --set train.max_steps=10 --resume auto
if ! grep -qF "resumed from $ckpts/step_5 at step 5" "$work/resumed.log"; then
  echo "FAIL: the next run did not resume from step_5"
  tail -n 20 "$work/resumed.log"
  exit 1
fi
echo "PASS: a failed save on rank 1 ended the mpirun job, removed step_10.partial, kept step_5"
