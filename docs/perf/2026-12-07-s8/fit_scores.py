#!/usr/bin/env python3
"""What SnapKV's scores look like in the bundled traces, for BM_SelectAdaTraceLike.

For every trace in tests/data/traces, layers 2, 9, 18 and 29 and every KV head:
the last 32 stored prompt queries (the observation window) of the head's query
group against every key before them (causal), softmax, the mean over the window's
rows, max-pooled over 7 neighbours: SnapKV's score of each key before the window.
Prints the fit of log(score * n) per stream (its mean mu and deviation sigma, and
how mu spreads over streams), then, for uniform scores and for scores drawn from
the fit at 8 streams of 32K, the share of the keys that fall in the bucket of the
20% cut's first radix digit (the top 11 bits of the order-preserving key) and of
its first two digits: what a radix select's second and third passes count.

  .venv-python/bin/python docs/perf/2026-12-07-s8/fit_scores.py
"""
import glob

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from layer_scores import draw_layer, order_key


def bucket_shares(scores, kept=0.2):
    keys = order_key(scores.ravel())
    cut = np.sort(keys)[::-1][int(kept * keys.size)]
    return ((keys >> 21) == (cut >> 21)).mean(), ((keys >> 10) == (cut >> 10)).mean()


def snapkv_scores(trace, generated, layer, window=32, pool=7):
    keys = trace[f"layers.{layer}.keys"].float()
    queries = trace[f"layers.{layer}.queries"].float()
    positions = trace[f"layers.{layer}.query_positions"]
    # The stored queries are the last prompt tokens, then the generated ones:
    # the window is the last `window` prompt queries.
    prompt_end = queries.shape[1] - generated
    rows = slice(prompt_end - window, prompt_end)
    qpos = positions[rows]
    n = int(qpos.max()) + 1
    kv_heads, _, dim = keys.shape
    group = queries.shape[0] // kv_heads
    out = []
    for h in range(kv_heads):
        q = queries[h * group:(h + 1) * group, rows].reshape(-1, dim)
        logits = q @ keys[h, :n].T / dim**0.5
        logits[torch.arange(n)[None, :] > qpos.repeat(group)[:, None]] = -1e30
        p = torch.softmax(logits, -1).mean(0)
        pooled = torch.nn.functional.max_pool1d(p[None, None], pool, 1, pool // 2)[0, 0]
        out.append(pooled.numpy()[:n - window])
    return out


def main():
    mus, sigmas = [], []
    for path in sorted(glob.glob("tests/data/traces/*.safetensors")):
        trace = load_file(path)
        with safe_open(path, "pt") as f:
            generated = int(f.metadata()["generated_len"])
        for layer in (2, 9, 18, 29):
            for s in snapkv_scores(trace, generated, layer):
                log = np.log(s * s.size)
                mus.append(log.mean())
                sigmas.append(log.std())
    print(f"{len(mus)} streams: mu mean {np.mean(mus):.2f}, deviation {np.std(mus):.2f}; "
          f"sigma {min(sigmas):.2f} to {max(sigmas):.2f}, mean {np.mean(sigmas):.2f}")
    rng = np.random.default_rng(1)
    n = 32768
    for name in ("uniform", "trace-like"):
        shares = []
        for _ in range(4):
            shares.append(bucket_shares(draw_layer(name, rng, keys=n)))
        first, second = np.mean(shares, axis=0)
        print(f"{name:10s}: the 20% cut's first-digit bucket holds {first:.4f} of the keys, "
              f"its first two digits' {second:.6f} ({second * 8 * n:.0f} keys of 8 x 32K)")


if __name__ == "__main__":
    main()
