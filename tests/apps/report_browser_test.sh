#!/usr/bin/env bash
# The HTML report in a real browser (registered by tests/CMakeLists.txt as apps.report_browser):
#   report_browser_test.sh SWITCHYARD_BINARY SOURCE_DIR
# Runs a tiny sweep of 3 MoE runs (10 steps each, evaluations and log lines every few steps, so
# that every chart has points), writes `switchyard report` of the sweep folder and of one run
# folder, and renders each in headless Chromium through tests/apps/report_browser_check.sh (no
# script error, every chart drew its points, the results table has a row per run, the page is
# not blank). Exits 77 (ctest SKIP) with the reason when no usable Chromium or Chrome is found.
set -uo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 SWITCHYARD_BINARY SOURCE_DIR" >&2
  exit 2
fi
bin=$1
src=$2
check=$src/tests/apps/report_browser_check.sh
[ -x "$bin" ] || { echo "FAIL: no switchyard binary at $bin"; exit 1; }
[ -f "$check" ] || { echo "FAIL: no $check"; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/sy_report_XXXXXX")
trap 'rm -rf "$work"' EXIT
limit=()
if command -v timeout >/dev/null 2>&1; then limit=(timeout -k 10 200); fi

cat >"$work/grid.yaml" <<'EOF'
grid:
  moe.num_experts: [2, 4, 8]
set:
  moe.top_k: 2
  model.n_layers: 2
  model.d_model: 32
  model.d_ff: 64
  model.block_size: 16
  data.batch_size: 4
  train.max_steps: 10
  train.warmup_steps: 2
  train.eval_interval: 5
  train.eval_iters: 2
  train.log_interval: 2
EOF
sweep=$work/sweep
echo "+ switchyard sweep --config $src/configs/debug-cpu.yaml --grid $work/grid.yaml --out $sweep"
rc=0
"${limit[@]}" "$bin" sweep --config "$src/configs/debug-cpu.yaml" --grid "$work/grid.yaml" \
  --out "$sweep" >"$work/sweep.log" 2>&1 || rc=$?
if [ "$rc" -ne 0 ]; then
  echo "FAIL: the sweep exited $rc:"
  tail -n 30 "$work/sweep.log"
  exit 1
fi
runs=$(($(wc -l <"$sweep/results.csv") - 1))
if [ "$runs" -ne 3 ]; then
  echo "FAIL: results.csv has $runs run(s), expected 3"
  cat "$sweep/results.csv"
  exit 1
fi

# check NAME PAGE RUNS: renders PAGE; records a failure or a skip.
failed=0
skipped=0
check_page() {
  local name=$1 page=$2 expected=$3 rc=0
  echo
  echo "=== $name: $page"
  bash "$check" "$page" "$expected" || rc=$?
  case $rc in
    0) ;;
    77) skipped=1 ;;
    *) echo "FAIL: $name (report_browser_check.sh exited $rc)"; failed=1 ;;
  esac
}

# The sweep's report: kind "sweep", 3 rows, the scaling and throughput charts too.
rc=0
"$bin" report "$sweep" >"$work/report.log" 2>&1 || rc=$?
if [ "$rc" -ne 0 ] || [ ! -s "$sweep/report.html" ]; then
  echo "FAIL: switchyard report $sweep exited $rc:"
  cat "$work/report.log"
  exit 1
fi
check_page "sweep report" "$sweep/report.html" 3
if [ "$skipped" = 1 ]; then exit 77; fi  # no browser: the second page would skip as well

# One run folder's report (kind "run", one row), written elsewhere with -o.
run=$sweep/num_experts=4
rc=0
"$bin" report "$run" -o "$work/run report.html" >"$work/report_run.log" 2>&1 || rc=$?
if [ "$rc" -ne 0 ] || [ ! -s "$work/run report.html" ]; then
  echo "FAIL: switchyard report $run -o '$work/run report.html' exited $rc:"
  cat "$work/report_run.log"
  exit 1
fi
check_page "run report" "$work/run report.html" 1

if [ "$failed" -ne 0 ]; then exit 1; fi
if [ "$skipped" -ne 0 ]; then exit 77; fi
echo
echo "PASS: the sweep's and the run's reports render in the browser"
