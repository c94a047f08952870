#!/usr/bin/env bash
# Renders a page written by `switchyard report` in headless Chromium and checks that it works
# (ctest; exit 77 = SKIP where no Chromium or Chrome can run):
#   1. the page's scripts finished without an error: <body data-sy-status="ok">, the error box
#      <div id="sy-errors"> is empty, and Chromium's log holds no uncaught error or console
#      error from the page;
#   2. every chart (<figure class="sy-chart" data-points="N">) says how many points it drew and
#      that many .sy-point elements carry its id; the charts that must have data have N > 0:
#      loss-train, loss-val, drop, aux, heatmap-layer0, and for a sweep also scaling-params,
#      scaling-flops and throughput (REPORT_CHECK_CHARTS="id id ..." replaces that list; with
#      EXPECTED_RUNS 0 they need only be there);
#   3. the results table (#results-table) has EXPECTED_RUNS rows;
#   4. a screenshot of the page is not blank: its PNG is at least 3 times the size of a
#      screenshot of an empty page of the same size.
# usage: report_browser_check.sh REPORT_HTML EXPECTED_RUNS
# The browser: $CHROME if set, else the first of chromium, chromium-browser, google-chrome,
# google-chrome-stable on PATH. It runs with --no-sandbox and a temporary profile, so root can
# run it (CI containers).
set -uo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 REPORT_HTML EXPECTED_RUNS" >&2
  exit 2
fi
page=$1
expected_runs=$2
if [ ! -f "$page" ]; then
  echo "FAIL: no such file: $page"
  exit 1
fi
case $expected_runs in
  ''|*[!0-9]*) echo "FAIL: EXPECTED_RUNS must be a number, not '$expected_runs'"; exit 2 ;;
esac

browser=${CHROME:-}
if [ -z "$browser" ]; then
  for b in chromium chromium-browser google-chrome google-chrome-stable; do
    if command -v "$b" >/dev/null 2>&1; then browser=$(command -v "$b"); break; fi
  done
fi
if [ -z "$browser" ]; then
  echo "SKIP: no Chromium or Chrome found (looked for chromium, chromium-browser, google-chrome, google-chrome-stable; or set CHROME)"
  exit 77
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
limit=${REPORT_CHECK_TIMEOUT:-120}
run_with_limit() {
  if command -v timeout >/dev/null 2>&1; then timeout "$limit" "$@"; else "$@"; fi
}
# shellcheck disable=SC2054  # the comma in --window-size is meant
flags=(--headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run
       --no-default-browser-check --disable-extensions --disable-background-networking
       --disable-component-update --disable-sync --disable-breakpad --mute-audio --hide-scrollbars
       --user-data-dir="$work/profile" --window-size=1400,3000 --virtual-time-budget=5000)

