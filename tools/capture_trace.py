#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Captures an attention trace from a Hugging Face causal LM (docs/trace-format.md).

The model reads a prompt, generates up to G tokens greedily (with its default
attention), and then runs ONE forward pass, without a cache, over the prompt and
the generated tokens with a capturing attention function registered through
transformers' AttentionInterface. That function receives the post-RoPE queries,
keys and values of each layer, rounds them to float16 (what the trace stores),
computes causal attention on them in float32, hands that to the model (so the
model runs on exactly what is recorded) and records, for the chosen layers:

  layers.{i}.keys             f16 [num_kv_heads, num_tokens, head_dim]  post-RoPE, every token
  layers.{i}.values           f16 [num_kv_heads, num_tokens, head_dim]
  layers.{i}.queries          f16 [num_q_heads, num_queries, head_dim]  post-RoPE
  layers.{i}.query_positions  i32 [num_queries], strictly ascending
  layers.{i}.outputs          f16 [num_q_heads, num_queries, head_dim]  softmax(QK^T/sqrt(d))V, before o_proj
  layers.{i}.output_projection f16 [hidden_size, num_q_heads * head_dim] the layer's o_proj weight
                              (what CriticalKV and DefensiveKV weigh values by)

num_tokens = prompt_len + generated_len. The queries are those of the last Q
prompt tokens and of every generated token (positions prompt_len - Q ..
num_tokens - 1). Query head h reads kv head h // (num_q_heads / num_kv_heads), as
in transformers' repeat_kv. A query at position p attends to keys 0..p.

Works for Llama, Mistral and Qwen2/Qwen3 style models (GQA included), from a local
Hugging Face folder or a GGUF file (dequantized by transformers through `gguf`).
Runs on the GPU when torch sees one, else on the CPU.

Example:
  .venv-capture/bin/python tools/capture_trace.py \
      --model .cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
      --prompt-file tools/prompts/needle.txt --task needle \
      --source "tools/prompts/needle.txt: KJV Proverbs (Debian bible-kjv-text) + planted fact" \
      --generate 32 --queries 64 --layers 0,10,20,29 --out needle.safetensors
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTN_NAME = "headpage_capture"
FORMAT = "headpage-trace"
VERSION = "1"


class Recorder:
    """What the capturing attention does: off (plain SDPA) or recording."""

    def __init__(self):
        self.active = False
        self.layers = set()     # model layer indices to record
        self.rows = None        # LongTensor of query positions to keep
        self.records = {}       # layer -> dict of numpy arrays
        self.max_chunk = 1024   # query rows per float32 attention block

    def reset(self, layers, rows):
        self.active, self.layers, self.rows, self.records = True, set(layers), rows, {}


RECORDER = Recorder()


def _causal_attention_f32(q, k, v, scaling, max_chunk):
    """q [Hq,T,D], k/v [Hkv,T,D] float32 -> [Hq,T,D]; query t sees keys 0..t."""
    hq, t, d = q.shape
    n_rep = hq // k.shape[0]
    k = k.repeat_interleave(n_rep, dim=0)  # q head h -> kv head h // n_rep
    v = v.repeat_interleave(n_rep, dim=0)
    out = torch.empty_like(q)
    for a in range(0, t, max_chunk):
        b = min(t, a + max_chunk)
        s = torch.matmul(q[:, a:b], k[:, :b].transpose(1, 2)) * scaling  # [Hq, b-a, b]
        rows = torch.arange(a, b, device=q.device)[:, None]
        cols = torch.arange(b, device=q.device)[None, :]
        s = s.masked_fill(cols > rows, float("-inf"))
        p = torch.softmax(s, dim=-1)
        out[:, a:b] = torch.matmul(p, v[:, :b])
    return out


def _check_mask(attention_mask, t):
    """The model's own mask must be plain causal (no padding, no sliding window)."""
    if attention_mask is None:
        return
    m = attention_mask
    if m.dtype != torch.bool:
        m = m == 0  # additive float mask: 0 where allowed
    m = m.reshape(-1, m.shape[-2], m.shape[-1])
    causal = torch.ones(t, t, dtype=torch.bool, device=m.device).tril()
    if m.shape[-2:] != (t, t) or not bool((m == causal).all()):
        raise RuntimeError(
            "the model's attention mask is not plain causal over the whole sequence "
            "(padding or a sliding window shorter than the trace?); a trace assumes "
            "every query at position p sees keys 0..p")


