# SPDX-License-Identifier: Apache-2.0
"""headpage.serving: transformers' continuous-batching engine on a headpage pool,
on the CPU with a small random-weight Llama. At the full budget it must give
transformers' own engine's tokens exactly (chunked prefill, mixed prefill and
decode batches, num_return_sequences); with a policy it compresses each prompt
once it is prefilled and returns the pages to the pool. Every test runs on the
CPU, and again on a CUDA device (CudaArena, the GPU kernels and executor) where
the build and the machine have one: scripts/gpu-check runs those."""
import time

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import CompileConfig, GenerationConfig, LlamaConfig, LlamaForCausalLM
from transformers.generation.configuration_utils import ContinuousBatchingConfig

import headpage
import headpage.serving

PROMPTS = [[1, 5, 7, 9, 11], list(range(3, 70)), list(range(2, 120))]

_NO_CUDA = not (headpage.has_cuda and torch.cuda.is_available())


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    _NO_CUDA, reason="needs a CUDA build of headpage and a CUDA device"))])
def device(request):
    return torch.device(request.param)


def small_model(device="cpu"):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=256, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config).eval().to(device)
    model.set_attn_implementation("sdpa")
    return model


def twin(model):
    copy = LlamaForCausalLM(model.config).eval()
    copy.load_state_dict(model.state_dict())
    copy.set_attn_implementation("sdpa")
    return copy.to(model.device)


def engine_config():
    # A 64-token step: the 67- and 118-token prompts are prefilled in chunks, and
    # steps mix one request's prefill with the others' decoding.
    return ContinuousBatchingConfig(page_size=16, num_blocks=64, max_batch_tokens=64,
                                    max_requests_per_batch=8, auto_switch_to_flash=False,
                                    allow_block_sharing=False, use_async_batching=False,
                                    use_cuda_graph=False)


def tokens(outputs):
    return {rid: list(out.generated_tokens) for rid, out in outputs.items()}


def started(model, **generation):
    """A started manager of `model`, greedy unless `generation` says otherwise."""
    manager = model.init_continuous_batching(
        generation_config=GenerationConfig(**{"do_sample": False, "eos_token_id": -1,
                                              **generation}),
        continuous_batching_config=engine_config())
    manager.start()
    return manager


def run_manager(model, prompts, max_new_tokens, config=None, timeout=300):
    generation = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=-1)
    manager = model.init_continuous_batching(generation_config=generation,
                                             continuous_batching_config=config or engine_config())
    manager.start()
    try:
        ids = [manager.add_request(p) for p in prompts]
        results = {r.request_id: r for r in (manager.get_result(timeout=timeout) for _ in ids)}
    finally:
        manager.stop(block=True)
    assert set(results) == set(ids)
    return manager, results


@pytest.mark.parametrize("children", [1, 2])
def test_full_budget_gives_transformers_tokens(children, device):
    model = small_model(device)
    generation = GenerationConfig(max_new_tokens=12, eos_token_id=-1, num_return_sequences=children,
                                  do_sample=children > 1, top_k=1 if children > 1 else None)
    want = model.generate_batch(PROMPTS, generation_config=generation,
                                continuous_batching_config=engine_config())
    served = headpage.serving.enable(twin(model), num_pages=2048)
    got = served.generate_batch(PROMPTS, generation_config=generation,
                                continuous_batching_config=engine_config())
    assert len(got) == len(PROMPTS) * children
    assert tokens(got) == tokens(want)


def test_a_pool_too_small_for_every_request_at_once_still_serves_them_all(device):
    # 60 pages of 16 tokens over 2 layers x 2 KV heads: the 118-token prompt with its
    # 12 new tokens takes 36 of them, so the three requests cannot all run at once.
    model = small_model(device)
    generation = GenerationConfig(max_new_tokens=12, do_sample=False, eos_token_id=-1)
    want = model.generate_batch(PROMPTS, generation_config=generation,
                                continuous_batching_config=engine_config())
    served = headpage.serving.enable(twin(model), num_pages=60)
    got = served.generate_batch(PROMPTS, generation_config=generation,
                                continuous_batching_config=engine_config())
    assert tokens(got) == tokens(want)


