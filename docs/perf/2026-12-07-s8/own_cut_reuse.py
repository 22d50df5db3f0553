#!/usr/bin/env python3
"""How often a stream's own cut (Ada-KV, kScaled, alpha 0.2, 20% of 8 x 32K) shares the
radix digits of its sequence's cut, so that AdaSelectKernel's own select can reuse the
sequence's histograms: uniform scores against BM_SelectAdaTraceLike's (fit_scores.py).
64 sequences of 8 streams, 4 sinks and a 32-token window protected.

  .venv-python/bin/python docs/perf/2026-12-07-s8/own_cut_reuse.py
"""
import numpy as np

from layer_scores import BUDGET, HEADS, draw_layer, order_key, take_of


def main():
    rng = np.random.default_rng(3)
    for kind in ("uniform", "trace-like"):
        same0 = same1 = total = 0
        for _ in range(64):
            keys = order_key(draw_layer(kind, rng))
            # kScaled: the sequence selects the sum of its streams' budgets.
            cut = np.sort(keys.ravel())[::-1][HEADS * BUDGET - 1]
            for h in range(HEADS):
                hits = int((keys[h] >= cut).sum())
                own = np.sort(keys[h])[::-1][max(take_of(hits), 1) - 1]
                total += 1
                same0 += (own >> 21) == (cut >> 21)
                same1 += (own >> 10) == (cut >> 10)
        print(kind, "own cut in the sequence's first-digit bucket: %.2f, in its first two "
              "digits': %.2f" % (same0 / total, same1 / total))


if __name__ == "__main__":
    main()
