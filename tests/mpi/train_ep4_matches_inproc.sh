#!/usr/bin/env bash
# Training under mpirun equals training on in-process ranks (registered by tests/CMakeLists.txt):
#   train_ep4_matches_inproc.sh SWITCHYARD_BINARY SOURCE_DIR
# Runs debug-cpu for 10 steps with ep_size 4 as `mpirun -np 4 switchyard train` (MPI
# communicator, 4 processes) and as `switchyard train --ranks 4` (4 threads, in-process
# communicator), then checks with awk that the train_loss of every step agrees to 1e-5 relative.
# Exits 77 (ctest SKIP) with the reason when mpirun is missing.
set -euo pipefail
# shellcheck source=tests/mpi/mpi_common.sh
source "$(dirname "$0")/mpi_common.sh"
mpi_script_args "$@"
np=4
steps=10

mpi_setup "$np"
limit=()
if command -v timeout >/dev/null 2>&1; then limit=(timeout -k 10 400); fi

work=$(mktemp -d "${TMPDIR:-/tmp}/sy_ep4_XXXXXX")
trap 'rm -rf "$work"' EXIT
settings=(--config "$src/configs/debug-cpu.yaml" --set parallel.ep_size=4
          --set "train.max_steps=$steps" --set train.log_interval=1 --set train.eval_interval=0
          --set data.batch_size=8)

run mpi "${limit[@]}" mpirun "${mpi_args[@]}" "$bin" train "${settings[@]}" \
  --set "train.out_dir=$work/mpi"
run inproc "${limit[@]}" "$bin" train "${settings[@]}" --ranks "$np" \
  --set "train.out_dir=$work/inproc"

# Both must really have run 4 ranks: 4 singletons from a mismatched mpirun would also "pass".
grep -q "world $np = ep_size 4 x dp_size 1 (mpi)" "$work/mpi.log" ||
  { echo "FAIL: the mpirun job is not one MPI world of $np ranks:"; grep "\[parallel\]" "$work/mpi.log"; exit 1; }
grep -q "world $np = ep_size 4 x dp_size 1 (inproc)" "$work/inproc.log" ||
  { echo "FAIL: --ranks $np did not run $np in-process ranks"; exit 1; }

# "step train_loss" for every line of metrics.jsonl that has a train_loss.
losses() {
  awk '/"train_loss"/ {
         match($0, /"step": *[0-9]+/); step = substr($0, RSTART, RLENGTH); sub(/.*: */, "", step)
         match($0, /"train_loss": *[-0-9.eE+]+/); v = substr($0, RSTART, RLENGTH); sub(/.*: */, "", v)
         print step, v
       }' "$1"
}
losses "$work/mpi/metrics.jsonl" >"$work/mpi.loss"
losses "$work/inproc/metrics.jsonl" >"$work/inproc.loss"

awk -v steps="$steps" '
  NR == FNR { mpi[$1] = $2; n_mpi++; next }
  { inproc[$1] = $2; n_inproc++ }
  END {
    bad = 0
    if (n_mpi != steps || n_inproc != steps) {
      printf "FAIL: expected %d train_loss lines, mpirun has %d and --ranks has %d\n", steps, n_mpi, n_inproc
      exit 1
    }
    printf "%5s %12s %12s %10s\n", "step", "mpirun", "--ranks", "rel diff"
    for (s = 1; s <= steps; s++) {
      if (!(s in mpi) || !(s in inproc)) { printf "FAIL: step %d missing\n", s; bad = 1; continue }
      a = mpi[s] + 0; b = inproc[s] + 0
      d = a - b; if (d < 0) d = -d
      m = a < 0 ? -a : a
      rel = m > 0 ? d / m : d
      flag = rel <= 1e-5 ? "" : "  <-- differs"
      if (flag != "") bad = 1
      printf "%5d %12.7f %12.7f %10.2e%s\n", s, a, b, rel, flag
    }
    if (bad) { print "FAIL: train_loss under mpirun differs from --ranks (tolerance 1e-5 relative)"; exit 1 }
    print "PASS: mpirun -np 4 and --ranks 4 agree on every step"
  }' "$work/mpi.loss" "$work/inproc.loss"
