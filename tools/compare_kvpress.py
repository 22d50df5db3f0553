#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""headpage side by side with kvpress (NVIDIA's KV-cache compression presses on
transformers' own cache): the positions each (layer, KV head) keeps, the greedy
outputs, the KV memory held after compression and the speed, for the same model,
prompts, policies and parameters.

Each side runs in its own virtual environment, because kvpress pins an older
transformers than headpage's: this script (run with any Python) runs
  1. `--side headpage` in .venv-python/ (headpage.hf.Cache on SmolLM2-135M-Instruct;
     it also writes the model as safetensors and the prompts' token ids), then
  2. `--side kvpress` in .venv-kvpress/ (tools/setup_tool_env.sh kvpress makes it), which
     loads the same weights and ids, runs each press, and compares;
and writes build-kvpress/compare.csv and, with --markdown, the table that
docs/eviction.md quotes. Not part of CI: the six prompts the docs quote take about
an hour on 2 CPU cores.

Both sides get the same parameters: SnapKV's window 64, average pooling of
kernel 5, GQA mean (kvpress's defaults); StreamingLLM's 4 sinks; Ada-KV's
alpha = 0.2; PyramidKV's beta = 20. headpage is given the token count kvpress
keeps (kvpress floors n (1 - ratio); headpage's "25%" rounds to the nearest), so
that the kept sets compare the scoring and selection alone.

  tools/setup_tool_env.sh kvpress
  .venv-python/bin/python tools/compare_kvpress.py --markdown build-kvpress/compare.md
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = os.path.join(ROOT, "tools", "prompts")
# The four ~1.2K-token prompts of the bundled traces and two of the 4K ones
# (summary-4k and fewshot-qa-4k work too: --prompts).
PROMPT_NAMES = ["needle", "code", "summary", "fewshot-qa", "needle-4k", "code-4k"]
RATIOS = ["10%", "25%", "50%"]  # the fraction of the prompt kept
WINDOW, KERNEL, ALPHA, BETA, SINKS = 64, 5, 0.2, 20, 4
SNAPKV = dict(window=WINDOW, kernel=KERNEL, pooling="avg", reduce="mean")
DUO_PROFILE = os.path.join(ROOT, "tools", "profiles", "smollm2-loss.tsv")
DUO_SINKS, DUO_RECENT = 64, 256  # DuoAttention's deployment values, headpage's duoattention

def kvpress_ada_alpha(kept):
    """The alpha that gives headpage's protect-top floor, floor(alpha (kept - w)),
    the safe candidates kvpress's AdaKVPress ends up with: it protects the top
    int(alpha kept) scores of each head, and the window's scores (max + 1) are the
    first WINDOW of them, so only int(alpha kept) - WINDOW candidates are safe."""
    safe = max(0, int(ALPHA * kept) - WINDOW)
    return min(1.0, (safe + 0.5) / (kept - WINDOW))


# method -> the headpage configurations compared with kvpress's press for it:
# (label, policy name, options, or a function of the kept count giving them).
# "adakv" is run three ways: Ada-KV's released rule (headpage's default floor),
# kvpress's rule with alpha 0.2 on the candidates, and kvpress's rule with the
# floor kvpress actually gets (kvpress_ada_alpha).
METHODS = {
    "snapkv": [("uniform-snapkv", "uniform-snapkv", SNAPKV)],
    "adakv": [("ada-snapkv scaled", "ada-snapkv", dict(SNAPKV, alpha=ALPHA, floor="scaled")),
              ("ada-snapkv protect-top", "ada-snapkv", dict(SNAPKV, alpha=ALPHA, floor="protect-top")),
              ("ada-snapkv kvpress-floor", "ada-snapkv",
               lambda kept: dict(SNAPKV, floor="protect-top", alpha=kvpress_ada_alpha(kept)))],
    "streamingllm": [("streamingllm", "streamingllm", dict(sinks=SINKS))],
    "tova": [("tova", "tova", {})],
    "knorm": [("knorm", "knorm", {})],
    "pyramidkv": [("pyramid", "pyramid", dict(SNAPKV, beta=BETA))],
    # CriticalKV's registry entries are kvpress's settings already (window 64,
    # average pooling 5, the safeguard counting the window).
    "criticalkv": [("critical-snapkv", "critical-snapkv", {})],
    "criticaladakv": [("critical-ada-snapkv", "critical-ada-snapkv", dict(alpha=ALPHA))],
    # DuoAttention with the same head profile on both sides (kvpress's own
    # patterns are downloaded from GitHub for its known models; SmolLM2 has none).
    "duoattention": [("duoattention", "duoattention", dict(profile=DUO_PROFILE, sparsity=0.5))],
}

# method -> kvpress's press for it, from kvpress's module and the compression ratio.
PRESSES = {
    "snapkv": lambda kp, r: kp.SnapKVPress(compression_ratio=r, window_size=WINDOW, kernel_size=KERNEL),
    "adakv": lambda kp, r: kp.AdaKVPress(PRESSES["snapkv"](kp, r), alpha_safeguard=ALPHA),
    "streamingllm": lambda kp, r: kp.StreamingLLMPress(compression_ratio=r, n_sink=SINKS),
    "tova": lambda kp, r: kp.TOVAPress(compression_ratio=r),
    "knorm": lambda kp, r: kp.KnormPress(compression_ratio=r),
    "pyramidkv": lambda kp, r: kp.PyramidKVPress(compression_ratio=r, window_size=WINDOW,
                                                 kernel_size=KERNEL, beta=BETA),
    "criticalkv": lambda kp, r: kp.CriticalKVPress(PRESSES["snapkv"](kp, r)),
    "criticaladakv": lambda kp, r: kp.CriticalAdaKVPress(PRESSES["snapkv"](kp, r),
                                                         alpha_safeguard=ALPHA),
    "duoattention": lambda kp, r: duo_press(kp),
}


def duo_press(kp):
    """kvpress's DuoAttentionPress on headpage's profile: the pattern loader
    returns DUO_PROFILE's scores and DuoAttention's deployment sink and recent
    sizes; half of the (layer, kv head)s stream (its n_pruned lowest)."""
    import numpy as np
    press = kp.DuoAttentionPress(head_compression_ratio=0.5)
    scores = np.clip(np.loadtxt(DUO_PROFILE, delimiter="\t", ndmin=2), 0, 1)
    press.load_attention_pattern = lambda model: (DUO_SINKS, DUO_RECENT, scores)
    return press


def compression_ratio(ratio):
    """kvpress's compression_ratio (the fraction removed) for a kept ratio ("10%")."""
    return 1.0 - float(ratio.rstrip("%")) / 100.0


def n_kept(prompt_len, ratio):
    """kvpress's compute_n_kept(k_len, compression_ratio): int(n (1 - r)), at least 1."""
    return max(1, int(prompt_len * (1.0 - compression_ratio(ratio))))


def chat_ids(tok, name):
    path = os.path.join(PROMPTS, name + (".json" if name.startswith("fewshot") else ".txt"))
    with open(path, encoding="utf-8") as f:
        text = f.read()
    messages = json.loads(text) if path.endswith(".json") else [{"role": "user", "content": text}]
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    return (enc["input_ids"] if hasattr(enc, "keys") else enc)[0].tolist()


def greedy(model, ids, cache, new_tokens, after_prefill):
    """Prefill, after_prefill(), then greedy decoding of new_tokens; returns the
    tokens, the prefill's seconds and decode tokens per second."""
    import torch
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model(torch.tensor([ids]), past_key_values=cache, use_cache=True)
        after_prefill()
        prefill = time.perf_counter() - t0
    tokens, tok_s = decode(model, len(ids), int(out.logits[0, -1].argmax()), cache, new_tokens)
    return tokens, prefill, tok_s


def decode(model, prompt_len, first, cache, new_tokens):
    """Greedy decoding from the prefill's argmax `first`; returns the tokens and the
    decode tokens per second."""
    import torch
    tokens = [first]
    with torch.no_grad():
        token = torch.tensor([[first]])
        t0 = time.perf_counter()
        for i in range(new_tokens - 1):
            # The token's own position, as kvpress's pipeline passes it: a compressed
            # DynamicCache's length is no longer the number of tokens seen.
            position = torch.tensor([[prompt_len + i]])
            out = model(token, past_key_values=cache, use_cache=True, position_ids=position)
            token = out.logits[:, -1:].argmax(-1)
            tokens.append(int(token))
        seconds = time.perf_counter() - t0
    return tokens, (new_tokens - 1) / max(seconds, 1e-9)


# -- headpage's side ----------------------------------------------------------------

def headpage_kept(cache, prompt_len):
    """[layers][kv_heads][prompt_len] bool: the prompt positions each stream holds."""
    import numpy as np
    mask = np.zeros((cache.num_layers * cache.num_kv_heads, prompt_len), dtype=bool)
    for stream, held in enumerate(cache.stream_positions()):
        held = held.numpy()
        mask[stream, held[held < prompt_len]] = True
    return mask.reshape(cache.num_layers, cache.num_kv_heads, prompt_len)


def save_dequantized(model, tok, folder):
    """The float weights transformers dequantized from the GGUF, as a Hugging Face
    folder kvpress's transformers loads (save_pretrained refuses a GGUF model)."""
    import copy
    from safetensors.torch import save_model
    os.makedirs(folder, exist_ok=True)
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    save_model(model, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(folder)


def run_headpage(args):
    import numpy as np
    import torch
    import headpage
    import headpage.hf as hf
    if args.threads:
        torch.set_num_threads(args.threads)
    tok, model = hf.load_smollm2()
    model_dir = os.path.join(args.out_dir, "model")
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        save_dequantized(model, tok, model_dir)
    prompts = {name: chat_ids(tok, name) for name in args.prompts}
    with open(os.path.join(args.out_dir, "prompts.json"), "w") as f:
        json.dump(prompts, f)
    runs, masks = [], {}
    for name, ids in prompts.items():
        configs = [("full", "full", "full", {}, None)]
        for ratio in args.ratios:
            kept = n_kept(len(ids), ratio)
            for method in args.methods:
                for label, policy, options in METHODS[method]:
                    if callable(options):
                        options = options(kept)
                    configs.append((method, label, ratio, options, (policy, kept)))
        # One prefill per prompt (as kvpress's would be: the model's own SDPA over
        # the whole prompt); each configuration loads it into its own Cache.
        t0 = time.perf_counter()
        prefill = hf.record_prefill(model, torch.tensor([ids]), queries=WINDOW)
        prefill_s = time.perf_counter() - t0
        for method, label, ratio, options, spec in configs:
            policy, budget = ("full", None) if spec is None else \
                (headpage.policy_by_name(spec[0], **options), spec[1])
            cache = hf.Cache(model, policy=policy, budget=budget, page_size=args.page_size,
                             max_tokens=len(ids) + args.new_tokens)
            t0 = time.perf_counter()
            cache.load_prefill(prefill.keys, prefill.values, prefill.queries)
            cache.compress()
            compress_s = time.perf_counter() - t0
            mask = headpage_kept(cache, len(ids))
            pages = int(cache.pool.used_pages)
            tokens, tok_s = decode(model, len(ids), int(prefill.logits.argmax(-1)), cache, args.new_tokens)
            masks[f"{name}|{label}|{ratio}"] = np.packbits(mask, axis=-1)
            runs.append(dict(prompt=name, method=method, label=label, ratio=ratio,
                             prompt_len=len(ids), options=options, kept=int(mask.sum()),
                             kv_bytes=pages * int(cache.geometry.page_bytes),
                             prefill_s=prefill_s + compress_s, decode_tok_s=tok_s, tokens=tokens))
            print(f"headpage {name:14s} {label:26s} {ratio:>4s} kept={runs[-1]['kept']:7d} "
                  f"{tok_s:5.1f} tok/s", flush=True)
        del prefill
    np.savez_compressed(os.path.join(args.out_dir, "headpage-kept.npz"), **masks)
    with open(os.path.join(args.out_dir, "headpage.json"), "w") as f:
        json.dump(dict(runs=runs, page_size=args.page_size, torch=torch.__version__,
                       transformers=__import__("transformers").__version__), f)


# -- kvpress's side ----------------------------------------------------------------------

class Recorder:
    """Wraps a press's compress() to record, per layer, the scores it ranked by
    and the positions it kept: the top out_keys.shape[2] scores for a ScorerPress
    (the same torch.topk call on the same scores: the same indices), everything but
    module.masked_key_indices for AdaKVPress (which keeps every key and masks)."""

    def __init__(self, press):
        self.press, self.layers = press, {}
        self.scorer = press.press if hasattr(press, "alpha_safeguard") else press
        if not hasattr(self.scorer, "score"):  # DuoAttention masks by head, it scores nothing
            self.scorer = None
        self.inner_compress = press.compress
        press.compress = self.compress

    def compress(self, module, hidden_states, keys, values, attentions, kwargs):
        import torch
        box = {}
        if self.scorer is not None:
            score = self.scorer.score

            def recording_score(*a, **k):
                box["scores"] = score(*a, **k)
                box["copy"] = box["scores"].detach().clone()  # AdaKVPress writes into it
                return box["scores"]
            self.scorer.score = recording_score
        try:
            out_keys, out_values = self.inner_compress(module, hidden_states, keys, values, attentions, kwargs)
        finally:
            if self.scorer is not None:
                del self.scorer.score  # back to the class's method
        k_len = keys.shape[2]
        scores = box["copy"][0].float() if box else torch.zeros(keys.shape[1], k_len)
        if out_keys.shape[2] < k_len:
            kept = torch.zeros(scores.shape, dtype=torch.bool)
            kept.scatter_(-1, box["scores"].topk(out_keys.shape[2], dim=-1).indices[0], True)
        else:
            kept = torch.ones(scores.shape, dtype=torch.bool)
            masked = getattr(module, "masked_key_indices", None)
            if masked is not None:
                kept[masked[1], masked[2]] = False
        self.layers[module.layer_idx] = (scores.numpy(), kept.numpy())
        return out_keys, out_values


def cache_bytes(cache):
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


def run_kvpress(args):
    import numpy as np
    import torch
    import kvpress
    from kvpress.utils import compute_n_kept
    from transformers import AutoModelForCausalLM, DynamicCache
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = os.path.join(args.out_dir, "model")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    with open(os.path.join(args.out_dir, "prompts.json")) as f:
        prompts = json.load(f)
    with open(os.path.join(args.out_dir, "headpage.json")) as f:
        head = json.load(f)
    head_masks = np.load(os.path.join(args.out_dir, "headpage-kept.npz"))
    rows = []
    done = {}  # (prompt, method, ratio) -> the kvpress run, shared by headpage's variants
    for run in head["runs"]:
        if run["method"] not in args.methods + ["full"]:
            continue
        name, method, ratio, ids = run["prompt"], run["method"], run["ratio"], prompts[run["prompt"]]
        key = (name, method, ratio)
        if key not in done:
            cache, recorder, holder = DynamicCache(), None, {}

            def measure():
                holder["bytes"] = cache_bytes(cache)
            if method == "full":
                tokens, prefill, tok_s = greedy(model, ids, cache, args.new_tokens, measure)
            else:
                press = PRESSES[method](kvpress, compression_ratio(ratio))
                recorder = Recorder(press)
                # The press compresses inside the prefill's forward and lets the decode
                # steps pass (AdaKV's masks stay on the modules for them).
                with press(model):
                    tokens, prefill, tok_s = greedy(model, ids, cache, args.new_tokens, measure)
            done[key] = dict(tokens=tokens, prefill=prefill, tok_s=tok_s, recorder=recorder,
                             bytes=holder["bytes"])
            if method != "full":
                assert compute_n_kept(len(ids), compression_ratio(ratio)) == \
                    n_kept(len(ids), ratio)
        k = done[key]
        row = compare_run(run, k, head_masks, args)
        rows.append(row)
        print(f"kvpress  {name:14s} {run['label']:26s} {ratio:>4s} same sets {row['same_streams']:>7s} "
              f"tokens {row['same_tokens']:2d}/{args.new_tokens} {k['tok_s']:5.1f} tok/s", flush=True)
    with open(os.path.join(args.out_dir, "compare.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(args.out_dir, "kvpress.json"), "w") as f:
        json.dump(dict(torch=torch.__version__, transformers=__import__("transformers").__version__,
                       kvpress=getattr(kvpress, "__version__", "0.5.5")), f)



def compare_run(run, k, head_masks, args):
    """One CSV row: headpage's run against kvpress's for the same prompt, method and ratio."""
    import numpy as np
    n = run["prompt_len"]
    ours = np.unpackbits(head_masks[f"{run['prompt']}|{run['label']}|{run['ratio']}"], axis=-1,
                         count=n).astype(bool)
    layers, heads = ours.shape[:2]
    theirs = np.ones_like(ours)
    scores = None
    if k["recorder"] is not None:
        scores = np.zeros(ours.shape, dtype=np.float32)
        for layer, (s, kept) in k["recorder"].layers.items():
            theirs[layer], scores[layer] = kept, s
    differ = ours != theirs
    same_streams = int((~differ.any(-1)).sum())
    # How far apart kvpress's own scores are over the positions the two sides
    # disagree on, within one selection (a stream; a layer for Ada-KV, which picks
    # across its heads), relative to its largest candidate score: ~1e-7 means the
    # sides cut between (nearly) equal scores, i.e. float rounding.
    gap = 0.0
    if scores is not None and differ.any():
        per_layer = run["method"] in ("adakv", "criticaladakv")
        for layer in range(layers):
            for head in ([None] if per_layer else range(heads)):
                d = differ[layer] if per_layer else differ[layer, head]
                if not d.any():
                    continue
                s = scores[layer] if per_layer else scores[layer, head]
                candidates = s[s < s.max()]  # the window's scores are max + 1
                scale = float(np.abs(candidates).max()) if candidates.size else 1.0
                gap = max(gap, float(s[d].max() - s[d].min()) / max(scale, 1e-30))
    # Whether, in every stream, the smaller kept set lies inside the larger one
    # (the same ranking cut at different counts: PyramidKV's schedules).
    small_in_large = all(
        not ((ours[l, h] & ~theirs[l, h]).any() and (theirs[l, h] & ~ours[l, h]).any())
        for l in range(layers) for h in range(heads))
    same_tokens = 0
    for a, b in zip(run["tokens"], k["tokens"]):
        if a != b:
            break
        same_tokens += 1
    return dict(prompt=run["prompt"], prompt_len=n, method=run["method"], headpage=run["label"],
                ratio=run["ratio"], options=json.dumps(run["options"], sort_keys=True),
                kept_headpage=int(ours.sum()), kept_kvpress=int(theirs.sum()),
                streams=layers * heads, same_streams=f"{same_streams}/{layers * heads}",
                same_streams_n=same_streams, differing_positions=int(differ.sum()),
                score_gap=f"{gap:.2e}", nested=int(small_in_large),
                same_tokens=same_tokens, new_tokens=len(run["tokens"]),
                kv_bytes_headpage=run["kv_bytes"], kv_bytes_kvpress=k["bytes"],
                prefill_s_headpage=f"{run['prefill_s']:.3f}", prefill_s_kvpress=f"{k['prefill']:.3f}",
                decode_tok_s_headpage=f"{run['decode_tok_s']:.2f}",
                decode_tok_s_kvpress=f"{k['tok_s']:.2f}",
                tokens_headpage=" ".join(map(str, run["tokens"])),
                tokens_kvpress=" ".join(map(str, k["tokens"])))


# -- the report ----------------------------------------------------------------------------

def write_markdown(csv_path, path):
    """One line per (headpage configuration, ratio), over the prompts."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    groups = {}
    for r in rows:
        groups.setdefault((r["headpage"], r["ratio"]), []).append(r)
    new_tokens = rows[0]["new_tokens"] if rows else "?"
    with open(path, "w", encoding="utf-8") as f:
        f.write("| headpage policy | kvpress press | kept | prompts | streams with the same set | "
                f"positions differing | score gap | outputs identical ({new_tokens} tokens) | "
                "tokens before the first difference (mean) | KV MiB headpage | KV MiB kvpress | "
                "decode tok/s headpage | decode tok/s kvpress |\n")
        f.write("| --- " * 13 + "|\n")
        for (label, ratio), rs in groups.items():
            streams = sum(int(r["streams"]) for r in rs)
            same = sum(int(r["same_streams_n"]) for r in rs)
            differ = sum(int(r["differing_positions"]) for r in rs)
            kept = sum(int(r["kept_kvpress"]) for r in rs)
            gap = max(float(r["score_gap"]) for r in rs)
            identical = sum(int(r["same_tokens"]) == int(r["new_tokens"]) for r in rs)
            lead = sum(int(r["same_tokens"]) for r in rs) / len(rs)
            mib = lambda key: sum(int(r[key]) for r in rs) / len(rs) / 2**20  # noqa: E731
            tps = lambda key: sum(float(r[key]) for r in rs) / len(rs)  # noqa: E731
            nested = "" if differ == 0 else (" (nested)" if all(r["nested"] == "1" for r in rs) else "")
            f.write(f"| {label} | {rs[0]['method']} | {ratio} | {len(rs)} | {same / streams:.1%} | "
                    f"{differ / max(kept, 1):.2%}{nested} | {gap:.1e} | {identical}/{len(rs)} | {lead:.1f} | "
                    f"{mib('kv_bytes_headpage'):.1f} | {mib('kv_bytes_kvpress'):.1f} | "
                    f"{tps('decode_tok_s_headpage'):.1f} | {tps('decode_tok_s_kvpress'):.1f} |\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", choices=["headpage", "kvpress"],
                    help="run one side only (the script runs both when this is not given)")
    ap.add_argument("--prompts", default=",".join(PROMPT_NAMES), help="names of tools/prompts/ files")
    ap.add_argument("--ratios", default=",".join(RATIOS), help="the fractions of the prompt kept")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "build-kvpress"))
    ap.add_argument("--kvpress-python", default=os.path.join(ROOT, ".venv-kvpress", "bin", "python"),
                    help="the python of kvpress's environment (tools/setup_tool_env.sh kvpress)")
    ap.add_argument("--markdown", help="write the summary table here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    args.prompts = args.prompts.split(",")
    args.ratios = args.ratios.split(",")
    args.methods = args.methods.split(",")
    for m in args.methods:
        if m not in METHODS:
            ap.error(f"unknown method {m!r}; known: {', '.join(METHODS)}")
    os.makedirs(args.out_dir, exist_ok=True)
    if args.side == "headpage":
        run_headpage(args)
    elif args.side == "kvpress":
        run_kvpress(args)
    else:
        passed = [a for a in sys.argv[1:]]
        subprocess.run([sys.executable, __file__, "--side", "headpage", *passed], check=True)
        if not os.path.exists(args.kvpress_python):
            sys.exit(f"{args.kvpress_python} not found: run tools/setup_tool_env.sh kvpress first")
        subprocess.run([args.kvpress_python, __file__, "--side", "kvpress", *passed], check=True)
    if args.markdown and args.side != "headpage":
        write_markdown(os.path.join(args.out_dir, "compare.csv"), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
