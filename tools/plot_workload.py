#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Plots `headpage workload --out` series: memory, fragmentation and batch over time.

usage: plot_workload.py series.csv [more.csv ...] plot.png

One line per CSV (labelled with its policy and page size), four panels against
simulated time: the pool's pages in use (as a share of the pool), the internal
fragmentation (allocated - used slots over allocated slots), the running batch
and the waiting queue. Long series are thinned to at most 2000 points a line,
which keeps the PNG small.
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402

MAX_POINTS = 2000


def load(path):
    rows = list(csv.DictReader(open(path, newline="")))
    if not rows:
        raise ValueError(f"{path}: no steps")
    pool_slots = None
    series = {"t": [], "pages": [], "frag": [], "batch": [], "waiting": []}
    for r in rows:
        used = int(r["used_slots"])
        util = float(r["utilization"])
        if pool_slots is None and util > 0:
            pool_slots = used / util
        series["t"].append(float(r["time_s"]))
        series["pages"].append(int(r["pages_in_use"]))
        series["frag"].append(100.0 * float(r["fragmentation_ratio"]))
        series["batch"].append(int(r["running"]))
        series["waiting"].append(int(r["waiting"]))
    page_size = int(rows[0]["page_size"])
    pool_pages = pool_slots / page_size if pool_slots else 1.0
    series["pages"] = [p / pool_pages for p in series["pages"]]
    label = f"{rows[0]['policy']}, page {page_size}"
    stride = max(1, len(rows) // MAX_POINTS)
    return label, {k: v[::stride] for k, v in series.items()}


def main(argv):
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    try:
        runs = [load(path) for path in argv[1:-1]]
    except (OSError, KeyError, ValueError) as e:
        sys.stderr.write(f"plot_workload.py: {e}\n")
        return 1
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for i, (label, s) in enumerate(runs):
        color = plt.cm.tab10(i % 10)
        axes[0].plot(s["t"], [100 * x for x in s["pages"]], color=color, lw=1, label=label)
        axes[1].plot(s["t"], s["frag"], color=color, lw=1, label=label)
        axes[2].plot(s["t"], s["batch"], color=color, lw=1, label=label)
        axes[3].plot(s["t"], s["waiting"], color=color, lw=1, label=label)
    titles = ["pages in use (% of the pool)", "internal fragmentation (% of allocated slots)",
              "running batch (requests)", "waiting queue (requests)"]
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("simulated time (s)")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 105)
    axes[3].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(argv[-1], dpi=80)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
