#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The PyTorch baselines of issue #5, timed with CUDA events on the GPU machine.

Run by scripts/gpu-check beside bench_kernels, so that every ratio in
docs/performance.md compares two numbers taken on the same device minutes apart.
Geometry: 32 query heads, 8 KV heads, head_dim 128, bf16.

  copy          torch copy_ of 1 GiB (bytes read + written per second)
  sdpa          decode attention, one query per sequence, dense K/V, GQA
  sdpa20        the same on a uniform 20% cache (what head-wise eviction competes with)
  sdpa_cold, sdpa20_cold
                both with L2 emptied before each call (bench_kernels' *ColdL2)
  gather_sdpa20 gather a head-wise 20% keep set out of the full cache, then SDPA:
                what a PyTorch-level head-wise eviction does per decode step
  snapkv        SnapKV scoring, the PyTorch formulation (kvpress/Ada-KV style):
                repeat_interleave, matmul, fp32 softmax, sum, mean over the group,
                avg_pool1d (W = 32, kernel 7)
  matmul        a bf16 8192^3 matmul: the tensor-core rate of WindowScores' floor
  topk          torch.topk over the flattened scores of one layer per sequence
                (8 sequences x 8 KV heads x 32K, keep 20%)
"""
import argparse
import json
import math
import os

import torch
import torch.nn.functional as F

Q_HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
SHAPES = [(1, 32768), (8, 8192), (32, 4096), (8, 32768), (1, 131072)]
DT = torch.bfloat16


# As bench_kernels' TimeWithEvents: each timed call is queued behind a kernel
# that holds the GPU (torch.cuda._sleep spins this many cycles, about 100 us),
# so that the events time the GPU's work and not PyTorch's dispatch;
# HEADPAGE_BENCH_HOST_LATENCY=1 leaves it out (the figures before 2026-12-06).
HOLD_CYCLES = 0 if os.environ.get("HEADPAGE_BENCH_HOST_LATENCY") == "1" else 200_000


_l2_evictor = None


def evict_l2():
    """Reads 256 MiB (more than any L2), as bench_kernels' EvictL2: the lines it
    leaves are clean, so the timed call after it pays no write-backs for them."""
    global _l2_evictor
    if _l2_evictor is None:
        _l2_evictor = torch.zeros(1 << 26, dtype=torch.float32, device="cuda")
    _l2_evictor.sum()


def time_ms(fn, iters=20, warmup=3, cold=False):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if cold:
            evict_l2()
        if HOLD_CYCLES:
            torch.cuda._sleep(HOLD_CYCLES)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2]  # the median, as robust as Google Benchmark's repetitions


def sdpa_decode(batch, length, cold=False):
    q = torch.randn(batch, Q_HEADS, 1, HEAD_DIM, device="cuda", dtype=DT)
    k = torch.randn(batch, KV_HEADS, length, HEAD_DIM, device="cuda", dtype=DT)
    v = torch.randn_like(k)
    ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), cold=cold)
    return ms, 2 * k.numel() * k.element_size()


def gather_sdpa(batch, length, fraction=0.2):
    q = torch.randn(batch, Q_HEADS, 1, HEAD_DIM, device="cuda", dtype=DT)
    k = torch.randn(batch, KV_HEADS, length, HEAD_DIM, device="cuda", dtype=DT)
    v = torch.randn_like(k)
    kept = int(length * fraction)
    idx = torch.rand(batch, KV_HEADS, length, device="cuda").argsort(-1)[..., :kept]
    idx = idx.sort(-1).values.unsqueeze(-1).expand(-1, -1, -1, HEAD_DIM)

    def step():
        kk, vv = k.gather(2, idx), v.gather(2, idx)
        return F.scaled_dot_product_attention(q, kk, vv, enable_gqa=True)

    return time_ms(step)


def snapkv_scores(batch, length, window=32, kernel=7):
    group = Q_HEADS // KV_HEADS
    q = torch.randn(batch, Q_HEADS, window, HEAD_DIM, device="cuda", dtype=DT)
    k = torch.randn(batch, KV_HEADS, length, HEAD_DIM, device="cuda", dtype=DT)
    mask = torch.full((window, window), float("-inf"), device="cuda").triu(1)

    def score():
        keys = k.repeat_interleave(group, dim=1)
        logits = torch.matmul(q, keys.transpose(2, 3)) / math.sqrt(HEAD_DIM)
        logits[..., -window:] += mask
        attn = torch.softmax(logits, dim=-1, dtype=torch.float32)
        summed = attn[..., :-window].sum(dim=-2)
        summed = summed.view(batch, KV_HEADS, group, -1).mean(dim=2)
        return F.avg_pool1d(summed, kernel_size=kernel, padding=kernel // 2, stride=1)

    return time_ms(score, iters=10)


def topk_layer(batch=8, length=32768, fraction=0.2):
    scores = torch.rand(batch, KV_HEADS * length, device="cuda")
    k = int(KV_HEADS * length * fraction)
    return time_ms(lambda: torch.topk(scores, k, dim=-1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}

    src = torch.empty(1 << 29, dtype=torch.int16, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src))
    results["copy"] = {"ms": ms, "read_write_Bps": 2 * (1 << 30) / (ms / 1e3)}
    print(f"copy 1 GiB: {ms:.3f} ms, {results['copy']['read_write_Bps'] / 1e12:.3f} TB/s")

    a = torch.randn(8192, 8192, device="cuda", dtype=DT)
    b = torch.randn(8192, 8192, device="cuda", dtype=DT)
    ms = time_ms(lambda: torch.matmul(a, b))
    results["matmul"] = {"ms": ms, "flops": 2 * 8192**3 / (ms / 1e3)}
    print(f"bf16 matmul 8192^3: {ms:.3f} ms, {results['matmul']['flops'] / 1e12:.0f} TFLOP/s")
    del a, b

    for batch, length in SHAPES:
        key = f"{batch}x{length}"
        ms, kv_bytes = sdpa_decode(batch, length)
        ms20, kv20 = sdpa_decode(batch, int(length * 0.2))
        results.setdefault("sdpa", {})[key] = {"ms": ms, "kv_Bps": kv_bytes / (ms / 1e3)}
        results.setdefault("sdpa20", {})[key] = {"ms": ms20, "kv_Bps": kv20 / (ms20 / 1e3)}
        print(f"sdpa {key}: {ms:.4f} ms ({kv_bytes / (ms / 1e3) / 1e12:.2f} TB/s K/V); "
              f"uniform 20%: {ms20:.4f} ms")
        torch.cuda.empty_cache()
    for batch, length in [(8, 32768), (1, 131072)]:
        key = f"{batch}x{length}"
        ms, _ = sdpa_decode(batch, length, cold=True)
        ms20, _ = sdpa_decode(batch, int(length * 0.2), cold=True)
        results.setdefault("sdpa_cold", {})[key] = {"ms": ms}
        results.setdefault("sdpa20_cold", {})[key] = {"ms": ms20}
        print(f"sdpa {key}, L2 emptied before each call: {ms:.4f} ms; uniform 20%: {ms20:.4f} ms")
        torch.cuda.empty_cache()
    for batch, length in [(8, 32768)]:
        key = f"{batch}x{length}"
        results.setdefault("gather_sdpa20", {})[key] = {"ms": gather_sdpa(batch, length)}
        results.setdefault("snapkv", {})[key] = {"ms": snapkv_scores(batch, length)}
        print(f"gather-then-SDPA 20% {key}: {results['gather_sdpa20'][key]['ms']:.4f} ms; "
              f"SnapKV PyTorch scoring: {results['snapkv'][key]['ms']:.3f} ms")
        torch.cuda.empty_cache()
    for batch, length in SHAPES:
        key = f"{batch}x{length}"
        if key not in results.get("snapkv", {}):
            results["snapkv"][key] = {"ms": snapkv_scores(batch, length)}
            torch.cuda.empty_cache()
    results["topk"] = {"8x8x32768": {"ms": topk_layer()}}
    print(f"torch.topk one layer (8 x 8 x 32K, 20%): {results['topk']['8x8x32768']['ms']:.4f} ms")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
