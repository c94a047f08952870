#!/usr/bin/env bash
# Installs what Switchyard needs (Debian/Ubuntu packages), then configures and builds it.
#
#   scripts/setup.sh [--no-install] [--no-build] [--test-tools] [--build-dir DIR] [-- CMAKE_ARGS...]
#
# --test-tools also installs what only some tests use: Debian's chromium, in which the HTML
# report is rendered headless (tests/apps/report_browser_test.sh). It is optional: where it
# cannot be installed (no network, another distribution) a note is printed and those tests skip.
#
# Idempotent and quick when everything is there: packages are checked with dpkg (a tool also
# counts when its command is on PATH: cmake, ninja, g++, mpirun), and `apt-get update` runs only
# when one is missing; CMake is re-run only when the build folder is new, was configured for
# another LibTorch, or CMAKE_ARGS are given (ninja re-runs it when a CMakeLists.txt changes).
#
# LibTorch comes from one of two places (Note [Two toolchains] in docs/design.md):
#   system  Debian's libtorch-dev (LibTorch 1.13, CPU only); the default;
#   pip     the LibTorch inside python3's torch package (2.x with CUDA, on GPU machines): chosen
#           when `python3 -c 'import torch'` works and that torch is a CUDA build, or forced with
#           SWITCHYARD_TORCH=pip. libtorch-dev is then not installed, and CMake gets
#           -DCMAKE_PREFIX_PATH=<torch.utils.cmake_prefix_path>.
# SWITCHYARD_TORCH=system forces Debian's LibTorch even where python3 has a CUDA torch.
#
# Runs non-interactively (DEBIAN_FRONTEND=noninteractive, apt-get -y), with sudo when not root.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

die() {
  echo "setup.sh: $*" >&2
  exit 1
}

say() { echo "setup.sh: $*"; }

install=1
build=1
test_tools=0
build_dir=build
cmake_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-install) install=0 ;;
    --no-build) build=0 ;;
    --test-tools) test_tools=1 ;;
    --build-dir)
      [ $# -ge 2 ] || die "--build-dir expects a folder"
      build_dir=$2
      shift
      ;;
    --build-dir=*) build_dir=${1#*=} ;;
    -h | --help)
      usage
      exit 0
      ;;
    --)
      shift
      cmake_args=("$@")
      break
      ;;
    *) die "unknown option '$1' (see scripts/setup.sh --help)" ;;
  esac
  shift
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
start=$SECONDS

# --- Which LibTorch -------------------------------------------------------------------------

torch_source=system
torch_info=
case "${SWITCHYARD_TORCH:-auto}" in
  pip | system | auto) ;;
  *) die "SWITCHYARD_TORCH must be pip, system or auto, got '${SWITCHYARD_TORCH}'" ;;
esac
if [ "${SWITCHYARD_TORCH:-auto}" != system ] && command -v python3 >/dev/null 2>&1; then
  # One import (it takes seconds): "<cuda build 0|1> <version> <cuda version> <cmake prefix>".
  torch_info=$(python3 -c 'import torch; print(int(bool(torch.version.cuda) or torch.cuda.is_available()), torch.__version__, torch.version.cuda, torch.utils.cmake_prefix_path)' 2>/dev/null) ||
    torch_info=
fi
if [ "${SWITCHYARD_TORCH:-auto}" = pip ]; then
  [ -n "$torch_info" ] ||
    die "SWITCHYARD_TORCH=pip, but 'python3 -c \"import torch\"' fails: install PyTorch (pip install torch) first"
  torch_source=pip
elif [ "${SWITCHYARD_TORCH:-auto}" = auto ] && [ "${torch_info%% *}" = 1 ]; then
  torch_source=pip  # a CUDA build of torch (the GPU may be invisible on a build node)
fi

torch_prefix=
if [ "$torch_source" = pip ]; then
  read -r _ torch_version torch_cuda torch_prefix <<<"$torch_info"
  say "LibTorch from python3's torch $torch_version (CUDA $torch_cuda): $torch_prefix"
else
  say "LibTorch from Debian's libtorch-dev (CPU)"
fi

# --- Packages -------------------------------------------------------------------------------

