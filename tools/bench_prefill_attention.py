#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The SDPA calls headpage.serving can make for a prefill chunk, timed side by
side with CUDA events: a chunk that continues a prompt (a bottom-right causal
mask over past + chunk keys) and a prompt's first chunk (plain causal), each
with GQA left to SDPA (enable_gqa) or with the KV heads repeated first.

usage: bench_prefill_attention.py [--chunk 4096] [--past 4096] [--reps 10]
Shapes are Llama-3-8B's (32 query heads, 8 KV heads, head_dim 128, bf16).
"""
import argparse

import torch
from torch.nn.attention.bias import causal_lower_right
from torch.nn.functional import scaled_dot_product_attention as sdpa


def timed(fn, reps):
    for _ in range(2):
        fn()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop) / reps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--past", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    q_heads, kv_heads, dim, dev = 32, 8, 128, "cuda"
    group = q_heads // kv_heads
    length = args.past + args.chunk
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(1, q_heads, args.chunk, dim, device=dev, dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, kv_heads, length, dim, device=dev, dtype=torch.bfloat16, generator=g)
    v = torch.randn_like(k)
    mask = torch.ones(args.chunk, length, dtype=torch.bool, device=dev).tril(args.past)
    first_k, first_v = k[:, :, :args.chunk], v[:, :, :args.chunk]
    cases = {
        "continue: bool mask, enable_gqa (before)":
            lambda: sdpa(q, k, v, attn_mask=mask, enable_gqa=True),
        "continue: lower-right causal, heads repeated (after)":
            lambda: sdpa(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1),
                         attn_mask=causal_lower_right(args.chunk, length)),
        "first chunk: is_causal, enable_gqa":
            lambda: sdpa(q, first_k, first_v, is_causal=True, enable_gqa=True),
        "first chunk: is_causal, heads repeated":
            lambda: sdpa(q, first_k.repeat_interleave(group, 1),
                         first_v.repeat_interleave(group, 1), is_causal=True),
    }
    want = cases["continue: bool mask, enable_gqa (before)"]().float()
    got = cases["continue: lower-right causal, heads repeated (after)"]().float()
    print(f"{torch.cuda.get_device_name()}: chunk {args.chunk}, past {args.past}; "
          f"max |after - before| = {(got - want).abs().max().item():.3g}")
    flops = 4 * q_heads * args.chunk * dim * (args.past + args.chunk / 2)
    for name, fn in cases.items():
        ms = timed(fn, args.reps)
        causal_flops = flops if name.startswith("continue") else 4 * q_heads * dim * args.chunk ** 2 / 2
        print(f"{name:<55} {ms:9.3f} ms  {causal_flops / ms / 1e9:8.1f} TFLOP/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
