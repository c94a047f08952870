#!/usr/bin/env bash
# SIGTERM reaching one rank of an mpirun job stops every rank after the same step, with a
# checkpoint, and --resume auto then continues bitwise (registered by tests/CMakeLists.txt):
#   train_signal.sh SWITCHYARD_BINARY SOURCE_DIR
# As Slurm preempts (Note [Clean stop on a signal], docs/parallel.md#stopping-a-run-sigterm-sigint-sighup):
#   1. a reference: `mpirun -np 2 switchyard train` for 300 steps, uninterrupted;
#   2. the same job again, and once it has logged step 10, SIGTERM to rank 1's process only (found
#      by OMPI_COMM_WORLD_RANK in its environment). The job must exit 75 on its own within 60 s,
#      rank 0 must log "stopped by SIGTERM at step N of 300; checkpoint .../step_N; resume with
#      --resume auto" with 10 <= N < 300, and checkpoints/step_N must hold both ranks' files (the
#      save is collective: both ranks stopped after step N); no rank process may be left;
#   3. `--resume auto` to step 300: its model.pt must be byte for byte the reference's.
# Exits 77 (ctest SKIP) with the reason when mpirun is missing.
set -euo pipefail
# shellcheck source=tests/mpi/mpi_common.sh
source "$(dirname "$0")/mpi_common.sh"
mpi_script_args "$@"
np=2
limit_s=60

mpi_setup "$np" --need-timeout --bind-none

work=$(mktemp -d "${TMPDIR:-/tmp}/sy_signal_XXXXXX")
trap 'rm -rf "$work"' EXIT
args=(train --config "$src/configs/debug-cpu.yaml" --set model.n_layers=2 --set model.d_model=32
      --set data.batch_size=4 --set train.log_interval=5 --set train.eval_interval=0
      --set train.checkpoint_interval=100 --set train.max_steps=300)
run reference mpirun "${mpi_args[@]}" "$bin" "${args[@]}" --set "train.out_dir=$work/ref"

# The interrupted job, in the background.
log="$work/stopped.log"
echo "+ timeout -k 5 $limit_s mpirun ${mpi_args[*]} $bin ${args[*]} --set train.out_dir=$work/run &"
start=$SECONDS
timeout -k 5 "$limit_s" mpirun "${mpi_args[@]}" "$bin" "${args[@]}" \
  --set "train.out_dir=$work/run" >"$log" 2>&1 &
job=$!

# Rank 1's process: a switchyard process of this run whose environment says world rank 1.
rank1=""
while [ -z "$rank1" ] && [ $((SECONDS - start)) -lt 30 ]; do
  if grep -qE '"step": *(1[0-9]|[2-9][0-9])\b' "$work/run/metrics.jsonl" 2>/dev/null; then
    for pid in $(pgrep -f -- "$bin train .*$work/run" || true); do
      if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=1'; then
        rank1=$pid
      fi
    done
  fi
  [ -n "$rank1" ] || sleep 0.1
done
if [ -z "$rank1" ]; then
  kill -KILL "$job" 2>/dev/null || true
  echo "FAIL: rank 1's process was not found after step 10 within 30 s (did the run log steps?)"
  tail -n 30 "$log"
  exit 1
fi
echo "+ kill -TERM $rank1   # rank 1 only"
kill -TERM "$rank1"
rc=0
wait "$job" || rc=$?
took=$((SECONDS - start))

problems=()
if [ "$rc" != 75 ]; then problems+=("exit status $rc, expected 75 (stopped by a signal)"); fi
line=$(grep -oE '\[train\] stopped by SIGTERM at step [0-9]+ of 300; checkpoint [^;]+; resume with --resume auto' "$log" || true)
step=$(echo "$line" | sed -n 's/.* at step \([0-9]*\) of 300.*/\1/p')
if [ -z "$step" ]; then
  problems+=("no '[train] stopped by SIGTERM at step N of 300; checkpoint ...; resume with --resume auto' line")
elif [ "$step" -lt 10 ] || [ "$step" -ge 300 ]; then
  problems+=("stopped at step $step, expected 10 <= N < 300")
else
  if ! echo "$line" | grep -qF "checkpoint $work/run/checkpoints/step_$step;"; then
    problems+=("the stop line names another checkpoint than step_$step: $line")
  fi
  for r in 00000 00001; do
    if ! ls "$work/run/checkpoints/step_$step/ranks/rank_$r".* >/dev/null 2>&1; then
      problems+=("checkpoints/step_$step has no file of rank $r")
    fi
  done
fi
if grep -qE "$crash_re" "$log"; then problems+=("a crash, not a clean stop"); fi
if ranks_left_behind; then problems+=("rank processes still alive after mpirun returned"); fi
fail_on_problems "$rc" "$took" "$log"
echo "ok   exit 75 in ${took}s: $line"

run resumed mpirun "${mpi_args[@]}" "$bin" "${args[@]}" --set "train.out_dir=$work/run" \
  --resume auto
if ! grep -qF "resumed from $work/run/checkpoints/step_$step at step $step" "$work/resumed.log"; then
  echo "FAIL: the resumed run did not continue from step_$step"
  tail -n 20 "$work/resumed.log"
  exit 1
fi
if ! cmp "$work/ref/model.pt" "$work/run/model.pt"; then
  echo "FAIL: the resumed run's model.pt differs from the uninterrupted run's"
  exit 1
fi
echo "PASS: SIGTERM to rank 1 stopped both ranks after step $step (exit 75); the resumed run's model.pt equals the uninterrupted run's"
