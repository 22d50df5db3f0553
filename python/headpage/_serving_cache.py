# SPDX-License-Identifier: Apache-2.0
"""headpage.serving's cache: what transformers' continuous-batching scheduler and
batch preparation ask of their cache, answered from a headpage BlockManager, and
the attention of each layer over the pool (docs/serving.md)."""
import collections
import logging
import time

import numpy as np
import torch
from torch.nn.attention.bias import causal_lower_right

import headpage
from headpage._decode_buffers import (GRAPH_SPLIT_TOKENS, DecodeBuffers, multiprocessors,
                                      padded_rows)
from headpage._decode_windows import DecodeWindows
from headpage._kv_pages import cache_geometry, check_kv_dtype
from headpage._model import (check_compress_every, make_arena, model_shape, output_projections,
                             pages_for_tokens, resolve_policy)
from headpage._serving_compress import Compressions
from headpage._serving_prefix import PrefixCaching, headwise_prefill_attention
from headpage._serving_step import StepRecord, _StepInputs, _StepRow

_log = logging.getLogger("headpage.serving")

# Tokens a step takes when transformers' config leaves max_batch_tokens unset.
DEFAULT_BATCH_TOKENS = 2048


class _AllocatorView:
    """The one allocator transformers' batch preparation asks about: full
    attention, whose read length is the logical one (past + new tokens)."""
    layer_type = "full_attention"
    index = 0
    read_trash_index = 0
    write_trash_index = 0

    @staticmethod
    def get_seqlen_k(past, new):
        return past + new


class _NoSectorPool:
    """transformers' sector pool, asked to free space before it offloads: the
    block manager reclaims its unused cached blocks itself (evict_cached_blocks,
    and whenever a reserve runs short)."""

    @staticmethod
    def try_to_free_sectors():
        return None


