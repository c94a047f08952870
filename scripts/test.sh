#!/usr/bin/env bash
# Every test in one command: set up and build (scripts/setup.sh), then run the whole suite
# with ctest. Exits non-zero when the build or any test fails.
#
#   scripts/test.sh [ctest options...]
#
# Options go to ctest, e.g. `scripts/test.sh -L mpi` (one label), `scripts/test.sh -R Router`
# (by name), `scripts/test.sh -N` (list only). Tests that need what this machine lacks skip
# themselves and are listed as skipped or not run: the mpirun tests without mpirun, the GPU tests
# without CUDA; the reason is printed below before the tests start.
#
# Environment: SWITCHYARD_BUILD_DIR (default build), SWITCHYARD_SETUP_ARGS (extra options for
# setup.sh, e.g. --no-install), CTEST_JOBS (default 2).
set -euo pipefail

case "${1:-}" in
  -h | --help)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 0
    ;;
esac

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build_dir=${SWITCHYARD_BUILD_DIR:-build}

# shellcheck disable=SC2086  # SWITCHYARD_SETUP_ARGS is a list of options
bash scripts/setup.sh --test-tools --build-dir "$build_dir" ${SWITCHYARD_SETUP_ARGS:-}

# What will skip, and why.
if command -v mpirun >/dev/null 2>&1; then
  echo "test.sh: mpirun: $(mpirun --version 2>&1 | sed -n 1p)"
else
  echo "test.sh: mpirun is not on PATH: the tests labelled mpi will skip (install openmpi-bin)"
fi
if grep -q '^SWITCHYARD_CUDA' "$build_dir/CMakeCache.txt" 2>/dev/null ||
  grep -q 'SWITCHYARD_CUDA=1' "$build_dir/compile_commands.json" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "test.sh: CUDA build; GPUs: $(nvidia-smi -L | wc -l)"
  else
    echo "test.sh: CUDA build, but no GPU is visible: the GPU tests will skip"
  fi
else
  echo "test.sh: CPU build (LibTorch without CUDA): the GPU tests will skip"
fi

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 ||
  command -v google-chrome >/dev/null 2>&1; then
  echo "test.sh: headless Chromium for the report's browser test: found"
else
  echo "test.sh: no chromium on PATH: the report's browser test (apps.report_browser) will skip"
fi

# Open MPI in containers: running as root needs consent, and the shared-memory single-copy path
# (CMA) is often blocked; neither changes what the tests check.
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}

jobs=${CTEST_JOBS:-2}
args=(--output-on-failure --no-tests=error -j "$jobs" "$@")
# --test-dir came with ctest 3.20. (No `| grep -q` on a long output here: with pipefail, grep
# leaving early would fail the pipeline.)
ctest_version=$(ctest --version 2>/dev/null | sed -n 's/^ctest version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
read -r ctest_major ctest_minor <<<"${ctest_version:-0 0}"
if [ "$ctest_major" -gt 3 ] || { [ "$ctest_major" -eq 3 ] && [ "$ctest_minor" -ge 20 ]; }; then
  echo "test.sh: ctest --test-dir $build_dir ${args[*]}"
  exec ctest --test-dir "$build_dir" "${args[@]}"
fi
echo "test.sh: (cd $build_dir && ctest ${args[*]})"
cd "$build_dir"
exec ctest "${args[@]}"
