#!/usr/bin/env python3
"""Whether AdaSelectKernel could guess each stream's own buckets while the sequence's select
runs (Ada-KV, kScaled, alpha 0.2, 20% of 8 x 32K, 4 sinks and a 32-token window protected):
after the sequence's pass p, a stream's hits lie in [above, above + inside], its keys above
the sequence's bucket and inside it. One guess holds where both ends of that range give the
stream's own cut the same bucket at pass p's digit; two guesses (the ends' buckets) hold
where the own cut's bucket is one of them, which the range's middle can miss when the ends
lie more than one bucket apart. Prints, for uniform scores and for BM_SelectAdaTraceLike's
(fit_scores.py): how many stream passes need a rebuild at all (own cut outside the
sequence's bucket), how many of those one guess and two guesses cover, in how many of the
8 layers they cover every CTA, and how far apart the ends' buckets lie.

The eighth session's version counted two guesses as covering wherever the ends gave at most
two buckets, which they always do: it printed 1.00 and 8/8 for two guesses whatever the
scores. This one checks the own cut's bucket against the ends.

  .venv-python/bin/python docs/perf/2026-12-07-s8/own_bucket_guess.py
"""
import numpy as np

from layer_scores import BUDGET, HEADS, draw_layer, order_key, take_of

SHIFTS = (21, 10)  # the first two digits' shifts (11 and 11 bits)


def main():
    rng = np.random.default_rng(5)
    for kind in ("uniform", "trace-like"):
        need = one = two = 0
        spans = []
        layers_one = layers_two = 0
        for layer in range(8):
            all_one = all_two = True
            for seq in range(8):
                keys = order_key(draw_layer(kind, rng))
                ranked = np.sort(keys, axis=1)[:, ::-1]
                cut = np.sort(keys.ravel())[::-1][HEADS * BUDGET - 1]
                for h in range(HEADS):
                    own = ranked[h]
                    hits = int((own >= cut).sum())
                    own_cut = own[take_of(hits) - 1]
                    for shift in SHIFTS:
                        prefix = cut >> shift
                        if own_cut >> shift == prefix:
                            continue  # the sequence's pass serves the stream's own
                        need += 1
                        above = int(((own >> shift) > prefix).sum())
                        inside = int(((own >> shift) == prefix).sum())
                        low = int(own[take_of(above + inside) - 1] >> shift)
                        high = int(own[take_of(above) - 1] >> shift)
                        spans.append(high - low)
                        covered = int(own_cut >> shift) in (low, high)
                        one += low == high
                        two += covered
                        all_one &= low == high
                        all_two &= covered
            layers_one += all_one
            layers_two += all_two
        print(f"{kind:10s}: {need} of {8 * 64 * 2} stream passes rebuilt; one guess covers "
              f"{one / max(need, 1):.2f} of them, two {two / max(need, 1):.2f}; every CTA of a "
              f"layer covered in {layers_one}/8 layers with one guess, {layers_two}/8 with two; the ends lie 0, 1, 2, ... "
              f"buckets apart: {np.bincount(spans).tolist()}")


if __name__ == "__main__":
    main()