packages=(cmake ninja-build g++ libopenmpi-dev openmpi-bin libyaml-cpp-dev libgtest-dev)
# OpenBLAS: Debian's LibTorch calls the system BLAS, and the reference BLAS it falls back to is
# over twice slower for CPU training (makemoe-shakespeare on 2 cores: 1690 vs 720 ms/step).
if [ "$torch_source" = system ]; then packages+=(libtorch-dev libopenblas0-pthread); fi

if [ "$install" = 1 ]; then
  if ! command -v dpkg >/dev/null 2>&1; then
    say "no dpkg (not Debian/Ubuntu): cannot check packages; install the equivalents of" \
      "${packages[*]} yourself. CMake reports what it cannot find."
  else
    missing=()
    for p in "${packages[@]}"; do
      # `|| true`: dpkg -s fails for a package never installed, which pipefail would make fatal.
      status=$(dpkg -s "$p" 2>/dev/null | sed -n 's/^Status: //p' || true)
      [ "$status" = "install ok installed" ] && continue
      # Tools may come from elsewhere (pip's cmake and ninja, a cluster's MPI module).
      case "$p" in
        cmake | g++) command -v "$p" >/dev/null 2>&1 && continue ;;
        ninja-build) command -v ninja >/dev/null 2>&1 && continue ;;
        openmpi-bin) command -v mpirun >/dev/null 2>&1 && continue ;;
      esac
      missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
      say "packages: all installed"
    else
      say "installing: ${missing[*]}"
      sudo=()
      if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 ||
          die "need root or sudo to install ${missing[*]} (or install them and pass --no-install)"
        sudo=(sudo)
      fi
      # --no-install-recommends: what the build needs and no more (no Fortran coarrays with MPI).
      ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -q
      ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
    fi
  fi
fi

# Optional test tools: a failure to install them is a note, not an error.
if [ "$install" = 1 ] && [ "$test_tools" = 1 ] && command -v dpkg >/dev/null 2>&1; then
  if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 ||
    command -v google-chrome >/dev/null 2>&1; then
    say "test tools: a Chromium is installed"
  else
    say "installing the test tools: chromium (for the HTML report's browser test)"
    sudo=()
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo=(sudo); fi
    if ! { ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
      ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends chromium </dev/null; }; then
      say "could not install chromium: the report's browser test will skip"
    fi
  fi
fi

# --- Configure and build --------------------------------------------------------------------

if [ "$build" = 0 ]; then
  say "done in $((SECONDS - start)) s (--no-build)"
  exit 0
fi

for tool in cmake ninja; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' is not on PATH (run without --no-install)"
done

# What this build folder was configured for; a change means a fresh configure.
stamp="torch=${torch_source} prefix=${torch_prefix}"
stamp_file="$build_dir/.switchyard-setup"
configure=1
fresh=()
if [ -f "$build_dir/CMakeCache.txt" ]; then
  generator=$(sed -n 's/^CMAKE_GENERATOR:INTERNAL=//p' "$build_dir/CMakeCache.txt")
  [ "$generator" = Ninja ] ||
    die "$build_dir was configured with the '$generator' generator; remove it or pass --build-dir DIR"
  if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
    if [ -f "$build_dir/build.ninja" ] && [ ${#cmake_args[@]} -eq 0 ]; then configure=0; fi
  elif [ -f "$stamp_file" ]; then
    say "$build_dir was configured for another LibTorch ($(cat "$stamp_file")): configuring afresh"
    fresh=(--fresh)  # CMake >= 3.24; older versions: remove the cache by hand
    cmake_help=$(cmake --help 2>/dev/null || true)
    if [[ $cmake_help != *--fresh* ]]; then
      rm -f "$build_dir/CMakeCache.txt"
      fresh=()
    fi
  fi
fi

if [ "$configure" = 1 ]; then
  cmd=(cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release)
  if [ "$torch_source" = pip ]; then cmd+=("-DCMAKE_PREFIX_PATH=$torch_prefix"); fi
  cmd+=(${fresh[@]+"${fresh[@]}"} ${cmake_args[@]+"${cmake_args[@]}"})
  say "${cmd[*]}"
  "${cmd[@]}"
  echo "$stamp" >"$stamp_file"
else
  say "$build_dir is configured (ninja re-runs CMake when a CMakeLists.txt changes)"
fi

jobs=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)
say "ninja -C $build_dir -j $jobs"
ninja -C "$build_dir" -j "$jobs"
say "built $build_dir/switchyard in $((SECONDS - start)) s"
