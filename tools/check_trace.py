#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Checks headpage traces (docs/trace-format.md) written by capture_trace.py.

For each file: the metadata and every tensor's dtype and shape against the
format, and then, per layer, attention recomputed in float32 from the stored
(float16) queries, keys and values -- causal: the query at position p sees keys
0..p; query head h reads kv head h // (num_q_heads / num_kv_heads) -- against
the model's own outputs stored in the trace. Prints the max absolute error and
the max relative L2 error of one (head, query) output row; fails when they
exceed --max-abs / --max-rel (float16 level).

Usage: .venv-capture/bin/python tools/check_trace.py tests/data/traces/*.safetensors
"""
import argparse
import sys

import numpy as np
from safetensors import safe_open

REQUIRED = ["format", "version", "model", "source", "task", "num_layers", "num_q_heads",
            "num_kv_heads", "head_dim", "prompt_len", "generated_len", "rope_applied", "dtype"]


def recompute(q, k, v, pos):
    """q [Hq,Nq,D], k/v [Hkv,T,D], pos [Nq] -> [Hq,Nq,D] float32."""
    hq, _, d = q.shape
    n_rep = hq // k.shape[0]
    k = np.repeat(k, n_rep, axis=0)
    v = np.repeat(v, n_rep, axis=0)
    s = np.einsum("hqd,htd->hqt", q, k) / np.float32(np.sqrt(d))
    mask = np.arange(k.shape[1])[None, None, :] > pos[None, :, None]
    s = np.where(mask, -np.inf, s)
    s = s - s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("hqt,htd->hqd", p, v).astype(np.float32)


def check(path, max_abs, max_rel, quiet=False):
    errors = []
    with safe_open(path, "np") as f:
        meta = f.metadata() or {}
        names = set(f.keys())
        tensors = {n: f.get_tensor(n) for n in names}
    for key in REQUIRED:
        if key not in meta:
            errors.append(f"metadata lacks {key}")
    if errors:
        return errors, None
    if meta["format"] != "headpage-trace" or meta["version"] != "1":
        errors.append(f"format {meta['format']} version {meta['version']}")
    if meta["dtype"] != "float16" or meta["rope_applied"] != "true":
        errors.append(f"dtype {meta['dtype']} rope_applied {meta['rope_applied']}")
    n_layers, hq, hkv, d = (int(meta[k]) for k in ("num_layers", "num_q_heads", "num_kv_heads", "head_dim"))
    p_len, g_len = int(meta["prompt_len"]), int(meta["generated_len"])
    t = p_len + g_len
    layers = sorted({int(n.split(".")[1]) for n in names if n.startswith("layers.")})
    expect = {f"layers.{i}.{s}" for i in layers
              for s in ("keys", "values", "queries", "query_positions", "outputs")}
    if names != expect:
        errors.append(f"unexpected or missing tensors: {sorted(names ^ expect)}")
        return errors, None
    summary = {"layers": layers, "max_abs": 0.0, "max_rel": 0.0, "meta": meta}
    for i in layers:
        if not 0 <= i < n_layers:
            errors.append(f"layer {i} outside 0..{n_layers - 1}")
            continue
        k, v, q, pos, o = (tensors[f"layers.{i}.{s}"] for s in
                           ("keys", "values", "queries", "query_positions", "outputs"))
        nq = pos.shape[0] if pos.ndim == 1 else -1
        for name, a, dt, shape in (("keys", k, np.float16, (hkv, t, d)),
                                   ("values", v, np.float16, (hkv, t, d)),
                                   ("queries", q, np.float16, (hq, nq, d)),
                                   ("outputs", o, np.float16, (hq, nq, d)),
                                   ("query_positions", pos, np.int32, (nq,))):
            if a.dtype != dt or a.shape != shape:
                errors.append(f"layer {i} {name}: {a.dtype} {a.shape}, want {np.dtype(dt)} {shape}")
        if errors:
            continue
        if not (np.all(np.diff(pos) > 0) and pos[0] >= 0 and pos[-1] < t):
            errors.append(f"layer {i} query_positions not strictly ascending in [0, {t})")
            continue
        if pos[-1] != t - 1 or np.any(pos[pos >= p_len] != np.arange(p_len, t)) or \
                np.sum(pos < p_len) < 64:
            errors.append(f"layer {i}: queries must cover >= 64 last prompt tokens and every generated token")
        for name, a in (("keys", k), ("values", v), ("queries", q), ("outputs", o)):
            if not np.isfinite(a).all():
                errors.append(f"layer {i} {name} has NaN/Inf")
        ref = o.astype(np.float32)
        got = recompute(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32), pos)
        abs_err = float(np.abs(got - ref).max())
        rel = np.linalg.norm(got - ref, axis=-1) / np.maximum(np.linalg.norm(ref, axis=-1), 1e-6)
        rel_err = float(rel.max())
        summary["max_abs"] = max(summary["max_abs"], abs_err)
        summary["max_rel"] = max(summary["max_rel"], rel_err)
        if not quiet:
            print(f"  layer {i:2d}: max abs error {abs_err:.2e}, max rel L2 error {rel_err:.2e}"
                  f" (|output| max {float(np.abs(ref).max()):.2f})")
        if abs_err > max_abs or rel_err > max_rel:
            errors.append(f"layer {i}: recomputed attention differs: abs {abs_err:.3g}, rel {rel_err:.3g}")
    return errors, summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--max-abs", type=float, default=1e-2)
    ap.add_argument("--max-rel", type=float, default=1e-2)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    failed = 0
    for path in args.traces:
        print(path)
        errors, s = check(path, args.max_abs, args.max_rel, args.quiet)
        if s:
            m = s["meta"]
            print(f"  {m['model']} task={m['task']} prompt_len={m['prompt_len']} "
                  f"generated_len={m['generated_len']} layers={s['layers']}: "
                  f"max abs {s['max_abs']:.2e}, max rel L2 {s['max_rel']:.2e}")
        for e in errors:
            print("  ERROR:", e)
        failed += bool(errors)
    print(f"{len(args.traces) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
