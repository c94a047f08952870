#!/usr/bin/env bash
# Single-node launcher for `switchyard train`: one rank per GPU when GPUs are visible, CPU ranks
# otherwise. Prints the exact command line before running it. See --help.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/run.sh -n N CONFIG [--set section.key=value ...] [other switchyard train args]

Starts `switchyard train --config CONFIG ...` on N ranks of this machine.
  GPUs (nvidia-smi lists at least one): one rank per GPU, N <= the number of GPUs; the ranks see
        GPUs 0..N-1 (or CUDA_VISIBLE_DEVICES when set); NCCL_NVLS_ENABLE=0 unless set.
  CPU  (no GPU): N CPU processes; switchyard shares the cores among them.
N = 1 runs the binary directly; N > 1 runs it under mpirun (Open MPI: -x exports NCCL_* and
CUDA_VISIBLE_DEVICES, --allow-run-as-root only as root, --oversubscribe only when N > cores).

options:
  -n N         number of ranks (default 1)
  --dry-run    print the command line and exit without running it
  -h, --help   this text

environment:
  SWITCHYARD_BIN   the switchyard binary (default: build/switchyard of this repository)

examples:
  launch/run.sh -n 2 configs/debug-cpu.yaml --set train.max_steps=20
  launch/run.sh -n 8 configs/switch-small.yaml --set train.out_dir=runs/s8 --log-all-ranks
EOF
}

die() {
  echo "launch/run.sh: error: $*" >&2
  echo "(launch/run.sh --help shows the usage)" >&2
  exit 2
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ranks=1
dry_run=0
config=""
extra=()
while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    -n) [ $# -ge 2 ] || die "-n expects a number of ranks"
        ranks=$2; shift 2 ;;
    -n*) ranks=${1#-n}; shift ;;
    --dry-run) dry_run=1; shift ;;
    --set|--config|--ranks)  # switchyard options with a value: passed on with it
        [ $# -ge 2 ] || die "$1 expects a value"
        extra+=("$1" "$2"); shift 2 ;;
    *) if [ -z "$config" ] && [[ $1 != -* ]]; then config=$1; else extra+=("$1"); fi
       shift ;;
  esac
done

if ! [[ $ranks =~ ^[1-9][0-9]{0,5}$ ]]; then die "-n expects a positive integer (at most 999999), got '$ranks'"; fi
[ -n "$config" ] || die "no CONFIG file given"
[ -f "$config" ] || die "config file '$config' not found"
bin=${SWITCHYARD_BIN:-$repo/build/switchyard}
[ -x "$bin" ] || die "switchyard binary '$bin' not found or not executable: build it" \
  "(cmake -S . -B build && cmake --build build) or set SWITCHYARD_BIN"

# GPUs: those CUDA_VISIBLE_DEVICES names when set, else every GPU nvidia-smi lists.
gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi
env_vars=()  # NAME=value pairs set for the run (and printed)
if [ "${CUDA_VISIBLE_DEVICES+set}" = set ] && [ -z "$CUDA_VISIBLE_DEVICES" ]; then
  gpus=0  # set to empty: CUDA sees no GPU
fi
if [ "$gpus" -gt 0 ]; then
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    IFS=, read -r -a visible <<<"$CUDA_VISIBLE_DEVICES"
    gpus=${#visible[@]}
  else
    CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((ranks - 1)))
    export CUDA_VISIBLE_DEVICES
  fi
  [ "$ranks" -le "$gpus" ] || die "-n $ranks: only $gpus GPU(s) visible (one rank per GPU)"
  export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}  # NVLink SHARP: off, see docs
  env_vars+=("CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES")
  echo "launch/run.sh: $ranks rank(s) on GPUs $CUDA_VISIBLE_DEVICES" >&2
else
  echo "launch/run.sh: no GPU visible: $ranks CPU rank(s)" >&2
fi
while IFS= read -r name; do
  env_vars+=("$name=${!name}")
done < <(compgen -e | grep '^NCCL_' || true)

cmd=()
if [ "$ranks" -gt 1 ]; then
  command -v mpirun >/dev/null 2>&1 || die "-n $ranks needs mpirun (install Open MPI), or use" \
    "'$bin train --ranks $ranks ...' for in-process CPU ranks"
  cmd=(mpirun -np "$ranks")
  if mpirun --version 2>&1 | grep -q "Open MPI"; then
    # Cores Open MPI counts as slots: physical cores, within what this process may use.
    cores=$(nproc)
    if command -v lscpu >/dev/null 2>&1; then
      physical=$(lscpu -p=Core,Socket 2>/dev/null | grep -v '^#' | sort -u | wc -l)
      if [ "$physical" -gt 0 ] && [ "$physical" -lt "$cores" ]; then cores=$physical; fi
    fi
    if [ "$(id -u)" = 0 ]; then cmd+=(--allow-run-as-root); fi
    if [ "$ranks" -gt "$cores" ]; then cmd+=(--oversubscribe); fi
    cmd+=(--bind-to none)  # switchyard divides the cores among its ranks itself
    for pair in ${env_vars[@]+"${env_vars[@]}"}; do cmd+=(-x "${pair%%=*}"); done
  fi
fi
cmd+=("$bin" train --config "$config" ${extra[@]+"${extra[@]}"})

# The line, runnable as printed (the environment it sets first); words quoted only where needed.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./,:=+@%-]+$ ]]; then printf '%s' "$1"; else printf '%q' "$1"; fi
}
line=""
for pair in ${env_vars[@]+"${env_vars[@]}"}; do line+="${pair%%=*}=$(quote "${pair#*=}") "; done
for word in "${cmd[@]}"; do line+="$(quote "$word") "; done
echo "+ ${line% }" >&2
[ "$dry_run" = 0 ] || exit 0
exec "${cmd[@]}"
