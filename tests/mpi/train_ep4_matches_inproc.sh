#!/usr/bin/env bash
# Training under mpirun equals training on in-process ranks (registered by tests/CMakeLists.txt):
#   train_ep4_matches_inproc.sh SWITCHYARD_BINARY SOURCE_DIR
# Runs each model kind for 10 steps with ep_size 4 as `mpirun -np 4 switchyard train` (MPI
# communicator, 4 processes) and as `switchyard train --ranks 4` (4 threads, in-process
# communicator), then checks with awk that the train_loss of every step agrees to 1e-5 relative:
# debug-cpu (decoder), encoder-mlm-cpu (encoder) and seq2seq-cpu (encoder_decoder, with
# train.activation_checkpointing block, whose recomputed MoE layers repeat their all-to-alls), and
# debug-cpu with the two-level all-to-all (parallel.a2a hierarchical, 2 nodes x 2 ranks),
# debug-cpu dropless with its exchanges in 3 chunks (moe.a2a_chunks) and recomputed MoE layers,
# and debug-cpu with the node-deduplicated dispatch (moe.dedup_dispatch, 2 nodes x 2, each token
# routed within one of 2 route groups).
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
# "step train_loss" for every line of metrics.jsonl that has a train_loss.
losses() {
  awk '/"train_loss"/ {
         match($0, /"step": *[0-9]+/); step = substr($0, RSTART, RLENGTH); sub(/.*: */, "", step)
         match($0, /"train_loss": *[-0-9.eE+]+/); v = substr($0, RSTART, RLENGTH); sub(/.*: */, "", v)
         print step, v
       }' "$1"
}

# compare NAME CONFIG [--set ...]: the two launches of one config, step by step.
compare() {
  local name=$1 config=$2
  shift 2
  local settings=(--config "$src/configs/$config" --set parallel.ep_size=4
                  --set "train.max_steps=$steps" --set train.log_interval=1
                  --set train.eval_interval=0 --set data.batch_size=8 "$@")
  run "$name.mpi" "${limit[@]}" mpirun "${mpi_args[@]}" "$bin" train "${settings[@]}" \
    --set "train.out_dir=$work/$name.mpi"
  run "$name.inproc" "${limit[@]}" "$bin" train "${settings[@]}" --ranks "$np" \
    --set "train.out_dir=$work/$name.inproc"

  # Both must really have run 4 ranks: 4 singletons from a mismatched mpirun would also "pass".
  grep -q "world $np = ep_size 4 x dp_size 1 (mpi)" "$work/$name.mpi.log" ||
    { echo "FAIL: $name: the mpirun job is not one MPI world of $np ranks:"; grep "\[parallel\]" "$work/$name.mpi.log"; exit 1; }
  grep -q "world $np = ep_size 4 x dp_size 1 (inproc)" "$work/$name.inproc.log" ||
    { echo "FAIL: $name: --ranks $np did not run $np in-process ranks"; exit 1; }

  losses "$work/$name.mpi/metrics.jsonl" >"$work/$name.mpi.loss"
  losses "$work/$name.inproc/metrics.jsonl" >"$work/$name.inproc.loss"
  echo "== $name"
  awk -v steps="$steps" -v name="$name" '
    NR == FNR { mpi[$1] = $2; n_mpi++; next }
    { inproc[$1] = $2; n_inproc++ }
    END {
      bad = 0
      if (n_mpi != steps || n_inproc != steps) {
        printf "FAIL: %s: expected %d train_loss lines, mpirun has %d and --ranks has %d\n", name, steps, n_mpi, n_inproc
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
      if (bad) { printf "FAIL: %s: train_loss under mpirun differs from --ranks (tolerance 1e-5 relative)\n", name; exit 1 }
      printf "PASS: %s: mpirun -np 4 and --ranks 4 agree on every step\n", name
    }' "$work/$name.mpi.loss" "$work/$name.inproc.loss"
}

compare decoder debug-cpu.yaml
compare encoder encoder-mlm-cpu.yaml
compare seq2seq seq2seq-cpu.yaml --set train.activation_checkpointing=block
compare two_level debug-cpu.yaml --set parallel.a2a=hierarchical --set parallel.ranks_per_node=2
compare chunked debug-cpu.yaml --set moe.a2a_chunks=3 --set moe.capacity_factor=0 \
  --set train.activation_checkpointing=moe
compare dedup debug-cpu.yaml --set parallel.a2a=hierarchical --set parallel.ranks_per_node=2 \
  --set moe.dedup_dispatch=true --set moe.route_groups=2 --set moe.route_group_limit=1
