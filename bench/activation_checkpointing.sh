#!/usr/bin/env bash
# Peak memory and step time of one config with each train.activation_checkpointing setting
# (none, moe, block), and the losses, which must agree to float rounding:
#   bench/activation_checkpointing.sh SWITCHYARD_BINARY CONFIG [--set K=V ...]
#   bench/activation_checkpointing.sh build/switchyard configs/moe-1b.yaml --set train.max_steps=20
# Each setting trains in a run folder of its own under a temporary folder; the table is printed
# as Markdown (peak: the CUDA allocator's peak on a GPU, the process's max RSS on the CPU; ms/step:
# the mean over the steps after the first).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 SWITCHYARD_BINARY CONFIG [--set K=V ...]" >&2
  exit 2
fi
bin=$1
config=$2
shift 2
work=$(mktemp -d "${TMPDIR:-/tmp}/sy_recompute_XXXXXX")
trap 'rm -rf "$work"' EXIT

# A number of summary.json ($1) by key ($2).
json_number() {
  sed -n "s/.*\"$2\": *\\([-0-9.eE+a-z]*\\).*/\\1/p" "$1" | head -n 1
}

echo "| train.activation_checkpointing | peak memory (MiB) | peak kind | ms/step | final train loss |"
echo "| --- | --- | --- | --- | --- |"
for mode in none moe block; do
  "$bin" train --config "$config" "$@" --set "train.activation_checkpointing=$mode" \
    --set train.checkpoint_interval=-1 --set "train.out_dir=$work/$mode" >"$work/$mode.log" 2>&1 ||
    { echo "FAIL: train with activation_checkpointing $mode; its log:" >&2; tail -n 30 "$work/$mode.log" >&2; exit 1; }
  summary="$work/$mode/summary.json"
  loss=$(grep '"train_loss"' "$work/$mode/metrics.jsonl" | tail -n 1 |
         sed -n 's/.*"train_loss": *\([-0-9.eE+]*\).*/\1/p')
  peak_kind=$(sed -n 's/.*"peak_memory": *"\([a-z_]*\)".*/\1/p' "$summary")
  printf "| %s | %.0f | %s | %.1f | %s |\n" "$mode" "$(json_number "$summary" peak_mib)" \
    "$peak_kind" "$(json_number "$summary" ms_per_step)" "$loss"
done
