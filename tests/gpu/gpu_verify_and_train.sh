#!/usr/bin/env bash
# GPU checks of one process on one GPU (ctest label gpu; exit 77 = SKIP where there is no GPU or
# the build has no CUDA):
#   1. `switchyard verify` with train.device=cuda: the MoE layer on the GPU against the CPU
#      reference (outputs, gradients, losses, dropped sets, one SGD step), top-2 with drops,
#      top-1, and dropless;
#      and configs/deepseek-small.yaml with its variants, and data.tasks expert masks (fixed and
#      learned) on 4 in-process ranks;
#   2. 60 training steps of configs/debug-cpu.yaml on the GPU (fp32, bf16 autocast, and bf16
#      autocast with bf16 parameters) whose loss falls.
# usage: gpu_verify_and_train.sh SWITCHYARD_BINARY SOURCE_DIR
set -euo pipefail
bin=$1
src=$2
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q GPU; then
  echo "SKIP: no NVIDIA GPU on this machine (nvidia-smi lists none)"
  exit 77
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
if "$bin" train --config "$src/configs/debug-cpu.yaml" --set train.device=cuda \
     --set train.max_steps=1 --set train.eval_interval=0 --set train.out_dir=probe >probe.log 2>&1; then
  :
elif grep -q "no CUDA" probe.log; then
  echo "SKIP: this switchyard was built against a LibTorch without CUDA"
  exit 77
else
  cat probe.log
  exit 1
fi

for set in "moe.router=topk moe.top_k=2 moe.capacity_factor=0.5" \
           "moe.router=switch moe.top_k=1 moe.capacity_factor=1.25" \
           "moe.router=topk moe.top_k=2 moe.capacity_factor=0"; do
  args=()
  for kv in $set; do args+=(--set "$kv"); done
  echo "== verify on cuda: $set"
  "$bin" verify --config "$src/configs/debug-cpu.yaml" --set train.device=cuda "${args[@]}"
done

# The DeepSeek-V3-style layer (docs/moe.md): shared experts, sigmoid scores, score bias, sequence
# aux loss; and group-limited routing with the variance loss, dropless.
echo "== verify on cuda: configs/deepseek-small.yaml"
"$bin" verify --config "$src/configs/deepseek-small.yaml" --set train.device=cuda
echo "== verify on cuda: configs/deepseek-small.yaml, route groups, variance loss, dropless"
"$bin" verify --config "$src/configs/deepseek-small.yaml" --set train.device=cuda \
  --set moe.route_groups=4 --set moe.route_group_limit=2 --set moe.aux_loss=variance \
  --set moe.capacity_factor=0

# data.tasks expert masks (docs/tasks.md): fixed masks over 4 in-process ranks with ep 4 (every
# choice inside its task's mask, as on one process), and learned gates with ep 2 x dp 2.
echo "== verify on cuda: configs/continual/task-b.yaml (task masks), 4 ranks"
"$bin" verify --config "$src/configs/continual/task-b.yaml" --set train.device=cuda --ranks 4
echo "== verify on cuda: learned task masks, sigmoid scores, 4 ranks, ep 2"
"$bin" verify --config "$src/configs/continual/task-b.yaml" --set train.device=cuda --ranks 4 \
  --set parallel.ep_size=2 --set moe.task_masks=learned --set moe.score=sigmoid

# fp32; bf16 autocast over fp32 parameters; bf16 autocast over bf16 parameters (fp32 masters).
for dtype in fp32 bf16 bf16params; do
  echo "== train on cuda, $dtype"
  precision=(--set train.dtype=${dtype%params})
  if [ "$dtype" = bf16params ]; then precision+=(--set train.param_dtype=bf16); fi
  "$bin" train --config "$src/configs/debug-cpu.yaml" --set train.device=cuda \
    "${precision[@]}" --set train.max_steps=60 --set train.eval_interval=30 \
    --set train.out_dir=run_$dtype 2>&1 | grep -E "eval|done|throughput"
  # val loss at step 60 well below step 0 (ln 48 = 3.87 at init)
  first=$(grep '"val_loss"' run_$dtype/metrics.jsonl | head -1 | sed 's/.*"val_loss": \([0-9.e+-]*\).*/\1/')
  last=$(grep '"val_loss"' run_$dtype/metrics.jsonl | tail -1 | sed 's/.*"val_loss": \([0-9.e+-]*\).*/\1/')
  awk -v a="$first" -v b="$last" -v d=$dtype 'BEGIN { if (!(b < 0.7 * a)) { printf "FAIL: %s val loss %s -> %s did not fall below 0.7x\n", d, a, b; exit 1 } printf "%s val loss %s -> %s\n", d, a, b }'
done
echo "PASS"
