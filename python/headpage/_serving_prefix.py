# SPDX-License-Identifier: Apache-2.0
"""headpage.serving's prefix caching, a mixin of ServingCache (every attribute it
reads is the cache's), in two modes (docs/serving.md):

(a) transformers' prefix sharing on the block manager's prefix cache: a request
    starts on the cached blocks of its prompt, and a compressing policy keeps
    that shared prefix whole (EvictionEngine.freeze_prefix) while it compresses
    the rest of the prompt.
(b) compressed prefixes: a request that names the prefix it shares
    (ServingManager.add_request(..., compressed_prefix=N)) has those N tokens
    compressed once, scored by their own last tokens, before the rest of its
    prompt is prefilled; the compressed prefix is kept under (its token ids, the
    policy, the budget) and every later request that starts with it starts on a
    fork of it, so the shared part is both deduplicated and compressed."""
import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from headpage._kv_pages import read_pages
from headpage.hf import Skipped

# The key transformers' batch preparation knows its one allocator by.
_ALLOCATOR = "full_attention"


def headwise_prefill_attention(q, keys, values, lens, scaling):
    """Attention of a prefill chunk over streams of different lengths (a
    compressed prefix keeps a different number of tokens in each KV head).
    q [1][q_heads][count][D]; keys, values [1][kv_heads][max_len][D], stream h
    holding lens[h] tokens of which the chunk's own are the last `count`
    (the rest is padding); a query sees its stream's tokens up to its own.
    Returns [1][q_heads][count][D]."""
    heads, count, max_len = keys.shape[1], q.shape[2], keys.shape[2]
    lens = torch.as_tensor(lens, device=q.device).view(heads, 1, 1)
    key_index = torch.arange(max_len, device=q.device).view(1, 1, max_len)
    query_index = torch.arange(count, device=q.device).view(1, count, 1)
    mask = key_index <= lens - count + query_index  # [kv_heads][count][max_len]
    group = q.shape[1] // heads
    if group > 1:
        keys = keys.repeat_interleave(group, 1)
        values = values.repeat_interleave(group, 1)
        mask = mask.repeat_interleave(group, 0)
    # Not cuDNN's attention, which PyTorch picks for a boolean mask on an H200: it
    # builds a plan for every new shape (1.3 s the first time), and chunks of
    # prefill come in many shapes. The memory-efficient kernel takes the mask.
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        return torch.nn.functional.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask.unsqueeze(0), scale=scaling)