# The page's file:// URL (absolute, with the characters that URLs reserve escaped).
abs=$(cd "$(dirname "$page")" && pwd)/$(basename "$page")
path=${abs//%/%25}
path=${path// /%20}
path=${path//#/%23}
path=${path//\?/%3F}
url="file://$path"

# A browser that cannot render a trivial page (a snap wrapper without snapd, missing libraries)
# is a machine without a usable browser: skip, with what it said.
run_with_limit "$browser" "${flags[@]}" --dump-dom 'data:text/html,%3Cp%3Esy-probe%3C/p%3E' \
  >"$work/probe.html" 2>"$work/probe.err"
if ! grep -q 'sy-probe' "$work/probe.html"; then
  echo "SKIP: $browser is installed but cannot render a page headless; it said:"
  tail -n 5 "$work/probe.err"
  exit 77
fi
echo "browser: $browser ($("$browser" --version 2>/dev/null | head -n 1))"
echo "page: $url, expecting $expected_runs run(s)"

failures=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; failures=$((failures + 1)); }

# --- render, keep the DOM (Chromium prints it to stdout) and the log (stderr) ---
run_with_limit "$browser" "${flags[@]}" --enable-logging=stderr --v=0 --dump-dom "$url" \
  >"$work/dom.html" 2>"$work/stderr.txt"
rc=$?
if [ $rc -eq 124 ]; then
  bad "the browser did not finish rendering within ${limit} s"
elif [ $rc -ne 0 ]; then
  bad "the browser exited with status $rc"
fi
# One line, so that patterns see tags whatever the line breaks (titles hold newlines).
tr '\n\r' '  ' <"$work/dom.html" >"$work/flat.html"
if ! grep -q '<body' "$work/flat.html"; then
  bad "no DOM came back; the browser said:"
  tail -n 20 "$work/stderr.txt"
  echo "checks failed: $failures"
  exit 1
fi

# --- 1. no error ---
body=$(grep -o '<body[^>]*>' "$work/flat.html" | head -n 1)
status=$(printf '%s' "$body" | sed -n 's/.*data-sy-status="\([^"]*\)".*/\1/p')
kind=$(printf '%s' "$body" | sed -n 's/.*data-sy-kind="\([^"]*\)".*/\1/p')
if [ "$status" = ok ]; then ok "body data-sy-status=\"ok\" (kind: ${kind:-?})"
else bad "body data-sy-status is '${status:-missing}', not 'ok': $body"; fi

errbox=$(awk '{ i = index($0, "<div id=\"sy-errors\""); if (i) { print substr($0, i, 2000); exit } }' "$work/flat.html")
if [ -z "$errbox" ]; then
  bad "no <div id=\"sy-errors\"> in the page"
elif printf '%s' "$errbox" | grep -q '^<div id="sy-errors"[^>]*></div>'; then
  ok "#sy-errors is empty"
else
  bad "#sy-errors is not empty:"
  printf '%s' "$errbox" | grep -o '<div class="sy-err">[^<]*' | sed 's/^<div class="sy-err">/  /' | cut -c1-600
fi

# Chromium logs each console message of the page as `...:INFO:CONSOLE:LINE] "MESSAGE", source:
# URL (LINE)`, over several lines where the message has line breaks, and without its level
# (console.log and console.error look alike). The page writes nothing to the console itself, so
# any message from it (an uncaught error, a syntax error, a console.error) fails the check.
awk -v src="source: $url" '
  function done() { if (index(rec, src)) print rec; inrec = 0; rec = "" }
  /:CONSOLE[:(]/ { if (inrec) done(); rec = $0; inrec = 1; if (index($0, "\", source: ")) done(); next }
  inrec { rec = rec "\n" $0; if (index($0, "\", source: ")) done() }
  END { if (inrec) print rec }
' "$work/stderr.txt" >"$work/console.txt"
if [ -s "$work/console.txt" ]; then
  bad "console messages from the page (an uncaught error or console output):"
  cut -c1-400 "$work/console.txt"
else
  ok "no console message from the page (no uncaught error, no console.error)"
fi

# --- 2. charts ---
if [ -n "${REPORT_CHECK_CHARTS:-}" ]; then
  required=$REPORT_CHECK_CHARTS
else
  required="loss-train loss-val drop aux heatmap-layer0"
  if [ "$kind" != run ]; then required="$required scaling-params scaling-flops throughput"; fi
fi
grep -o '<figure[^>]*class="[^"]*sy-chart[^"]*"[^>]*>' "$work/flat.html" >"$work/figures.txt" || true
nfig=$(wc -l <"$work/figures.txt")
if [ "$nfig" -eq 0 ]; then bad "no <figure class=\"sy-chart\"> in the page"; fi
declare -A points=()
while IFS= read -r fig; do
  id=$(printf '%s' "$fig" | sed -n 's/.* id="\([^"]*\)".*/\1/p')
  n=$(printf '%s' "$fig" | sed -n 's/.* data-points="\([^"]*\)".*/\1/p')
  if [ -z "$id" ]; then bad "a chart without an id: $fig"; continue; fi
  case $n in
    ''|*[!0-9]*) bad "chart $id: data-points is '${n}', not a count"; continue ;;
  esac
  points[$id]=$n
  drawn=$(grep -o "data-chart=\"$id\"" "$work/flat.html" | wc -l)
  if [ "$drawn" -ne "$n" ]; then
    bad "chart $id: data-points=$n but $drawn element(s) carry data-chart=\"$id\""
  fi
done <"$work/figures.txt"
summary=""
for id in "${!points[@]}"; do summary="$summary $id=${points[$id]}"; done
echo "charts ($nfig):$summary"
for id in $required; do
  if [ -z "${points[$id]+set}" ]; then bad "chart $id is missing"
  elif [ "${points[$id]}" -gt 0 ]; then ok "chart $id drew ${points[$id]} point(s)"
  elif [ "$expected_runs" -eq 0 ]; then ok "chart $id is there, empty (no runs)"
  else bad "chart $id drew no point"; fi
done

# --- 3. the results table ---
table=$(grep -o '<table id="results-table".*</table>' "$work/flat.html" | head -n 1)
if [ -z "$table" ]; then
  bad "no <table id=\"results-table\">"
else
  rows=$(printf '%s' "$table" | grep -o '<tbody.*</tbody>' | grep -o '<tr[^>]* data-run="' | wc -l)
  if [ "$rows" -eq "$expected_runs" ]; then ok "results table has $rows row(s)"
  else bad "results table has $rows row(s), expected $expected_runs"; fi
fi

# --- 4. a screenshot that is not blank ---
(cd "$work" && run_with_limit "$browser" "${flags[@]}" --screenshot="$work/report.png" "$url" \
  >"$work/shot1.log" 2>&1)
(cd "$work" && run_with_limit "$browser" "${flags[@]}" --screenshot="$work/blank.png" \
  'data:text/html,%3Chtml%3E%3Cbody%3E%3C/body%3E%3C/html%3E' >"$work/shot2.log" 2>&1)
if [ ! -s "$work/report.png" ] || [ ! -s "$work/blank.png" ]; then
  bad "no screenshot came back (report: $(wc -c <"$work/report.png" 2>/dev/null || echo none) bytes, blank page: $(wc -c <"$work/blank.png" 2>/dev/null || echo none) bytes)"
  tail -n 5 "$work/shot1.log"
else
  shot=$(wc -c <"$work/report.png")
  blank=$(wc -c <"$work/blank.png")
  if [ "$shot" -ge $((3 * blank)) ]; then
    ok "screenshot 1400x3000 is $shot bytes, an empty page's $blank bytes (not blank)"
  else
    bad "screenshot is $shot bytes, less than 3 times an empty page's $blank bytes: the page looks blank"
  fi
  if [ -n "${REPORT_CHECK_KEEP_SCREENSHOT:-}" ]; then cp "$work/report.png" "$REPORT_CHECK_KEEP_SCREENSHOT"; fi
fi

if [ "$failures" -ne 0 ]; then
  echo "checks failed: $failures"
  exit 1
fi
echo "all checks passed"