def headpage_capture_attention(module, query, key, value, attention_mask, scaling=None,
                               dropout=0.0, **kwargs):
    """AttentionInterface function: SDPA when idle, float32 eager + recording when active."""
    if not RECORDER.active:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      scaling=scaling, dropout=dropout, **kwargs)
    b, hq, t, d = query.shape
    if b != 1 or key.shape[2] != t:
        raise RuntimeError("capture expects one sequence and no KV cache")
    for name in ("softcap", "s_aux", "sinks"):
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"attention with {name} is not supported by the trace format")
    window = kwargs.get("sliding_window")
    if window is not None and window < t:
        raise NotImplementedError(f"layer uses a sliding window of {window} < {t} tokens")
    if scaling is None:
        scaling = d ** -0.5
    if not math.isclose(scaling, d ** -0.5, rel_tol=1e-6):
        raise NotImplementedError(f"attention scaling {scaling} is not 1/sqrt(head_dim)")
    _check_mask(attention_mask, t)

    # The layer runs on the float16 values the trace stores (as with an fp16 KV
    # cache), so the recorded outputs are exactly softmax(QK^T/sqrt(d))V of the
    # recorded Q, K, V, up to float32 summation order and the outputs' own rounding.
    q = query[0].to(torch.float16).float()
    k = key[0].to(torch.float16).float()
    v = value[0].to(torch.float16).float()
    out = _causal_attention_f32(q, k, v, scaling, RECORDER.max_chunk)  # [Hq, T, D]

    layer = getattr(module, "layer_idx", None)
    if layer is None:
        raise RuntimeError("attention module has no layer_idx")
    if layer in RECORDER.layers:
        rows = RECORDER.rows.to(q.device)
        f16 = lambda x: x.to(torch.float16).cpu().numpy()
        RECORDER.records[layer] = {
            "keys": f16(k),
            "values": f16(v),
            "queries": f16(q.index_select(1, rows)),
            "outputs": f16(out.index_select(1, rows)),
            "output_projection": output_projection(module),
        }
    # transformers expects [batch, seq, heads, head_dim].
    return out.to(query.dtype).transpose(0, 1).unsqueeze(0).contiguous(), None


def output_projection(module):
    """The attention module's o_proj weight as float16 numpy, [hidden, q_heads * head_dim]
    (torch.nn.Linear's layout: out_features x in_features)."""
    o_proj = getattr(module, "o_proj", None)
    if o_proj is None or getattr(o_proj, "weight", None) is None or o_proj.weight.dim() != 2:
        raise RuntimeError(f"{type(module).__name__} has no o_proj weight to record")
    w = o_proj.weight.detach().float()
    if not bool(torch.isfinite(w).all()) or float(w.abs().max()) > 65504:
        raise RuntimeError("o_proj weight does not fit float16")
    return w.to(torch.float16).cpu().numpy()


AttentionInterface.register(ATTN_NAME, headpage_capture_attention)
# Same masks as SDPA, so generation (which delegates to SDPA) masks correctly.
AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


def load(model_path, dtype, device):
    kw = {}
    if model_path.endswith(".gguf"):
        folder, kw["gguf_file"] = os.path.dirname(os.path.abspath(model_path)), os.path.basename(model_path)
    else:
        folder = model_path
    tok = AutoTokenizer.from_pretrained(folder, **kw)
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype,
                                                 attn_implementation=ATTN_NAME, **kw)
    model.to(device).eval()
    return tok, model


def read_prompt(path):
    """A .json file: a list of chat messages ({"role", "content"}), the last one the
    user's; anything else: the text of one user message."""
    with open(path, encoding="utf-8") as f:
        if not path.endswith(".json"):
            return f.read().rstrip("\n")
        msgs = json.load(f)
    ok = isinstance(msgs, list) and msgs and all(
        isinstance(m, dict) and set(m) == {"role", "content"} and
        all(isinstance(x, str) for x in m.values()) for m in msgs)
    if not ok or msgs[-1]["role"] != "user":
        raise SystemExit(f"{path}: want a JSON list of {{role, content}} messages ending with a user message")
    return msgs


