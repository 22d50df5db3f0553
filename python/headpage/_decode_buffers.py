# SPDX-License-Identifier: Apache-2.0
"""What the decode rows of headpage.serving's steps read on a CUDA device: the
block tables of every layer, resident (one DeviceBlockTables for the cache's
life, refreshed each step and reset in place when the batch changes), the
split-KV workspaces, and for steps run as CUDA graphs the padded views and one
static buffer of slots and positions (headpage._decode_graphs). headpage.hf.Cache
sizes its split-KV workspace with the helpers here too."""
import functools

import numpy as np
import torch

import headpage


@functools.lru_cache(maxsize=None)
def multiprocessors(device):
    """The CUDA device's multiprocessor count (decode_attention_splits fills
    them), asked of the driver once per device."""
    return torch.cuda.get_device_properties(device).multi_processor_count


def workspace_bytes(rows, num_q_heads, num_kv_heads, head_dim, splits, balanced_blocks=0):
    """decode_attention's split-KV workspace for `rows` decode rows: `splits` per
    stream, or the balanced division over `balanced_blocks` (0: even splits)."""
    if balanced_blocks:
        return headpage.decode_attention_balanced_workspace_bytes(
            rows, num_q_heads, num_kv_heads, head_dim, balanced_blocks)
    return headpage.decode_attention_workspace_bytes(rows, num_q_heads, head_dim, splits)


class GrowingWorkspace:
    """A device byte buffer kept across calls and replaced only by a larger one."""

    def __init__(self):
        self.buffer = None

    def at_least(self, size, device):
        """The buffer, at least `size` bytes on `device` (None when size is 0)."""
        if size and (self.buffer is None or self.buffer.numel() < size):
            self.buffer = torch.empty(size, dtype=torch.uint8, device=device)
        return self.buffer if size else None


class PinnedUpload:
    """A device buffer at a fixed address (what a CUDA graph reads), refilled
    from its pinned mirror with one asynchronous copy on the current stream; the
    mirror is handed out again only once the last copy has read it."""

    def __init__(self, size, dtype, device):
        self.device_buffer = torch.empty(size, dtype=dtype, device=device)
        self._host = torch.empty(size, dtype=dtype, pin_memory=True)
        self._sent = torch.cuda.Event()

    def host(self):
        """The mirror as a numpy array, free to rewrite."""
        self._sent.synchronize()  # returns at once before the first copy
        return self._host.numpy()

    def send(self, count):
        """Copies the mirror's first `count` values; returns the device buffer."""
        self.device_buffer[:count].copy_(self._host[:count], non_blocking=True)
        self._sent.record()
        return self.device_buffer


class DecodeBuffers:
    """The device side of the decode rows, for a ServingCache on CUDA. A graph
    captured over padded_views() and graph_ids() stays valid while `generation`
    stays the same."""

    def __init__(self, manager, shape, num_pages, graph_rows, device, stream):
        self.manager, self.shape, self.device = manager, shape, device
        self._num_pages, self._graph_rows, self._stream = num_pages, graph_rows, stream
        self.tables = None        # DeviceBlockTables
        self._seqs = None         # the sequences its rows hold, in order
        self._views = None        # per layer (indptr, page_ids, lens) of the batch's rows
        self._padded = {}         # padded rows -> per layer views of that many rows
        self._generation = None   # the tables' generation the views are of
        self.last_update = ""     # what update() did: new, refresh, rebuilt or reset
        self._workspaces = {}     # (padded rows, splits, blocks) -> a graph's split-KV workspace
        self._ids = None  # PinnedUpload, int32: positions [graph_rows], slots [graph_rows][L][H]

    @property
    def generation(self):
        return self.tables.generation

    def forget(self, seq):
        """`seq` is freed: the tables may not name it again (the next step resets
        them to its batch)."""
        if self._seqs is not None and seq in self._seqs:
            self._seqs = None

    def update(self, seqs):
        """Brings the tables to the decode rows `seqs`: refreshed while the set
        stays the same, reset to a new set in the same device arrays."""
        tables = self.tables
        if tables is None:
            heads = self.shape.num_kv_heads
            rows = self._graph_rows * heads
            # Room for every layer's share of the pool twice over (layers keep
            # different amounts) plus a page of headroom per stream: a batch that
            # outgrows it moves the arrays, and the graphs are captured again.
            pages = 2 * -(-self._num_pages // self.shape.num_layers) + rows * 8
            self.tables = headpage.DeviceBlockTables(
                self.manager, seqs, headroom_pages=8, stream=self._stream(),
                device=self.device.index or 0, row_capacity=rows,
                page_capacity=pages if self._graph_rows else 0)
            self._views = None
            self.last_update = "new"
        elif self._seqs == seqs:
            tables.refresh()
            self.last_update = "refresh"
            if tables.last_refresh_rebuilt:  # a layer's page_ids changed length
                self._views = None
                self.last_update = "rebuilt"
        else:
            tables.reset(seqs)
            self._views = None
            self.last_update = "reset"
        self._seqs = seqs
        if self._generation != self.tables.generation:
            self._generation = self.tables.generation
            self._views = None
            self._padded = {}

    def views(self):
        """Per layer (indptr, page_ids, lens) of the batch's rows, valid until the
        next update()."""
        if self._views is None:
            self._views = [tuple(torch.from_dlpack(a) for a in self.tables.layer(layer))
                           for layer in range(self.shape.num_layers)]
        return self._views

    def padded_views(self, rows):
        """Per layer views padded to `rows` rows (empty past the batch's), valid
        for the tables' generation."""
        views = self._padded.get(rows)
        if views is None:
            views = [tuple(torch.from_dlpack(a) for a in self.tables.layer(layer, rows))
                     for layer in range(self.shape.num_layers)]
            self._padded[rows] = views
        return views

    def workspace(self, rows, splits, static, balanced_blocks=0):
        """Split-KV workspace for `rows` decode rows, `splits` per stream or the
        balanced division over `balanced_blocks`; a graph's (static) is kept."""
        size = workspace_bytes(rows, self.shape.num_q_heads, self.shape.num_kv_heads,
                               self.shape.head_dim, splits, balanced_blocks)
        if not static:
            return torch.empty(size, dtype=torch.uint8, device=self.device)
        key = (rows, splits, balanced_blocks)
        workspace = self._workspaces.get(key)
        if workspace is None:
            workspace = torch.empty(size, dtype=torch.uint8, device=self.device)
            self._workspaces[key] = workspace
        return workspace

    def graph_ids(self, rows, graph_rows):
        """The slots [graph_rows][L][H] and positions [graph_rows] of the step's
        decode `rows`, padded (slot -1 and position 0: nothing written, the
        padding's tables being empty; a row that reserved nothing has position
        -1, which decode_attention's new tokens skip), in the static device
        buffer: one copy from pinned memory on the current stream."""
        layers, heads = self.shape.num_layers, self.shape.num_kv_heads
        capacity = self._graph_rows
        if self._ids is None:
            self._ids = PinnedUpload(capacity * (1 + layers * heads), torch.int32, self.device)
        host = self._ids.host()
        n = len(rows)
        host[:n] = [r.past if r.reserved else -1 for r in rows]  # -1: the row writes nothing
        host[n:graph_rows] = 0
        sent = capacity + graph_rows * layers * heads
        slots = host[capacity:sent].reshape(graph_rows, -1)
        slots[:n] = np.concatenate([r.slots for r in rows]).reshape(n, -1)
        slots[n:] = -1
        ids = self._ids.send(sent)
        return ids[capacity:sent].view(graph_rows, layers, heads), ids[:graph_rows]