def test_a_policy_compresses_each_prompt_and_frees_its_pages(device, monkeypatch):
    # Right after each compression the request holds exactly the pages its kept
    # lengths need, in every stream.
    exact = []
    record = headpage.serving.ServingCache._record

    def checked_record(cache, request_id, result):
        record(cache, request_id, result)
        if isinstance(result, headpage.CompressResult):
            seq, size = cache._seqs[request_id], cache.geometry.page_size
            lengths = cache.manager.stream_lengths(seq)
            held = [[len(cache.manager.stream_pages(seq, layer, head))
                     for head in range(len(lengths[layer]))] for layer in range(len(lengths))]
            need = [[-(-int(n) // size) for n in row] for row in lengths]
            kept = [[int(n) for n in row] for row in result.kept]
            exact.append(held == need and [[int(n) for n in row] for row in lengths] == kept)

    monkeypatch.setattr(headpage.serving.ServingCache, "_record", checked_record)
    model = headpage.serving.enable(small_model(device), num_pages=2048, policy="ada-snapkv",
                                    budget="50%", check_invariants=True)
    manager, results = run_manager(model, PROMPTS, 12)
    cache = manager.serving_cache
    assert cache.engine.on_device == (device.type == "cuda")
    assert all(len(r.generated_tokens) == 12 for r in results.values())
    # The 5-token prompt is shorter than the window: skipped; the others kept half.
    compressed = {rid: c for rid, c in cache.compressions.items()
                  if isinstance(c, headpage.CompressResult)}
    assert len(compressed) == 2 and exact == [True, True]
    for result in compressed.values():
        assert result.tokens_after <= result.tokens_before // 2 + 2 * 4  # 2 layers x 2 heads
        assert result.pages_freed > 0
    # Every request is done: the pool is empty again.
    assert cache.page_pool.free_pages == cache.page_pool.num_pages
    cache.manager.check_invariants()


def test_the_pool_budget_evicts_across_requests_before_any_preemption(device):
    # Three 100-token prompts compressed to 50 tokens a stream, then 40 new tokens
    # each: 90 tokens a stream need 6 pages, 72 for the three requests, more than
    # the 60 of the pool; evicted to the 8-token floor they would need 36.
    prompts = [list(range(1 + i, 101 + i)) for i in range(3)]
    model = headpage.serving.enable(small_model(device), num_pages=60, policy="ada-snapkv",
                                    budget="50%", floor_tokens=8, protect_recent=4,
                                    check_invariants=True)
    manager, results = run_manager(model, prompts, 40)
    pressure = manager.pool_pressure
    assert all(len(r.generated_tokens) == 40 for r in results.values())
    assert pressure.budget_evictions > 0 and pressure.pages_evicted > 0
    assert pressure.preemptions == 0
    # The budget ran before each batch was scheduled: no running request was ever
    # left out of one for want of pages.
    assert pressure.starved == 0
    cache = manager.serving_cache
    assert cache.page_pool.free_pages == cache.page_pool.num_pages
    cache.manager.check_invariants()


def test_pool_headroom_frees_beyond_the_need_so_the_budget_runs_less_often(device):
    # The same pressure as above: freeing a fifth of the pool beyond each step's
    # need leaves room for the requests' growth, and the budget runs fewer times.
    prompts = [list(range(1 + i, 101 + i)) for i in range(3)]
    runs = {}
    for headroom in (0.0, 0.2):
        model = headpage.serving.enable(small_model(device), num_pages=60, policy="ada-snapkv",
                                        budget="50%", floor_tokens=8, protect_recent=4,
                                        pool_headroom=headroom, check_invariants=True)
        manager, results = run_manager(model, prompts, 40)
        assert all(len(r.generated_tokens) == 40 for r in results.values())
        runs[headroom] = manager.pool_pressure
    assert runs[0.0].preemptions == runs[0.2].preemptions == 0
    assert 0 < runs[0.2].budget_evictions < runs[0.0].budget_evictions
    with pytest.raises(ValueError, match="pool_headroom"):
        headpage.serving.enable(small_model(), num_pages=60, pool_headroom=1.0)


def test_without_a_policy_a_short_pool_preempts_and_still_gives_transformers_tokens(device):
    prompts = [list(range(1 + i, 41 + i)) for i in range(3)]
    model = small_model(device)
    generation = GenerationConfig(max_new_tokens=100, do_sample=False, eos_token_id=-1)
    want = model.generate_batch(prompts, generation_config=generation,
                                continuous_batching_config=engine_config())
    served = headpage.serving.enable(twin(model), num_pages=80)
    manager, results = run_manager(served, prompts, 100)
    assert manager.pool_pressure.preemptions > 0
    by_prompt = {tuple(r.prompt_ids): list(r.generated_tokens) for r in results.values()}
    assert by_prompt == {tuple(o.prompt_ids): list(o.generated_tokens) for o in want.values()}


def test_a_prompt_the_pool_can_never_hold_is_refused_and_the_others_are_served(device):
    # 16 pages hold 4 streams x 4 pages: 64 tokens. A 200-token prompt never fits.
    manager = started(headpage.serving.enable(small_model(device), num_pages=16),
                      max_new_tokens=4)
    try:
        with pytest.raises(headpage.serving.RequestRefused, match="needs 52 pages of 16 tokens"):
            manager.add_request(list(range(1, 201)))
        with pytest.raises(headpage.serving.RequestRefused, match="empty prompt"):
            manager.add_request([])
        rid = manager.add_request(PROMPTS[0])
        result = manager.get_result(rid, timeout=120)
    finally:
        manager.stop(block=True)
    assert len(result.generated_tokens) == 4


def test_a_request_whose_budget_cannot_be_met_keeps_its_prompt_and_the_others_compress(device):
    # 20% of a 60-token prompt is 12 tokens, fewer than the 32 of the window that
    # ada-snapkv protects: that request is not compressed (the reason is kept);
    # the 200-token one is, and every request is served.
    prompts = [list(range(1, 61)), [1 + i % 120 for i in range(200)]]
    model = headpage.serving.enable(small_model(device), num_pages=2048, policy="ada-snapkv",
                                    budget="20%")
    manager, results = run_manager(model, prompts, 6)
    assert all(len(r.generated_tokens) == 6 for r in results.values())
    by_length = {len(r.prompt_ids): manager.serving_cache.compressions[rid]
                 for rid, r in results.items()}
    assert isinstance(by_length[60], headpage.hf.Skipped)
    assert "protected tokens" in by_length[60].reason
    assert isinstance(by_length[200], headpage.CompressResult)
    assert by_length[200].tokens_after < by_length[200].tokens_before


def test_bad_arguments_are_refused_when_enabled():
    model = small_model()
    with pytest.raises(ValueError, match="num_pages"):
        headpage.serving.enable(model, num_pages=0)
    with pytest.raises(ValueError, match="needs a budget"):
        headpage.serving.enable(model, num_pages=64, policy="ada-snapkv")
    with pytest.raises(ValueError):
        headpage.serving.enable(model, num_pages=64, policy="no-such-policy", budget="20%")
    with pytest.raises(ValueError, match="floor_tokens"):
        headpage.serving.enable(model, num_pages=64, floor_tokens=-1)
    with pytest.raises(ValueError, match="decode_division"):
        headpage.serving.enable(model, num_pages=64, decode_division="diagonal")
    for splits in (0, headpage.decode_max_splits + 1, 2.5):
        with pytest.raises(ValueError, match="decode_splits"):
            headpage.serving.enable(model, num_pages=64, decode_splits=splits)
    with pytest.raises(ValueError, match="decode_splits"):
        headpage.serving.enable(model, num_pages=64, decode_division="balanced", decode_splits=4)


def test_the_engine_parts_headpage_relies_on_are_there_and_a_change_is_named(monkeypatch):
    # Passes on the pinned transformers; names what changed otherwise.
    headpage.serving.check_engine()
    from transformers.generation.continuous_batching.cache import PagedAttentionCache
    monkeypatch.setattr(PagedAttentionCache, "swap_to_disk", lambda self: None, raising=False)
    monkeypatch.delattr(PagedAttentionCache, "free_blocks")
    with pytest.raises(RuntimeError) as error:
        headpage.serving.check_engine()
    assert "PagedAttentionCache.swap_to_disk is new" in str(error.value)
    assert "PagedAttentionCache.free_blocks is gone" in str(error.value)


def test_smollm2_at_the_full_budget_gives_transformers_tokens(smollm2):
    # The real model: SmolLM2-135M-Instruct, chat prompts of several lengths, one
    # of them prefilled in chunks, mixed with the others' decoding.
    from conftest import chat_ids
    tok, model = smollm2
    model.set_attn_implementation("sdpa")  # the session's model may have another
    prompts = [chat_ids(tok, text)[0].tolist() for text in (
        "Name a color.", "Write one sentence about the sea and the wind. " * 3,
        "List three fruits, then three vegetables, then three animals. " * 6)]
    generation = GenerationConfig(max_new_tokens=16, do_sample=False, eos_token_id=-1)
    config = ContinuousBatchingConfig(page_size=16, num_blocks=256, max_batch_tokens=96,
                                      max_requests_per_batch=8, auto_switch_to_flash=False,
                                      allow_block_sharing=False, use_async_batching=False,
                                      use_cuda_graph=False)
    want = model.generate_batch(prompts, generation_config=generation,
                                continuous_batching_config=config)
    served = headpage.serving.enable(twin(model), num_pages=4096)
    got = served.generate_batch(prompts, generation_config=generation,
                                continuous_batching_config=config)
    assert tokens(got) == tokens(want)


def test_forked_requests_share_the_compressed_prompt_and_free_it(device):
    # num_return_sequences=2: transformers prefills all but the last prompt token,
    # then forks. headpage compresses the parent first, so the child shares the
    # compressed pages: forking takes no page, and both sample the same tokens.
    model = headpage.serving.enable(small_model(device), num_pages=2048, policy="ada-snapkv",
                                    budget="50%", check_invariants=True)
    generation = GenerationConfig(max_new_tokens=10, eos_token_id=-1, num_return_sequences=2,
                                  do_sample=True, top_k=1)
    manager = model.init_continuous_batching(generation_config=generation,
                                             continuous_batching_config=engine_config())
    manager.start()
    forks = []
    try:
        while manager.serving_cache is None:
            time.sleep(0.01)
        cache = manager.serving_cache
        fork = cache.prepare_fork_request

        def watched_fork(state, children, copies):
            before = cache.manager.stats().pages_in_use
            done = fork(state, children, copies)
            forks.append((state.request_id in cache.compressions, before,
                          cache.manager.stats().pages_in_use))
            return done

        cache.prepare_fork_request = watched_fork
        ids = [manager.add_request(p) for p in PROMPTS[1:]]  # 67 and 118 tokens
        results = [manager.get_result(timeout=300) for _ in range(2 * len(ids))]
    finally:
        manager.stop(block=True)
    assert len(forks) == 2
    for compressed_first, before, after in forks:
        assert compressed_first and after == before
    by_prompt = {}
    for r in results:
        by_prompt.setdefault(tuple(r.prompt_ids), []).append(list(r.generated_tokens))
    assert all(len(g) == 2 and g[0] == g[1] and len(g[0]) == 10 for g in by_prompt.values())
    compressed = [c for c in cache.compressions.values() if isinstance(c, headpage.CompressResult)]
    assert len(compressed) == 2 and all(c.pages_freed > 0 for c in compressed)
    assert cache.page_pool.free_pages == cache.page_pool.num_pages
    cache.manager.check_invariants()


def test_each_request_may_name_its_policy_and_a_bad_one_is_refused_alone(device):
    # The manager serves at the full budget; one request asks for ada-snapkv at
    # 50%, two ask for what does not exist and are refused when added, with the
    # reason, while the others are served.
    manager = started(headpage.serving.enable(small_model(device), num_pages=2048,
                                              check_invariants=True), max_new_tokens=6)
    try:
        with pytest.raises(headpage.serving.RequestRefused, match="nope"):
            manager.add_request(PROMPTS[2], policy="nope", budget="50%")
        with pytest.raises(headpage.serving.RequestRefused):
            manager.add_request(PROMPTS[2], policy="ada-snapkv", budget="150%")
        with pytest.raises(headpage.serving.RequestRefused, match="needs a budget"):
            manager.add_request(PROMPTS[2], policy="ada-snapkv")
        squeezed = manager.add_request(PROMPTS[2], policy="ada-snapkv", budget="50%")
        whole = manager.add_request(PROMPTS[1])
        # CriticalKV weighs values by the model's o_proj weights, which the cache
        # hands over; the GPU executor does not run it, so on a GPU it is refused
        # when added. (Its window is kvpress's 64 tokens: the budget must cover it.)
        critical = None
        if device.type == "cpu":
            critical = manager.add_request(PROMPTS[2], policy="critical-ada-snapkv", budget="90%")
        else:
            with pytest.raises(headpage.serving.RequestRefused, match="does not run on the GPU"):
                manager.add_request(PROMPTS[2], policy="critical-ada-snapkv", budget="90%")
        served = 3 if critical else 2
        results = {r.request_id: r for r in (manager.get_result(timeout=300)
                                             for _ in range(served))}
    finally:
        manager.stop(block=True)
    assert len(results) == served
    assert all(len(r.generated_tokens) == 6 and r.error is None for r in results.values())
    cache = manager.serving_cache
    assert isinstance(cache.compressions[squeezed], headpage.CompressResult)
    assert whole not in cache.compressions
    if critical:
        assert isinstance(cache.compressions[critical], headpage.CompressResult)
        assert cache.compressions[critical].tokens_after < cache.compressions[critical].tokens_before
    assert cache.page_pool.free_pages == cache.page_pool.num_pages


def test_a_request_that_alone_cannot_grow_fails_and_the_next_is_served(device):
    # 24 pages of 16 tokens over 4 streams hold 96 tokens a stream. With ada-snapkv
    # at 100% every prompt is kept whole and nothing can be evicted below it, so a
    # 80-token prompt asking for 40 new tokens (120) cannot finish: it fails with
    # the reason, and the request behind it is served.
    model = headpage.serving.enable(small_model(device), num_pages=24, policy="ada-snapkv",
                                    budget="100%", floor_tokens=96, check_invariants=True)
    manager = started(model, max_new_tokens=40)
    try:
        big = manager.add_request(list(range(1, 81)))
        small = manager.add_request(PROMPTS[0], max_new_tokens=8)
        results = {r.request_id: r for r in (manager.get_result(timeout=300) for _ in range(2))}
        failed, served = results[big], results[small]
    finally:
        manager.stop(block=True)
    assert failed.error and "more pages than the pool" in failed.error
    assert served.error is None and len(served.generated_tokens) == 8
    assert manager.pool_pressure.failures == 1
    cache = manager.serving_cache
    assert cache.page_pool.free_pages == cache.page_pool.num_pages


def test_engine_settings_the_cache_cannot_serve_are_refused():
    served = headpage.serving.enable(small_model(), num_pages=64)
    for setting in (dict(use_cuda_graph=True), dict(use_async_batching=True),
                    dict(cpu_offload_space=1.0), dict(decode_compile_config=CompileConfig())):
        name = next(iter(setting))
        with pytest.raises(ValueError, match=name):
            served.init_continuous_batching(
                continuous_batching_config=ContinuousBatchingConfig(**setting))


def test_a_model_compiled_around_headpages_attention_gives_the_same_tokens(device):
    # transformers' compile level 1 compiles the forward (varlen path, dynamic
    # shapes) with headpage's attention as a graph break; on CUDA the decode steps
    # are captured over the compiled forward.
    prompts = PROMPTS + [list(range(5, 90))]
    runs = {}
    for level in (0, 1):
        torch.compiler.reset()
        counters.clear()
        model = headpage.serving.enable(small_model(device), num_pages=2048,
                                        policy="ada-snapkv", budget="50%")
        config = engine_config()
        config.default_compile_level = level
        manager, results = run_manager(model, prompts, 10, config, timeout=600)
        runs[level] = {rid: list(r.generated_tokens) for rid, r in results.items()}
        assert manager.serving_cache.totals["compressed"] == 3
        # What dynamo compiled: nothing without a compile level.
        assert (counters["stats"]["unique_graphs"] > 0) == bool(level)
    assert runs[1] == runs[0]


@pytest.mark.skipif(_NO_CUDA, reason="needs a CUDA build of headpage and a CUDA device")
@pytest.mark.parametrize("policy, budget", [("full", None), ("ada-snapkv", "50%")])
def test_decode_steps_as_cuda_graphs_give_the_eager_tokens(policy, budget):
    # Seven requests that arrive together and finish at different lengths: the
    # decode batch changes size (padded graphs of 8 rows) and members (the tables
    # reset in place), and graphs are replayed across both; the graphs again with
    # decode attention's balanced division, and with a fixed split count.
    prompts = PROMPTS + [list(range(5, 40)), [3] * 17, list(range(9, 90)), [4, 2]]
    lengths = [6, 20, 9, 30, 14, 25, 11]
    runs = {}
    for graphs, division, splits in ((False, "even", None), (True, "even", None),
                                     (True, "balanced", None), (True, "even", 3)):
        model = headpage.serving.enable(small_model("cuda"), num_pages=2048, policy=policy,
                                        budget=budget, check_invariants=True, cuda_graphs=graphs,
                                        decode_division=division, decode_splits=splits)
        manager = started(model)
        try:
            ids = [manager.add_request(p, max_new_tokens=n) for p, n in zip(prompts, lengths)]
            results = [manager.get_result(timeout=300) for _ in ids]
        finally:
            manager.stop(block=True)
        by_id = {r.request_id: list(r.generated_tokens) for r in results}
        runs[graphs, division, splits] = [by_id[i] for i in ids]
        if splits is not None:  # every graph's decode attention took the fixed count
            kept = manager.serving_cache.decode_buffers._workspaces
            assert kept and {key[1] for key in kept} == {splits}
        assert [len(t) for t in runs[graphs, division, splits]] == lengths
        if graphs:
            assert manager.decode_graphs.captures >= 1
            assert manager.decode_graphs.replays >= 20
        else:
            assert manager.decode_graphs is None
    eager = runs[False, "even", None]
    assert runs[True, "even", None] == eager
    assert runs[True, "balanced", None] == eager
    assert runs[True, "even", 3] == eager


def test_requests_are_compressed_again_every_n_generated_tokens(device, monkeypatch):
    # A window of 4 queries, compressed to a quarter of what each request has seen
    # after every 16 generated tokens: 40 new tokens give two compressions a request.
    policy = headpage.policy_by_name("ada-snapkv")
    policy.window = 4
    checked = []
    compress = headpage.serving.ServingCache._compress_during_decode

    def checked_compress(cache):
        compress(cache)
        size = cache.geometry.page_size
        for r in cache._step:
            if r.request_id not in cache._decoded:
                continue
            generated = r.past + 1 - cache._compress_at[r.request_id]
            if not r.is_decode or generated < 16 or generated % 16:
                continue
            lengths = [[int(n) for n in row] for row in cache.manager.stream_lengths(r.seq)]
            streams = sum(len(row) for row in lengths)
            capacity = headpage.budget_capacity("25%", r.past + 1)
            held = [[len(cache.manager.stream_pages(r.seq, layer, head))
                     for head in range(len(row))] for layer, row in enumerate(lengths)]
            checked.append((generated, sum(map(sum, lengths)) <= (capacity + 1) * streams,
                            held == [[-(-n // size) for n in row] for row in lengths]))

    monkeypatch.setattr(headpage.serving.ServingCache, "_compress_during_decode",
                        checked_compress)
    model = headpage.serving.enable(small_model(device), num_pages=2048, policy=policy,
                                    budget="25%", check_invariants=True, compress_every=16)
    manager, results = run_manager(model, PROMPTS, 40)
    assert all(len(r.generated_tokens) == 40 for r in results.values())
    cache = manager.serving_cache
    assert sorted(checked) == [(16, True, True)] * 3 + [(32, True, True)] * 3
    stats = manager.stats()
    assert stats["decode_compressions"] == 6 and stats["decode_pages_freed"] > 0
    assert cache.page_pool.free_pages == cache.page_pool.num_pages
    with pytest.raises(ValueError, match="window"):
        headpage.serving.enable(small_model(), num_pages=64, policy="ada-snapkv", budget="20%",
                                compress_every=8)
    with pytest.raises(ValueError, match="has none"):
        headpage.serving.enable(small_model(), num_pages=64, policy="h2o", budget="50%",
                                compress_every=64)
    # A request's own policy must score with a window the ring holds (enable()'s, 4).
    manager = started(headpage.serving.enable(small_model(device), num_pages=2048,
                                              policy=policy, budget="25%", compress_every=16),
                      max_new_tokens=4)
    try:
        with pytest.raises(headpage.serving.RequestRefused, match="window of 32"):
            manager.add_request(PROMPTS[2], policy="ada-snapkv", budget="25%")
    finally:
        manager.stop(block=True)


def test_decode_windows_return_each_requests_last_queries_in_order():
    from headpage._decode_windows import DecodeWindows
    from headpage._model import model_shape
    from headpage._serving_step import _StepRow

    shape = model_shape(small_model(), "test")
    windows = DecodeWindows(shape, 4, torch.device("cpu"), torch.float32, slots=2)
    # Three requests (more than the two slots: the ring grows and keeps what it
    # held), one decoding without a window; each query is filled with its
    # position plus 1000 times its request.
    prompt = {"a": 10, "b": 3, "c": 7, "none": 5}
    for step in range(9):
        rows = [_StepRow(rid, 0, length + step, 1, i, None, None)
                for i, (rid, length) in enumerate(prompt.items())]
        index = windows.index(rows, lambda r: r.request_id != "none")
        for layer in range(shape.num_layers):
            q = torch.stack([torch.full((shape.num_q_heads, shape.head_dim),
                                        float(r.past + 1000 * i + 100 * layer))
                             for i, r in enumerate(rows)])
            windows.record(layer, index, q)
    assert windows.generation == 2  # grown once
    for i, (rid, length) in enumerate(list(prompt.items())[:3]):
        last = length + 8
        queries, positions = windows.window_of(rid, last)
        assert positions.tolist() == list(range(last - 3, last + 1))
        for layer, q in enumerate(queries):
            assert q.shape == (shape.num_q_heads, 4, shape.head_dim)
            want = torch.tensor([p + 1000 * i + 100 * layer for p in positions.tolist()],
                                dtype=torch.float32)
            assert torch.equal(q[:, :, 0], want.expand(shape.num_q_heads, 4))
    windows.release("a")
    assert windows.slot("d") == 0  # a's slot, free again
    # A row without a slot writes the trash row of the ring as it is after the
    # slots of the same step made it grow, never a new request's row.
    small = DecodeWindows(shape, 4, torch.device("cpu"), torch.float32, slots=1)
    rows = [_StepRow(rid, 0, 8, 1, i, None, None) for i, rid in enumerate(["a", "none", "b"])]
    index = small.index(rows, lambda r: r.request_id != "none").tolist()
    assert index == [0, 8, 4] and small.ring.shape[1] == 9


@pytest.mark.skipif(_NO_CUDA, reason="needs a CUDA build of headpage and a CUDA device")
def test_a_forward_that_cannot_be_captured_runs_eagerly_with_the_same_tokens(monkeypatch):
    from transformers.generation.continuous_batching.model_runner import ModelRunner

    generation = GenerationConfig(max_new_tokens=12, do_sample=False, eos_token_id=-1)
    eager = headpage.serving.enable(small_model("cuda"), num_pages=2048, cuda_graphs=False)
    want = eager.generate_batch(PROMPTS, generation_config=generation,
                                continuous_batching_config=engine_config())
    forward = ModelRunner._forward_process_and_sample

    def uncapturable(self, *args):
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("a host synchronization inside the forward")
        return forward(self, *args)

    monkeypatch.setattr(ModelRunner, "_forward_process_and_sample", uncapturable)
    model = headpage.serving.enable(small_model("cuda"), num_pages=2048)
    manager = started(model, max_new_tokens=12)
    try:
        ids = [manager.add_request(p) for p in PROMPTS]
        got = {r.request_id: list(r.generated_tokens)
               for r in (manager.get_result(timeout=300) for _ in ids)}
    finally:
        manager.stop(block=True)
    assert "host synchronization" in manager.decode_graphs.failed
    assert manager.decode_graphs.captures == 0 and manager.decode_graphs.replays == 0
    assert got == tokens(want)
