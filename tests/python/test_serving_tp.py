# SPDX-License-Identifier: Apache-2.0
"""headpage.serving under transformers' tensor parallelism, on the CPU: two real
processes joined by gloo, each holding half of every layer's KV heads
(from_pretrained(tp_plan="auto")) and its own headpage pool, serve a seeded
random Llama as one process holding every head does: the same greedy tokens at
the full budget (forks included), and under ada-snapkv the same tokens and, on
each rank, the kept counts of one process for its heads. With a pool so small
that the pool budget and preemption step in, the two ranks take every decision
together (same tokens, same counts) and their pools' invariants hold at every
step."""
import json
import os
import socket
import traceback

import pytest
import torch
import torch.multiprocessing as mp

pytest.importorskip("transformers")
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.distributed import DistributedConfig  # noqa: E402
from transformers.generation.configuration_utils import ContinuousBatchingConfig  # noqa: E402

SIZE = 2
# (policy, budget, pages per rank, num_return_sequences, requests, new tokens,
# compress_every). Under "pressure" the ranks' pools run short at different steps (their
# heads keep different numbers of tokens): without the agreements their schedulers part
# ways in a few steps. "decode" compresses every request again after 16 and 32 of its
# tokens, scored by its last 8 decode queries.
RUNS = {"full": ("full", None, 2048, 2, 4, 12, 0), "ada": ("ada-snapkv", "30%", 2048, 1, 4, 12, 0),
        "decode": ("ada-snapkv", "30%", 2048, 1, 4, 40, 16),
        "pressure": ("ada-snapkv", "30%", 100, 1, 10, 40, 0)}


def prompts(n):
    return [[1 + (i * 7 + j * 3) % 500 for j in range(60 + 23 * (i % 5))] for i in range(n)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A Llama of 2 layers, 8 query and 4 key-value heads, seeded random weights."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
                         max_position_embeddings=2048, bos_token_id=0, pad_token_id=0,
                         eos_token_id=None)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


def serve(model, run, pages):
    """Serves the run's prompts through headpage.serving; returns the tokens, each request's
    kept counts (or why it was skipped) and the pool's counters."""
    import headpage
    import headpage.serving as serving
    policy, budget, _, sequences, requests, new_tokens, every = RUNS[run]
    config = headpage.policy_by_name(policy)
    if every:
        config.window = 8  # decode-time compression scores with the last 8 decode queries
    serving.enable(model, num_pages=pages, page_size=8, policy=config, budget=budget,
                   floor_tokens=8, protect_recent=4, check_invariants=True, compress_every=every)
    # Forks need sampling; top_k=1 samples the argmax, as greedy search does.
    generation = GenerationConfig(max_new_tokens=new_tokens, do_sample=True, top_k=1,
                                  eos_token_id=None, pad_token_id=0,
                                  num_return_sequences=sequences)
    out = model.generate_batch(prompts(requests), generation_config=generation,
                               continuous_batching_config=ContinuousBatchingConfig(
                                   max_batch_tokens=64, cpu_group_timeout=60),
                               persistent_manager=True)
    manager = model._cached_continuous_batching_manager
    kept = {rid: (r.kept.tolist() if hasattr(r, "kept") else "skipped")
            for rid, r in manager.serving_cache.compressions.items()}
    stats = manager.stats()
    model.destroy_cached_continuous_batching_manager()
    return dict(tokens={rid: out[rid].generated_tokens for rid in sorted(out)}, kept=kept,
                stats={k: stats[k] for k in ("compressed", "decode_compressions",
                                             "pool_budget_evictions", "preemptions", "starved",
                                             "failures")})


def own_policies():
    """(request id, policy, budget) of the "own" run: enable() gives ada-snapkv at
    30%; three requests name their own, one a config with options of its own."""
    import headpage
    uniform = headpage.policy_by_name("uniform-snapkv", window=8)
    tuned = headpage.policy_by_name("ada-snapkv", window=8, alpha=0.5)
    return [("own_default", None, None), ("own_uniform", uniform, 24),
            ("own_tuned", tuned, "50%"), ("own_full", "full", None), ("own_budget", None, 20)]


