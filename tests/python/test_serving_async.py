# SPDX-License-Identifier: Apache-2.0
"""headpage.serving under transformers' asynchronous batching: the host prepares
and launches step N+1 while the GPU computes step N (two IO pairs, the decode
graphs captured once per pair). Greedy tokens must be those of one step at a
time, with and without compression, and the pool's bookkeeping must hold after
every step. The GPU cases run on a CUDA device (scripts/gpu-check serving); the
refusals run everywhere."""
import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig
from transformers.generation.continuous_batching.input_outputs import ContinuousBatchingAsyncIOs

import headpage
import headpage.serving
from test_serving import PROMPTS, _NO_CUDA, engine_config, small_model, twin

needs_cuda = pytest.mark.skipif(_NO_CUDA, reason="needs a CUDA build of headpage and a CUDA device")

# Seven requests that arrive together and finish at different lengths: the decode
# batch changes size and members while both IO pairs' graphs are replayed.
SEVEN = PROMPTS + [list(range(5, 40)), [3] * 17, list(range(9, 90)), [4, 2]]
# One request ends at its first token, one at a multiple of compress_every.
LENGTHS = [6, 20, 9, 32, 14, 25, 1]


def config(use_async_batching=None, **settings):
    """The tests' engine configuration with use_async_batching as given (None:
    unset, so that headpage.serving decides)."""
    settings = {**{k: v for k, v in engine_config().__dict__.items()
                   if k != "use_async_batching"}, **settings}
    if use_async_batching is not None:
        settings["use_async_batching"] = use_async_batching
    return ContinuousBatchingConfig(**settings)


def serve(model, prompts, lengths, use_async_batching, engine=None, **generation):
    """(manager, generated tokens in request order) of one greedy run; asserts
    that it ran asynchronously exactly when asked."""
    manager = model.init_continuous_batching(
        generation_config=GenerationConfig(**{"do_sample": False, "eos_token_id": -1,
                                              **generation}),
        continuous_batching_config=engine or config(use_async_batching))
    manager.start()
    try:
        ids = [manager.add_request(p, max_new_tokens=n) for p, n in zip(prompts, lengths)]
        results = {r.request_id: r for r in (manager.get_result(timeout=300) for _ in ids)}
        # transformers drops its batch processor when it stops.
        io = manager.batch_processor.inputs_and_outputs
        assert isinstance(io, ContinuousBatchingAsyncIOs) == bool(use_async_batching)
    finally:
        manager.stop(block=True)
    assert all(results[i].error is None for i in ids), [results[i].error for i in ids]
    return manager, [list(results[i].generated_tokens) for i in ids]


@pytest.fixture
def gpu_behind(monkeypatch):
    """Makes the GPU lag the host: each step first spins the compute stream for
    about a millisecond, so that the host prepares step N+1 while step N (and the
    copies before it) still wait. A buffer rewritten before its copy ran would
    show as wrong tokens."""
    prepare = headpage.serving.ServingCache._prepare_step

    def late_prepare(cache, device, graph_rows=None):
        torch.cuda._sleep(2_000_000)
        return prepare(cache, device, graph_rows)

    monkeypatch.setattr(headpage.serving.ServingCache, "_prepare_step", late_prepare)


def ada_every_16():
    policy = headpage.policy_by_name("ada-snapkv")
    policy.window = 4
    return dict(policy=policy, budget="25%", compress_every=16)


