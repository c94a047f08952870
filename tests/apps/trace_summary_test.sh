#!/usr/bin/env bash
# scripts/trace_summary.py on a hand-made Chrome trace: the kernels' sums by name and by launching
# operator (Kineto's External id), the per-stream busy time, the last step's timeline, the same
# from a gzipped trace, and one clear error for a missing file or an unknown timeline mark. Skips
# (77) without python3.
#   tests/apps/trace_summary_test.sh SWITCHYARD_BINARY SOURCE_DIR
set -uo pipefail
src=$2
command -v python3 >/dev/null || { echo "SKIP: no python3"; exit 77; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat > "$dir/t.json" <<'JSON'
{"traceEvents":[
{"ph":"X","cat":"cpu_op","name":"aten::mm","ts":0,"dur":50,"args":{"External id":5}},
{"ph":"X","cat":"cpu_op","name":"aten::add","ts":60,"dur":10,"args":{"External id":6}},
{"ph":"X","cat":"kernel","name":"router_kernel","ts":1,"dur":2,"args":{"External id":5,"stream":7}},
{"ph":"X","cat":"kernel","name":"gemm_kernel","ts":4,"dur":6,"args":{"External id":5,"stream":7}},
{"ph":"X","cat":"kernel","name":"router_kernel","ts":100,"dur":2,"args":{"External id":5,"stream":7}},
{"ph":"X","cat":"kernel","name":"side_kernel","ts":101,"dur":30,"args":{"External id":0,"stream":9}},
{"ph":"X","cat":"kernel","name":"add_kernel","ts":140,"dur":10,"args":{"External id":6,"stream":7}}]}
JSON
out=$(python3 "$src/scripts/trace_summary.py" "$dir/t.json" --timeline router_kernel) || {
  echo "FAIL: trace_summary.py exited non-zero"; exit 1; }
fail=0
expect() {  # a line of the output that must match the regular expression
  grep -Eq -- "$1" <<<"$out" || { echo "FAIL: no line matches: $1"; fail=1; }
}
expect '^GPU kernels: 5 events, 0\.050 ms summed'
expect '^ +0\.030 +60\.0% +1 +30\.0  side_kernel'
expect '^ +0\.010 +20\.0% +1 +10\.0  add_kernel'
expect '^ +0\.010 +20\.0% +3  aten::mm'            # router x2 + gemm, by External id 5
expect '^ +0\.030 +60\.0% +1  \(no operator\)'
expect '^ +0\.010 +20\.0% +1  aten::add'
expect 'stream 7: span 0\.149 ms, busy 0\.020 ms \(13%\), 4 kernels'
expect "timeline from the last 'router_kernel' \(3 kernels, 0\.050 ms\)"
expect '^ +1\.0 +30\.0 +9  side_kernel'
expect '^ +40\.0 +10\.0 +7  add_kernel'
# The same trace gzipped (as bench runs keep them) reads the same.
gzip -c "$dir/t.json" > "$dir/t.json.gz"
gz=$(python3 "$src/scripts/trace_summary.py" "$dir/t.json.gz" --timeline router_kernel) || {
  echo "FAIL: trace_summary.py exited non-zero on the gzipped trace"; fail=1; }
[ "$gz" = "$out" ] || { echo "FAIL: the gzipped trace reads differently"; fail=1; }
err=$(python3 "$src/scripts/trace_summary.py" "$dir/none.json" 2>&1) && { echo "FAIL: missing file accepted"; fail=1; }
grep -q "cannot read '$dir/none.json'" <<<"$err" || { echo "FAIL: error was: $err"; fail=1; }
err=$(python3 "$src/scripts/trace_summary.py" "$dir/t.json" --timeline nope 2>&1) && { echo "FAIL: unknown mark accepted"; fail=1; }
grep -q "no kernel name contains 'nope'" <<<"$err" || { echo "FAIL: error was: $err"; fail=1; }
[ $fail = 0 ] && echo "PASS: trace_summary.py"
exit $fail