def serve_own(model, pages):
    """Serves four requests through a manager, each with the policy and budget it
    names (own_policies); every rank adds them, as transformers' own generate_batch
    does (only the driver's reach the engine). Under tensor parallelism a renamed
    policy is refused on every rank, and the others are served. Returns what
    serve() returns."""
    import headpage
    import headpage.serving as serving
    default = headpage.policy_by_name("ada-snapkv", window=8)
    # A name the registry does not know: a request naming only its budget keeps
    # this config, which every rank was given.
    default.name = "my-ada-snapkv"
    serving.enable(model, num_pages=pages, page_size=8, policy=default, budget="30%",
                   floor_tokens=8, protect_recent=4, check_invariants=True)
    manager = model.init_continuous_batching(
        generation_config=GenerationConfig(max_new_tokens=10, do_sample=False, eos_token_id=None,
                                           pad_token_id=0),
        continuous_batching_config=ContinuousBatchingConfig(max_batch_tokens=64,
                                                            cpu_group_timeout=60))
    manager.start()
    try:
        if manager.tensor_parallel is not None:
            renamed = headpage.policy_by_name("uniform-snapkv")
            renamed.name = "my-snapkv"
            with pytest.raises(serving.RequestRefused, match="registry policy"):
                manager.add_request(prompts(1)[0], request_id="own_renamed", policy=renamed,
                                    budget="50%")
        requests = own_policies()
        for prompt, (rid, policy, budget) in zip(prompts(len(requests)), requests):
            options = {k: v for k, v in dict(policy=policy, budget=budget).items()
                       if v is not None}
            manager.add_request(prompt, request_id=rid, **options)
        out = {r.request_id: r for r in (manager.get_result(timeout=120)
                                         for _ in range(len(requests)))}
    finally:
        manager.stop(block=True)
    kept = {rid: (r.kept.tolist() if hasattr(r, "kept") else "skipped")
            for rid, r in manager.serving_cache.compressions.items()}
    return dict(tokens={rid: list(out[rid].generated_tokens) for rid in sorted(out)}, kept=kept,
                errors=[r.error for r in out.values() if r.error])


