#!/usr/bin/env python3
"""Sums a Chrome trace from `switchyard bench layer --trace FILE` (docs/bench.md#traces).

    scripts/trace_summary.py FILE [--top N] [--timeline MARK]     (FILE may be gzipped: .gz)

Prints the GPU kernels (Kineto's "kernel" events; with a CPU-only trace, the host operators,
"cpu_op") grouped by name: total time, share of the summed time, count and mean, largest first;
then the same time by the host operator that launched each kernel; then the time from the first to the last event on each CUDA stream and how busy each stream was
(the sum of its kernels over that span), which shows whether work overlapped. --timeline MARK: the kernels of the last step, from the
last kernel whose name contains MARK (e.g. router_forward) on, in start order with their offset,
duration and stream: which stream waits for which, and where the device idles.
"""
import argparse
import collections
import gzip
import json
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--timeline", metavar="MARK", help="the last step's kernels from MARK on")
    args = ap.parse_args()
    try:
        opener = gzip.open if args.trace.endswith(".gz") else open
        with opener(args.trace, "rt") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"trace_summary: cannot read '{args.trace}' as a Chrome trace: {e}")
    events = doc.get("traceEvents", doc if isinstance(doc, list) else [])
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    kernels = [e for e in complete if e.get("cat") == "kernel"]
    kind = "GPU kernels"
    rows = kernels
    if not rows:
        rows = [e for e in complete if e.get("cat") == "cpu_op"]
        kind = "host operators (no GPU kernel in this trace)"
    if not rows:
        sys.exit(f"trace_summary: '{args.trace}' has no kernel or cpu_op events")

    by_name = collections.defaultdict(lambda: [0.0, 0])
    for e in rows:
        by_name[e["name"]][0] += float(e["dur"])
        by_name[e["name"]][1] += 1
    total = sum(v[0] for v in by_name.values())
    print(f"{kind}: {len(rows)} events, {total / 1000:.3f} ms summed")
    print(f"{'ms':>10} {'share':>7} {'count':>7} {'mean us':>9}  name")
    for name, (dur, n) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[: args.top]:
        short = name if len(name) <= 100 else name[:97] + "..."
        print(f"{dur / 1000:10.3f} {dur / total:7.1%} {n:7d} {dur / n:9.1f}  {short}")

    if kernels:
        # The operator that launched each kernel: the innermost host operator with the kernel's
        # "External id" (for backward kernels, the aten op inside autograd's node).
        op_of = {}
        for e in complete:
            ext = e.get("args", {}).get("External id")
            if e.get("cat") == "cpu_op" and ext is not None:
                op_of[ext] = e["name"]
        by_op = collections.defaultdict(lambda: [0.0, 0])
        for e in kernels:
            op = op_of.get(e.get("args", {}).get("External id"), "(no operator)")
            by_op[op][0] += float(e["dur"])
            by_op[op][1] += 1
        print(f"\nGPU time by launching operator")
        print(f"{'ms':>10} {'share':>7} {'kernels':>7}  operator")
        for op, (dur, n) in sorted(by_op.items(), key=lambda kv: -kv[1][0])[: args.top]:
            print(f"{dur / 1000:10.3f} {dur / total:7.1%} {n:7d}  {op[:100]}")

        streams = collections.defaultdict(list)
        for e in kernels:
            streams[e.get("args", {}).get("stream", e.get("tid"))].append(e)
        print("\nper stream: span (first start to last end), busy (summed kernels), kernels")
        for stream, evs in sorted(streams.items(), key=lambda kv: str(kv[0])):
            start = min(float(e["ts"]) for e in evs)
            end = max(float(e["ts"]) + float(e["dur"]) for e in evs)
            busy = sum(float(e["dur"]) for e in evs)
            print(f"  stream {stream}: span {(end - start) / 1000:.3f} ms, "
                  f"busy {busy / 1000:.3f} ms ({busy / max(end - start, 1e-9):.0%}), {len(evs)} kernels")


    if args.timeline:
        timeline(kernels, args.timeline)


def timeline(kernels, mark):
    """The kernels from the last one whose name contains `mark` on, in start order."""
    ordered = sorted(kernels, key=lambda e: float(e["ts"]))
    starts = [i for i, e in enumerate(ordered) if mark in e["name"]]
    if not starts:
        sys.exit(f"trace_summary: no kernel name contains '{mark}'")
    step = ordered[starts[-1]:]
    t0 = float(step[0]["ts"])
    end = max(float(e["ts"]) + float(e["dur"]) for e in step)
    busy = collections.defaultdict(float)
    print(f"\ntimeline from the last '{mark}' ({len(step)} kernels, {(end - t0) / 1000:.3f} ms)")
    print(f"{'start us':>10} {'us':>8}  stream  name")
    for e in step:
        stream = e.get("args", {}).get("stream", e.get("tid"))
        busy[stream] += float(e["dur"])
        name = e["name"] if len(e["name"]) <= 90 else e["name"][:87] + "..."
        print(f"{float(e['ts']) - t0:10.1f} {float(e['dur']):8.1f}  {str(stream):>6}  {name}")
    for stream, b in sorted(busy.items(), key=lambda kv: str(kv[0])):
        print(f"  stream {stream}: busy {b / 1000:.3f} ms of {(end - t0) / 1000:.3f}")


if __name__ == "__main__":
    main()