@needs_cuda
@pytest.mark.parametrize("options", [
    dict(policy="full"),
    dict(policy="ada-snapkv", budget="50%"),
    ada_every_16(),
    dict(policy="full", kv_dtype="fp8"),
], ids=["full", "ada-snapkv-50%", "compress-every-16", "full-fp8"])
def test_asynchronous_batching_gives_the_tokens_of_one_step_at_a_time(options, gpu_behind):
    runs, stats = {}, {}
    for overlap in (False, True):
        dtype = torch.bfloat16 if options.get("kv_dtype") == "fp8" else torch.float32
        model = headpage.serving.enable(small_model("cuda").to(dtype), num_pages=2048,
                                        check_invariants=True, **options)
        manager, runs[overlap] = serve(model, SEVEN, LENGTHS, overlap)
        assert [len(t) for t in runs[overlap]] == LENGTHS
        graphs = manager.decode_graphs
        # One graph a padded size and IO pair: both pairs replay.
        assert graphs.replays >= 20 and graphs.captures >= (2 if overlap else 1)
        if overlap:
            assert {key[0] for key in graphs._graphs} == {0, 1}
        s = manager.stats()
        stats[overlap] = (s["compressed"], s["tokens_after"], s["decode_compressions"])
        cache = manager.serving_cache
        assert cache.page_pool.free_pages == cache.page_pool.num_pages
    assert runs[True] == runs[False]
    assert stats[True] == stats[False]
    # So that a carried-over token gone stale would show: most requests' tokens vary.
    assert sum(len(set(t)) > 1 for t in runs[False]) >= 3


@needs_cuda
def test_asynchronous_batching_stops_at_the_end_of_sequence_token_as_one_step_at_a_time(
        gpu_behind):
    # A token the 30-token request generates part way is the end of sequence:
    # requests that meet it stop there, one step after the host scheduled them
    # again, and the step in flight changes nothing.
    model = small_model("cuda")
    _, free_running = serve(headpage.serving.enable(twin(model), num_pages=2048), SEVEN,
                            LENGTHS, False)
    eos = free_running[3][12]
    runs = {}
    for overlap in (False, True):
        served = headpage.serving.enable(twin(model), num_pages=2048, check_invariants=True)
        _, runs[overlap] = serve(served, SEVEN, LENGTHS, overlap, eos_token_id=eos)
    assert runs[True] == runs[False]
    assert runs[False][3][-1] == eos and len(runs[False][3]) <= 13


@needs_cuda
def test_asynchronous_batching_with_prefix_caching_gives_the_tokens_of_one_step_at_a_time():
    # Requests sharing a 64-token system prompt start on its cached pages; under
    # ada-snapkv each keeps that prefix whole and compresses its own tokens.
    from test_serving_prefix import PROMPTS as SHARING

    runs, hits = {}, {}
    for overlap in (False, True):
        model = headpage.serving.enable(small_model("cuda"), num_pages=1024, policy="ada-snapkv",
                                        budget="50%", check_invariants=True)
        sharing = config(overlap, num_blocks=128, allow_block_sharing=True)
        manager, runs[overlap] = serve(model, SHARING, [10] * len(SHARING), overlap,
                                       engine=sharing)
        hits[overlap] = manager.stats()["prefix_hits"]
    assert runs[True] == runs[False]
    assert hits[True] >= 2 and hits[False] >= 2


@needs_cuda
def test_a_finishing_requests_dropped_token_leaves_the_cached_prefix_as_it_was(monkeypatch):
    # A request's last step is scheduled once more (its token dropped): that row
    # reserves nothing, and decode_attention, which writes a step's tokens in the
    # slot of each stream's last token, must not write it over the request's last
    # token. Here that token ends a 64-token prompt, four whole blocks that the
    # prefix cache holds; requests served after it start on those blocks.
    finishing_rows = []
    step_row = headpage.serving.ServingCache.extend_read_and_write_indices

    def record(cache, request_id, *args):
        if request_id in cache.finishing:
            finishing_rows.append(request_id)
        return step_row(cache, request_id, *args)

    monkeypatch.setattr(headpage.serving.ServingCache, "extend_read_and_write_indices", record)
    first = list(range(7, 71))
    later = [first + [5, 9, 2], first + list(range(40, 52))]
    runs = {}
    for overlap in (False, True):
        model = headpage.serving.enable(small_model("cuda"), num_pages=1024,
                                        check_invariants=True)
        manager = model.init_continuous_batching(
            generation_config=GenerationConfig(do_sample=False, eos_token_id=-1),
            continuous_batching_config=config(overlap, num_blocks=128, allow_block_sharing=True))
        manager.start()
        try:
            for n in (1, 2):  # requests that end one and two tokens after their prompt
                manager.add_request(first, max_new_tokens=n)
                assert manager.get_result(timeout=300).error is None
            ids = [manager.add_request(p, max_new_tokens=8) for p in later]
            results = {r.request_id: r for r in (manager.get_result(timeout=300) for _ in ids)}
        finally:
            manager.stop(block=True)
        runs[overlap] = [list(results[i].generated_tokens) for i in ids]
        assert manager.stats()["prefix_hits"] >= 2
    assert finishing_rows  # the overlapped run scheduled a finishing row
    assert runs[True] == runs[False]