class PrefixCaching:
    """Prefix caching for ServingCache."""

    def room(self, need):
        """Pages free and not promised to the step being scheduled, after
        reclaiming unused cached blocks, then the least recently used compressed
        prefixes, where fewer than `need` are."""
        free = self.page_pool.free_pages - self._promised_pages
        if free < need:
            self.manager.reclaim_cached_pages(self._promised_pages + need)
            self._drop_unused_prefixes(lambda: self.page_pool.free_pages - self._promised_pages
                                       >= need)
            free = self.page_pool.free_pages - self._promised_pages
        return free

    def evict_cached_blocks(self):
        """Under memory pressure: every unused cached block and every compressed
        prefix no request runs on goes back to the pool."""
        freed = self.manager.reclaim_cached_pages(self.page_pool.num_pages) > 0
        freed = self._drop_unused_prefixes(lambda: False) or freed
        if self.tp is not None:
            # transformers asks the free capacity again (an agreement) when this is
            # true: every rank must answer alike (it holds no cache under TP anyway).
            freed = self.tp.max(int(freed)) > 0
        return freed

    def _drop_unused_prefixes(self, enough):
        """Frees compressed prefixes that no live request started on, least
        recently used first, until enough() holds; True if it freed one. One in
        use would free next to nothing (its requests share its pages), and the
        next request would compute it again."""
        freed = False
        for key in list(self._compressed_prefixes):
            if enough():
                break
            if not self._prefix_users.get(key):
                self.manager.free(self._compressed_prefixes.pop(key))
                self._prefix_users.pop(key, None)
                freed = True
        return freed

    def _drop_prefix_user(self, request_id):
        """release(): the request no longer runs on its compressed prefix."""
        key = self._prefix_of.pop(request_id, None)
        if key is not None:
            self._prefix_users.get(key, set()).discard(request_id)

    # -- transformers' prefix sharing ------------------------------------------------

    def search_prefix_match(self, request_id, input_ids):
        """For a request not yet admitted: starts it on a compressed prefix it
        named, or on the cached blocks of its prompt (all but the last token,
        whose logits the step must compute), and returns the prompt tokens they
        hold, which transformers then skips."""
        if not self.use_prefix_sharing or request_id in self._seqs or request_id in self._hits:
            return 0
        if request_id in self.request_prefixes:
            return self._start_on_compressed_prefix(request_id, input_ids)
        seq, cached = self.manager.add_sequence_with_prefix(list(input_ids[:-1]))
        if cached == 0:
            self.manager.free(seq)
            return 0
        self._hits[request_id] = (seq, cached, False)
        self.totals["prefix_hits"] += 1
        self.totals["prefix_hit_tokens"] += cached
        return cached

    def count_new_complete_blocks(self, state, num_tokens):
        if not self.use_prefix_sharing:
            return {}
        page = self.geometry.page_size
        complete = (state.current_len() % page + num_tokens) // page
        return {_ALLOCATOR: complete} if complete else {}

    def mark_complete_blocks(self, state, blocks):
        """After a step: a request that is not compressed offers the blocks its
        generated tokens completed (the next turn of a chat starts with them).
        Prompt blocks were offered at the end of the step that wrote them."""
        rid = state.request_id
        seq = self._seqs.get(rid)
        if (not blocks or seq is None or self._compress_at.get(rid) is not None
                or rid not in self._prompt_ids or rid in self.request_prefixes):
            return
        written = self.manager.num_tokens(seq)
        if written // self.geometry.page_size > self._offered[rid] // self.geometry.page_size:
            ids = (list(state.initial_tokens) + list(state.generated_tokens))[:written]
            self.manager.cache_prefix(seq, ids)
            self._offered[rid] = written

    def _offer_prompts(self):
        """Offers the prompt blocks the step's prefill rows completed, before any
        of them is compressed (the cache keeps them uncompressed, for the next
        request with this prefix). A request on or computing a compressed prefix
        offers none: its streams are not the prompt's tokens in order."""
        page = self.geometry.page_size
        for r in self._step:
            ids = self._prompt_ids.get(r.request_id)
            if r.is_decode or ids is None or r.request_id in self.request_prefixes:
                continue
            written = min(len(ids), r.past + r.count)
            if written // page > self._offered[r.request_id] // page:
                self.manager.cache_prefix(r.seq, ids[:written])
                self._offered[r.request_id] = written

    # -- compressed prefixes (mode (b)) ------------------------------------------------

    def _prefix_key(self, request_id, ids):
        """What a compressed prefix is kept under: its token ids and the policy
        and budget that compressed it."""
        policy, budget = self.request_policies.get(request_id, (self.policy, self.budget))
        return (policy.name, str(budget), policy.window,
                tuple(ids[:self.request_prefixes[request_id]]))

    def _start_on_compressed_prefix(self, request_id, input_ids):
        key = self._prefix_key(request_id, input_ids)
        seq = self._compressed_prefixes.get(key)
        if seq is None:
            return 0  # the request computes it (_compression_point)
        self._compressed_prefixes.move_to_end(key)
        cached = self.request_prefixes[request_id]
        self._hits[request_id] = (self.manager.fork(seq), cached, True)
        self._prefix_users.setdefault(key, set()).add(request_id)
        self._prefix_of[request_id] = key
        self.totals["compressed_prefix_hits"] += 1
        self.totals["prefix_hit_tokens"] += cached
        return cached

    def _compression_point(self, state):
        """Where an admitted request's prompt is compressed: at the end of the
        prefix it asked to share compressed (its chunk ends there, see
        prefix_boundary), else at its end, or one token before for a request that
        forks for num_return_sequences (transformers prefills all but the last
        token, then forks)."""
        rid = state.request_id
        if rid in self.request_prefixes and self.use_prefix_sharing:
            self._prefix_pending[rid] = self._prefix_key(rid, state.initial_tokens)
            return self.request_prefixes[rid]
        return len(state.initial_tokens) - (1 if state.num_children > 0 else 0)

    def prefix_boundary(self, state, tokens):
        """For transformers' scheduler: how many of a request's next `tokens`
        prompt tokens reach the end of the compressed prefix it is computing
        (its chunk must stop there, so that the prefix is compressed before the
        rest of the prompt attends to it), or None."""
        if state.request_id not in self._prefix_pending:
            return None
        ahead = self.request_prefixes[state.request_id] - state.position_offset
        return ahead if 0 < ahead < tokens else None

    def _keep_compressed_prefix(self, r, result):
        """After request r's prefix was compressed: a fork of it is kept for the
        requests that start with it (unless another request kept one first)."""
        key = self._prefix_pending.pop(r.request_id, None)
        # Skipped: the prompt stays whole, nothing to share.
        if key is None or isinstance(result, Skipped) or key in self._compressed_prefixes:
            return
        self._compressed_prefixes[key] = self.manager.fork(r.seq)
        self._prefix_users.setdefault(key, set()).add(r.request_id)
        self._prefix_of[r.request_id] = key
        self.totals["compressed_prefixes"] += 1
        # Its pages are now shared, as a request starting on the prefix has them:
        # like those, it has no scores for the pool budget to evict by.
        self.engine.forget(r.seq)

    def _prefill_keys(self, layer, r, query):
        """K/V of request r's streams in `layer` for its prefill chunk, and the
        chunk's attention: one length for every head (the fused causal path), or
        a compressed prefix's head-wise lengths (a mask)."""
        table = self.manager.block_table(layer, [r.seq])
        lens = np.asarray(table.lens)
        indptr, page_ids = np.asarray(table.indptr), np.asarray(table.page_ids)
        counts = np.diff(indptr)
        pages = np.zeros((len(lens), int(counts.max())), dtype=np.int64)
        for h, n in enumerate(counts):
            pages[h, :n] = page_ids[indptr[h]:indptr[h + 1]]
        pages = torch.as_tensor(pages, device=query.device)
        # fp8 pages come back dequantized, in the model's dtype.
        keys, values = read_pages(self.arena, pages, query.dtype)
        heads, dim = self.shape.num_kv_heads, self.shape.head_dim
        longest = int(lens.max())
        keys = keys.reshape(1, heads, -1, dim)[:, :, :longest]
        values = values.reshape(1, heads, -1, dim)[:, :, :longest]
        return keys, values, lens
