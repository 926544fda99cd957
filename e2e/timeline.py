#!/usr/bin/env python3
"""The e2e's scaling timeline, from its own outputs: loadgen's per-second series (run.csv:
offered rate, errors, ready replicas of the inference Deployment) and the HPA's
SuccessfulRescale events (kubectl get events -o json). Times are seconds after the load started.

Prints, and e2e/e2e.sh saves as timeline.txt:
- each load step (a change of the offered rate) and each HPA rescale (new size, reason);
- from the step up: the first change of the HPA's desired replicas, and each new size Ready;
- from the step down (or the end of the load): the first and the last scale-down;
- failed requests during the scale-up (step up until the last new pod is Ready) and during the
  scale-down (first scale-down until the load ends).
"""

import argparse
import csv
import json
import re
import sys
from datetime import datetime, timezone


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", required=True, help="loadgen --csv output")
    parser.add_argument("--events", required=True, help="kubectl get events -o json output")
    parser.add_argument("--since", required=True, help="ignore events before this RFC 3339 time")
    parser.add_argument("--started", required=True, type=float, help="load start, Unix seconds")
    return parser.parse_args()


def timestamp(text):
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


def rescales(events, since, started):
    """(second, new size, reason) of each rescale after `since`, in order."""
    found = []
    for event in events.get("items", []):
        if event.get("reason") != "SuccessfulRescale":
            continue
        # The first time this rescale happened (a repeat of the same message only counts up).
        when = event.get("firstTimestamp") or (event.get("eventTime") or "")[:19]
        if not when:
            continue
        when = when.rstrip("Z") + "Z"
        if timestamp(when) < timestamp(since):
            continue
        size = re.search(r"New size: (\d+)", event.get("message", ""))
        reason = event.get("message", "").partition("reason: ")[2]
        if size:
            found.append((timestamp(when) - started, int(size.group(1)), reason))
    return sorted(found)


def main():
    args = parse_args()
    with open(args.csv, newline="") as handle:
        rows = [
            {
                "second": int(row["second"]),
                "offered": float(row["offered"] or 0),
                "sent": int(row["sent"] or 0),
                "errors": int(row["errors"] or 0),
                "replicas": int(row["replicas"]) if row["replicas"] else None,
            }
            for row in csv.DictReader(handle)
        ]
    with open(args.events) as handle:
        events = rescales(json.load(handle), args.since, args.started)
    if not rows:
        sys.exit("timeline: the load series is empty")

    steps = []  # (second, rate) where the offered rate settles at a new level
    for previous, row in zip([None] + rows, rows):
        rate = round(row["offered"])
        if previous is None or rate != round(previous["offered"]):
            steps.append((row["second"], rate))
    print("load steps (s: req/s): " + ", ".join(f"{s}: {r}" for s, r in steps))
    for second, size, reason in events:
        print(f"  {second:6.0f} s  HPA rescale to {size}: {reason}")

    peak = max(rate for _, rate in steps)
    step_up = next(second for second, rate in steps if rate == peak)
    step_down = next((second for second, rate in steps if second > step_up and rate < peak), None)
    end = rows[-1]["second"]

    ups = []  # rescales to more pods than before, from the step up to the step down
    size = 1
    for second, new_size, _ in events:
        in_window = second >= step_up - 1 and (step_down is None or second < step_down)
        if in_window and new_size > size:
            ups.append((second, new_size))
        size = new_size
    if ups:
        print(f"first change of desired replicas: {ups[0][0] - step_up:.0f} s after the step up")
        last_ready = step_up
        for second, size in ups:
            ready = next(
                (r["second"] for r in rows if r["second"] >= second and (r["replicas"] or 0) >= size),
                None,
            )
            if ready is None:
                print(f"  {size} replicas: never all Ready during the load")
                continue
            last_ready = ready
            print(f"  {size} replicas asked at {second - step_up:.0f} s, all Ready at "
                  f"{ready - step_up:.0f} s ({ready - second:.0f} s later)")
        errors_up = sum(r["errors"] for r in rows if step_up <= r["second"] <= last_ready)
        print(f"failed requests during the scale-up: {errors_up}")
    else:
        print("no scale-up after the step")

    down_from = step_down if step_down is not None else end
    downs = [(s, n) for s, n, _ in events if s >= down_from]
    if downs:
        print(f"scale-down: first {downs[0][0] - down_from:.0f} s, last (to {downs[-1][1]}) "
              f"{downs[-1][0] - down_from:.0f} s after the "
              + ("step down" if step_down is not None else "load stopped"))
        errors_down = sum(r["errors"] for r in rows if r["second"] >= downs[0][0])
        sent_down = sum(r["sent"] for r in rows if r["second"] >= downs[0][0])
        print(f"failed requests during the scale-down: {errors_down} "
              f"(of {sent_down} sent from the first removal to the end of the load)")
    else:
        print("no scale-down during the load")
    print(f"all failed requests: {sum(r['errors'] for r in rows)} "
          f"of {sum(r['sent'] for r in rows)} sent")


if __name__ == "__main__":
    main()
