#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Plots a `headpage sweep` CSV: attention error and lost mass against budget.

usage: plot_sweep.py results.csv plot.png

One line per policy (rows of layer "all", averaged over the traces in the CSV),
one panel per metric; budgets in the CSV's order of first appearance, as tokens per
head (128) or shares of the prompt (20%).
"""
import csv
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402

METRICS = [
    ("mean_rel_l2_error", "relative L2 error of the attention output"),
    ("mean_lost_mass", "attention mass lost (1 - F)"),
    ("bound", "Ada-KV L1 bound"),
    ("topk_recall", "top-32 recall"),
]


def budget_key(text):
    return float(text[:-1]) / 100.0 if text.endswith("%") else float(text)


def main(argv):
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    rows = [r for r in csv.DictReader(open(argv[1], newline="")) if r["layer"] == "all"]
    if not rows:
        sys.stderr.write(f"{argv[1]}: no rows with layer 'all'\n")
        return 1
    budgets = sorted({r["budget"] for r in rows}, key=budget_key)
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    # metric -> policy -> budget -> values (one per trace and page size)
    values = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        for metric, _ in METRICS:
            values[metric][r["policy"]][r["budget"]].append(float(r[metric]))
    traces = sorted({r["trace"] for r in rows})
    fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 4.2))
    for ax, (metric, title) in zip(axes, METRICS):
        for i, policy in enumerate(policies):
            xs = [k for k, b in enumerate(budgets) if values[metric][policy][b]]
            ys = [sum(v) / len(v) for b in budgets if (v := values[metric][policy][b])]
            # tab20 and a marker cycle: distinct for up to 20 policies.
            ax.plot(xs, ys, marker="os^vDP*Xhp"[i % 10], color=plt.cm.tab20(i % 20), label=policy)
        ax.set_xticks(range(len(budgets)), budgets)
        ax.set_xlabel("budget per KV head")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    # The query set the metrics are over (a CSV from before query_set: unnamed).
    sets = sorted({r.get("query_set") or "?" for r in rows})
    fig.suptitle(f"headpage sweep: {', '.join(traces)}; queries: {', '.join(sets)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(argv[2], dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