def rank_main(rank, port, model_dir, results, runs=tuple(RUNS) + ("own",)):
    try:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(SIZE),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                          NCCL_NVLS_ENABLE="0")  # NVLink multicast stays off
        model = LlamaForCausalLM.from_pretrained(
            model_dir, distributed_config=DistributedConfig(tp_plan="auto"), dtype=torch.float32)
        assert model.model.layers[0].self_attn.k_proj.weight.to_local().shape[0] == 2 * 16
        results[rank] = json.dumps({run: serve_own(model, 2048) if run == "own" else
                                    serve(model, run, RUNS[run][2]) for run in runs})
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    except BaseException:  # noqa: BLE001 (reported to the test)
        results[rank] = "failed: " + traceback.format_exc()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_serve_as_one_process(model_dir):
    results = mp.Manager().dict()
    mp.start_processes(rank_main, args=(free_port(), model_dir, results), nprocs=SIZE,
                       join=True, start_method="spawn")
    ranks = []
    for rank in range(SIZE):
        assert not results[rank].startswith("failed"), results[rank]
        ranks.append(json.loads(results[rank]))
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    heads = 4 // SIZE
    for run in ("full", "ada", "decode"):
        # One process over every head, with the pages of both ranks' pools.
        single = serve(model, run, RUNS[run][2] * SIZE)
        for rank, got in enumerate(ranks):
            assert got[run]["tokens"] == single["tokens"], (run, rank)
            assert got[run]["kept"].keys() == single["kept"].keys()
            for rid, kept in single["kept"].items():
                mine = got[run]["kept"][rid]
                want = kept if kept == "skipped" else [layer[rank * heads:(rank + 1) * heads]
                                                       for layer in kept]
                assert mine == want, (run, rid, rank)
    # Requests with their own policies: rank 0's broadcast carried them, so each
    # rank keeps one process's counts for its heads.
    one = serve_own(model, 2048 * SIZE)
    assert not one["errors"] and set(one["kept"]) == {"own_default", "own_uniform",
                                                      "own_tuned", "own_budget"}
    assert one["kept"]["own_uniform"][0] == [24] * 4  # uniform: 24 tokens every head
    for rank, got in enumerate(ranks):
        assert got["own"]["tokens"] == one["tokens"] and not got["own"]["errors"], rank
        assert got["own"]["kept"].keys() == one["kept"].keys()
        for rid, kept in one["kept"].items():
            want = [layer[rank * heads:(rank + 1) * heads] for layer in kept]
            assert got["own"]["kept"][rid] == want, (rid, rank)
    assert len(ranks[0]["full"]["tokens"]) == 2 * 4  # forked children
    assert single["stats"]["compressed"] >= 2
    assert single["stats"]["decode_compressions"] >= 4  # the "decode" run, the last one
    for rank in range(SIZE):
        assert ranks[rank]["decode"]["stats"] == single["stats"]
    # Under pressure the ranks decide together, whatever one process would do.
    for part in ("tokens", "stats"):  # kept counts are each rank's own heads'
        assert ranks[0]["pressure"][part] == ranks[1]["pressure"][part], part
    assert ranks[0]["pressure"]["kept"].keys() == ranks[1]["pressure"]["kept"].keys()
    stats = ranks[0]["pressure"]["stats"]
    assert stats["pool_budget_evictions"] > 0, stats  # the group budget ran
    assert stats["failures"] == 0 and len(ranks[0]["pressure"]["tokens"]) == 10


@pytest.mark.skipif(torch.cuda.device_count() < SIZE, reason="needs two GPUs of one host")
def test_two_gpus_serve_as_one_gpu(model_dir):
    """The same model over NCCL on two GPUs (transformers places each rank on its own
    device, and each rank's pool and eviction engine are on it): one GPU's tokens at
    the full budget, forks included, and under ada-snapkv one GPU's tokens with each
    rank keeping one GPU's counts for its heads (the CUDA executors agree through the
    group)."""
    results = mp.Manager().dict()
    mp.start_processes(rank_main, args=(free_port(), model_dir, results, ("full", "ada")),
                       nprocs=SIZE, join=True, start_method="spawn")
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to("cuda:0")
    heads = 4 // SIZE
    for run in ("full", "ada"):
        single = serve(model, run, RUNS[run][2] * SIZE)
        for rank in range(SIZE):
            assert not results[rank].startswith("failed"), results[rank]
            got = json.loads(results[rank])[run]
            assert got["tokens"] == single["tokens"], (run, rank)
            assert got["kept"].keys() == single["kept"].keys(), (run, rank)
            for rid, kept in single["kept"].items():
                want = kept if kept == "skipped" else [layer[rank * heads:(rank + 1) * heads]
                                                       for layer in kept]
                assert got["kept"][rid] == want, (run, rid, rank)
        if run == "ada":
            assert single["stats"]["compressed"] >= 2, single["stats"]


def test_every_registry_policy_travels_by_name_and_a_renamed_one_is_refused():
    import headpage
    from headpage._serving_tp import portable_policy
    for name in headpage.policy_names():
        config = headpage.policy_by_name(name)
        config.window = 8
        travelled, options = portable_policy(config)
        again = headpage.policy_by_name(travelled, **options)
        assert (again.options, repr(again)) == (config.options, repr(config)), name
    renamed = headpage.policy_by_name("ada-snapkv")
    renamed.name = "mine"
    with pytest.raises(ValueError, match="registry policy"):
        portable_policy(renamed)
