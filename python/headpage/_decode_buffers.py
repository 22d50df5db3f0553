# SPDX-License-Identifier: Apache-2.0
"""What the decode rows of headpage.serving's steps read on a CUDA device: the
block tables of every layer, resident (one DeviceBlockTables for the cache's
life, refreshed each step and reset in place when the batch changes), the
split-KV workspaces, and for steps run as CUDA graphs their padded size, views and one
static buffer of the rows' positions (headpage._decode_graphs). headpage.hf.Cache
sizes its split-KV workspace with the helpers here too."""
import functools

import torch

import headpage

# The stream length a decode graph's split-KV count is chosen for.
GRAPH_SPLIT_TOKENS = 8192


def padded_rows(n, limit):
    """The batch size a CUDA graph of an n-request decode step is captured for:
    n rounded up to a multiple of 8 up to 64, of 16 up to 128, of 32 up to 256,
    then of 64 (about eight sizes a doubling), at most `limit`."""
    step = 8 if n <= 64 else 16 if n <= 128 else 32 if n <= 256 else 64
    return min(-(-n // step) * step, limit)


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
    captured over padded_views() and graph_positions() stays valid while `generation`
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
        self._positions = None  # PinnedUpload, int32 [graph_rows]: a graph step's positions

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

    def graph_positions(self, rows, graph_rows):
        """The positions [graph_rows] of the step's decode `rows`, where
        decode_attention writes their tokens (in each stream's last slot: the
        slots themselves are not needed), padded with 0 (the padding's tables
        are empty, so nothing is written), in the static device buffer: one copy
        from pinned memory on the current stream."""
        if self._positions is None:
            self._positions = PinnedUpload(self._graph_rows, torch.int32, self.device)
        host = self._positions.host()
        n = len(rows)
        host[:n] = [r.write_positions()[0] for r in rows]  # -1: the row writes nothing
        host[n:graph_rows] = 0
        return self._positions.send(graph_rows)[:graph_rows]
