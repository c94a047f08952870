#!/usr/bin/env bash
# launch/run.sh works on a CPU machine (registered by tests/CMakeLists.txt):
#   train_launch_run.sh SWITCHYARD_BINARY SOURCE_DIR
# Runs `launch/run.sh -n 2 configs/debug-cpu.yaml --set train.max_steps=20` (the example of its
# --help) from a temporary folder with SWITCHYARD_BIN set to the binary under test, and GPUs
# hidden so that it takes the CPU path; then checks that it printed the mpirun line it ran, that
# the job was one MPI world of 2 ranks, and that the run folder holds the model, the vocabulary
# and metrics whose losses fall. Exits 77 (ctest SKIP) with the reason when mpirun is missing.
set -euo pipefail
# shellcheck source=tests/mpi/mpi_common.sh
source "$(dirname "$0")/mpi_common.sh"
mpi_script_args "$@"

if ! command -v mpirun >/dev/null 2>&1; then
  echo "SKIP: mpirun is not on PATH (install Open MPI to run the MPI tests)"
  exit 77
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/sy_launch_XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
limit=()
if command -v timeout >/dev/null 2>&1; then limit=(timeout -k 10 400); fi

echo "+ (in $work) launch/run.sh -n 2 configs/debug-cpu.yaml --set train.max_steps=20"
rc=0
SWITCHYARD_BIN=$bin CUDA_VISIBLE_DEVICES="" "${limit[@]}" \
  "$src/launch/run.sh" -n 2 "$src/configs/debug-cpu.yaml" --set train.max_steps=20 \
  >launch.log 2>&1 || rc=$?

fail() {
  echo "FAIL: $*; the launcher's output:"
  grep -v '^  ' launch.log | tail -n 30  # without the resolved config
  exit 1
}
[ "$rc" = 0 ] || fail "launch/run.sh exited $rc"
printed=$(grep '^+ ' launch.log || true)
for part in "mpirun -np 2 " "$bin train --config $src/configs/debug-cpu.yaml --set train.max_steps=20"; do
  grep -qF -- "$part" <<<"$printed" || fail "the printed command line lacks '$part'"
done
grep -q "world 2 = ep_size 2 x dp_size 1 (mpi)" launch.log || fail "the job was not one MPI world of 2 ranks"

run=runs/debug-cpu  # the out_dir of debug-cpu.yaml
for f in config.yaml vocab.json metrics.jsonl model.pt; do
  [ -s "$run/$f" ] || fail "$run/$f is missing or empty"
done

# train_loss at steps 10 and 20 (log_interval 10), val_loss at steps 0 and 20: both must fall.
awk '
  function field(name,   v) {
    if (!match($0, "\"" name "\": *[-0-9.eE+]+")) return ""
    v = substr($0, RSTART, RLENGTH); sub(/.*: */, "", v); return v
  }
  { step = field("step") }
  field("train_loss") != "" { train[++nt] = field("train_loss"); train_step[nt] = step }
  field("val_loss") != ""   { val[++nv] = field("val_loss"); val_step[nv] = step }
  END {
    printf "train_loss:"; for (i = 1; i <= nt; i++) printf " %s@%s", train[i], train_step[i]; print ""
    printf "val_loss:  "; for (i = 1; i <= nv; i++) printf " %s@%s", val[i], val_step[i]; print ""
    if (nt != 2 || train_step[nt] != 20) { print "FAIL: expected train_loss at steps 10 and 20"; exit 1 }
    if (nv < 2 || val_step[1] != 0 || val_step[nv] != 20) { print "FAIL: expected val_loss at steps 0 and 20"; exit 1 }
    if (!(train[nt] + 0 < train[1] + 0)) { print "FAIL: train_loss did not fall"; exit 1 }
    if (!(val[nv] + 0 < val[1] - 0.3)) { print "FAIL: val_loss did not fall by 0.3"; exit 1 }
    print "PASS: launch/run.sh -n 2 trained on 2 CPU ranks; the losses fall"
  }' "$run/metrics.jsonl"
