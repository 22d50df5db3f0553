# SPDX-License-Identifier: Apache-2.0
"""transformers' continuous-batching engine, serving from a headpage pool.

    model = AutoModelForCausalLM.from_pretrained(...)           # Llama architecture
    headpage.serving.enable(model, num_pages=65536, policy="ada-snapkv", budget="20%")
    outputs = model.generate_batch(prompts, generation_config=gen)  # as with transformers
    manager = model.init_continuous_batching(generation_config=gen)
    manager.start(); rid = manager.add_request(ids); manager.get_result(rid)

transformers' engine (generation/continuous_batching, 5.23) schedules requests,
chunks prefills, forks for num_return_sequences and samples; its own cache keeps
one page per layer for every KV head together, so it cannot free memory head by
head. enable() keeps the engine and replaces its cache and attention:

- The cache (ServingCache) answers the scheduler from a headpage BlockManager:
  one headpage sequence per request, one block table per (request, layer, KV
  head). can_store_request_tokens() checks the pool against the pages a request
  needs and promises them; the pages are reserved when the batch is prepared
  (extend_read_and_write_indices), in batch order, and the cache records each
  request's slots, positions and rows for the step. A fork shares the parent's
  pages (copy-on-write).
- The attention function ("headpage_serving") writes the step's K/V with write_kv,
  attends every decode row of the layer in one decode_attention over the running
  requests' head-wise tables, and each prefill chunk with SDPA over its request's
  own K/V, read back from the pool.
- After the last layer of the step that completes a prompt, the EvictionEngine
  compresses that request with the policy and budget (the observation window's
  queries were kept as the chunks went by), and the pages it frees are back in
  the pool before the scheduler runs again.

Prefix sharing (content-hashed pages) is off: transformers hashes whole-model
blocks, and a headpage page belongs to one compressible stream. Forks still share
their prompt's pages.
"""
import logging
import math
import threading
import types

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.generation.configuration_utils import ContinuousBatchingConfig
from transformers.generation.continuous_batching import continuous_api
from transformers.generation.continuous_batching.continuous_api import ContinuousBatchingManager
from transformers.generation.continuous_batching.requests import RequestStatus

import headpage
from headpage._model import DTYPES, make_arena, model_shape, resolve_policy
from headpage.hf import Skipped

ATTENTION = "headpage_serving"

_log = logging.getLogger("headpage.serving")


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
    """transformers' sector pool, asked to free space before it offloads: headpage
    has no cached-but-unused pages to give back."""

    @staticmethod
    def try_to_free_sectors():
        return None


class _StepRow:
    """One request of the step being run: its rows [first, first + count) of the
    packed batch, at logical positions past..past + count - 1."""
    __slots__ = ("request_id", "seq", "past", "count", "first", "slots", "prompt")

    def __init__(self, request_id, seq, past, count, first, slots, prompt):
        self.request_id, self.seq, self.past, self.count = request_id, seq, past, count
        self.first, self.slots, self.prompt = first, slots, prompt

    @property
    def is_decode(self):
        return self.count == 1 and self.past > 0

    @property
    def ends_prompt(self):
        return self.prompt is not None and self.past < self.prompt <= self.past + self.count


