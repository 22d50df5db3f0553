# SPDX-License-Identifier: Apache-2.0
"""headpage.serving with prefix caching (BlockManager's prefix cache): requests
that share a system prompt start on its cached pages, give transformers' tokens
at the full budget, and under a compressing policy keep the shared prefix whole
while their own tokens are compressed. On the CPU with a small random-weight
Llama, and on a CUDA device where the build and the machine have one."""
import numpy as np
import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig

import headpage
import headpage.serving
from test_serving import _NO_CUDA, engine_config, run_manager, small_model, tokens, twin

SYSTEM = list(range(10, 74))  # 64 tokens: 4 pages of 16
# Each request's own tokens (the vocabulary has 128): no two share a block.
OWN = [[(31 * k + 3 * i) % 118 + 9 for i in range(n)] for k, n in enumerate((96, 100, 120))]
PROMPTS = [SYSTEM + own for own in OWN]


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    _NO_CUDA, reason="needs a CUDA build of headpage and a CUDA device"))])
def device(request):
    return torch.device(request.param)


def sharing_config(allow_block_sharing=True):
    # test_serving's 64-token steps: the first request's prompt takes three steps,
    # and the next ones are admitted once its prefix blocks are offered.
    return ContinuousBatchingConfig(**{**engine_config().__dict__, "num_blocks": 128,
                                       "allow_block_sharing": allow_block_sharing})


def sharing_manager(model, max_new_tokens):
    """A greedy manager of `model` with prefix sharing, not started."""
    return model.init_continuous_batching(
        generation_config=GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False,
                                           eos_token_id=-1),
        continuous_batching_config=sharing_config())


def test_shared_prefixes_start_on_cached_pages_and_give_transformers_tokens(device):
    model = small_model(device)
    generation = GenerationConfig(max_new_tokens=10, do_sample=False, eos_token_id=-1)
    no_sharing = sharing_config(allow_block_sharing=False)
    want = model.generate_batch(PROMPTS, generation_config=generation,
                                continuous_batching_config=no_sharing)
    served = headpage.serving.enable(twin(model), num_pages=1024, check_invariants=True)
    manager, results = run_manager(served, PROMPTS, 10, config=sharing_config())
    stats = manager.stats()
    assert stats["prefix_hits"] >= 2 and stats["prefix_hit_tokens"] >= 2 * len(SYSTEM)
    got = {rid: list(r.generated_tokens) for rid, r in results.items()}
    assert sorted(got.values()) == sorted(tokens(want).values())
    # The requests are done; their full prompt blocks stay cached, free for the taking.
    cache = manager.serving_cache
    assert stats["cached_pages"] > 0 and stats["cached_only_pages"] == stats["cached_pages"]
    assert cache.manager.available_pages == cache.page_pool.num_pages
    # A request matched but never admitted holds a sequence; a reset frees it.
    assert cache.search_prefix_match("late", PROMPTS[0]) >= len(SYSTEM)
    assert cache.manager.num_sequences == 1
    cache.reset()
    assert cache.manager.num_sequences == 0 and not cache._hits
    assert cache.evict_cached_blocks() and cache.page_pool.free_pages == cache.page_pool.num_pages
    cache.manager.check_invariants()


