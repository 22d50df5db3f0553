# SPDX-License-Identifier: Apache-2.0
"""What one step of headpage.serving's engine is made of: its rows (one per request
with tokens in the step), what every layer of it reads, and the record
ServingCache keeps of it for tools/bench_serving.py."""
import typing

import numpy as np
from transformers.generation.continuous_batching.input_outputs import ContinuousBatchingAsyncIOs


def io_pairs(inputs_and_outputs):
    """The two IO pairs of transformers' asynchronous batching (the engine
    prepares one while the GPU runs the other), or None when the engine runs one
    step at a time. The one place headpage.serving tells the two apart."""
    if isinstance(inputs_and_outputs, ContinuousBatchingAsyncIOs):
        return inputs_and_outputs.io_pairs
    return None


class _StepRow:
    """One request of the step being run: its rows [first, first + count) of the
    packed batch, at logical positions past..past + count - 1. compress_at is the
    logical length at which its prompt is compressed (None: it is not): the
    prompt's length, or one less for a request that forks for
    num_return_sequences. transformers forks such a request after prefilling all
    but its last prompt token, so it is compressed then, and its children share
    the compressed pages. reserved is False for a finishing request's row, whose
    token is dropped: it reserved nothing (its slots are -1) and writes nothing."""
    __slots__ = ("request_id", "seq", "past", "count", "first", "slots", "compress_at",
                 "reserved")

    def __init__(self, request_id, seq, past, count, first, slots, compress_at, reserved=True):
        self.request_id, self.seq, self.past, self.count = request_id, seq, past, count
        self.first, self.slots, self.compress_at = first, slots, compress_at
        self.reserved = reserved

    def write_positions(self):
        """The positions its tokens are written at: -1 (nothing written, by write_kv's
        slots or decode_attention's new tokens) for a row that reserved nothing."""
        if not self.reserved:
            return np.full(self.count, -1, dtype=np.int32)
        return np.arange(self.past, self.past + self.count, dtype=np.int32)

    @property
    def is_decode(self):
        return self.count == 1 and self.past > 0

    @property
    def observes(self):
        """Whether some of its rows are queries of the prompt still to be compressed."""
        return self.compress_at is not None and self.past < self.compress_at

    @property
    def ends_prompt(self):
        return self.observes and self.compress_at <= self.past + self.count


class _StepInputs:
    """What every layer of one step reads (ServingCache._prepare_step). A step run
    as a CUDA graph (graph_rows set) reads only static device buffers, padded to
    graph_rows decode rows."""
    __slots__ = ("slots", "positions", "decode", "prefill", "observing", "decode_at", "seqs",
                 "tables", "splits", "balanced_blocks", "workspace", "graph_rows", "ring_index")

    def __init__(self):
        self.slots = self.positions = self.decode_at = self.seqs = self.tables = None
        self.workspace = self.graph_rows = self.ring_index = None
        self.decode, self.prefill, self.observing = [], [], []
        self.splits = 1
        self.balanced_blocks = 0


class StepRecord(typing.NamedTuple):
    """One engine step, as ServingCache records it when record_steps is set."""
    began: float          # time.perf_counter() when its first layer ran
    requests: int         # rows of the batch: requests with tokens in the step
    decoding: int         # of which one token of decode
    prefill_tokens: int   # prompt tokens of the others
    kv_tokens_read: int   # tokens the decode rows' attention read, over every stream
    pool_evictions: int   # pool-budget evictions run while the step was scheduled
    graph: bool           # whether it ran as a CUDA graph
    tables: str           # what the decode tables needed: "", "new", "refresh",
                          # "rebuilt" (a layer copied whole) or "reset" (another batch)
