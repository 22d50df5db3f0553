# SPDX-License-Identifier: Apache-2.0
"""What headpage.hf.record_prefill keeps of a prompt's prefill: the recorder (a
DynamicCache that also keeps each layer's last queries, handed to headpage's
attention function like a headpage Cache) and the Prefill it returns, which
Cache.load_prefill loads into one cache per policy."""
import dataclasses

import torch
from transformers import DynamicCache


class PrefillRecorder(DynamicCache):
    """transformers' DynamicCache that also keeps each layer's last `keep` queries
    of the prefill (all of them when None), handed over like a headpage Cache."""

    def __init__(self, config, keep):
        super().__init__(config=config)
        self.keep, self.queries = keep, {}

    def record(self, layer, query):
        if layer not in self.queries:
            rows = query.shape[2] if self.keep is None else min(self.keep, query.shape[2])
            self.queries[layer] = query[:, :, query.shape[2] - rows:].detach().clone()


@dataclasses.dataclass(frozen=True)
class Prefill:
    """A prompt's prefill, run once by record_prefill() for Cache.load_prefill():
    logits of the last position [batch][vocab], and per layer keys and values
    [batch][kv_heads][tokens][head_dim] and the last queries
    [batch][q_heads][q][head_dim] (after RoPE)."""
    logits: torch.Tensor
    keys: list
    values: list
    queries: list