class ServingCache(Compressions, PrefixCaching):
    """What transformers' continuous-batching engine asks of its cache, answered
    from a headpage pool (duck-typed: the engine reads the attributes and calls
    the methods below; its own attention functions never see this object)."""

    def __init__(self, model, max_batch_tokens, *, num_pages, page_size=16, policy="full",
                 budget=None, check_invariants=False, request_policies=None, graph_rows=0,
                 compress_every=0, prefix_caching=True, request_prefixes=None, kv_dtype="auto",
                 tensor_parallel=None, decode_division="even", decode_splits=None):
        shape = model_shape(model, "headpage.serving")
        self.policy, self.budget = resolve_policy(policy, budget)
        # Under tensor parallelism (headpage._serving_tp) this rank's pool holds its
        # slice of every layer's KV heads, and the ranks agree on every answer.
        self.tp = tensor_parallel
        # Under tensor parallelism, the pages each decoding request's next token
        # needs, when every rank holds them all this round (PoolPressure sets it).
        self.decode_promises = None
        if self.tp is not None:
            shape, prefix_caching = self.tp.settle(shape, prefix_caching)
        check_compress_every(compress_every, self.policy)
        # Generated tokens between decode-time compressions (0: the prompt only),
        # and the ring of decode queries they score with (made when first needed).
        self.compress_every = compress_every
        self.decode_windows = None
        self._decoded = set()     # requests compressed during decode (from _compress_at)
        self.shape = shape
        self.geometry = cache_geometry(shape, model.dtype, page_size, check_kv_dtype(
            kv_dtype, model.dtype, "headpage.serving"))  # pages of the model's dtype, or fp8
        self.device = model.device
        self.dtype = model.dtype
        # Each layer's o_proj weight, for the policies that weigh values by it
        # (CriticalKV, DefensiveKV); None when the model has none to give.
        try:
            self._output_projections = output_projections(model, shape.num_layers,
                                                          "headpage.serving")
        except ValueError:
            self._output_projections = None
        self._projections_at = None  # the same, where the engine reads them (Compressions)
        self.page_pool = headpage.PagePool(num_pages)
        self.arena = make_arena(self.geometry, num_pages, self.device, "headpage.serving")
        self.manager = headpage.BlockManager(self.geometry, self.page_pool)
        # Made at the first step (_prepare_step), on the stream transformers runs the
        # model on, so that its kernels are ordered with the step's writes. Every
        # request may name its own policy and budget (ServingManager.add_request).
        self.engine = None
        # request -> (PolicyConfig, budget) its caller asked for, filled by the manager
        # from another thread; read at admission, dropped when the request finishes.
        self.request_policies = request_policies if request_policies is not None else {}
        # Read by transformers' scheduler and batch preparation.
        # Tokens a step takes: transformers' config, or a chunk that keeps a long
        # prompt's prefill from stalling the decoding requests for long.
        self.max_batch_tokens = max_batch_tokens or DEFAULT_BATCH_TOKENS
        self.num_blocks = num_pages
        # Prefix caching (BlockManager's prefix cache, one page per stream): a
        # request starts on the cached blocks of its prompt, and a compressing
        # policy keeps that shared prefix whole (EvictionEngine.freeze_prefix).
        self.use_prefix_sharing = bool(prefix_caching)
        self.allow_block_sharing = bool(prefix_caching)
        self.cache_allocators = {"full_attention": _AllocatorView()}
        self.max_blocks_per_request = 0
        self.max_decode_fast_path_length = 0
        # transformers' attention reads its cache through a read index that the
        # batch preparation fills with every past token of the batch, sized by
        # max_tokens_read; the scheduler charges each request its past length
        # against it, capped by read_cache_limit. headpage's attention reads the
        # pool through its own tables: a limit of 0 charges nothing, so nothing is
        # filled, and the index stays small.
        self.read_cache_limit = 0
        self.max_tokens_read = self.max_batch_tokens
        self.bytes_per_sector = 1
        self.pool = _NoSectorPool()  # transformers' name for its sector pool
        # Per request: its headpage sequence and engine state.
        self._seqs = {}
        self._compress_at = {}    # request -> length at which its prompt is compressed
        self._hits = {}           # request -> (seq, cached tokens, compressed), matched, not admitted
        # Compressed prefixes (PrefixCaching): request -> the prompt tokens it asked
        # to compress once and share (filled by the manager), the prefixes kept, in
        # least recently used order, and the requests computing one.
        self.request_prefixes = request_prefixes if request_prefixes is not None else {}
        self._compressed_prefixes = collections.OrderedDict()  # (salt, ids) -> seq
        self._prefix_pending = {}  # request -> the key its compression will be kept under
        self._prefix_users = {}    # key -> live requests that run on that prefix
        self._prefix_of = {}       # request -> the key of the prefix it runs on
        self._frozen = {}         # admitted request -> its cached prefix's tokens
        self._prompt_ids = {}     # admitted request -> its prompt's ids, offered to the cache
        self._offered = {}        # admitted request -> tokens it offered so far
        self._policies = {}       # admitted request -> (PolicyConfig, budget)
        self._promised_pages = 0
        # Under asynchronous batching: the requests whose last new token the step
        # in flight computes. transformers schedules them once more before it
        # knows; their row in that step stores nothing (PoolPressure sets it).
        self.finishing = frozenset()
        self._step = []           # this step's _StepRow list, in batch order
        self._step_done = True    # the last layer ran: the next extend starts a step
        self._inputs = None       # _StepInputs of the step, made at its first layer
        self._copies = []         # (src, dst) page copies the step's reserves planned
        # Decode steps run as CUDA graphs (headpage._decode_graphs) for batches of up
        # to graph_rows requests, padded: 0 turns them off. What such a step reads
        # lives at fixed addresses (DecodeBuffers).
        self.graph_rows = graph_rows if self.device.type == "cuda" else 0
        self.decode_buffers = None if self.device.type != "cuda" else DecodeBuffers(
            self.manager, shape, num_pages, self.graph_rows, self.device, self._stream)
        self._num_sms = multiprocessors(self.device) if self.device.type == "cuda" else 0
        self._resident_blocks = headpage.decode_attention_resident_blocks(self.arena)
        # decode_division "balanced": decode attention divides every step's pages
        # equally among one wave of blocks (decode_attention's balanced_blocks).
        self._balanced_blocks = 0
        if decode_division == "balanced" and self._num_sms:
            self._balanced_blocks = headpage.decode_attention_balanced_blocks(self.arena,
                                                                              self._num_sms)
        # decode_splits: the even division's split count, fixed (None: chosen
        # per step, or per graph, by decode_attention_splits).
        self._fixed_splits = decode_splits
        # Measurement, read by tools/bench_serving.py: seconds spent compressing,
        # and with record_steps set, one StepRecord per step.
        self.compress_seconds = 0.0
        # The pool as the engine's thread last saw it, for readers on other threads.
        self.pool_snapshot = dict(free_pages=num_pages, sequences=0, cached_pages=0,
                                  cached_only_pages=0)
        # A debug run: the pool's invariants proved after every step, O(pool) each.
        self.check_invariants = check_invariants
        self.record_steps = False
        self.steps = []
        self.pool_evictions_this_step = 0  # counted by PoolPressure, recorded per step
        self._windows = {}        # (request, layer) -> observed queries [q_heads][w][D]
        # Per request, its prompt's CompressResult or Skipped (the latest
        # RECENT_RESULTS requests), and the totals since the cache was made.
        self.compressions = collections.OrderedDict()
        self.totals = dict(compressed=0, skipped=0, tokens_before=0, tokens_after=0,
                           pages_freed=0, decode_compressions=0, decode_pages_freed=0,
                           decode_skipped=0, prefix_hits=0, prefix_hit_tokens=0,
                           compressed_prefix_hits=0, compressed_prefixes=0)
        self._compressed = set()  # sequences whose prompt was compressed or skipped
        _log.info("headpage.serving: prefix caching is %s", "on: a compressed request keeps its "
                  "cached prefix whole" if self.use_prefix_sharing else "off")

    def _stream(self):
        if self.device.type == "cuda":
            return torch.cuda.current_stream(self.device).cuda_stream
        return 0

    def _to_device(self, array, dtype=None):
        """A host array where the kernels read it."""
        # A copy: the bookkeeping's arrays are read-only views.
        tensor = torch.from_numpy(np.array(array, dtype=dtype, copy=True))
        return tensor if self.device.type == "cpu" else tensor.to(self.device)

    # -- the scheduler's questions ------------------------------------------------------

    def _pages_for(self, request_id, tokens):
        seq = self._seqs.get(request_id)
        if seq is None and request_id in self._hits:
            seq = self._hits[request_id][0]
        if seq is not None:
            return self.manager.pages_needed(seq, tokens)
        return pages_for_tokens(tokens, self.geometry.page_size,
                                self.geometry.streams_per_sequence)

    def can_store_request_tokens(self, state, num_tokens, dry_run=False):
        """Whether the pool can take `num_tokens` more of the request; unless
        dry_run, promises them (the pages are reserved when the batch is prepared).
        A finishing request's step needs none."""
        if state.request_id in self.finishing:
            return True
        need = self._pages_for(state.request_id, num_tokens)
        held = self.decode_promises  # under tensor parallelism: set aside for decoding
        if held is not None and num_tokens == 1 and state.request_id in held:
            fits = True  # every rank has its next token's pages (PoolPressure)
            if not dry_run:
                held.pop(state.request_id)
        else:
            kept = sum(held.values()) if held else 0
            fits = self.room(need + kept) >= need + kept
            if self.tp is not None:  # the scheduler runs on every rank: it fits on all or none
                fits = self.tp.all(fits)
        if fits and not dry_run:
            if state.request_id not in self._seqs:
                self._admit(state)
            self._promised_pages += need
        return fits

    def _admit(self, state):
        rid = state.request_id
        seq, cached, compressed = self._hits.pop(rid, (None, 0, False))
        self._seqs[rid] = self.manager.add_sequence() if seq is None else seq
        # A hit on cached blocks is frozen at compression; a compressed prefix
        # is compressed already.
        self._frozen[rid] = 0 if compressed else cached
        if self.use_prefix_sharing:
            self._prompt_ids[rid] = state.initial_tokens
            self._offered[rid] = cached
        policy, budget = self.request_policies.get(rid, (self.policy, self.budget))
        self._policies[rid] = (policy, budget)
        self._compress_at[rid] = None
        if budget is not None and policy.compresses and not compressed:
            self._compress_at[rid] = self._compression_point(state)
            # A forked request's children share its pages: decode-time compression
            # would copy them all; it is for requests without children.
            # A request computing a compressed prefix keeps its own tokens whole.
            if self.compress_every and state.num_children == 0 and \
                    rid not in self.request_prefixes:
                self._decoded.add(rid)

    def compute_free_capacity(self, relative=True):
        # Unused cached blocks are reclaimed as soon as a request needs their pages.
        free = self.manager.available_pages
        if self.tp is not None:  # the fullest rank's, so that the ranks decide alike
            free = self.tp.min(free)
        return free / self.page_pool.num_pages if relative else free

    def free_blocks(self, request_id, no_cache=False):
        """The request is finished (or cancelled): its pages and its policy go."""
        self.release(request_id)
        self.request_policies.pop(request_id, None)
        self.request_prefixes.pop(request_id, None)

    def release(self, request_id):
        """Frees the request's pages and state; it may be admitted again (a preempted
        request is queued again from its prompt)."""
        seq = self._seqs.pop(request_id, None)
        hit = self._hits.pop(request_id, None)
        if hit is not None:  # matched, never admitted
            self.manager.free(hit[0])
        for table in (self._frozen, self._prompt_ids, self._offered, self._prefix_pending):
            table.pop(request_id, None)
        self._drop_prefix_user(request_id)
        self._compress_at.pop(request_id, None)
        self._policies.pop(request_id, None)
        self._decoded.discard(request_id)
        if self.decode_windows is not None:
            self.decode_windows.release(request_id)
        for key in [k for k in self._windows if k[0] == request_id]:
            del self._windows[key]
        if seq is not None:
            self._compressed.discard(seq)
            if self.decode_buffers is not None:
                self.decode_buffers.forget(seq)
            if self.engine is not None:
                self.engine.forget(seq)
            self.manager.free(seq)
            self._publish()

    def _publish(self):
        # O(1) reads: stats() would walk every stream of every request each step.
        free = self.page_pool.free_pages
        self.pool_snapshot = dict(free_pages=free, sequences=len(self._seqs),
                                  cached_pages=self.manager.cached_pages,
                                  cached_only_pages=self.manager.available_pages - free)

    def free_all_requests(self, clear_ledgers=False):
        # Matched but not yet admitted requests hold a sequence too.
        for request_id in list(self._seqs) + list(self._hits):
            self.free_blocks(request_id)

    def reset(self):
        self.free_all_requests()
        self._promised_pages = 0
        self._step, self._step_done, self._inputs, self._copies = [], True, None, []

    def prepare_fork_request(self, source_state, destination_ids, copies):
        parent = self._seqs[source_state.request_id]
        for child in destination_ids:
            # The parent's prompt was compressed before the fork (its compress_at is
            # the prompt's length less one): the child shares what it kept.
            self._seqs[child] = self.manager.fork(parent)
            self._compress_at[child] = None
            self._frozen[child] = self._frozen.get(source_state.request_id, 0)
            self._policies[child] = self._policies.get(source_state.request_id,
                                                       (self.policy, self.budget))
        return list(destination_ids)

    def perform_cache_copy(self, copies):
        return None  # forks share pages; copy-on-write happens at their next reserve

    # -- batch preparation: once per request, in batch order -------------------------------

    def extend_read_and_write_indices(self, request_id, past_length, query_length, read_index,
                                      write_index):
        if self._step_done:
            self._step, self._step_done = [], False
            self._promised_pages = 0  # what was promised is being reserved now
            self.decode_promises = None
        seq = self._seqs[request_id]
        reserved = request_id not in self.finishing
        if not reserved:
            # Its token of this step is dropped: it writes nothing (slot -1) and
            # attends to what it has.
            slots = np.full((query_length, self.shape.num_layers, self.shape.num_kv_heads), -1,
                            dtype=np.int32)
        else:
            plan = self.manager.reserve(seq, query_length)
            if len(plan.copy_src):  # run at the step's first layer, on the model's stream
                self._copies.append((np.array(plan.copy_src), np.array(plan.copy_dst)))
            slots = np.array(plan.slot_mapping)
        compress_at = self._compress_at.get(request_id)
        first = self._step[-1].first + self._step[-1].count if self._step else 0
        self._step.append(_StepRow(request_id, seq, past_length, query_length, first, slots,
                                   compress_at, reserved))
        # transformers sizes its index tensors from these; headpage never reads them.
        write_index[0].extend([0] * query_length)

    # -- the attention of one layer ----------------------------------------------------------

    def graph_rows_for_step(self):
        """The padded batch size at which the step being prepared runs as a CUDA
        graph, or None when it runs eagerly: graphs are off, a row is not one
        token of decode, a row's query belongs to an observation window, or the
        batch is larger than graph_rows."""
        rows = self._step
        if not self.graph_rows or not rows or len(rows) > self.graph_rows:
            return None
        if any(not r.is_decode or r.observes for r in rows):
            return None
        return padded_rows(len(rows), self.graph_rows)

    def _prepare_step(self, device, graph_rows=None):
        """What every layer of the step reads, made once at its first layer (or,
        for a graph, before the forward): the slots and positions of the packed
        batch on the device (one copy each), and for the decode rows their block
        tables of every layer (on CUDA the resident DeviceBlockTables, one upload
        a step while the decode set stays the same, reset to a new one in place)
        and the split-KV plan. With graph_rows, everything lies in static
        buffers padded to that many decode rows."""
        rows = self._step
        if self.engine is None:
            if self.device.type == "cuda":
                self.engine = headpage.EvictionEngine(self.manager, self.arena,
                                                      stream=self._stream())
            else:
                self.engine = headpage.EvictionEngine(self.manager, self.arena)
            if self.tp is not None:
                # One budget across every rank's heads (EvictionEngine.join_group),
                # agreed over the group's CPU (gloo) side whether the pools are
                # host memory or device memory.
                self.engine.join_group(self.tp.collective)
        if self._copies:  # copy-on-write of forked tail pages, before any write
            headpage.copy_pages(self.arena,
                                self._to_device(np.concatenate([c[0] for c in self._copies])),
                                self._to_device(np.concatenate([c[1] for c in self._copies])),
                                stream=self._stream())
            self._copies = []
        inputs = _StepInputs()
        inputs.graph_rows = graph_rows
        inputs.decode = [r for r in rows if r.is_decode]
        inputs.prefill = [r for r in rows if not r.is_decode]
        if graph_rows is not None:
            inputs.positions = self.decode_buffers.graph_positions(rows, graph_rows)
        else:
            inputs.positions = self._to_device(np.concatenate([r.write_positions() for r in rows]))
            if inputs.prefill:  # write_kv's slots; decode rows alone write in decode_attention
                inputs.slots = self._to_device(np.concatenate([r.slots for r in rows]))  # [T][L][H]
        inputs.observing = [(i, r) for i, r in enumerate(inputs.decode) if r.observes]
        decode = inputs.decode
        if decode:
            seqs = [r.seq for r in decode]
            if graph_rows is None:  # a graph's rows are all decode rows, in order
                inputs.decode_at = torch.tensor([r.first for r in decode], device=device)
            buffers = self.decode_buffers
            if buffers is not None:
                buffers.update(seqs)
                if graph_rows is None:
                    inputs.tables = buffers.views()
                else:
                    inputs.tables = buffers.padded_views(graph_rows * self.shape.num_kv_heads)
                # Streams are never longer than their request (compressed ones are shorter).
                longest = max(r.past + 1 for r in decode)
                if graph_rows is not None:
                    # A graph's split count follows its batch size alone (as if the
                    # streams were long), so that growing streams reuse its graph;
                    # splits past a short stream's end have nothing to do.
                    longest = max(longest, GRAPH_SPLIT_TOKENS)
                launched = graph_rows or len(decode)
                inputs.balanced_blocks = self._balanced_blocks
                if inputs.balanced_blocks:
                    inputs.splits = 1
                elif self._fixed_splits is not None:
                    inputs.splits = self._fixed_splits
                else:
                    inputs.splits = headpage.decode_attention_splits(
                        longest, launched * self.shape.num_kv_heads, self._num_sms,
                        self._resident_blocks)
                if inputs.splits > 1 or inputs.balanced_blocks:
                    inputs.workspace = buffers.workspace(launched, inputs.splits,
                                                         static=graph_rows is not None,
                                                         balanced_blocks=inputs.balanced_blocks)
            else:
                inputs.seqs = seqs
            inputs.ring_index = self._ring_index(decode, graph_rows)
        if self.record_steps:
            read = sum(int(np.asarray(self.manager.stream_lengths(r.seq)).sum()) for r in decode)
            tables = self.decode_buffers.last_update if decode and self.decode_buffers else ""
            self.steps.append(StepRecord(time.perf_counter(), len(rows), len(decode),
                                         sum(r.count for r in rows if not r.is_decode), read,
                                         self.pool_evictions_this_step, graph_rows is not None,
                                         tables))
        self.pool_evictions_this_step = 0
        self._inputs = inputs

    def prepare_graph_step(self, graph_rows):
        """Readies the step for its CUDA graph at `graph_rows` padded rows (from
        graph_rows_for_step), on the current stream; returns what a graph captured
        for it depends on: (graph_rows, splits, (the tables' generation, the
        decode windows' generation: 0 while there are none))."""
        self._prepare_step(self.device, graph_rows)
        windows = self.decode_windows
        return graph_rows, self._inputs.splits, (self.decode_buffers.generation,
                                                  windows.generation if windows else 0)

    def _ring_index(self, decode, graph_rows):
        """Where the decode rows write their queries in the decode windows' ring,
        or None when no request of the cache is compressed during decode yet.
        Once the ring exists, every graph step writes (rows without a slot to
        its trash row), so that one graph serves steps with and without them."""
        observed = lambda r: r.request_id in self._decoded  # noqa: E731
        if self.decode_windows is None:
            if not any(observed(r) for r in decode):
                return None
            self.decode_windows = DecodeWindows(self.shape, self.policy.window, self.device,
                                                self.dtype)
        if graph_rows is None:
            return self.decode_windows.index(decode, observed)
        return self.decode_windows.graph_index(decode, observed, graph_rows, self.graph_rows)

    def attend(self, module, query, key, value, scaling):
        """query [1][q_heads][T][D], key/value [1][kv_heads][T][D] of the packed batch;
        returns [1][T][q_heads][D]."""
        layer = module.layer_idx
        if self._inputs is None:
            self._prepare_step(query.device)
        inputs = self._inputs
        if inputs.graph_rows is not None:
            return self._attend_graph(layer, inputs, query, key, value, scaling)
        out = torch.empty(1, query.shape[2], self.shape.num_q_heads, self.shape.head_dim,
                          dtype=query.dtype, device=query.device)
        # A step of decode rows alone writes its tokens inside decode_attention
        # (each stream's last slot is where reserve put the row's token); prefill
        # rows attend to their own K/V in the pool, written first.
        if inputs.prefill:
            headpage.write_kv(self.arena, key[0].transpose(0, 1).contiguous(),
                              value[0].transpose(0, 1).contiguous(), inputs.slots[:, layer, :],
                              inputs.positions, stream=self._stream())
        for r in inputs.prefill:
            out[0, r.first:r.first + r.count] = self._attend_prefill(layer, r, query, key, value,
                                                                     scaling)
        if inputs.decode:
            if inputs.tables is not None:
                indptr, page_ids, lens = inputs.tables[layer]
            else:
                table = self.manager.block_table(layer, inputs.seqs)
                indptr, page_ids, lens = (self._to_device(table.indptr),
                                          self._to_device(table.page_ids),
                                          self._to_device(table.lens))
            q = query[0].index_select(1, inputs.decode_at).transpose(0, 1).contiguous()
            o = torch.empty_like(q)  # [n][q_heads][D]
            # A prompt's last token alone in its step (a one-token chunk) runs here,
            # and its query belongs to the observation window.
            for i, r in inputs.observing:
                self._keep_window(layer, r, q[i].unsqueeze(1))
            if inputs.ring_index is not None:
                self.decode_windows.record(layer, inputs.ring_index, q)
            new = {}
            if not inputs.prefill:
                new = dict(new_keys=key[0].transpose(0, 1).index_select(0, inputs.decode_at),
                           new_values=value[0].transpose(0, 1).index_select(0, inputs.decode_at),
                           new_positions=inputs.positions.index_select(0, inputs.decode_at))
            # The manager built these tables: no device check.
            headpage.decode_attention(self.arena, q, indptr, page_ids, lens, o, sm_scale=scaling,
                                      num_splits=inputs.splits, workspace=inputs.workspace,
                                      stream=self._stream(), check=False,
                                      balanced_blocks=inputs.balanced_blocks, **new)
            out[0].index_copy_(0, inputs.decode_at, o)
        if layer == self.shape.num_layers - 1:
            self.end_step()
        return out

    def _attend_graph(self, layer, inputs, query, key, value, scaling):
        """One layer of a decode step in a CUDA graph: every row is one token of
        decode, in batch order, padded to graph_rows; only static buffers are read
        (the padding writes nothing and attends to empty tables). The rows'
        new K/V are written by decode_attention itself."""
        q = query[0].transpose(0, 1).contiguous()  # [graph_rows][q_heads][D]
        if inputs.ring_index is not None:
            self.decode_windows.record(layer, inputs.ring_index, q)
        o = torch.empty_like(q)
        indptr, page_ids, lens = inputs.tables[layer]
        headpage.decode_attention(self.arena, q, indptr, page_ids, lens, o, sm_scale=scaling,
                                  num_splits=inputs.splits, workspace=inputs.workspace,
                                  stream=self._stream(), check=False,
                                  balanced_blocks=inputs.balanced_blocks,
                                  new_keys=key[0].transpose(0, 1).contiguous(),
                                  new_values=value[0].transpose(0, 1).contiguous(),
                                  new_positions=inputs.positions)
        return o.unsqueeze(0)

    def end_step(self):
        """After the step's last layer (or its graph): offers the prompt blocks it
        completed to the prefix cache, compresses the prompts it completed and
        publishes the pool."""
        if self.use_prefix_sharing:
            self._offer_prompts()
        self._compress_completed_prompts()
        if self._decoded:
            self._compress_during_decode()
        self._step_done = True
        self._inputs = None
        self._publish()
        if self.check_invariants:
            self.manager.check_invariants()  # RuntimeError naming the first violation

    def _attend_prefill(self, layer, r, query, key, value, scaling):
        """SDPA of a prefill chunk over its request's K/V so far (every head has the
        same length until the prompt is compressed): the chunk's own K/V when it
        is the request's first, else read back from the pool. Keeps the rows of
        the observation window for the compression."""
        # SDPA's fused kernels (flash, memory-efficient) take 4-D [batch][heads][T][D]
        # only; 3-D tensors go to its math path, 17 to 50 times slower on an H200
        # (tools/bench_prefill_attention.py).
        q = query[:, :, r.first:r.first + r.count]  # [1][q_heads][count][D]
        if r.past == 0:
            keys = key[:, :, r.first:r.first + r.count]
            values = value[:, :, r.first:r.first + r.count]
            o = torch.nn.functional.scaled_dot_product_attention(
                q, keys, values, is_causal=True, scale=scaling, enable_gqa=True)
        else:
            keys, values, lens = self._prefill_keys(layer, r, query)
            if lens.min() != lens.max():  # a compressed prefix: head-wise lengths
                o = headwise_prefill_attention(q, keys, values, lens, scaling)
            else:
                # A chunk after the first needs a bottom-right causal mask, which the
                # fused kernels take without GQA: each KV head is repeated for its
                # query heads (as fast as a boolean mask with GQA, on the H200).
                group = self.shape.num_q_heads // self.shape.num_kv_heads
                if group > 1:
                    keys = keys.repeat_interleave(group, 1)
                    values = values.repeat_interleave(group, 1)
                o = torch.nn.functional.scaled_dot_product_attention(
                    q, keys, values, attn_mask=causal_lower_right(r.count, int(lens[0])),
                    scale=scaling)
        q, o = q[0], o[0]
        if r.observes:
            self._keep_window(layer, r, q)
        return o.transpose(0, 1)


# The methods of transformers' cache protocol that ServingCache answers.
_CACHE_PROTOCOL = {
    "can_store_request_tokens", "compute_free_capacity", "count_new_complete_blocks",
    "evict_cached_blocks", "extend_read_and_write_indices", "free_all_requests", "free_blocks",
    "mark_complete_blocks", "perform_cache_copy", "prepare_fork_request", "reset",
    "search_prefix_match"}
