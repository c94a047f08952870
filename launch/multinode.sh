#!/usr/bin/env bash
# Multi-node launcher for `switchyard train` under mpirun with a hostfile: one rank per GPU,
# ranks of one node numbered together (so an expert-parallel group stays on one node's NVLink,
# see Note [Groups]). Prints the exact command line before running it. See --help.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/multinode.sh -H HOSTFILE -n N CONFIG [--set section.key=value ...] [other args]

Runs `switchyard train --config CONFIG ...` on N ranks spread over the hosts of HOSTFILE (Open
MPI format: one host per line, e.g. "node01 slots=8"), G ranks per node with
--map-by ppr:G:node, so ranks [0, G) are on the first node, [G, 2G) on the second, and so on.
The binary, the config and the data must be at the same paths on every node (a shared file
system); PATH, LD_LIBRARY_PATH and every NCCL_* variable are exported to the ranks, and
NCCL_NVLS_ENABLE=0 unless set.

options:
  -H HOSTFILE          the hosts (required)
  -n N                 total number of ranks (required), at most G x the number of hosts
  -g G                 ranks (GPUs) per node (default: the GPUs nvidia-smi lists here)
  --mpi-args "ARGS"    extra mpirun arguments, e.g. "--mca btl_tcp_if_include ib0"
  --dry-run            print the command line and exit without running it
  -h, --help           this text

environment:
  SWITCHYARD_BIN   the switchyard binary (default: build/switchyard of this repository)

example:
  launch/multinode.sh -H hosts.txt -n 16 configs/switch-small.yaml --set parallel.ep_size=8
EOF
}

die() {
  echo "launch/multinode.sh: error: $*" >&2
  echo "(launch/multinode.sh --help shows the usage)" >&2
  exit 2
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
hostfile=""
ranks=""
per_node=""
mpi_extra=""
dry_run=0
config=""
extra=()
while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    -H|-n|-g|--mpi-args)
      [ $# -ge 2 ] || die "$1 expects a value"
      case $1 in
        -H) hostfile=$2 ;;
        -n) ranks=$2 ;;
        -g) per_node=$2 ;;
        --mpi-args) mpi_extra=$2 ;;
      esac
      shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --set|--config)  # switchyard options with a value: passed on with it
      [ $# -ge 2 ] || die "$1 expects a value"
      extra+=("$1" "$2"); shift 2 ;;
    *) if [ -z "$config" ] && [[ $1 != -* ]]; then config=$1; else extra+=("$1"); fi
       shift ;;
  esac
done

[ -n "$hostfile" ] || die "no hostfile given (-H HOSTFILE)"
[ -f "$hostfile" ] || die "hostfile '$hostfile' not found"
[ -n "$ranks" ] || die "no number of ranks given (-n N)"
if ! [[ $ranks =~ ^[1-9][0-9]{0,5}$ ]]; then die "-n expects a positive integer (at most 999999), got '$ranks'"; fi
[ -n "$config" ] || die "no CONFIG file given"
[ -f "$config" ] || die "config file '$config' not found"
bin=${SWITCHYARD_BIN:-$repo/build/switchyard}
[ -x "$bin" ] || die "switchyard binary '$bin' not found or not executable: build it" \
  "(cmake -S . -B build && cmake --build build) or set SWITCHYARD_BIN"
command -v mpirun >/dev/null 2>&1 || die "mpirun not found (install Open MPI)"
mpirun --version 2>&1 | grep -q "Open MPI" ||
  die "this launcher writes Open MPI options (--map-by ppr, -x); with another MPI, start" \
    "'$bin train --config $config ...' with its own launcher (or use launch/slurm.sbatch)"

if [ -z "$per_node" ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    per_node=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  fi
  [ "${per_node:-0}" -gt 0 ] || die "no GPU visible on this node: give the ranks per node with -g G"
fi
if ! [[ $per_node =~ ^[1-9][0-9]{0,5}$ ]]; then die "-g expects a positive integer (at most 999999), got '$per_node'"; fi
hosts=$(grep -cvE '^[[:space:]]*(#|$)' "$hostfile" || true)
[ "$hosts" -ge 1 ] || die "hostfile '$hostfile' lists no host"
[ "$ranks" -le $((hosts * per_node)) ] ||
  die "-n $ranks: $hosts host(s) x $per_node rank(s) per node hold only $((hosts * per_node))"

export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}  # NVLink SHARP: off, see docs
cmd=(mpirun -np "$ranks" --hostfile "$hostfile" --map-by "ppr:$per_node:node" --bind-to none)
if [ "$(id -u)" = 0 ]; then cmd+=(--allow-run-as-root); fi
exported=(PATH LD_LIBRARY_PATH)
while IFS= read -r name; do exported+=("$name"); done < <(compgen -e | grep '^NCCL_' || true)
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then exported+=(CUDA_VISIBLE_DEVICES); fi
for name in "${exported[@]}"; do
  if [ -n "${!name+set}" ]; then cmd+=(-x "$name"); fi
done
if [ -n "$mpi_extra" ]; then
  read -r -a words <<<"$mpi_extra"
  cmd+=("${words[@]}")
fi
cmd+=("$bin" train --config "$config" ${extra[@]+"${extra[@]}"})

quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./,:=+@%-]+$ ]]; then printf '%s' "$1"; else printf '%q' "$1"; fi
}
line="NCCL_NVLS_ENABLE=$(quote "$NCCL_NVLS_ENABLE") "
for word in "${cmd[@]}"; do line+="$(quote "$word") "; done
echo "launch/multinode.sh: $ranks rank(s), $per_node per node, on up to $hosts host(s)" >&2
echo "+ ${line% }" >&2
[ "$dry_run" = 0 ] || exit 0
exec "${cmd[@]}"
