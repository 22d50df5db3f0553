# SPDX-License-Identifier: Apache-2.0
"""A Hugging Face transformers Cache whose storage is a headpage pool.

    model = AutoModelForCausalLM.from_pretrained(...)        # Llama architecture, GQA
    cache = headpage.hf.Cache(model, policy="ada-snapkv", budget="20%")
    out = model.generate(input_ids, past_key_values=cache, max_new_tokens=64)
    cache.compression        # what the policy kept and the pages it freed

Every (sequence, layer, KV head) stream has its own block table in one page pool
(a HostArena for a model on the CPU, a CudaArena for one on a GPU):

- Prefill: update() reserves the prompt in every stream and writes its K/V to the
  pool (write_kv); the layer attends with the model's own SDPA over the prompt's
  K/V, and the attention function keeps the last `window` queries of each layer
  (the policy's observation window).
- End of prefill: the EvictionEngine compresses every stream with the policy and
  budget (SnapKV scores from the window queries, Ada-KV / PyramidKV / DBudgetKV
  budgets, ...). The pages it frees are back in the pool before the first decode
  step. compress() does it at once; otherwise the first decode step does.
- Decode: update() reserves the new token in every stream, and the layer attends
  through decode_attention over the head-wise block tables (kernels::ref on the
  CPU, kernels::gpu on CUDA), whatever each stream's length; the same launch
  writes the token's K/V into its slot, each stream's last, before reading it.
  On CUDA the tables of every layer live in device memory
  (headpage.DeviceBlockTables) and a step brings them up to date with one upload.

Cache(model) calls attach(model): the model's attention becomes "headpage", a
function registered with transformers' AttentionInterface, and each attention
module hands that function the cache of its forward call (a forward pre-hook
passes past_key_values on as the keyword headpage_cache). update() records, per
layer, what the attention must do after it ("prefill" or "decode"); the
attention function takes that step from the cache it is handed, for its
module's layer_idx. With any other cache it behaves as SDPA, so the same model
can still generate with transformers' DynamicCache.

Compression on CUDA: the EvictionEngine runs over the CudaArena itself, on the
current CUDA stream: the observed queries stay on the GPU, scores, selection and
compaction run there, and only the kept counts cross to the host; no K/V byte
leaves the device. Most named policies run so (policy.runs_on_gpu); those that
do not (DBudgetKV's Frobenius metric, CriticalKV, DefensiveKV, and H2O with the
max group reduction) are refused for a model on a GPU when the cache is set up.

Pages store K/V in the model's dtype, or with kv_dtype="fp8" as fp8 e4m3 with a
scale per token and stream (write_kv, or decode_attention for a decode step's token,
quantizes; the kernels dequantize).

Limits: batches without padding (one headpage sequence per batch row), no beam
search, no cropping.
"""
import dataclasses


import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache as _HFCache
from transformers.cache_utils import CacheLayerMixin
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import headpage
from headpage._decode_buffers import GrowingWorkspace, multiprocessors, workspace_bytes
from headpage._kv_pages import cache_geometry, check_kv_dtype, read_pages
from headpage._model import DTYPES as _DTYPES
from headpage._model import (check_ints, check_policy_runs_on, make_arena, model_shape,
                             output_projections, pages_for_tokens, resolve_policy)
from headpage._prefill_record import Prefill, PrefillRecorder
# The bundled real model, loaded here for the tests, tools and examples that use this module.
from headpage._smollm2 import load_smollm2, smollm2_gguf  # noqa: F401

ATTENTION = "headpage"