def test_compression_keeps_the_cached_prefix_whole(device, monkeypatch):
    # At each compression: a request that started on the cached system prompt
    # still holds its pages in every stream, and keeps it whole plus the
    # policy's share of its own tokens.
    seen = {}
    record = headpage.serving.ServingCache._record

    def checked_record(cache, request_id, result):
        record(cache, request_id, result)
        if isinstance(result, headpage.CompressResult):
            seq = cache._seqs[request_id]
            seen[request_id] = (cache._frozen[request_id], [
                list(cache.manager.stream_pages(seq, layer, head))[:4]
                for layer in range(2) for head in range(2)], result.kept.tolist())

    monkeypatch.setattr(headpage.serving.ServingCache, "_record", checked_record)
    model = headpage.serving.enable(small_model(device), num_pages=1024, policy="uniform-snapkv",
                                    budget="50%", check_invariants=True)
    manager, results = run_manager(model, PROMPTS, 10, config=sharing_config())
    assert all(len(r.generated_tokens) == 10 for r in results.values())
    assert len(seen) == 3
    hits = {rid: v for rid, v in seen.items() if v[0] > 0}
    misses = [v for v in seen.values() if v[0] == 0]
    assert len(hits) == 2 and len(misses) == 1
    first_pages = None
    for rid, (frozen, pages, kept) in hits.items():
        assert frozen == len(SYSTEM)
        own = len(PROMPTS[int(rid.split("_")[-1])]) - frozen  # req_<index>, added in order
        # The system prompt, plus half of its own tokens (the budget's share).
        assert kept == [[frozen + headpage.budget_capacity("50%", own)] * 2] * 2
        first_pages = first_pages or pages
        assert pages == first_pages  # the same cached pages in every request
    # The request that computed the prefix compressed its whole prompt: the
    # cache kept the uncompressed blocks the others started on.
    assert misses[0][2] == [[headpage.budget_capacity("50%", len(PROMPTS[0]))] * 2] * 2
    assert manager.stats()["prefix_hits"] == 2
    manager.serving_cache.manager.check_invariants()


def test_unused_cached_blocks_give_way_when_the_pool_runs_short(device):
    # 48 pages: one request of 120 tokens and 8 new ones takes 36 of them; the
    # blocks each one leaves in the cache must make way for the next.
    model = small_model(device)
    prompts = [list(range(3 + i, 123 + i)) for i in range(4)]  # no two share a block
    generation = GenerationConfig(max_new_tokens=8, do_sample=False, eos_token_id=-1)
    want = model.generate_batch(prompts, generation_config=generation,
                                continuous_batching_config=sharing_config())
    served = headpage.serving.enable(twin(model), num_pages=48, check_invariants=True)
    got = served.generate_batch(prompts, generation_config=generation,
                                continuous_batching_config=sharing_config())
    assert sorted(tokens(got).values()) == sorted(tokens(want).values())


def test_prefix_caching_can_be_turned_off():
    model = headpage.serving.enable(small_model(), num_pages=1024, prefix_caching=False)
    manager, _ = run_manager(model, PROMPTS, 4, config=sharing_config())
    stats = manager.stats()
    assert stats["prefix_hits"] == 0 and stats["cached_pages"] == 0


def test_headwise_prefill_attention_is_each_heads_own_causal_attention():
    from headpage._serving_prefix import headwise_prefill_attention

    torch.manual_seed(3)
    heads, group, dim, count = 3, 2, 16, 5
    lens = [9, 14, 6]
    keys = torch.randn(1, heads, max(lens), dim)
    values = torch.randn(1, heads, max(lens), dim)
    q = torch.randn(1, heads * group, count, dim)
    out = headwise_prefill_attention(q, keys, values, lens, 0.25)
    for qh in range(heads * group):
        h, n = qh // group, lens[qh // group]
        for i in range(count):
            visible = n - count + i + 1  # its stream's tokens up to its own
            weights = torch.softmax(0.25 * keys[0, h, :visible] @ q[0, qh, i], 0)
            assert torch.allclose(out[0, qh, i], weights @ values[0, h, :visible], atol=1e-5)


