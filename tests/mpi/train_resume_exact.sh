#!/usr/bin/env bash
# Resume exactness under mpirun (registered by tests/CMakeLists.txt; docs/checkpoints.md):
#   train_resume_exact.sh SWITCHYARD_BINARY SOURCE_DIR
# `mpirun -np 2 switchyard train` (ep_size 2, dropout on, a noisy router, the exchanges in 2
# chunks: moe.a2a_chunks) runs 20 steps once uninterrupted, and
# once stopped after step 9 (train.stop_at_step, a checkpoint between log steps) and resumed with
# `--resume auto`. Every train and val loss logged after step 9 must be the same to the printed
# digits, and the final model.pt byte for byte. Exits 77 (ctest SKIP) when mpirun is missing.
set -euo pipefail
# shellcheck source=tests/mpi/mpi_common.sh
source "$(dirname "$0")/mpi_common.sh"
mpi_script_args "$@"
np=2

mpi_setup "$np"
limit=()
if command -v timeout >/dev/null 2>&1; then limit=(timeout -k 10 300); fi

work=$(mktemp -d "${TMPDIR:-/tmp}/sy_resume_XXXXXX")
trap 'rm -rf "$work"' EXIT
settings=(--config "$src/configs/debug-cpu.yaml" --set parallel.ep_size=2
          --set model.dropout=0.1 --set moe.router=noisy_topk --set moe.a2a_chunks=2
          --set model.d_model=32 --set model.d_ff=64 --set model.block_size=32
          --set data.batch_size=8 --set train.max_steps=20 --set train.log_interval=5
          --set train.eval_interval=10 --set train.eval_iters=2 --set train.checkpoint_interval=4)

run whole "${limit[@]}" mpirun "${mpi_args[@]}" "$bin" train "${settings[@]}" --set "train.out_dir=$work/whole"
run first "${limit[@]}" mpirun "${mpi_args[@]}" "$bin" train "${settings[@]}" --set "train.out_dir=$work/parts" \
  --set train.stop_at_step=9
run rest "${limit[@]}" mpirun "${mpi_args[@]}" "$bin" train "${settings[@]}" --set "train.out_dir=$work/parts" \
  --resume auto

grep -q "world $np = ep_size 2 x dp_size 1 (mpi)" "$work/whole.log" ||
  { echo "FAIL: not one MPI world of $np ranks"; grep "\[parallel\]" "$work/whole.log"; exit 1; }
grep -q "resumed from $work/parts/checkpoints/step_9 at step 9" "$work/rest.log" ||
  { echo "FAIL: the second run did not resume from step_9:"; tail -n 20 "$work/rest.log"; exit 1; }

# The loss lines after step 9 without the timing fields: step, train_loss, aux, z, drop, gnorm, lr
# (train lines), or the eval losses.
after9() {
  sed -E 's/, "tokens_per_s": [^,]*, "ms_per_step": [^,]*//' "$1" |
    awk '{ match($0, /"step": *[0-9]+/); s = substr($0, RSTART + 7, RLENGTH - 7) + 0; if (s > 9) print }'
}
after9 "$work/whole/metrics.jsonl" >"$work/whole.after"
after9 "$work/parts/metrics.jsonl" >"$work/parts.after"
lines=$(wc -l <"$work/whole.after")
if [ "$lines" -ne 5 ]; then  # train 10, 15, 20; eval 10, 20
  echo "FAIL: expected 5 metrics lines after step 9 in the uninterrupted run, got $lines:"
  cat "$work/whole.after"
  exit 1
fi
if ! diff "$work/whole.after" "$work/parts.after"; then
  echo "FAIL: the resumed run logged other values after step 9 than the uninterrupted run"
  exit 1
fi
if ! cmp "$work/whole/model.pt" "$work/parts/model.pt"; then
  echo "FAIL: the final weights differ"
  exit 1
fi
echo "PASS: stopped at 9 and resumed under mpirun -np $np = uninterrupted ($lines metrics lines, model.pt identical)"
