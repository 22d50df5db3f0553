#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Plots tools/bench_serving.py results: running requests and decode throughput
over time, one line per configuration.

usage: plot_serving.py results.json plot.png [--bucket SECONDS]

Top panel: the engine's running requests, as the benchmark sampled them. Bottom
panel: tokens the decode rows produced per second, in buckets of --bucket seconds
(headpage configurations only: transformers' engine keeps no step records).
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402


def decode_rate(step_series, bucket):
    """(times, tokens a second) of the decode rows, bucketed."""
    counts = {}
    for began, _, decoding, *_ in step_series:
        counts[int(began // bucket)] = counts.get(int(began // bucket), 0) + decoding
    if not counts:
        return [], []
    last = max(counts)
    times = [(b + 0.5) * bucket for b in range(last + 1)]
    return times, [counts.get(b, 0) / bucket for b in range(last + 1)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results")
    ap.add_argument("plot")
    ap.add_argument("--bucket", type=float, default=2.0, help="seconds a throughput bucket")
    args = ap.parse_args(argv)
    with open(args.results) as f:
        results = json.load(f)
    header = results["header"]
    fig, (running, rate) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for row in results["rows"]:
        series = row.get("series") or []
        if series:
            running.plot([t for t, _ in series], [n for _, n in series], label=row["config"],
                         linewidth=1)
        if row.get("step_series"):
            times, rates = decode_rate(row["step_series"], args.bucket)
            rate.plot(times, rates, label=row["config"], linewidth=1)
    running.set_ylabel("running requests")
    rate.set_ylabel(f"decode tokens/s ({args.bucket:g} s buckets)")
    rate.set_xlabel("seconds since the first request")
    running.legend(fontsize=8)
    when = "all at once" if not header.get("rate") else f"Poisson, {header['rate']} requests/s"
    running.set_title(f"{header['model']} on {header['device']}, {header['kv_gib']:g} GiB KV: "
                      f"{header['requests']} requests, {header['workload']}, {when}", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