# The keyword under which an attention module hands the attention function its
# forward call's headpage Cache (see attach()).
_CACHE_KWARG = "headpage_cache"


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
               headpage_cache=None, **kwargs):
    """AttentionInterface function: finishes the step Cache.update() recorded for
    this module's layer in the cache it is handed (headpage_cache, see attach()),
    or plain SDPA when there is none (any other cache, or a dense step)."""
    layer = getattr(module, "layer_idx", None)
    if isinstance(headpage_cache, PrefillRecorder):
        headpage_cache.record(layer, query)
        headpage_cache = None
    step = headpage_cache._take_step(layer) if headpage_cache is not None else None
    if step is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      scaling=scaling, dropout=dropout, **kwargs)
    for name in ("softcap", "s_aux", "sinks", "sliding_window"):
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"headpage.hf: attention with {name} is not supported")
    if step == "prefill":
        headpage_cache._observe_prefill(layer, query)
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      scaling=scaling, dropout=dropout, **kwargs)
    out = headpage_cache._decode_attention(layer, query, scaling)
    return out, None


AttentionInterface.register(ATTENTION, _attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def _hand_over_cache(module, args, kwargs):
    """Forward pre-hook of an attention module: passes its call's past_key_values,
    when it is a headpage Cache and the model attends through "headpage", on to
    the attention function as the keyword headpage_cache."""
    cache = kwargs.get("past_key_values")
    if not isinstance(cache, (Cache, PrefillRecorder)):
        return None
    implementation = getattr(getattr(module, "config", None), "_attn_implementation", ATTENTION)
    if implementation != ATTENTION:
        return None
    return args, {**kwargs, _CACHE_KWARG: cache}


def _attention_modules(model):
    """The modules that call the attention function: those with an integer
    layer_idx none of whose submodules has one (Llama's self_attn)."""
    def indexed(m):
        return isinstance(getattr(m, "layer_idx", None), int)
    found = [m for m in model.modules() if indexed(m)]
    return [m for m in found if not any(indexed(c) for c in m.modules() if c is not m)]


def attach(model):
    """Makes `model` attend through headpage.hf.Cache: switches its attention to
    "headpage" and installs, once per attention module, the forward pre-hook that
    hands the attention function the module's headpage Cache. Cache(model) calls
    it; call it yourself when you make the Cache from the model's config. Other
    caches (DynamicCache, ...) still work: the function is SDPA for them."""
    modules = _attention_modules(model)
    if not modules:
        raise NotImplementedError("headpage.hf: the model has no attention modules with a "
                                  "layer_idx")
    model.set_attn_implementation(ATTENTION)
    for module in modules:
        if not getattr(module, "_headpage_hook", None):
            module._headpage_hook = module.register_forward_pre_hook(_hand_over_cache,
                                                                      with_kwargs=True)
    return model


@torch.no_grad()
def record_prefill(model, input_ids, queries=None):
    """Runs `model` once over input_ids [batch][tokens] with transformers'
    DynamicCache and returns a Prefill holding every layer's K/V and its last
    `queries` queries (every query when None: what H2O and DBudgetKV's Frobenius
    metric observe). Load it into one Cache per policy with load_prefill() to
    compare policies on the same prompt without prefilling it again."""
    attach(model)
    recorder = PrefillRecorder(model.config, queries)
    out = model(input_ids, past_key_values=recorder, use_cache=True)
    layers = range(len(recorder.layers))
    return Prefill(out.logits[:, -1], [recorder.layers[i].keys for i in layers],
                   [recorder.layers[i].values for i in layers], [recorder.queries[i] for i in layers])


@dataclasses.dataclass(frozen=True)
class Skipped:
    """An entry of Cache.compression: the sequence was not compressed, and why."""
    reason: str


class _Layer(CacheLayerMixin):
    """One model layer's view of a headpage Cache; the cache does the work."""

    is_compileable = False
    is_croppable = False
    is_sliding = False

    def __init__(self, cache, layer_idx):
        super().__init__()
        self._cache, self._layer = cache, layer_idx

    def lazy_initialization(self, key_states, value_states):
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        self.is_initialized = True
        return self._cache._update(key_states, value_states, self._layer)

    def get_mask_sizes(self, query_length):
        return self._cache.get_seq_length() + query_length, 0

    def get_seq_length(self):
        return self._cache.get_seq_length()

    def get_max_length(self):
        return -1

    def reset(self):
        raise NotImplementedError("headpage.hf.Cache cannot be reset; make a new one")

    def crop(self, tokens_to_remove):
        raise NotImplementedError("headpage.hf.Cache cannot be cropped")

    def reorder_cache(self, beam_idx):
        raise NotImplementedError("headpage.hf.Cache does not support beam search")

    def batch_repeat_interleave(self, repeats):
        if repeats != 1:
            raise NotImplementedError("headpage.hf.Cache cannot repeat its batch")

    def batch_select_indices(self, indices):
        raise NotImplementedError("headpage.hf.Cache cannot select from its batch")


class Cache(_HFCache):
    """A transformers Cache stored in a headpage page pool, one block table per
    (sequence, layer, KV head).

    Args:
      model: the model (attach(model) switches its attention to "headpage"), or
        its config (then call headpage.hf.attach(model) yourself).
      policy: a name of headpage.POLICIES ("full", "uniform-snapkv", "ada-snapkv",
        "pyramid", "dbudget", "streamingllm", ...) or a headpage.PolicyConfig.
      budget: what each KV head keeps on average at the end of prefill: "20%",
        "128", a fraction (0.2) or tokens (128). None or "full" keeps everything.
      page_size: tokens per page.
      max_tokens: tokens per sequence the pool must hold (prompt + new tokens),
        when num_pages is not given.
      num_pages: the pool's size; ResourceExhausted when it runs out.
      kv_dtype: how pages store K/V: "auto" (the model's dtype) or "fp8" (fp8
        e4m3 with a scale per token and stream, for a bfloat16 or float16 model:
        half the bytes of bf16 pages).
    """

    def __init__(self, model, policy="full", budget=None, *, page_size=16, max_tokens=4096,
                 num_pages=None, kv_dtype="auto"):
        self._shape = shape = model_shape(model, "headpage.hf.Cache")
        check_ints(1, page_size=page_size, max_tokens=max_tokens)
        if num_pages is not None:
            check_ints(1, num_pages=num_pages)
        self.policy, self.budget = resolve_policy(policy, budget)
        # A config has no device: the first update() checks the policy
        # against where the K/V are.
        if getattr(model, "device", None) is not None:
            check_policy_runs_on(self.policy, model.device, "headpage.hf.Cache")
        # A config has no dtype: the first update() checks it against the K/V's.
        self.kv_dtype = check_kv_dtype(kv_dtype, getattr(model, "dtype", None),
                                       "headpage.hf.Cache")
        self.num_layers, self.num_q_heads = shape.num_layers, shape.num_q_heads
        self.num_kv_heads, self.head_dim = shape.num_kv_heads, shape.head_dim
        self.page_size, self.max_tokens = page_size, max_tokens
        self.num_pages = num_pages
        # CriticalKV and DefensiveKV read each layer's o_proj weight at compress().
        self._output_projections = (
            output_projections(model, self.num_layers, "headpage.hf.Cache")
            if self._compresses() and self.policy.needs_output_projection else None)
        super().__init__(layers=[_Layer(self, i) for i in range(self.num_layers)])
        if hasattr(model, "set_attn_implementation"):
            attach(model)

        self.pool = self.arena = self.manager = self.engine = None
        self.seqs = []
        self.compression = []   # per sequence once compressed (see compress())
        self._tokens = 0        # tokens every layer has seen
        self._compressed_at = 0  # self._tokens when compress() ran
        self._steps = {}        # layer -> "prefill" | "decode": what its attention must do
        self._slots = None      # a prefill step's slot mapping per sequence, [T][layers][kv_heads]
        self._positions = None  # this step's token positions, int32 [T]
        self._decoding = False  # one token after the prompt: decode_attention writes it
        self._new_positions = None  # a decode step's: int32 [B], the one position per sequence
        self._new_tokens = None  # a decode layer's K and V [B][kv_heads][D], until it attends
        self._window = {}       # layer -> the prompt's last queries [B][q_heads][w][D]
        self._compress_due = False
        self._tables = {}       # layer -> BlockTable kept up to date between decode steps (CPU)
        self._device_tables = None  # on CUDA: every layer's tables in device memory
        # On CUDA: a decode step's split-KV count (one block per stream would
        # leave most of the GPU idle at small batches) and its kept workspace.
        self._splits, self._workspace = 1, GrowingWorkspace()

    # -- what transformers asks ------------------------------------------------

    def get_seq_length(self, layer_idx=0):
        return self._tokens

    @property
    def is_compileable(self):
        return False

    # -- the pool ----------------------------------------------------------------

    def _initialize(self, key_states):
        batch, heads, _, dim = key_states.shape
        if heads != self.num_kv_heads or dim != self.head_dim:
            raise ValueError(f"key states [{batch}, {heads}, *, {dim}] do not match the model's "
                             f"{self.num_kv_heads} KV heads of {self.head_dim}")
        if key_states.dtype not in _DTYPES:
            raise NotImplementedError(f"headpage.hf.Cache: no cache dtype for {key_states.dtype}")
        check_kv_dtype(self.kv_dtype, key_states.dtype, "headpage.hf.Cache")  # fp8 of f32
        self.geometry = cache_geometry(self._shape, key_states.dtype, self.page_size,
                                       self.kv_dtype)
        self.device = key_states.device
        self.dtype = key_states.dtype
        pages = self.num_pages or batch * pages_for_tokens(
            self.max_tokens, self.page_size, self.geometry.streams_per_sequence)
        self.pool = headpage.PagePool(pages)
        self.arena = make_arena(self.geometry, pages, self.device, "headpage.hf.Cache")
        self.manager = headpage.BlockManager(self.geometry, self.pool)
        if self._compresses():
            # The engine works where the arena is: on the GPU for a CudaArena.
            if self.device.type == "cuda":
                check_policy_runs_on(self.policy, self.device, "headpage.hf.Cache")
                self.engine = headpage.EvictionEngine(self.manager, self.arena,
                                                      stream=self._stream())
            else:
                self.engine = headpage.EvictionEngine(self.manager, self.arena)
        self.seqs = [self.manager.add_sequence() for _ in range(batch)]

    def _compresses(self):
        return self.budget is not None and self.policy.compresses

    def _stream(self):
        if self.device.type == "cuda":
            return torch.cuda.current_stream(self.device).cuda_stream
        return 0

    def _to_device(self, array):
        """A numpy array of the bookkeeping where the kernels read it: as it is for the
        CPU kernels (DLPack, read-only views included), copied to the GPU for CUDA."""
        if self.device.type == "cpu":
            return array
        return torch.tensor(array, device=self.device)

    # -- update: write K/V, record the layer's step for the attention function --------

    def _take_step(self, layer):
        """What the attention function must do for `layer` after its update()
        ("prefill" or "decode"), once; None: attend as SDPA over update()'s K/V."""
        return self._steps.pop(layer, None)

    def _update(self, key_states, value_states, layer):
        if self._steps:  # a layer's attention did not take its step
            raise RuntimeError("headpage.hf.Cache: the model does not attend through the 'headpage' "
                               "attention; call headpage.hf.attach(model) (it calls "
                               "model.set_attn_implementation('headpage') and hands the cache to "
                               "the attention)")
        if self.manager is None:
            self._initialize(key_states)
        batch, _, tokens, _ = key_states.shape
        if batch != len(self.seqs):
            raise ValueError(f"batch of {batch}, but the cache holds {len(self.seqs)} sequences")
        if layer == 0:
            self._begin_step(tokens)
        if layer == self.num_layers - 1:
            self._tokens += tokens
        if self._decoding:
            # decode_attention writes the token's K/V into its reserved slot (each
            # stream's last) before it reads the page: one launch a layer, no write_kv.
            self._steps[layer] = "decode"
            self._new_tokens = (key_states[:, :, 0, :].contiguous(),
                                value_states[:, :, 0, :].contiguous())
            return key_states, value_states  # not read: decode attends from the pool
        stream = self._stream()
        for b, seq in enumerate(self.seqs):
            slots = self._slots[b]
            headpage.write_kv(self.arena, key_states[b].transpose(0, 1).contiguous(),
                              value_states[b].transpose(0, 1).contiguous(), slots[:, layer, :],
                              self._positions, stream=stream)
        if self._tokens_before == 0:
            self._steps[layer] = "prefill"
            return key_states, value_states
        # More than one token after the prompt: the model attends densely (SDPA over
        # what this returns), which needs every head of a layer to hold the same tokens.
        return self._dense(layer)

    def _begin_step(self, tokens):
        if self._compress_due:
            self.compress()
        self._tokens_before = self._tokens
        self._decoding = tokens == 1 and self._tokens > 0
        self._slots = []
        for seq in self.seqs:
            plan = self.manager.reserve(seq, tokens)
            # A decode step's slots go unused: decode_attention writes each stream's last.
            self._slots.append(None if self._decoding else self._to_device(plan.slot_mapping))
            if len(plan.copy_src):  # copy-on-write, before any write of this step
                headpage.copy_pages(self.arena, self._to_device(plan.copy_src),
                                    self._to_device(plan.copy_dst), stream=self._stream())
        self._positions = torch.arange(self._tokens, self._tokens + tokens, dtype=torch.int32,
                                       device=self.device)
        self._new_positions = (self._positions.expand(len(self.seqs)).contiguous()
                               if self._decoding else None)
        if self._tokens == 0 and self._compresses():
            self._compress_due = True
        if self.device.type == "cuda" and self._decoding:
            # A decode step: every layer's device tables up to date, one upload.
            if self._device_tables is None:
                self._device_tables = headpage.DeviceBlockTables(
                    self.manager, self.seqs, headroom_pages=8, stream=self._stream(),
                    device=self.device.index or 0)
            else:
                self._device_tables.refresh()
            self._plan_decode_splits()

    def _dense(self, layer):
        """The layer's K/V as [batch][kv_heads][tokens][head_dim], read from the pool
        (dequantized, for fp8 pages)."""
        keys, values = [], []
        for seq in self.seqs:
            lens = self.manager.stream_lengths(seq)[layer]
            if len(set(lens.tolist())) != 1:
                raise NotImplementedError("headpage.hf.Cache: a multi-token step after compression "
                                          "(the heads hold different tokens)")
            n = int(lens[0])
            k_heads, v_heads = [], []
            for h in range(self.num_kv_heads):
                pages = torch.tensor(self.manager.stream_pages(seq, layer, h), dtype=torch.long,
                                     device=self.device)
                k, v = read_pages(self.arena, pages, self.dtype)
                k_heads.append(k.reshape(-1, self.head_dim)[:n])
                v_heads.append(v.reshape(-1, self.head_dim)[:n])
            keys.append(torch.stack(k_heads))
            values.append(torch.stack(v_heads))
        return torch.stack(keys), torch.stack(values)

    # -- prefill: the observation window -------------------------------------------

    def load_prefill(self, keys, values, queries):
        """Stores a prompt prefilled elsewhere, as if the model had prefilled it
        through this cache; compress() (or the first decode step) then applies this
        cache's policy. For evaluating several policies on one prefill: run the
        model once (e.g. with a DynamicCache, recording each layer's queries) and
        load the result into one Cache per policy.

        Args:
          keys, values: per layer, [batch][kv_heads][tokens][head_dim] after RoPE,
            as the model's cache holds them.
          queries: per layer, [batch][q_heads][q][head_dim] after RoPE: the last q
            queries of the prompt, q >= policy.observed_queries(tokens) (every
            query for H2O and DBudgetKV's Frobenius metric).
        ValueError, changing nothing, for a cache that holds tokens, a wrong
        number of layers, a shape that does not match or mixed dtypes."""
        if self._tokens or self.manager is not None:
            raise ValueError("load_prefill needs a cache that holds nothing yet")
        for name, per_layer in (("keys", keys), ("values", values), ("queries", queries)):
            if len(per_layer) != self.num_layers:
                raise ValueError(f"load_prefill: {len(per_layer)} layers of {name}, the model has "
                                 f"{self.num_layers}")
        batch, _, tokens, _ = keys[0].shape
        want = self.policy.observed_queries(tokens) if self._compresses() else 0
        for layer in range(self.num_layers):
            k, v, q = keys[layer], values[layer], queries[layer]
            if k.dtype not in _DTYPES or v.dtype != k.dtype or q.dtype != k.dtype:
                raise ValueError(f"load_prefill: layer {layer}'s keys, values and queries are "
                                 f"{k.dtype}, {v.dtype}, {q.dtype}: want one of "
                                 f"{', '.join(map(str, _DTYPES))} for all three")
            expect = (batch, self.num_kv_heads, tokens, self.head_dim)
            if tuple(k.shape) != expect or tuple(v.shape) != expect:
                raise ValueError(f"load_prefill: layer {layer}'s keys {tuple(k.shape)} and values "
                                 f"{tuple(v.shape)} must both be {expect}")
            if (q.dim() != 4 or tuple(q.shape[:2]) != (batch, self.num_q_heads)
                    or q.shape[3] != self.head_dim or not want <= q.shape[2] <= tokens):
                raise ValueError(f"load_prefill: layer {layer}'s queries {tuple(q.shape)} must be "
                                 f"[{batch}, {self.num_q_heads}, q, {self.head_dim}] with "
                                 f"{want} <= q <= {tokens} (policy {self.policy.name})")
        for layer in range(self.num_layers):
            self._update(keys[layer], values[layer], layer)
            if self._take_step(layer) == "prefill":
                self._observe_prefill(layer, queries[layer], tokens)

    def _observe_prefill(self, layer, query, tokens=None):
        """Keeps the queries the policy observes of a prefill of `tokens` tokens
        (default: query's own length) from its last rows."""
        if not self._compress_due:
            return
        tokens = query.shape[2] if tokens is None else tokens
        want = self.policy.observed_queries(tokens)
        window = query[:, :, query.shape[2] - want:, :].detach()
        # A GPU engine reads the queries where they are.
        where = self.device if self.engine.on_device else "cpu"
        self._window[layer] = window.to(where).contiguous()

    def compress(self):
        """Compresses every sequence's prompt with the policy and budget, once, and
        returns self.compression: per sequence a headpage.CompressResult
        (tokens_before, tokens_after, pages_freed, and kept: [layers][kv_heads]
        stream lengths), or a Skipped(reason) when the prompt is not longer than
        the policy's window."""
        if not self._compress_due:
            return self.compression
        self._compress_due = False
        if len(self._window) != self.num_layers:
            raise RuntimeError("headpage.hf.Cache: the prefill did not go through the 'headpage' "
                               "attention (model.set_attn_implementation('headpage'))")
        prompt = self._compressed_at = self._tokens
        window = self._window[0].shape[2]
        positions = torch.arange(prompt - window, prompt, dtype=torch.int32,
                                 device=self._window[0].device)
        projections = None
        if self._output_projections is not None:
            where = self._window[0].device
            projections = [w.detach().to(where).contiguous() for w in self._output_projections]
        for b, seq in enumerate(self.seqs):
            if prompt <= self.policy.window:
                self.compression.append(Skipped(f"prompt of {prompt} tokens is not longer "
                                                f"than the window ({self.policy.window})"))
                continue
            queries = [self._window[layer][b] for layer in range(self.num_layers)]
            self.compression.append(self.engine.compress(seq, self.policy, self.budget,
                                                         queries, [positions], projections))
        self._window = {}
        self._tables = {}
        return self.compression

    # -- decode: attention over the head-wise block tables ---------------------------

    def _block_table(self, layer):
        table = self._tables.get(layer)
        if table is None:
            table = self.manager.block_table(layer, self.seqs, headroom_pages=8)
            self._tables[layer] = table
        else:
            self.manager.refresh_block_table(table)
        return table

    def _decode_lengths(self):
        """(shortest, longest) of this decode step's streams, its new token
        included: every token seen until a compression; after it, what the policy
        kept of each stream (a Skipped sequence kept its prompt) plus the tokens
        since."""
        step = self._tokens + 1
        if not self.compression:
            return step, step
        since = step - self._compressed_at
        kept = [(self._compressed_at, self._compressed_at) if isinstance(c, Skipped)
                else (int(c.kept.min()), int(c.kept.max())) for c in self.compression]
        return min(lo for lo, _ in kept) + since, max(hi for _, hi in kept) + since

    def _plan_decode_splits(self):
        """The split-KV count of this decode step on CUDA, from its streams'
        lengths (one wave where they are about equal, as before a compression or
        after a uniform one), and its workspace."""
        batch = len(self.seqs)
        shortest, longest = self._decode_lengths()
        self._splits = headpage.decode_attention_splits(
            longest, batch * self.num_kv_heads, multiprocessors(self.device),
            headpage.decode_attention_resident_blocks(self.arena), min_len=shortest)
        self._workspace.at_least(workspace_bytes(batch, self.num_q_heads, self.num_kv_heads,
                                                 self.head_dim, self._splits), self.device)

    def _decode_attention(self, layer, query, scaling):
        q = query[:, :, 0, :].contiguous()
        out = torch.empty_like(q)
        if self._device_tables is not None:
            # The device-resident tables, refreshed once for this step.
            indptr, page_ids, lens = (torch.from_dlpack(a) for a in self._device_tables.layer(layer))
        else:
            table = self._block_table(layer)
            indptr, page_ids, lens = (self._to_device(table.indptr), self._to_device(table.page_ids),
                                      self._to_device(table.lens))
        # The manager built these tables: no device check (and no wait for it).
        split = self._device_tables is not None and self._splits > 1
        new_keys, new_values = self._new_tokens
        self._new_tokens = None
        headpage.decode_attention(self.arena, q, indptr, page_ids, lens, out, sm_scale=scaling,
                                  num_splits=self._splits if split else 1,
                                  workspace=self._workspace.buffer if split else None,
                                  stream=self._stream(), check=False, new_keys=new_keys,
                                  new_values=new_values,
                                  new_positions=self._new_positions)
        return out.unsqueeze(1)  # [batch][1][q_heads][head_dim], as transformers expects

    # -- memory ---------------------------------------------------------------------

    def stream_positions(self, sequence=0):
        """The token positions each stream of a sequence holds, read from the pool:
        a list over (layer, KV head) in that order, each an ascending int32 tensor
        on the CPU. What a policy kept, for comparing policies or implementations."""
        positions = torch.from_dlpack(self.arena.positions).cpu().view(-1, self.page_size)
        seq = self.seqs[sequence]
        lengths = self.manager.stream_lengths(seq)
        out = []
        for layer in range(self.num_layers):
            for head in range(self.num_kv_heads):
                pages = torch.as_tensor(self.manager.stream_pages(seq, layer, head), dtype=torch.long)
                out.append(positions[pages].reshape(-1)[:int(lengths[layer, head])])
        return out

    def stats(self):
        """The block manager's statistics, a headpage.BlockManagerStats (pages in use
        and free, stream lengths, ...); None before the first update()."""
        return self.manager.stats() if self.manager is not None else None

    def __repr__(self):
        kv = f", kv_dtype={self.kv_dtype!r}" if self.kv_dtype != "auto" else ""
        return (f"headpage.hf.Cache(policy={self.policy.name!r}, budget={self.budget!r}{kv}, "
                f"tokens={self._tokens}, sequences={len(self.seqs)})")