def test_a_compressed_prefix_is_computed_once_and_shared(device, monkeypatch):
    # Four requests name their 128-token system prompt as a compressed prefix:
    # the first compresses it (ada-snapkv at 50%, each head its own length) before
    # the rest of its prompt attends to it; the others start on a fork of it. The
    # three with the same prompt give the same tokens.
    compressed = []
    record = headpage.serving.ServingCache._record

    def recording(cache, request_id, result):
        record(cache, request_id, result)
        compressed.append((request_id, result))

    monkeypatch.setattr(headpage.serving.ServingCache, "_record", recording)
    model = headpage.serving.enable(small_model(device), num_pages=1024, policy="ada-snapkv",
                                    budget="50%", check_invariants=True)
    manager = sharing_manager(model, 10)
    manager.start()
    try:
        system = [(5 * i) % 100 + 20 for i in range(128)]
        prompts = [system + OWN[k] for k in (0, 0, 1, 0)]
        ids = [manager.add_request(prompts[0], compressed_prefix=len(system))]
        first = manager.get_result(timeout=300)  # computed and kept before the others come
        ids += [manager.add_request(p, compressed_prefix=len(system)) for p in prompts[1:]]
        results = {r.request_id: r for r in (manager.get_result(timeout=300) for _ in ids[1:])}
        results[first.request_id] = first
        stats = manager.stats()
        cache = manager.serving_cache
    finally:
        manager.stop(block=True)
    got = [list(results[rid].generated_tokens) for rid in ids]
    assert got[0] == got[1] == got[3] and len(got[2]) == 10
    # Only the first request was compressed, and only its prefix (4 streams).
    assert [rid for rid, _ in compressed] == [ids[0]]
    assert compressed[0][1].tokens_before == 4 * len(system)
    assert stats["compressed_prefix_hits"] == 3 and stats["compressed_prefixes"] == 1
    (key, seq), = cache._compressed_prefixes.items()
    lengths = np.asarray(cache.manager.stream_lengths(seq))
    assert lengths.max() < len(system) and lengths.min() != lengths.max()
    cache.manager.check_invariants()
    # Under pressure the compressed prefix goes back to the pool with the blocks.
    assert cache.evict_cached_blocks() and not cache._compressed_prefixes
    assert cache.page_pool.free_pages == cache.page_pool.num_pages


def test_a_compressed_prefix_is_refused_where_it_cannot_be_served():
    model = headpage.serving.enable(small_model(), num_pages=1024, policy="ada-snapkv",
                                    budget="50%")
    manager = sharing_manager(model, 2)
    with pytest.raises(headpage.serving.RequestRefused, match="from 1 to"):
        manager.add_request(PROMPTS[0], compressed_prefix=len(PROMPTS[0]))
    with pytest.raises(headpage.serving.RequestRefused, match="whole number"):
        manager.add_request(PROMPTS[0], compressed_prefix=2.5)
    with pytest.raises(headpage.serving.RequestRefused, match="compresses"):
        manager.add_request(PROMPTS[0], compressed_prefix=64, policy="full")
    plain = headpage.serving.enable(small_model(), num_pages=1024, policy="ada-snapkv",
                                    budget="50%", prefix_caching=False)
    manager = sharing_manager(plain, 2)
    with pytest.raises(headpage.serving.RequestRefused, match="prefix caching"):
        manager.add_request(PROMPTS[0], compressed_prefix=64)


def test_compressed_prefixes_under_pool_pressure_serve_every_request(device):
    # A pool for a few requests at once: the requests on the kept prefix share
    # its pages and have no scores for the pool budget, so the newest ones are
    # preempted and computed again; every request is served, and the invariants
    # hold every step.
    system = [(5 * i) % 100 + 20 for i in range(128)]
    prompts = [system + OWN[k % 3] for k in range(10)]
    model = headpage.serving.enable(small_model(device), num_pages=150, policy="ada-snapkv",
                                    budget="50%", check_invariants=True)
    manager = sharing_manager(model, 24)
    manager.start()
    try:
        ids = [manager.add_request(p, compressed_prefix=len(system)) for p in prompts]
        results = [manager.get_result(timeout=300) for _ in ids]
        stats = manager.stats()
    finally:
        manager.stop(block=True)
    assert all(r is not None and not r.error and len(r.generated_tokens) == 24 for r in results)
    assert stats["compressed_prefix_hits"] >= 5
    # A prefix that requests run on is never given back under pressure (that
    # would free next to nothing and have the next request compute it again).
    assert stats["compressed"] <= 2