class ServingCache:
    """What transformers' continuous-batching engine asks of its cache, answered
    from a headpage pool (duck-typed: the engine reads the attributes and calls
    the methods below; its own attention functions never see this object)."""

    def __init__(self, model, max_batch_tokens, *, num_pages, page_size=16, policy="full",
                 budget=None):
        shape = model_shape(model, "headpage.serving")
        if model.dtype not in DTYPES:
            raise NotImplementedError(f"headpage.serving: no cache dtype for {model.dtype}")
        for name, value in (("num_pages", num_pages), ("page_size", page_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.policy, self.budget = resolve_policy(policy, budget)
        self.shape = shape
        self.geometry = headpage.CacheGeometry(
            num_layers=shape.num_layers, num_kv_heads=shape.num_kv_heads,
            num_q_heads=shape.num_q_heads, head_dim=shape.head_dim, dtype=DTYPES[model.dtype],
            page_size=page_size)
        self.device = model.device
        self.dtype = model.dtype
        self.page_pool = headpage.PagePool(num_pages)
        self.arena = make_arena(self.geometry, num_pages, self.device, "headpage.serving")
        self.manager = headpage.BlockManager(self.geometry, self.page_pool)
        self.engine = None
        if self.budget is not None and self.policy.compresses:
            if self.device.type == "cuda":
                self.engine = headpage.EvictionEngine(self.manager, self.arena,
                                                      stream=self._stream())
            else:
                self.engine = headpage.EvictionEngine(self.manager, self.arena)
        # Read by transformers' scheduler and batch preparation.
        self.max_batch_tokens = max_batch_tokens
        self.num_blocks = num_pages
        self.use_prefix_sharing = False
        self.allow_block_sharing = False
        self.cache_allocators = {"full_attention": _AllocatorView()}
        self.max_blocks_per_request = 0
        self.max_decode_fast_path_length = 0
        self.read_cache_limit = None
        # The scheduler caps the sum of running requests' logical lengths with it;
        # memory is the pool's to judge, so the cap is far above any batch.
        self.max_tokens_read = 1 << 30
        self.bytes_per_sector = 1
        self.pool = _NoSectorPool()  # transformers' name for its sector pool
        # Per request: its headpage sequence and engine state.
        self._seqs = {}
        self._states = {}
        self._promised_pages = 0
        self._step = []           # this step's _StepRow list, in batch order
        self._step_done = True    # the last layer ran: the next extend starts a step
        self._windows = {}        # (request, layer) -> observed queries [q_heads][w][D]
        self.compressions = {}    # request -> CompressResult or Skipped
        _log.info("headpage.serving: prefix sharing is off (transformers hashes whole-model "
                  "blocks; headpage pages are per stream and compress); forks share pages")

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
        if seq is not None:
            return self.manager.pages_needed(seq, tokens)
        return math.ceil(tokens / self.geometry.page_size) * self.geometry.streams_per_sequence

    def can_store_request_tokens(self, state, num_tokens, dry_run=False):
        """Whether the pool can take `num_tokens` more of the request; unless
        dry_run, promises them (the pages are reserved when the batch is prepared)."""
        need = self._pages_for(state.request_id, num_tokens)
        fits = self.page_pool.free_pages - self._promised_pages >= need
        if fits and not dry_run:
            if state.request_id not in self._seqs:
                self._seqs[state.request_id] = self.manager.add_sequence()
            self._states[state.request_id] = state
            self._promised_pages += need
        return fits

    def compute_free_capacity(self, relative=True):
        free = self.page_pool.free_pages
        return free / self.page_pool.num_pages if relative else free

    def evict_cached_blocks(self):
        return False

    def search_prefix_match(self, request_id, input_ids):
        return 0

    def count_new_complete_blocks(self, state, num_tokens):
        return {}

    def mark_complete_blocks(self, state, blocks):
        return None

    def free_blocks(self, request_id, no_cache=False):
        seq = self._seqs.pop(request_id, None)
        self._states.pop(request_id, None)
        for key in [k for k in self._windows if k[0] == request_id]:
            del self._windows[key]
        if seq is not None:
            if self.engine is not None:
                self.engine.forget(seq)
            self.manager.free(seq)

    def free_all_requests(self, clear_ledgers=False):
        for request_id in list(self._seqs):
            self.free_blocks(request_id)

    def reset(self):
        self.free_all_requests()
        self._promised_pages = 0
        self._step, self._step_done = [], True

    def prepare_fork_request(self, source_state, destination_ids, copies):
        parent = self._seqs[source_state.request_id]
        for child in destination_ids:
            self._seqs[child] = self.manager.fork(parent)
        return list(destination_ids)

    def perform_cache_copy(self, copies):
        return None  # forks share pages; copy-on-write happens at their next reserve

    # -- batch preparation: once per request, in batch order -------------------------------

    def extend_read_and_write_indices(self, request_id, past_length, query_length, read_index,
                                      write_index):
        if self._step_done:
            self._step, self._step_done = [], False
            self._promised_pages = 0  # what was promised is being reserved now
        seq = self._seqs[request_id]
        plan = self.manager.reserve(seq, query_length)
        if len(plan.copy_src):
            headpage.copy_pages(self.arena, self._to_device(plan.copy_src),
                                self._to_device(plan.copy_dst), stream=self._stream())
        state = self._states.get(request_id)
        prompt = len(state.initial_tokens) if state is not None else None
        first = self._step[-1].first + self._step[-1].count if self._step else 0
        self._step.append(_StepRow(request_id, seq, past_length, query_length, first,
                                   np.array(plan.slot_mapping), prompt))
        # transformers sizes its index tensors from these; headpage never reads them.
        write_index[0].extend([0] * query_length)

    # -- the attention of one layer ----------------------------------------------------------

    def attend(self, module, query, key, value, scaling):
        """query [1][q_heads][T][D], key/value [1][kv_heads][T][D] of the packed batch;
        returns [1][T][q_heads][D]."""
        layer = module.layer_idx
        rows = self._step
        total = query.shape[2]
        out = torch.empty(1, total, self.shape.num_q_heads, self.shape.head_dim,
                          dtype=query.dtype, device=query.device)
        slots = np.concatenate([r.slots[:, layer, :] for r in rows])
        positions = np.concatenate([np.arange(r.past, r.past + r.count, dtype=np.int32)
                                    for r in rows])
        headpage.write_kv(self.arena, key[0].transpose(0, 1).contiguous(),
                          value[0].transpose(0, 1).contiguous(), self._to_device(slots),
                          self._to_device(positions), stream=self._stream())
        decode = [r for r in rows if r.is_decode]
        for r in rows:
            if not r.is_decode:
                out[0, r.first:r.first + r.count] = self._attend_prefill(layer, r, query, scaling)
        if decode:
            table = self.manager.block_table(layer, [r.seq for r in decode])
            at = torch.tensor([r.first for r in decode], device=query.device)
            q = query[0].index_select(1, at).transpose(0, 1).contiguous()  # [n][q_heads][D]
            o = torch.empty_like(q)
            # The manager built these tables: no device check.
            headpage.decode_attention(self.arena, q, self._to_device(table.indptr),
                                      self._to_device(table.page_ids), self._to_device(table.lens),
                                      o, sm_scale=scaling, stream=self._stream(), check=False)
            out[0, at] = o
        if layer == self.shape.num_layers - 1:
            self._compress_completed_prompts()
            self._step_done = True
        return out

    def _attend_prefill(self, layer, r, query, scaling):
        """SDPA of a prefill chunk over its request's K/V so far (every head has the
        same length until the prompt is compressed); keeps the rows of the
        observation window for the compression."""
        table = self.manager.block_table(layer, [r.seq])
        length = int(table.lens[0])
        pages = torch.as_tensor(np.asarray(table.page_ids), dtype=torch.long,
                                device=query.device).view(self.shape.num_kv_heads, -1)
        kv = torch.from_dlpack(self.arena.kv)
        heads, dim = self.shape.num_kv_heads, self.shape.head_dim
        keys = kv[pages, 0].reshape(heads, -1, dim)[:, :length]
        values = kv[pages, 1].reshape(heads, -1, dim)[:, :length]
        q = query[0, :, r.first:r.first + r.count]  # [q_heads][count][D]
        causal = torch.ones(r.count, length, dtype=torch.bool, device=query.device).tril(
            length - r.count)
        o = torch.nn.functional.scaled_dot_product_attention(
            q, keys, values, attn_mask=causal, scale=scaling, enable_gqa=True)
        if self.engine is not None and r.prompt is not None:
            self._keep_window(layer, r, q)
        return o.transpose(0, 1)

    def _keep_window(self, layer, r, q):
        window = self.policy.observed_queries(r.prompt)
        start = max(r.prompt - window, r.past)
        stop = min(r.prompt, r.past + r.count)
        if start >= stop:
            return
        rows = q[:, start - r.past:stop - r.past].detach()
        where = self.device if self.engine.on_device else "cpu"
        rows = rows.to(where)
        key = (r.request_id, layer)
        kept = self._windows.get(key)
        self._windows[key] = rows.contiguous() if kept is None else torch.cat([kept, rows], 1)

    def _compress_completed_prompts(self):
        if self.engine is None:
            return
        for r in self._step:
            if not r.ends_prompt or r.request_id in self.compressions:
                continue
            windows = [self._windows.pop((r.request_id, layer), None)
                       for layer in range(self.shape.num_layers)]
            if r.prompt <= self.policy.window or any(w is None for w in windows):
                self.compressions[r.request_id] = Skipped(
                    f"prompt of {r.prompt} tokens is not longer than the window "
                    f"({self.policy.window})")
                continue
            observed = windows[0].shape[1]
            positions = torch.arange(r.prompt - observed, r.prompt, dtype=torch.int32,
                                     device=windows[0].device)
            self.compressions[r.request_id] = self.engine.compress(
                r.seq, self.policy, self.budget, windows, [positions])


class PoolPressure:
    """Takes the place of transformers' OffloadingManager, which the engine asks to
    make room when running requests cannot get pages. headpage first applies the
    pool-wide budget: the EvictionEngine evicts the lowest-scored tokens across
    every compressed request (one threshold over all of them), keeping at least
    `floor_tokens` and the last `protect_recent` tokens of every stream. Only if
    that cannot free enough are the newest starved requests preempted: their
    pages are freed and each is queued again from its prompt (transformers' soft
    reset). Both are counted."""

    def __init__(self, cache, scheduler, floor_tokens, protect_recent):
        self.cache, self.scheduler = cache, scheduler
        self.floor_tokens, self.protect_recent = floor_tokens, protect_recent
        self.budget_evictions = 0   # times the pool budget made enough room
        self.pages_evicted = 0      # pages it freed
        self.preemptions = 0        # requests soft-reset

    def offload_requests(self):
        """True when it made room (the engine schedules again), False when nothing
        can be done."""
        starved = self.scheduler.starved_requests
        if not starved:
            return False
        cache = self.cache
        wanted = sum(cache._pages_for(state.request_id, length) for state, length in starved)
        deficit = wanted - cache.page_pool.free_pages
        if deficit <= 0:
            return True
        if cache.engine is not None:
            freed = cache.engine.enforce_pool_budget(deficit, self.floor_tokens,
                                                     self.protect_recent)
            self.pages_evicted += freed
            if freed >= deficit:
                self.budget_evictions += 1
                return True
            deficit -= freed
        preempted = 0
        while starved and deficit > 0 and len(self.scheduler.active_requests) - preempted > 1:
            state, _ = starved.pop()  # the newest
            pages = cache.manager.stats().pages_in_use
            cache.free_blocks(state.request_id)
            deficit -= pages - cache.manager.stats().pages_in_use
            again = state.create_equivalent_initial_request()
            state._status = RequestStatus.FINISHED
            self.scheduler.finish_request(state.request_id)
            self.scheduler.add_waiting_request(again)
            preempted += 1
        if preempted:
            self.scheduler.block_new_requests = True
            self.preemptions += preempted
            _log.info("headpage.serving: preempted %d requests (the pool budget freed %d pages)",
                      preempted, self.pages_evicted)
        return preempted > 0

    def restore_scheduled_requests(self, requests_in_batch):
        return None  # nothing is offloaded to the CPU

    def free_request_cpu_cache(self, state):
        return None

    def free_all_waiting_cpu_caches(self):
        return None

    def reset(self):
        return None


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, cache=None,
               **kwargs):
    if not isinstance(cache, ServingCache):
        raise RuntimeError(f"the '{ATTENTION}' attention runs inside headpage.serving's engine "
                           "only (headpage.serving.enable(model))")
    return cache.attend(module, query, key, value, scaling), None


AttentionInterface.register(ATTENTION, _attention)

# transformers' batch processor names its cache class at module level; the
# manager swaps it while it builds its processor, one manager at a time.
_building = threading.Lock()


class ServingManager(ContinuousBatchingManager):
    """transformers' ContinuousBatchingManager over a ServingCache."""

    def __init__(self, *args, cache_options, pressure_options, **kwargs):
        self._cache_options = cache_options
        self._pressure_options = pressure_options
        self._shape = model_shape(args[0], "headpage.serving")
        self.serving_cache = None
        self.pool_pressure = None
        super().__init__(*args, **kwargs)

    def add_request(self, input_ids, *args, **kwargs):
        """transformers' add_request, after checking that the prompt can ever be
        served: ValueError for an empty prompt or one whose pages exceed the whole
        pool (in the engine's loop it would stop every request)."""
        prompt = len(input_ids) if input_ids is not None else 0
        if prompt == 0:
            raise ValueError("headpage.serving: empty prompt")
        shape = self._shape
        page_size = self._cache_options["page_size"]
        # The prompt and its first new token, in every stream, before compression.
        pages = math.ceil((prompt + 1) / page_size) * shape.num_layers * shape.num_kv_heads
        if pages > self._cache_options["num_pages"]:
            raise ValueError(
                f"headpage.serving: a prompt of {prompt} tokens needs {pages} pages of "
                f"{page_size} tokens before compression; the pool has "
                f"{self._cache_options['num_pages']}")
        return super().add_request(input_ids, *args, **kwargs)

    def switch_to_cb_friendly_attn(self, model, auto_switch_to_flash=True):
        if model.config._attn_implementation != ATTENTION:
            self._original_attn_impl = model.config._attn_implementation
            model.set_attn_implementation(ATTENTION)

    def _create_batch_processor(self):
        def make_cache(*args, continuous_batching_config=None, **kwargs):
            return ServingCache(self.model, continuous_batching_config.max_batch_tokens,
                                **self._cache_options)

        with _building:
            original = continuous_api.PagedAttentionCache
            continuous_api.PagedAttentionCache = make_cache
            try:
                processor = super()._create_batch_processor()
            finally:
                continuous_api.PagedAttentionCache = original
        self.serving_cache = processor.cache
        options = self._pressure_options
        processor.offloading_manager = PoolPressure(
            processor.cache, processor.offloading_manager.scheduler, **options)
        self.pool_pressure = processor.offloading_manager
        return processor


def enable(model, *, num_pages, page_size=16, policy="full", budget=None, floor_tokens=64,
           protect_recent=16):
    """Makes model.generate_batch() and model.init_continuous_batching() serve from a
    headpage pool of `num_pages` pages of `page_size` tokens, compressing every
    prompt with `policy` at `budget` once it is prefilled ("full": no eviction).
    When running requests cannot get pages, the pool-wide budget evicts across the
    compressed requests down to `floor_tokens` per stream, never touching a
    stream's last `protect_recent` tokens, before any request is preempted
    (PoolPressure). The arguments are checked now (ValueError, TypeError,
    NotImplementedError)."""
    options = dict(num_pages=num_pages, page_size=page_size, policy=policy, budget=budget)
    model_shape(model, "headpage.serving")
    resolve_policy(policy, budget)
    for name, value in (("num_pages", num_pages), ("page_size", page_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    for name, value in (("floor_tokens", floor_tokens), ("protect_recent", protect_recent)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    pressure = dict(floor_tokens=floor_tokens, protect_recent=protect_recent)

    def init_continuous_batching(self, generation_config=None, continuous_batching_config=None,
                                 workload_hints=None, **kwargs):
        return ServingManager(self, generation_config or self.generation_config,
                              continuous_batching_config or ContinuousBatchingConfig(),
                              workload_hints, cache_options=options, pressure_options=pressure)

    model.init_continuous_batching = types.MethodType(init_continuous_batching, model)
    return model
