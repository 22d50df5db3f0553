#!/usr/bin/env python3
"""Summarises BM_DecodeStamps' CSVs (branch decode-stamps): per case, the pass's
span, its blocks' mean time, how many blocks start in each wave's first
microsecond (starts in step, as a wave of equal blocks would have them), the
mean gap on an SM between one block's end and the next block's start, and the
merge's span after the pass.

  python3 stamps_summary.py DIR
"""
import csv
import glob
import os
import statistics
import sys


def summarise(path):
    rows = list(csv.DictReader(open(path)))
    passes = [r for r in rows if r["kind"] == "pass"]
    merges = [r for r in rows if r["kind"] == "merge"]
    starts = sorted(int(r["start_ns"]) for r in passes)
    ends = [int(r["end_ns"]) for r in passes]
    span = max(ends) - min(starts)
    durations = [int(r["end_ns"]) - int(r["start_ns"]) for r in passes]
    by_sm = {}
    for r in passes:
        by_sm.setdefault(int(r["sm"]), []).append((int(r["start_ns"]), int(r["end_ns"])))
    gaps = []
    for blocks in by_sm.values():
        blocks.sort()
        for i in range(2, len(blocks)):  # two slots: block i follows the earlier of two ends
            previous_end = sorted(e for _, e in blocks[:i])[-2]
            gaps.append(max(0, blocks[i][0] - previous_end))
    # Starts within 1 us of each other, clustered from the first.
    clusters, current = [], [starts[0]]
    for s in starts[1:]:
        if s - current[0] <= 1000:
            current.append(s)
        else:
            clusters.append(current)
            current = [s]
    clusters.append(current)
    merge_end = max(int(r["end_ns"]) for r in merges) if merges else max(ends)
    print(f"{os.path.basename(path)}: {len(passes)} blocks on {len(by_sm)} SMs, "
          f"pass span {span / 1e3:.1f} us, merge ends {(merge_end - max(ends)) / 1e3:.1f} us later; "
          f"block {statistics.mean(durations) / 1e3:.1f} us mean "
          f"({min(durations) / 1e3:.1f}-{max(durations) / 1e3:.1f}); "
          f"restart gap {statistics.mean(gaps) / 1e3 if gaps else 0:.2f} us mean; "
          f"start clusters of >= 32 blocks: "
          + ", ".join(f"{len(c)}@{c[0] / 1e3:.1f}us" for c in clusters if len(c) >= 32))


for path in sorted(glob.glob(os.path.join(sys.argv[1], "stamps_*.csv"))):
    summarise(path)
