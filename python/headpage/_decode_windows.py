# SPDX-License-Identifier: Apache-2.0
"""Decode-time compression's observation windows for headpage.serving.

A request compressed during decode (enable(compress_every=N)) is compressed again
after every N generated tokens, scored (as its prompt was) by the queries of its
last `window` tokens: kvpress's DecodingPress, with SnapKV-style windows. Every
decode row of such a request writes its query of every layer into a ring buffer
on the model's device, one slot of `window` rows per request, so that the window
is there when the compression comes: one index_copy_ a layer for the whole
batch, which a CUDA graph of the step captures with the index in a static
buffer. The ring holds window x q_heads x head_dim values a layer for each such
request (8 MiB a request for Llama-3-8B at a window of 32).
"""
import numpy as np
import torch

from headpage._decode_buffers import PinnedUpload


class DecodeWindows:
    """Ring buffers of the last `window` decode queries of each request given a
    slot: ring[layer][slot * window + position % window] is the query at that
    position (one row past the last slot takes the writes of rows that have
    none). The buffer doubles when the slots run out; `generation` changes
    then, and graphs captured over the old one must not be replayed."""

    def __init__(self, shape, window, device, dtype, slots=16):
        if window < 1:
            raise ValueError(f"decode windows need at least one query, got a window of {window}")
        self.shape, self.window, self.device, self.dtype = shape, window, device, dtype
        self.generation = 0
        self._slots = {}    # request -> slot
        self._free = []
        self._capacity = 0
        self.ring = None    # [layers][capacity * window + 1][q_heads][head_dim]
        self._grow(slots)
        self._index = None  # PinnedUpload, int64 [rows] of a graph step

    @property
    def bytes(self):
        return self.ring.numel() * self.ring.element_size()

    def _grow(self, capacity):
        shape = self.shape
        ring = torch.zeros(shape.num_layers, capacity * self.window + 1, shape.num_q_heads,
                           shape.head_dim, dtype=self.dtype, device=self.device)
        if self.ring is not None:
            ring[:, :self._capacity * self.window] = self.ring[:, :-1]
        self._free.extend(range(capacity - 1, self._capacity - 1, -1))
        self.ring, self._capacity = ring, capacity
        self.generation += 1

    def slot(self, request_id):
        """The request's slot, given one if it has none."""
        slot = self._slots.get(request_id)
        if slot is None:
            if not self._free:
                self._grow(2 * self._capacity)
            slot = self._slots[request_id] = self._free.pop()
        return slot

    def release(self, request_id):
        slot = self._slots.pop(request_id, None)
        if slot is not None:
            self._free.append(slot)

    @property
    def _trash(self):
        """The row written by rows without a slot: the ring's last."""
        return self._capacity * self.window

    def _rows_of(self, rows, observed):
        slots = [self.slot(r.request_id) if observed(r) else None for r in rows]
        trash = self._trash  # after any growth the slots caused
        return [trash if slot is None else slot * self.window + r.past % self.window
                for slot, r in zip(slots, rows)]

    def index(self, rows, observed):
        """Where each of `rows` (decode rows) writes its query: a new int64 tensor
        on the device."""
        return torch.tensor(self._rows_of(rows, observed), dtype=torch.int64, device=self.device)

    def graph_index(self, rows, observed, padded, capacity):
        """The same for a graph step, padded to `padded` rows (written to the
        trash row), in a static buffer of `capacity` rows with one copy from
        pinned memory on the current stream."""
        if self._index is None:
            self._index = PinnedUpload(capacity, torch.int64, self.device)
        host = self._index.host()
        n = len(rows)
        host[:n] = self._rows_of(rows, observed)
        host[n:padded] = self._trash
        return self._index.send(padded)[:padded]

    def record(self, layer, index, q):
        """Writes the decode queries q [rows][q_heads][D] of `layer` where index says."""
        self.ring[layer].index_copy_(0, index, q)

    def window_of(self, request_id, last):
        """The request's queries at positions last - window + 1 .. last, per layer
        [q_heads][window][D] in position order, and those positions (int32)."""
        slot = self._slots[request_id]
        positions = np.arange(last - self.window + 1, last + 1)
        rows = torch.as_tensor(slot * self.window + positions % self.window, device=self.device)
        windows = [self.ring[layer].index_select(0, rows).transpose(0, 1).contiguous()
                   for layer in range(self.shape.num_layers)]
        return windows, torch.as_tensor(positions, dtype=torch.int32, device=self.device)
