#!/usr/bin/env bash
# A failing rank ends the whole mpirun job, promptly and with its error line (registered by
# tests/CMakeLists.txt):   train_mpi_error.sh SWITCHYARD_BINARY SOURCE_DIR
# Each case starts `mpirun -np 2 switchyard train` with one bad input and checks that mpirun
# exits non-zero within 60 s (no rank left waiting in a collective), that the output holds an
# [error] line naming the problem and no other kind of error, and that no rank process of the
# job is still alive afterwards. Cases: a config error every rank sees before any collective, a
# world size the config cannot use, a data error inside the trainer after the groups are made,
# an error on rank 0 alone (it writes the run folder) while rank 1 goes on, a run folder that
# holds a run or that a live job holds (checked on rank 0 alone), and ranks started with
# different configs.
# Exits 77 (ctest SKIP) with the reason when mpirun is missing.
set -euo pipefail
# shellcheck source=tests/mpi/mpi_common.sh
source "$(dirname "$0")/mpi_common.sh"
mpi_script_args "$@"
np=2

mpi_setup "$np" --need-timeout

work=$(mktemp -d "${TMPDIR:-/tmp}/sy_mpierr_XXXXXX")
trap 'rm -rf "$work"' EXIT
touch "$work/a_file"  # a run folder below a regular file cannot be made
failures=0

# expect_error NAME EXPECTED_TEXT [--set ...]: one job that must fail cleanly with EXPECTED_TEXT.
expect_error() {
  local name=$1 expected=$2
  shift 2
  local log="$work/$name.log"
  local args=(train --config "$src/configs/debug-cpu.yaml" --set train.max_steps=2
              --set train.eval_interval=0 "$@")
  if [[ " $* " != *"train.out_dir="* ]]; then args+=(--set "train.out_dir=$work/$name.run"); fi
  echo "+ timeout -k 5 60 mpirun ${mpi_args[*]} $bin ${args[*]}"
  local rc=0 start=$SECONDS
  timeout -k 5 60 mpirun "${mpi_args[@]}" "$bin" "${args[@]}" >"$log" 2>&1 || rc=$?
  local took=$((SECONDS - start))
  local problem
  problem=$(exit_problem "$rc" "$took")
  if [ -n "$problem" ]; then
    :  # the exit status already says what is wrong
  elif ! grep -q "\[error\]" "$log"; then
    problem="no [error] line"
  elif ! grep "\[error\]" "$log" | grep -qF -- "$expected"; then
    problem="the [error] line lacks '$expected'"
  elif [ "$(grep "\[error\]" "$log" | sed 's/^\[r[0-9]*\/[0-9]*\] //' | sort -u | wc -l)" != 1 ]; then
    problem="the ranks report different errors (a second failure after the first?)"
  elif grep -qE "$crash_re" "$log"; then
    problem="a crash, not a clean error"
  fi
  if ranks_left_behind; then
    problem="${problem:+$problem; }rank processes still alive after mpirun returned"
  fi
  if [ -n "$problem" ]; then
    echo "FAIL [$name]: $problem (exit $rc); output:"
    sed 's/^/    /' "$log" | tail -n 30
    failures=$((failures + 1))
  else
    echo "ok   [$name] exit $rc in ${took}s, $(grep -c "\[error\]" "$log") of $np ranks printed:"
    grep "\[error\]" "$log" | head -n 1 | sed 's/^/    /'
  fi
}

expect_error unknown_key "did you mean 'moe.num_experts'" --set moe.num_expert=4
expect_error world_size "parallel.ep_size (4) must divide the world size (2)" --set parallel.ep_size=4
expect_error missing_data "$work/no_such_corpus.txt" --set "data.path=$work/no_such_corpus.txt"
expect_error rank0_only "$work/a_file/run" --set "train.out_dir=$work/a_file/run"

# A run folder that holds a run, and one a live job holds (Note [Run folders]): rank 0 checks,
# every rank ends with its line, and nothing in the folder changes.
mkdir -p "$work/existing.run/checkpoints/step_2"
echo "earlier" >"$work/existing.run/metrics.jsonl"
echo "earlier" >"$work/existing.run/checkpoints/step_2/manifest.json"
expect_error existing_run "train.out_dir '$work/existing.run' already holds a run" \
  --set "train.out_dir=$work/existing.run"
mkdir -p "$work/locked.run"
printf '{"host": "%s", "pid": %d}\n' "$(hostname)" $$ >"$work/locked.run/.lock"
expect_error locked_run "is in use by another job: process $$ on host $(hostname)" \
  --set "train.out_dir=$work/locked.run"
if [ "$(cat "$work/existing.run/metrics.jsonl")" != earlier ] ||
   [ "$(ls -A "$work/existing.run" | tr '\n' ' ')" != "checkpoints metrics.jsonl " ] ||
   [ "$(ls -A "$work/locked.run")" != .lock ] ||
   ! grep -q "\"pid\": $$" "$work/locked.run/.lock"; then
  echo "FAIL [run_folders]: a refused job changed the folder:"
  ls -la "$work/existing.run" "$work/locked.run"
  failures=$((failures + 1))
fi

# Ranks started with different configs (Note [Ranks agree on the config]): rank 1 gets two more
# --set flags through a wrapper; every rank stops before training with rank 1's difference.
cat >"$work/rank1_differs.sh" <<EOF
#!/usr/bin/env bash
if [ "\${OMPI_COMM_WORLD_RANK:-\${PMI_RANK:-0}}" = 1 ]; then
  exec "$bin" "\$@" --set moe.top_k=1 --set train.lr=0.002
fi
exec "$bin" "\$@"
EOF
chmod +x "$work/rank1_differs.sh"
real_bin=$bin
bin="$work/rank1_differs.sh"
expect_error config_mismatch \
  "rank 1: started with another config than rank 0: moe.top_k is 1 here, 2 on rank 0; train.lr is 0.002 here, 0.003 on rank 0"
bin=$real_bin

if [ "$failures" -gt 0 ]; then
  echo "FAIL: $failures case(s)"
  exit 1
fi
echo "PASS: every bad input ended the whole mpirun job with its error line"