def encode(tok, prompt, chat):
    """Token ids of a prompt (text or chat messages), with the chat template when
    `chat` and the tokenizer has one."""
    if isinstance(prompt, list) and not (chat and getattr(tok, "chat_template", None)):
        raise SystemExit("a chat (JSON) prompt needs the tokenizer's chat template")
    if chat and getattr(tok, "chat_template", None):
        msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        enc = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        ids = enc["input_ids"] if hasattr(enc, "keys") else enc
    else:
        ids = tok(prompt)["input_ids"]
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return list(ids)


def _largest_fit(n, fits):
    """The largest k in [0, n] with fits(k), for fits true up to some k, false after."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def fit_prompt(tok, prompt, chat, max_tokens):
    """Token ids of the prompt, trimmed to max_tokens when it is longer: a text
    prompt loses lines from the end of the text before its last paragraph (which
    holds the question); a chat loses its earliest user/assistant exchanges (a
    leading system message and the last user message stay)."""
    ids = encode(tok, prompt, chat)
    if max_tokens is None or len(ids) <= max_tokens:
        return ids, False
    if isinstance(prompt, list):
        head = prompt[:1] if prompt[0]["role"] == "system" else []
        body, last = prompt[len(head):-1], prompt[-1:]
        pairs = len(body) // 2
        build = lambda k: head + body[len(body) - 2 * k:] + last if k else head + last
    else:
        cut = prompt.rstrip().rfind("\n\n")
        if cut < 0:
            raise SystemExit(f"prompt has {len(ids)} tokens > {max_tokens} and no final paragraph to keep")
        lines, tail = prompt[:cut].split("\n"), prompt[cut:]
        pairs = len(lines)
        build = lambda k: "\n".join(lines[:k]) + tail
    k = _largest_fit(pairs, lambda k: len(encode(tok, build(k), chat)) <= max_tokens)
    if k == 0:
        raise SystemExit(f"the prompt's question alone exceeds {max_tokens} tokens")
    return encode(tok, build(k), chat), True


def parse_layers(spec, num_layers):
    if spec == "all":
        return list(range(num_layers))
    layers = sorted({int(x) for x in spec.split(",") if x.strip()})
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad or not layers:
        raise SystemExit(f"--layers {spec}: the model has layers 0..{num_layers - 1}")
    return layers


def main(argv=None):
    ap = argparse.ArgumentParser(description="Capture a headpage attention trace.")
    ap.add_argument("--model", required=True, help="Hugging Face model folder or .gguf file")
    ap.add_argument("--prompt-file", required=True,
                    help="the user message (UTF-8 text), or a .json list of chat messages")
    ap.add_argument("--task", required=True, help='e.g. "summary", "needle", "fewshot-qa", "code"')
    ap.add_argument("--source", required=True, help="where the prompt came from")
    ap.add_argument("--generate", type=int, default=32, help="tokens to generate greedily (G)")
    ap.add_argument("--queries", type=int, default=64, help="last prompt tokens whose queries are kept (Q >= 64)")
    ap.add_argument("--layers", default="all", help="comma-separated layer indices, or 'all'")
    ap.add_argument("--max-prompt-tokens", type=int, help="trim the prompt text to fit")
    ap.add_argument("--model-name", help="metadata 'model' (default: from the file or folder name)")
    ap.add_argument("--no-chat-template", action="store_true", help="feed the text as is")
    ap.add_argument("--ignore-eos", action="store_true", help="always generate G tokens")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    ap.add_argument("--out", required=True, help="output .safetensors file")
    args = ap.parse_args(argv)
    if args.queries < 64:
        raise SystemExit("--queries must be at least 64")
    if args.generate < 0:
        raise SystemExit("--generate must be >= 0")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                          if args.device == "auto" else args.device)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)

    t0 = time.time()
    tok, model = load(args.model, args.dtype, device)
    cfg = model.config
    num_layers = cfg.num_hidden_layers
    hq = cfg.num_attention_heads
    hkv = getattr(cfg, "num_key_value_heads", None) or hq
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // hq
    layers = parse_layers(args.layers, num_layers)
    name = args.model_name or os.path.basename(os.path.normpath(args.model)).split(".")[0]
    log(f"loaded {name} ({type(model).__name__}, {num_layers} layers, {hq} q / {hkv} kv heads, "
        f"head_dim {head_dim}, {model.dtype}) on {device} in {time.time() - t0:.1f}s")

    prompt = read_prompt(args.prompt_file)
    ids, trimmed = fit_prompt(tok, prompt, not args.no_chat_template, args.max_prompt_tokens)
    prompt_len = len(ids)
    if prompt_len < args.queries:
        raise SystemExit(f"prompt has {prompt_len} tokens < --queries {args.queries}")
    log(f"prompt: {prompt_len} tokens{' (trimmed)' if trimmed else ''}")

    # 1. Greedy generation with SDPA (the recorder is off).
    input_ids = torch.tensor([ids], device=device)
    t1 = time.time()
    with torch.no_grad():
        gen_kwargs = dict(max_new_tokens=args.generate, do_sample=False, temperature=None,
                          top_p=None, top_k=None,
                          attention_mask=torch.ones_like(input_ids),
                          pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        if args.ignore_eos:
            gen_kwargs["min_new_tokens"] = args.generate
        seq = model.generate(input_ids, **gen_kwargs)[0] if args.generate else input_ids[0]
    generated = seq[prompt_len:].tolist()
    generated_len = len(generated)
    log(f"generated {generated_len} tokens in {time.time() - t1:.1f}s")
    log("generated text: " + repr(tok.decode(generated, skip_special_tokens=False)))

    # 2. One forward over everything, recording the chosen layers.
    num_tokens = prompt_len + generated_len
    rows = torch.arange(prompt_len - args.queries, num_tokens, dtype=torch.long)
    RECORDER.reset(layers, rows)
    t2 = time.time()
    try:
        with torch.no_grad():
            out = model(seq[None, :], use_cache=False, logits_to_keep=generated_len + 1)
    except (NotImplementedError, RuntimeError) as e:
        raise SystemExit(f"capture failed: {e}")
    finally:
        RECORDER.active = False
    log(f"capture forward over {num_tokens} tokens in {time.time() - t2:.1f}s")
    if sorted(RECORDER.records) != layers:
        raise SystemExit(f"captured layers {sorted(RECORDER.records)} != requested {layers}")
    # The capture forward must reproduce the greedy choices (a consistency check).
    if generated_len:
        pred = out.logits[0, :-1].argmax(-1).tolist()
        agree = sum(int(a == b) for a, b in zip(pred, generated))
        log(f"capture forward reproduces {agree}/{generated_len} greedy tokens")

    positions = rows.numpy().astype(np.int32)
    tensors = {}
    for i in layers:
        r = RECORDER.records[i]
        assert r["keys"].shape == (hkv, num_tokens, head_dim), r["keys"].shape
        assert r["queries"].shape == (hq, len(positions), head_dim), r["queries"].shape
        assert r["output_projection"].shape[1] == hq * head_dim, r["output_projection"].shape
        for key in ("keys", "values", "queries", "outputs", "output_projection"):
            a = r[key]
            if not np.isfinite(a).all():
                raise SystemExit(f"layer {i} {key} has NaN/Inf in float16")
            tensors[f"layers.{i}.{key}"] = np.ascontiguousarray(a)
        tensors[f"layers.{i}.query_positions"] = positions.copy()
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "model": name,
        "source": args.source,
        "task": args.task,
        "num_layers": str(num_layers),
        "num_q_heads": str(hq),
        "num_kv_heads": str(hkv),
        "head_dim": str(head_dim),
        "prompt_len": str(prompt_len),
        "generated_len": str(generated_len),
        "rope_applied": "true",
        "dtype": "float16",
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, args.out)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(args.out, 0o666 & ~umask)
    log(f"wrote {args.out}: {os.path.getsize(args.out) / 1e6:.2f} MB, layers {layers}, "
        f"{len(positions)} queries at positions {positions[0]}..{positions[-1]} "
        f"({time.time() - t0:.1f}s in all)")


if __name__ == "__main__":
    main()
