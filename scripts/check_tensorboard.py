#!/usr/bin/env python3
"""Checks a run folder's TensorBoard events files (train.tensorboard: true) with TensorBoard's
own reader, against the run's metrics.jsonl.

    scripts/check_tensorboard.py RUN_DIR [--expect-tags train/loss,eval/val_loss,expert_load/*]

Reads every scalar of RUN_DIR the way `tensorboard --logdir` does (EventAccumulator over all
events.out.tfevents.* files of the folder, in name order, CRCs checked), prints for each tag the
number of points and the first and last (step, value), and compares train/loss and eval/val_loss
with the train_loss and val_loss lines of RUN_DIR/metrics.jsonl: the same steps, and the same
values to float32. metrics.jsonl keeps 8 significant digits (%.8g) and a float32 round trip needs
9, so a value matches when some number rounds both to the events file's float32 and to the JSON
decimal: |event - json| <= half a float32 ulp + half a unit of the 8th digit. A non-finite value
(NaN in the events file) matches JSON null. A step logged twice (a run resumed after it crashed
past its last checkpoint re-logs the steps after it) counts once, with the value read last, as
the resumed run wrote it.

Exits 0 when every expected tag is there and every value matches; 1 on any mismatch or missing
tag; 2 on bad arguments. Needs the `tensorboard` Python package (not TensorFlow).
"""

import argparse
import fnmatch
import glob
import json
import math
import os
import struct
import sys

# (events tag, metrics.jsonl key) pairs compared point by point.
COMPARED = (("train/loss", "train_loss"), ("eval/val_loss", "val_loss"))


def to_float32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def float32_half_ulp(v):
    """Half the spacing of float32 values at |v| (the larger spacing at a power of two)."""
    if v == 0:
        return 2.0 ** -150  # half the smallest float32 denormal
    _, e = math.frexp(abs(v))  # |v| = m * 2**e, 0.5 <= m < 1
    return 2.0 ** max(e - 24, -149) / 2


def json_half_unit(x):
    """Half a unit of the last digit of x printed with %.8g (8 significant digits)."""
    if x == 0:
        return 0.0
    exponent = int(("%.7e" % x).split("e")[1])
    return 0.5 * 10.0 ** (exponent - 7)


def values_match(event_value, json_value):
    """An events file's float32 against a metrics.jsonl number (None for null)."""
    if json_value is None:
        return not math.isfinite(event_value)
    if not math.isfinite(event_value):
        return False
    if event_value == to_float32(json_value):
        return True
    bound = float32_half_ulp(event_value) + json_half_unit(json_value)
    return abs(event_value - json_value) <= bound * (1 + 1e-9)


def read_metrics(run_dir):
    """{key: {step: value}} of metrics.jsonl's train_loss and val_loss (None for null)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    points = {key: {} for _, key in COMPARED}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit("%s:%d: not JSON (%s)" % (path, n, e))
            for key in points:
                if key in obj and "step" in obj:
                    points[key][int(obj["step"])] = obj[key]
    return points


def load_scalars(run_dir):
    """{tag: [ScalarEvent(wall_time, step, value)]} of every events file of run_dir."""
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(
        run_dir, size_guidance={event_accumulator.SCALARS: 0})  # 0: keep every point
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()[event_accumulator.SCALARS]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run folder (train.out_dir) written with "
                        "train.tensorboard: true")
    parser.add_argument("--expect-tags", default="",
                        help="comma-separated tags that must be present; shell-style patterns "
                        "(expert_load/*) must match at least one tag")
    args = parser.parse_args()

    run_dir = args.run_dir.rstrip("/") or "/"
    if not os.path.isdir(run_dir):
        parser.error("%s is not a folder" % run_dir)
    files = sorted(glob.glob(os.path.join(run_dir, "*tfevents*")))
    if not files:
        print("FAIL: no events files (*tfevents*) in %s: was the run trained with "
              "train.tensorboard: true?" % run_dir)
        return 1
    print("%s: %d events file(s): %s" % (run_dir, len(files),
                                         ", ".join(os.path.basename(f) for f in files)))

    scalars = load_scalars(run_dir)
    failures = []
    width = max([len(t) for t in scalars] + [3])
    print("%-*s %6s  %-28s %-28s" % (width, "tag", "points", "first (step, value)",
                                     "last (step, value)"))
    for tag in sorted(scalars):
        points = scalars[tag]
        first, last = points[0], points[-1]
        print("%-*s %6d  %-28s %-28s" % (width, tag, len(points),
                                         "(%d, %.9g)" % (first.step, first.value),
                                         "(%d, %.9g)" % (last.step, last.value)))

    expected = [t.strip() for t in args.expect_tags.split(",") if t.strip()]
    for pattern in expected:
        if not any(fnmatch.fnmatchcase(tag, pattern) for tag in scalars):
            failures.append("missing tag %s" % pattern)

    metrics = read_metrics(run_dir)
    for tag, key in COMPARED:
        want = metrics[key]
        if not want:
            print("note: metrics.jsonl has no %s lines; %s not compared" % (key, tag))
            continue
        if tag not in scalars:
            failures.append("missing tag %s (metrics.jsonl has %d %s lines)"
                            % (tag, len(want), key))
            continue
        got = {}
        for point in scalars[tag]:  # in file order: a re-logged step keeps the later value
            got[point.step] = point.value
        repeated = len(scalars[tag]) - len(got)
        if repeated:
            print("note: %s: %d step(s) logged more than once (a resumed run); the last value "
                  "of each is compared" % (tag, repeated))
        for step in sorted(set(want) - set(got)):
            failures.append("%s: no point at step %d (metrics.jsonl %s = %r)"
                            % (tag, step, key, want[step]))
        for step in sorted(set(got) - set(want)):
            failures.append("%s: point at step %d (%.9g) that metrics.jsonl does not have"
                            % (tag, step, got[step]))
        matched = 0
        for step in sorted(set(got) & set(want)):
            if values_match(got[step], want[step]):
                matched += 1
            else:
                failures.append("%s at step %d: events %.9g, metrics.jsonl %s = %r"
                                % (tag, step, got[step], key, want[step]))
        print("%s: %d of %d steps match metrics.jsonl %s (to float32)"
              % (tag, matched, len(want), key))

    if failures:
        for f in failures:
            print("FAIL: " + f)
        return 1
    print("OK: %d tags; %s match metrics.jsonl" % (len(scalars),
                                                   " and ".join(t for t, _ in COMPARED)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
