# SPDX-License-Identifier: Apache-2.0
"""What the decode rows of headpage.serving's steps read on a CUDA device: the
block tables of every layer, resident (one DeviceBlockTables for the cache's
life, refreshed each step and reset in place when the batch changes), the
split-KV workspaces, and for steps run as CUDA graphs the padded views and one
static buffer of slots and positions (headpage._decode_graphs)."""
import numpy as np
import torch

import headpage


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
        self._workspaces = {}     # (padded rows, splits) -> a graph's split-KV workspace
        self._ids = None          # int32: positions [graph_rows], slots [graph_rows][L][H]
        self._ids_host = None     # its pinned mirror
        self._ids_sent = None     # CUDA event: the mirror's last copy is done

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
        elif self._seqs == seqs:
            tables.refresh()
            if tables.last_refresh_rebuilt:  # a layer's page_ids changed length
                self._views = None
        else:
            tables.reset(seqs)
            self._views = None
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

    def workspace(self, rows, splits, static):
        """Split-KV workspace for `rows` decode rows; a graph's (static) is kept."""
        size = headpage.decode_attention_workspace_bytes(
            rows, self.shape.num_q_heads, self.shape.head_dim, splits)
        if not static:
            return torch.empty(size, dtype=torch.uint8, device=self.device)
        workspace = self._workspaces.get((rows, splits))
        if workspace is None:
            workspace = torch.empty(size, dtype=torch.uint8, device=self.device)
            self._workspaces[(rows, splits)] = workspace
        return workspace

    def graph_ids(self, rows, graph_rows):
        """The slots [graph_rows][L][H] and positions [graph_rows] of the step's
        decode `rows`, padded (slot -1: nothing written), in the static device
        buffer: one copy from pinned memory on the current stream."""
        layers, heads = self.shape.num_layers, self.shape.num_kv_heads
        capacity = self._graph_rows
        if self._ids is None:
            size = capacity * (1 + layers * heads)
            self._ids = torch.empty(size, dtype=torch.int32, device=self.device)
            self._ids_host = torch.empty(size, dtype=torch.int32, pin_memory=True)
            self._ids_sent = torch.cuda.Event()
        else:
            self._ids_sent.synchronize()  # the last copy has read the mirror
        host = self._ids_host.numpy()
        n = len(rows)
        host[:n] = [r.past for r in rows]
        host[n:graph_rows] = 0
        sent = capacity + graph_rows * layers * heads
        slots = host[capacity:sent].reshape(graph_rows, -1)
        slots[:n] = np.concatenate([r.slots for r in rows]).reshape(n, -1)
        slots[n:] = -1
        self._ids[:sent].copy_(self._ids_host[:sent], non_blocking=True)
        self._ids_sent.record()
        return self._ids[capacity:sent].view(graph_rows, layers, heads), self._ids[:graph_rows]
