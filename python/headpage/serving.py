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
  own K/V, read back from the pool. A step of decode rows alone (every CUDA graph
  step) hands its K/V to decode_attention, which writes them before it reads them:
  one kernel a layer fewer.
- After the last layer of the step that completes a prompt, the EvictionEngine
  compresses that request with the policy and budget (the observation window's
  queries were kept as the chunks went by), and the pages it frees are back in
  the pool before the scheduler runs again.

On CUDA, a step in which every request decodes one token runs as a CUDA graph
captured for its batch size, padded (headpage._decode_graphs): transformers'
own graphs are refused, since its attention functions are not the ones run.

A request forked for num_return_sequences is compressed just before the fork
(transformers prefills all but its last prompt token first), and its children
share the compressed pages.

enable(kv_dtype="fp8") stores the pool's K/V as fp8 e4m3 with a scale per token
and stream (headpage._kv_pages): write_kv quantizes, the kernels dequantize, and a
later prefill chunk reads its request's K/V back dequantized.

Prefix sharing runs on headpage's own prefix cache (enable(prefix_caching=),
headpage._serving_prefix): a request starts on the cached blocks of its prompt,
and a compressing policy keeps that shared prefix whole.

Under transformers' asynchronous batching (on by default where the decode graphs
run) the host prepares step N+1 while the GPU computes step N
(_settle_async_batching, docs/serving.md).
"""
import functools
import threading
import types

import torch
from transformers import AttentionInterface
from transformers.generation.configuration_utils import ContinuousBatchingConfig
from transformers.generation.continuous_batching import continuous_api
from transformers.generation.continuous_batching.continuous_api import ContinuousBatchingManager

import headpage
from headpage._decode_graphs import DecodeGraphs
from headpage._fused_projections import fuse_projections, fused_projections, restore_projections
from headpage._kv_pages import check_kv_dtype
from headpage._model import (check_compress_every, check_ints, check_policy_runs_on, model_shape,
                             pages_for_tokens, resolve_policy)
from headpage._pool_pressure import PoolPressure
from headpage._serving_cache import _CACHE_PROTOCOL, DEFAULT_BATCH_TOKENS, ServingCache, StepRecord
from headpage._serving_compress import RECENT_RESULTS
from headpage._serving_tp import (carried_policy, carry_request_policies, portable_policy,
                                  tensor_parallel)

__all__ = ["ATTENTION", "DEFAULT_BATCH_TOKENS", "GRAPH_ROWS", "RECENT_RESULTS", "PoolPressure",
           "RequestRefused",
           "ServingCache", "ServingManager", "StepRecord", "TESTED_TRANSFORMERS",
           "check_engine", "enable", "fuse_projections", "fused_projections",
           "restore_projections"]

ATTENTION = "headpage_serving"

class RequestRefused(ValueError):
    """A request ServingManager.add_request does not queue, because the engine
    could never serve it as asked (headpage-serve answers it with status 400)."""


# The largest decode batch captured as a CUDA graph (larger ones run eagerly);
# transformers' max_requests_per_batch and max_batch_tokens cap it further.
GRAPH_ROWS = 512

# The version of transformers whose engine headpage.serving was written and tested
# against; check_engine() says what differs in another.
TESTED_TRANSFORMERS = "5.23.0"

# What transformers' PagedAttentionCache offers that ServingCache does not, and why
# the engine never asks it of headpage's cache.
_CACHE_NOT_NEEDED = {
    "count_storable_requests": "asked only by transformers' OffloadingManager, which "
                               "PoolPressure replaces",
    "fill_block_table": "the decode fast path (flash_attn_with_kvcache), off: "
                        "max_blocks_per_request is 0",
    "get_cache_for_block_table": "the decode fast path, off",
    "get_block_table_key": "the decode fast path, off",
    "update": "called by transformers' own paged attention functions, which headpage's "
              "attention replaces",
}


def check_engine():
    """Checks that transformers' continuous-batching engine still has the parts
    headpage.serving relies on (docs/serving.md lists them): the names it
    replaces or calls, and a cache protocol that ServingCache answers in full.
    RuntimeError naming every difference; enable() calls it."""
    from transformers.generation.continuous_batching import offloading_manager, scheduler
    from transformers.generation.continuous_batching.cache import PagedAttentionCache
    from transformers.generation.continuous_batching.requests import RequestState

    missing = []

    def need(owner, names, what):
        missing.extend(f"{what}.{n}" for n in names if not hasattr(owner, n))

    need(continuous_api, ["PagedAttentionCache"], "continuous_api")
    need(ContinuousBatchingManager, ["_create_batch_processor", "switch_to_cb_friendly_attn",
                                     "add_request", "get_result", "start", "stop"],
         "ContinuousBatchingManager")
    need(scheduler.Scheduler, ["finish_request", "add_waiting_request", "schedule_batch",
                               "_schedule_request"], "Scheduler")
    need(RequestState, ["position_offset"], "RequestState")
    need(RequestState, ["create_equivalent_initial_request"], "RequestState")
    from transformers.generation.continuous_batching.input_outputs import ContinuousBatchingIOs
    from transformers.generation.continuous_batching.model_runner import ModelRunner
    need(ModelRunner, ["compute_batch", "_forward_process_and_sample", "supports_logits_to_keep"],
         "ModelRunner")
    need(ContinuousBatchingIOs, ["get_cb_kwargs", "get_model_kwargs"], "ContinuousBatchingIOs")
    # Asynchronous batching: the IO pairs' graphs, the step in flight's requests.
    from transformers.generation.continuous_batching.input_outputs import (
        ContinuousBatchingAsyncIOs)
    from transformers.generation.continuous_batching.requests import FutureRequestState
    need(ContinuousBatchingAsyncIOs, ["get_cb_kwargs", "swap_io_pairs", "carry_over_tokens"],
         "ContinuousBatchingAsyncIOs")
    need(FutureRequestState, ["state", "has_new_token"], "FutureRequestState")
    need(RequestState, ["generated_len", "_new_tokens_limit"], "RequestState")
    from transformers.generation.continuous_batching.distributed import DistributedHelper
    need(DistributedHelper, ["are_kv_heads_tp_ed", "tp_all_reduce_min",
                             "tp_broadcast_object_from_rank_0"], "DistributedHelper")
    public = lambda cls: {n for n in dir(cls) if not n.startswith("_")}  # noqa: E731
    theirs, ours = public(PagedAttentionCache), public(ServingCache)
    changes = [f"missing: {m}" for m in missing]
    changes += [f"PagedAttentionCache.{n} is new: ServingCache does not answer it"
                for n in sorted(theirs - ours - set(_CACHE_NOT_NEEDED))]
    changes += [f"PagedAttentionCache.{n} is gone: the engine may no longer ask it"
                for n in sorted((ours & _CACHE_PROTOCOL) - theirs)]
    offloading = public(offloading_manager.OffloadingManager)
    changes += [f"OffloadingManager.{n} is new: PoolPressure does not answer it"
                for n in sorted(offloading - public(PoolPressure))]
    if changes:
        import transformers
        raise RuntimeError(
            f"headpage.serving was written for transformers {TESTED_TRANSFORMERS}'s "
            f"continuous-batching engine; transformers {transformers.__version__} differs: "
            + "; ".join(changes))


# torch.compile (transformers' compile configs) compiles the model around it: the
# attention reads the step's Python state, so it is a graph break, as transformers'
# own paged attention is.
@torch.compiler.disable
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


def _settle_engine_config(config):
    """Turns off, in transformers' ContinuousBatchingConfig, what headpage's cache
    does not support, and refuses it when asked for (ValueError): transformers' CUDA
    graphs and their padding (the attention reads per-step Python state; headpage
    captures its own decode graphs: enable(cuda_graphs=True)), the decode fast
    path's compile config (headpage's steps take the varlen path), CPU offloading
    (the pool budget and preemption take its place) (docs/serving.md). Prefix
    sharing is headpage's own (enable(prefix_caching=)), and transformers'
    allow_block_sharing turns it off. Compilation of the varlen path
    (default_compile_level, varlen_compile_config) is supported: the model is
    compiled around headpage's attention. Asynchronous batching is settled once
    the manager knows its device and group (_settle_async_batching)."""
    graphs = config.use_cuda_graph
    asked = {
        "use_cuda_graph": graphs is True or (isinstance(graphs, tuple) and any(graphs)),
        "cpu_offload_space": (config.cpu_offload_space or 0) > 0,
        "decode_compile_config": config.decode_compile_config is not None,
    }
    refused = [name for name, on in asked.items() if on]
    if refused:
        raise ValueError("headpage.serving does not support " + ", ".join(refused)
                         + " of transformers' continuous batching (headpage captures its own "
                         "decode graphs: enable(cuda_graphs=True))")
    config.use_cuda_graph = False


def _settle_async_batching(asked, *, device, cuda_graphs, forks, tensor_parallel):
    """Whether to run transformers' asynchronous batching, given what the
    ContinuousBatchingConfig asked (use_async_batching: None, True or False).
    Unset, it is on where the decode steps run as CUDA graphs, here headpage's
    (enable(cuda_graphs=True) on a CUDA device), as transformers decides for its
    own graphs. The host then schedules step N+1, reserves its slots,
    uploads its tables and launches it while the GPU computes step N; every
    kernel headpage enqueues runs on transformers' compute stream, so it stays
    ordered with both steps (docs/serving.md). Refused (ValueError) off a CUDA
    device (transformers' two IO pairs need CUDA streams), with
    num_return_sequences > 1 (step N's fork would come after step N+1 reserved
    the parent's last prompt token), and under tensor parallelism (not tested
    there); off there when unset."""
    why_not = None
    if device.type != "cuda":
        why_not = "needs a CUDA device"
    elif forks:
        why_not = "does not support num_return_sequences > 1"
    elif tensor_parallel:
        why_not = "is not supported under tensor parallelism"
    if asked and why_not is not None:
        raise ValueError(f"headpage.serving: asynchronous batching (use_async_batching) {why_not}")
    return bool(cuda_graphs if asked is None else asked) and why_not is None


class ServingManager(ContinuousBatchingManager):
    """transformers' ContinuousBatchingManager over a ServingCache."""

    def __init__(self, *args, cache_options, pressure_options, **kwargs):
        self._cache_options = cache_options
        self._pressure_options = pressure_options
        self._shape = model_shape(args[0], "headpage.serving")
        # (PolicyConfig, budget) of enable(), checked there: a request's by default.
        # The model may have moved to a GPU since.
        self._default_policy = resolve_policy(cache_options["policy"], cache_options["budget"])
        check_policy_runs_on(self._default_policy[0], args[0].device, "headpage.serving")
        self.serving_cache = None
        self.pool_pressure = None
        self.decode_graphs = None  # DecodeGraphs, on CUDA with cuda_graphs
        self._request_policies = {}  # request -> (PolicyConfig, budget) asked for it
        self._request_prefixes = {}  # request -> the prefix it shares compressed
        # Under tensor parallelism, on the driver: request -> ((name, options),
        # budget) of its own policy, until the broadcast carries it.
        self._request_portable = {}
        self._ids_lock = threading.Lock()
        self._next_id = 0
        _settle_engine_config(args[2])
        asked_async = args[2].use_async_batching
        settle_async = functools.partial(
            _settle_async_batching, asked_async, device=args[0].device,
            cuda_graphs=cache_options["cuda_graphs"], forks=(getattr(args[1], "num_return_sequences", None) or 1) > 1)
        settle_async(tensor_parallel=False)  # refused before the model is touched
        super().__init__(*args, **kwargs)
        # transformers' tensor parallelism (headpage._serving_tp): this rank's heads.
        self.tensor_parallel = tensor_parallel(self.distributed_helper)
        if self.tensor_parallel is not None:
            self._shape = self.tensor_parallel.local_shape(self._shape)
            carry_request_policies(self.distributed_helper, self._request_policies,
                                   self._request_portable, self._default_policy[0])
        try:  # on the copy transformers resolved
            self.continuous_batching_config.use_async_batching = settle_async(
                tensor_parallel=self.tensor_parallel is not None)
        except ValueError:
            # transformers switched the model to headpage's attention already.
            if getattr(self, "_original_attn_impl", None) is not None:
                self.model.set_attn_implementation(self._original_attn_impl)
            raise

    def stats(self):
        """The pool and what eviction did so far, as a dict: num_pages, free_pages,
        sequences (requests holding pages), compressed (prompts compressed),
        tokens_before and tokens_after (their stream tokens, summed),
        pages_freed_by_compression (negative where the prefix cache keeps a
        compressed prompt's original blocks), skipped (prompts left whole),
        decode_compressions and decode_pages_freed (compressions during decode,
        enable(compress_every=)), compress_seconds,
        pool_budget_evictions, pages_evicted_by_pool_budget, starved (running
        requests the scheduler left out of a batch for want of pages), preemptions,
        failures (requests the pool could never hold), prefix_hits and
        prefix_hit_tokens (requests that started on cached blocks or a compressed
        prefix, and the prompt tokens those spared), compressed_prefixes and
        compressed_prefix_hits (compressed prefixes kept, and requests that started
        on one), cached_pages and cached_only_pages (pages the prefix
        cache holds, and of those the ones no request uses: free for the
        taking). Safe from any thread; the pool's
        figures are as of the engine's last step or freed request.""" 
        cache, pressure = self.serving_cache, self.pool_pressure
        num_pages = self._cache_options["num_pages"]
        # The pool is read on the engine's thread only (the bindings refuse a
        # manager in use elsewhere): the cache publishes what it saw there.
        pool = cache.pool_snapshot if cache is not None else dict(
            free_pages=num_pages, sequences=0, cached_pages=0, cached_only_pages=0)
        totals = dict(cache.totals) if cache is not None else dict.fromkeys(
            ("compressed", "skipped", "tokens_before", "tokens_after", "pages_freed",
             "decode_compressions", "decode_pages_freed", "prefix_hits", "prefix_hit_tokens",
             "compressed_prefix_hits", "compressed_prefixes"), 0)
        return dict(num_pages=num_pages, free_pages=pool["free_pages"],
                    sequences=pool["sequences"], compressed=totals["compressed"],
                    tokens_before=totals["tokens_before"], tokens_after=totals["tokens_after"],
                    pages_freed_by_compression=totals["pages_freed"],
                    skipped=totals["skipped"],
                    decode_compressions=totals["decode_compressions"],
                    decode_pages_freed=totals["decode_pages_freed"],
                    compress_seconds=cache.compress_seconds if cache is not None else 0.0,
                    pool_budget_evictions=pressure.budget_evictions if pressure else 0,
                    pages_evicted_by_pool_budget=pressure.pages_evicted if pressure else 0,
                    starved=pressure.starved if pressure else 0,
                    preemptions=pressure.preemptions if pressure else 0,
                    failures=pressure.failures if pressure else 0,
                    prefix_hits=totals["prefix_hits"],
                    prefix_hit_tokens=totals["prefix_hit_tokens"],
                    compressed_prefixes=totals["compressed_prefixes"],
                    compressed_prefix_hits=totals["compressed_prefix_hits"],
                    cached_pages=pool["cached_pages"],
                    cached_only_pages=pool["cached_only_pages"])

    def add_request(self, input_ids, request_id=None, *args, policy=None, budget=None,
                    compressed_prefix=None, **kwargs):
        try:
            return self._add_request(input_ids, request_id, *args, policy=policy, budget=budget,
                                     compressed_prefix=compressed_prefix, **kwargs)
        except RequestRefused:
            # transformers' server registers the request's result handler first: a
            # refused request must not leave it behind.
            if request_id is not None:
                getattr(self.output_router, "result_handlers", {}).pop(request_id, None)
            raise

    def _add_request(self, input_ids, request_id=None, *args, policy=None, budget=None,
                     compressed_prefix=None, **kwargs):
        """transformers' add_request, after checking that the request can ever be
        served, with its own `policy` and `budget` if given (by default the ones
        enable() was given). compressed_prefix=N: the first N prompt tokens are a
        prefix other requests share (a system prompt, a document): they are
        compressed once by the policy, scored by their own last tokens, and kept;
        every later request that names the same prefix, policy and budget starts
        on it (its own tokens are not compressed). RequestRefused (a ValueError),
        and nothing queued, for an empty prompt,
        one whose pages exceed the whole pool, a request that does not compress and
        whose prompt and new tokens exceed it, an unknown policy or a bad budget (in
        the engine's loop it would stop every request), a compressed_prefix that is
        not a whole number from 1 to the prompt's length less one, or is asked of
        a request that does not compress, forks, or runs without prefix caching."""
        prompt = len(input_ids) if input_ids is not None else 0
        if prompt == 0:
            raise RequestRefused("headpage.serving: empty prompt")
        options = self._cache_options
        chosen = None
        if policy is not None or budget is not None:
            try:
                chosen = resolve_policy(options["policy"] if policy is None else policy,
                                        options["budget"] if budget is None else budget)
            except (ValueError, TypeError) as error:
                raise RequestRefused(f"headpage.serving: {error}") from None
            try:
                check_policy_runs_on(chosen[0], self.model.device, "headpage.serving")
            except NotImplementedError as error:
                raise RequestRefused(str(error)) from None
        config, kept = chosen or self._default_policy
        compresses = kept is not None and config.compresses
        if self.tensor_parallel is not None:
            if compressed_prefix is not None:
                raise RequestRefused("headpage.serving: compressed_prefix is not supported under "
                                     "tensor parallelism (prefix caching is off there)")
            if chosen is not None:
                # It travels to the other ranks by name (carry_request_policies);
                # a request naming only its budget keeps enable()'s policy, which
                # every rank has.
                try:
                    portable = (None if policy is None else portable_policy(config)), chosen[1]
                except ValueError as error:
                    raise RequestRefused(f"headpage.serving: {error}") from None
                # Every rank, this one too, serves a copy rebuilt from what travels:
                # the caller's config may change after the call.
                chosen = carried_policy(*portable, self._default_policy[0])
        every = options["compress_every"]
        if chosen is not None and compresses and every:
            # Its decode windows come from the ring, whose window is enable()'s policy's.
            ring = self._default_policy[0].window
            if not 1 <= config.window <= ring:
                raise RequestRefused(
                    f"headpage.serving: policy '{config.name}' scores with a window of "
                    f"{config.window}; with compress_every, a request's window must be 1 to "
                    f"{ring} (the window of the policy enable() was given)")
        # Before compression the prompt and its first new token are in every stream;
        # without compression, every new token too.
        new = kwargs.get("max_new_tokens", args[0] if args else None)
        new = self.generation_config.max_new_tokens if new is None else new
        tokens = prompt + 1 if compresses else prompt + max(int(new or 0), 1)
        pages = pages_for_tokens(tokens, options["page_size"],
                                 self._shape.num_layers * self._shape.num_kv_heads)
        if pages > options["num_pages"]:
            raise RequestRefused(
                f"headpage.serving: a request of {prompt} prompt tokens"
                + ("" if compresses else f" and {tokens - prompt} new tokens")
                + f" needs {pages} pages of {options['page_size']} tokens"
                + (" before compression" if compresses else "")
                + f"; the pool has {options['num_pages']}")
        if compressed_prefix is not None:
            self._check_compressed_prefix(compressed_prefix, prompt, compresses)
        if not self.is_tp_driver:
            # Off the driver transformers queues nothing: its requests come from
            # rank 0's broadcast, their own policies with them.
            return super().add_request(input_ids, request_id, *args, **kwargs)
        if chosen is None and compressed_prefix is None:
            if request_id is not None:  # an id used before leaves nothing behind
                self._forget_request(request_id)
            return super().add_request(input_ids, request_id, *args, **kwargs)
        if request_id is None:
            with self._ids_lock:
                self._next_id += 1
                request_id = f"hp_req_{self._next_id}"
        if chosen is not None:
            self._request_policies[request_id] = chosen
            if self.tensor_parallel is not None:
                self._request_portable[request_id] = portable
        if compressed_prefix is not None:
            self._request_prefixes[request_id] = int(compressed_prefix)
        queued = None
        try:
            queued = super().add_request(input_ids, request_id, *args, **kwargs)
            return queued
        finally:
            if queued is None:  # refused, or not accepting requests: nothing queued
                self._forget_request(request_id)

    def _forget_request(self, request_id):
        """Drops what _add_request keeps beside a request."""
        for entries in (self._request_policies, self._request_prefixes, self._request_portable):
            entries.pop(request_id, None)

    def _check_compressed_prefix(self, tokens, prompt, compresses):
        """RequestRefused unless a request may share `tokens` of its `prompt`
        compressed."""
        if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens < prompt:
            raise RequestRefused(f"headpage.serving: compressed_prefix must be a whole number "
                                 f"from 1 to {prompt - 1} (the prompt less its last token), "
                                 f"got {tokens!r}")
        if not compresses:
            raise RequestRefused("headpage.serving: compressed_prefix needs a policy that "
                                 "compresses, and a budget")
        if not self._cache_options["prefix_caching"]:
            raise RequestRefused("headpage.serving: compressed_prefix needs prefix caching "
                                 "(enable(prefix_caching=True))")
        if (self.generation_config.num_return_sequences or 1) > 1:
            raise RequestRefused("headpage.serving: compressed_prefix with "
                                 "num_return_sequences > 1 is not supported")

    def switch_to_cb_friendly_attn(self, model, auto_switch_to_flash=True):
        if model.config._attn_implementation != ATTENTION:
            self._original_attn_impl = model.config._attn_implementation
            model.set_attn_implementation(ATTENTION)

    def _create_batch_processor(self):
        def make_cache(*args, continuous_batching_config=None, **kwargs):
            config = continuous_batching_config
            options = dict(self._cache_options)
            # transformers' own switch for prefix sharing turns headpage's off too.
            options["prefix_caching"] = options["prefix_caching"] and config.allow_block_sharing
            if options.pop("cuda_graphs"):
                options["graph_rows"] = min(GRAPH_ROWS, config.max_requests_per_batch or GRAPH_ROWS,
                                            config.max_batch_tokens or DEFAULT_BATCH_TOKENS)
            return ServingCache(self.model, config.max_batch_tokens,
                                request_policies=self._request_policies,
                                request_prefixes=self._request_prefixes,
                                tensor_parallel=self.tensor_parallel, **options)

        with _building:
            original = continuous_api.PagedAttentionCache
            continuous_api.PagedAttentionCache = make_cache
            try:
                processor = super()._create_batch_processor()
            finally:
                continuous_api.PagedAttentionCache = original
        self.serving_cache = processor.cache
        # transformers pads a compiled step's tokens to fixed sizes; headpage's
        # attention takes the batch as scheduled, and its graphs pad their own rows.
        processor.model_runner.pad_inputs = False
        if processor.cache.graph_rows:
            self.decode_graphs = DecodeGraphs(processor.cache, processor.model_runner,
                                              processor.inputs_and_outputs).install()
        _stop_chunks_at_prefix_boundaries(processor.scheduler, processor.cache)
        options = self._pressure_options
        processor.offloading_manager = PoolPressure(
            processor.cache, processor.offloading_manager.scheduler, processor=processor,
            **options).install(processor.scheduler)
        self.pool_pressure = processor.offloading_manager
        return processor


def _stop_chunks_at_prefix_boundaries(scheduler, cache):
    """A request computing a compressed prefix has its prefill chunk end where
    the prefix does (ServingCache.prefix_boundary), so that the prefix is
    compressed before the rest of its prompt attends to it."""
    schedule_request = scheduler._schedule_request

    def schedule_request_to_boundary(state, request_tokens, token_budget, *args, **kwargs):
        boundary = cache.prefix_boundary(state, len(request_tokens))
        if boundary is not None:
            token_budget = min(token_budget, boundary)
        return schedule_request(state, request_tokens, token_budget, *args, **kwargs)

    scheduler._schedule_request = schedule_request_to_boundary


def enable(model, *, num_pages, page_size=16, policy="full", budget=None, floor_tokens=64,
           protect_recent=16, pool_headroom=0.02, check_invariants=False, cuda_graphs=True,
           compress_every=0, prefix_caching=True, kv_dtype="auto", decode_division="even",
           decode_splits=None):
    """Makes model.generate_batch() and model.init_continuous_batching() serve from a
    headpage pool of `num_pages` pages of `page_size` tokens, compressing every
    prompt with `policy` at `budget` once it is prefilled ("full": no eviction).
    When running requests cannot get pages, the pool-wide budget evicts across the
    compressed requests down to `floor_tokens` per stream, never touching a
    stream's last `protect_recent` tokens, freeing `pool_headroom` of the pool
    beyond the need, before any request is preempted (PoolPressure). With compress_every = N > 0, a compressed request without
    forked children is compressed again after every N generated tokens, to its
    budget of the tokens it has seen, scored by its last `window` decode queries
    (N at least the policy's window). check_invariants (a debug run) proves the pool's bookkeeping
    after every step. On CUDA, with cuda_graphs, decode steps run as CUDA graphs
    (headpage._decode_graphs). With prefix_caching (and transformers'
    allow_block_sharing, on by default), full prompt blocks stay cached after
    their request and a request that starts with cached tokens starts on their
    pages; a compressing policy keeps that shared prefix whole and compresses
    the rest of the prompt to its budget. kv_dtype="fp8" stores K/V in fp8 e4m3
    with a scale per token and stream (a bfloat16 or float16 model; "auto", the
    default, stores the model's dtype). decode_division picks how decode
    attention divides a step's pages among the GPU's blocks: "even" splits each
    stream alike (as many splits as fill the GPU for the longest), "balanced"
    hands every block of one wave an equal run of all the streams' pages
    (docs/serving.md; on the CPU both read every stream whole). decode_splits
    fixes the even division's split count (1 to 1024) for every decode step (a
    measurement knob: every graph size then keeps a workspace of rows x query
    heads x decode_splits partial rows); None, the default, splits as many
    ways as fill the GPU for the step's (or its graph's) streams
    (decode_attention_splits). The arguments
    are checked now (ValueError, TypeError, NotImplementedError)."""
    check_engine()
    model_shape(model, "headpage.serving")
    options = dict(num_pages=num_pages, page_size=page_size, policy=policy, budget=budget,
                   check_invariants=bool(check_invariants), cuda_graphs=bool(cuda_graphs),
                   compress_every=compress_every, prefix_caching=bool(prefix_caching),
                   kv_dtype=check_kv_dtype(kv_dtype, getattr(model, "dtype", None),
                                           "headpage.serving"),
                   decode_division=decode_division, decode_splits=decode_splits)
    if decode_division not in ("even", "balanced"):
        raise ValueError(f"decode_division must be 'even' or 'balanced', got {decode_division!r}")
    if decode_splits is not None:
        check_ints(1, decode_splits=decode_splits)
        if decode_splits > headpage.decode_max_splits:
            raise ValueError(f"decode_splits must be at most {headpage.decode_max_splits}, "
                             f"got {decode_splits}")
        if decode_division != "even":
            raise ValueError("decode_splits is the even division's split count: not with "
                             f"decode_division={decode_division!r}")
    config, _ = resolve_policy(policy, budget)
    check_policy_runs_on(config, getattr(model, "device", "cpu"), "headpage.serving")
    check_ints(1, num_pages=num_pages, page_size=page_size)
    check_ints(0, floor_tokens=floor_tokens, protect_recent=protect_recent,
               compress_every=compress_every)
    check_compress_every(compress_every, config)
    if not isinstance(pool_headroom, (int, float)) or not 0 <= pool_headroom < 1:
        raise ValueError(f"pool_headroom must be in [0, 1), got {pool_headroom!r}")
    pressure = dict(floor_tokens=floor_tokens, protect_recent=protect_recent,
                    headroom=float(pool_headroom))

    def init_continuous_batching(self, generation_config=None, continuous_batching_config=None,
                                 workload_hints=None, **kwargs):
        return ServingManager(self, generation_config or self.generation_config,
                              continuous_batching_config or ContinuousBatchingConfig(),
                              workload_hints, cache_options=options, pressure_options=pressure)

    model.init_continuous_batching = types.MethodType(init_continuous_batching, model)
    return model