@needs_cuda
def test_asynchronous_batching_under_pool_pressure_serves_every_request():
    # test_serving's pool pressure: three 100-token prompts compressed to half,
    # then 40 new tokens each, in a pool that holds them only after the pool-wide
    # budget evicts. Step N+1 is scheduled before step N's requests are updated,
    # so the budget may act at other moments than one step at a time: every
    # request still gets its tokens, and the pool's bookkeeping holds at each step.
    prompts = [list(range(1 + i, 101 + i)) for i in range(3)]
    model = headpage.serving.enable(small_model("cuda"), num_pages=60, policy="ada-snapkv",
                                    budget="50%", floor_tokens=8, protect_recent=4,
                                    check_invariants=True)
    manager, got = serve(model, prompts, [40] * 3, True)
    pressure = manager.pool_pressure
    assert [len(t) for t in got] == [40] * 3
    assert pressure.budget_evictions > 0
    assert pressure.preemptions == 0 and pressure.failures == 0
    cache = manager.serving_cache
    assert cache.page_pool.free_pages == cache.page_pool.num_pages


@needs_cuda
def test_asynchronous_batching_with_preemption_gives_transformers_tokens():
    # Without a policy, 80 pages cannot hold three 40-token prompts growing by 100
    # tokens: requests are preempted (their pages freed while step N may still
    # read them, which stream order keeps safe) and computed again.
    prompts = [list(range(1 + i, 41 + i)) for i in range(3)]
    model = small_model("cuda")
    want = model.generate_batch(
        prompts, generation_config=GenerationConfig(max_new_tokens=100, do_sample=False,
                                                    eos_token_id=-1),
        continuous_batching_config=engine_config())
    served = headpage.serving.enable(twin(model), num_pages=80, check_invariants=True)
    manager, got = serve(served, prompts, [100] * 3, True)
    assert manager.pool_pressure.preemptions > 0
    want_by_prompt = {tuple(o.prompt_ids): list(o.generated_tokens) for o in want.values()}
    assert got == [want_by_prompt[tuple(p)] for p in prompts]


@needs_cuda
def test_asynchronous_batching_is_on_where_headpages_graphs_run_unless_asked_otherwise():
    def decided(cuda_graphs, asked=None, **generation):
        model = headpage.serving.enable(small_model("cuda"), num_pages=64,
                                        cuda_graphs=cuda_graphs)
        manager = model.init_continuous_batching(
            generation_config=GenerationConfig(**generation),
            continuous_batching_config=config(asked))
        return manager.continuous_batching_config.use_async_batching

    assert decided(True) is True
    assert decided(False) is False
    assert decided(True, asked=False) is False
    assert decided(False, asked=True) is True
    # Forks: step N's fork would come after step N+1 reserved the parent's token.
    assert decided(True, num_return_sequences=2, do_sample=True) is False
    with pytest.raises(ValueError, match="num_return_sequences"):
        decided(True, asked=True, num_return_sequences=2, do_sample=True)


def test_asynchronous_batching_off_a_cuda_device_is_refused_and_off_by_default():
    model = headpage.serving.enable(small_model(), num_pages=64)
    with pytest.raises(ValueError, match="use_async_batching.*CUDA device"):
        model.init_continuous_batching(continuous_batching_config=config(True))
    # Refused before the manager switched the model to headpage's attention.
    assert model.config._attn_implementation == "sdpa"
    manager = model.init_continuous_batching(continuous_batching_config=config())
    assert manager.continuous_batching_config.use_async_batching is False
