# SPDX-License-Identifier: Apache-2.0
"""headpage.hf.Cache with a real model on the CPU: SmolLM2-135M-Instruct (Llama
architecture, 30 layers, 9 query heads over 3 KV heads)."""
import math
import os

import pytest
import torch
from transformers import DynamicCache

import headpage
from conftest import chat_ids

hf = pytest.importorskip("headpage.hf")

PROMPTS = [
    "What is the capital of France?",
    "Write a short story about a robot who learns to paint.",
    "Explain in simple words how a hash table works.",
]
NEW_TOKENS = 64
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def generate(model, ids, cache, new_tokens=NEW_TOKENS):
    # min_new_tokens: every prompt gives the full count, end-of-turn or not.
    return model.generate(ids, past_key_values=cache, max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_full_budget_gives_transformers_tokens(smollm2, prompt):
    tok, model = smollm2
    ids = chat_ids(tok, prompt)
    want = generate(model, ids, DynamicCache(config=model.config))
    cache = hf.Cache(model, page_size=16)
    got = generate(model, ids, cache)
    assert got.shape[1] == ids.shape[1] + NEW_TOKENS
    assert got[0].tolist() == want[0].tolist()
    # Every stream holds every token: the prompt, and the generated tokens but the last.
    tokens = ids.shape[1] + NEW_TOKENS - 1
    stats = cache.stats()
    assert stats.min_stream_len == stats.max_stream_len == tokens
    assert stats.pages_in_use == 30 * 3 * math.ceil(tokens / 16)


def test_a_batch_decodes_each_rows_tokens_into_its_own_streams(smollm2):
    # Two sequences of one length (no padding): decode_attention writes each row's
    # token into its own streams' last slots, at the step's position.
    tok, model = smollm2
    rows = [chat_ids(tok, p) for p in PROMPTS[1:]]
    length = min(r.shape[1] for r in rows)
    ids = torch.cat([r[:, :length] for r in rows])
    new_tokens = 16
    want = generate(model, ids, DynamicCache(config=model.config), new_tokens)
    cache = hf.Cache(model, page_size=16)
    got = generate(model, ids, cache, new_tokens)
    assert got.tolist() == want.tolist()
    tokens = length + new_tokens - 1
    for sequence in range(2):
        streams = cache.stream_positions(sequence)
        assert len(streams) == 30 * 3
        for positions in streams:
            assert positions.tolist() == list(range(tokens))


@torch.no_grad()
def test_chunked_prefill_at_full_budget(smollm2):
    """A second multi-token step attends densely over K/V read back from the pool;
    the decode steps after it attend over the pool as after a one-chunk prompt."""
    tok, model = smollm2
    ids = chat_ids(tok, PROMPTS[1])
    half = ids.shape[1] // 2
    dynamic, cache = DynamicCache(config=model.config), hf.Cache(model)
    for chunk in (ids[:, :half], ids[:, half:]):
        want = model(chunk, past_key_values=dynamic, use_cache=True).logits
        got = model(chunk, past_key_values=cache, use_cache=True).logits
    torch.testing.assert_close(got, want)
    assert cache.get_seq_length() == ids.shape[1]
    for _ in range(4):
        token = want[:, -1:].argmax(-1)
        want = model(token, past_key_values=dynamic, use_cache=True).logits
        got = model(token, past_key_values=cache, use_cache=True).logits
        # decode_attention's float32 sums run in another order than SDPA's
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        assert got[:, -1].argmax(-1).tolist() == want[:, -1].argmax(-1).tolist()
    assert cache.get_seq_length() == ids.shape[1] + 4


@torch.no_grad()
def test_each_call_attends_through_its_own_cache(smollm2):
    """Two headpage caches and a DynamicCache stepped in turn through one model: the
    attention of each call takes its step from the cache of that call."""
    tok, model = smollm2
    ids = chat_ids(tok, PROMPTS[2])
    first, second = hf.Cache(model), hf.Cache(model)
    hf.attach(model)  # again: still one hook a module
    hooked = [m for m in model.modules() if getattr(m, "_headpage_hook", None)]
    assert len(hooked) == 30 and all(len(m._forward_pre_hooks) == 1 for m in hooked)
    caches = {"dynamic": DynamicCache(config=model.config), "first": first, "second": second}
    inputs = {name: ids for name in caches}
    for _ in range(4):  # the prompt, then three decode steps
        logits = {}
        for name, cache in caches.items():
            logits[name] = model(inputs[name], past_key_values=cache, use_cache=True).logits[:, -1]
            inputs[name] = logits[name].argmax(-1, keepdim=True)
            if isinstance(cache, hf.Cache):
                assert not cache._steps  # every layer's attention took its step
        assert torch.equal(logits["first"], logits["second"])
        torch.testing.assert_close(logits["first"], logits["dynamic"], rtol=1e-4, atol=1e-4)
    assert first.get_seq_length() == second.get_seq_length() == ids.shape[1] + 3


@pytest.fixture(scope="module")
def long_prompt(smollm2):
    tok, _ = smollm2
    with open(os.path.join(ROOT, "tools", "prompts", "needle.txt"), encoding="utf-8") as f:
        text = f.read()[:1800]
    return chat_ids(tok, text + "\n\nSummarize the text above in one sentence.")


def pages_for(lengths, page_size):
    return sum(math.ceil(int(n) / page_size) for n in lengths.flatten())


@pytest.mark.parametrize("policy", ["uniform-snapkv", "ada-snapkv", "pyramid", "dbudget",
                                    "dbudget-fro", "streamingllm"])
def test_compression_frees_the_pages_of_the_budget(smollm2, long_prompt, policy):
    tok, model = smollm2
    ids = long_prompt
    prompt = ids.shape[1]
    config = policy
    if policy == "dbudget-fro":  # at the paper's 1% this 487-token prompt keeps everything
        config = headpage.policy_by_name(policy, threshold=0.1)
    cache = hf.Cache(model, policy=config, budget="20%", page_size=16)
    model(ids, past_key_values=cache, use_cache=True)
    before = cache.stats()
    free_before = cache.pool.free_pages
    assert before.pages_in_use == 90 * math.ceil(prompt / 16)
    # A decode step sizes its split-KV count (on CUDA) by its streams' lengths.
    assert cache._decode_lengths() == (prompt + 1, prompt + 1)
    result = cache.compress()[0]
    after = cache.stats()
    kept = result.kept
    assert cache._decode_lengths() == (int(kept.min()) + 1, int(kept.max()) + 1)
    assert kept.tolist() == cache.manager.stream_lengths(cache.seqs[0]).tolist()
    # The pool got back exactly the pages the kept tokens no longer fill.
    assert after.pages_in_use == pages_for(kept, 16)
    assert result.pages_freed == before.pages_in_use - after.pages_in_use
    assert cache.pool.free_pages - free_before == result.pages_freed
    assert result.tokens_after == kept.sum()
    capacity = headpage.budget_capacity("20%", prompt)
    window = cache.policy.window
    assert (kept >= min(window, capacity)).all() and (kept <= prompt).all()
    if policy in ("uniform-snapkv", "streamingllm"):
        assert (kept == capacity).all()
    elif policy == "ada-snapkv":  # head-adaptive: a layer's heads share its budget
        # (each head's share is rounded half to even: a layer may be off by one a head)
        assert (abs(kept.sum(axis=1) - 3 * capacity) <= 3).all()
        assert len(set(kept.flatten().tolist())) > 1
    elif policy == "pyramid":  # one budget per layer, shrinking with depth
        assert (kept == kept[:, :1]).all()
        assert kept[0, 0] > kept[-1, 0]
    else:  # dbudget(-fro) sets its own budget: one cut per layer, where the norm allows
        assert (kept == kept[:, :1]).all() and result.pages_freed > 0
    cache.manager.check_invariants()

    # Decode goes on from the compressed streams, one token each.
    steps = 4
    out = model.generate(ids, past_key_values=hf.Cache(model, policy=config, budget="20%"),
                         max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    assert out.shape[1] == prompt + steps
    cache2 = hf.Cache(model, policy=config, budget="20%")
    model.generate(ids, past_key_values=cache2, max_new_tokens=steps, min_new_tokens=steps,
                   do_sample=False)
    lengths = cache2.manager.stream_lengths(cache2.seqs[0])
    assert (lengths == kept + steps - 1).all()
    assert cache2.stats().pages_in_use == pages_for(lengths, 16)
    assert cache2._decode_lengths() == (int(lengths.min()) + 1, int(lengths.max()) + 1)


def test_a_prompt_within_the_window_is_not_compressed(smollm2):
    _, model = smollm2
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])
    cache = hf.Cache(model, policy="uniform-snapkv", budget="20%")
    model(ids, past_key_values=cache, use_cache=True)
    assert isinstance(cache.compress()[0], hf.Skipped)
    assert cache.manager.stream_lengths(cache.seqs[0]).tolist() == [[7] * 3] * 30
    assert cache._decode_lengths() == (8, 8)


def test_bad_arguments(smollm2):
    tok, model = smollm2
    with pytest.raises(ValueError, match="unknown policy 'snap'"):
        hf.Cache(model, policy="snap", budget="20%")
    with pytest.raises(ValueError, match="needs a budget"):
        hf.Cache(model, policy="ada-snapkv")
    with pytest.raises(ValueError, match="150%"):
        hf.Cache(model, policy="ada-snapkv", budget="150%")
    with pytest.raises(ValueError, match="page_size"):
        hf.Cache(model, page_size=0)
    with pytest.raises(ValueError, match="num_pages"):
        hf.Cache(model, num_pages=-1)
    ids = chat_ids(tok, PROMPTS[0])
    cache = hf.Cache(model, num_pages=90 * 2)  # 32 tokens a stream
    with pytest.raises(headpage.ResourceExhausted, match="pages"):
        generate(model, ids, cache, new_tokens=4)
    # A cache made from the config leaves the model's attention alone: decoding
    # would read nothing from the pool, so it refuses.
    model.set_attn_implementation("sdpa")
    try:
        with pytest.raises(RuntimeError, match="set_attn_implementation"):
            generate(model, ids, hf.Cache(model.config), new_tokens=2)
    finally:
        model.set_attn_implementation(hf.ATTENTION)


@pytest.mark.parametrize("policy", ["ada-snapkv", "dbudget-fro", "critical-ada-snapkv",
                                    "layer-defensivekv"])
@torch.no_grad()
def test_load_prefill_matches_the_model_prefill(smollm2, long_prompt, policy):
    """record_prefill + load_prefill: the same kept streams and greedy tokens as a
    prefill through the cache, for a window policy, one that observes every query,
    and the ones that weigh values by the model's output projection."""
    tok, model = smollm2
    ids = long_prompt
    config = policy
    if policy == "dbudget-fro":  # at the paper's 1% this 487-token prompt keeps everything
        config = headpage.policy_by_name(policy, threshold=0.1)
    steps = 6
    direct = hf.Cache(model, policy=config, budget="20%")
    want = generate(model, ids, direct, new_tokens=steps)[0, ids.shape[1]:].tolist()

    prefill = hf.record_prefill(model, ids, queries=None if policy == "dbudget-fro" else 64)
    assert len(prefill.keys) == 30 and prefill.keys[0].shape == (1, 3, ids.shape[1], 64)
    loaded = hf.Cache(model, policy=config, budget="20%")
    loaded.load_prefill(prefill.keys, prefill.values, prefill.queries)
    assert loaded.get_seq_length() == ids.shape[1]
    kept = loaded.compress()[0].kept
    assert kept.tolist() == direct.compression[0].kept.tolist()
    assert (kept < ids.shape[1]).any()
    if policy == "layer-defensivekv":  # one budget for every layer: they keep differently
        assert len(set(kept.sum(axis=1).tolist())) > 1
    token = prefill.logits.argmax(-1, keepdim=True)
    got = [int(token)]
    for _ in range(steps - 1):
        token = model(token, past_key_values=loaded, use_cache=True).logits[:, -1:].argmax(-1)
        got.append(int(token))
    assert got == want
    loaded.manager.check_invariants()

    # Bad input is refused and leaves the cache empty.
    fresh = hf.Cache(model, policy=config, budget="20%")
    too_few = fresh.policy.observed_queries(ids.shape[1]) - 1
    with pytest.raises(ValueError, match="queries"):
        fresh.load_prefill(prefill.keys, prefill.values, [q[:, :, -too_few:] for q in prefill.queries])
    with pytest.raises(ValueError, match="layers of keys"):
        fresh.load_prefill(prefill.keys[:2], prefill.values, prefill.queries)
    with pytest.raises(ValueError, match="must both be"):
        fresh.load_prefill(prefill.keys, [v[:, :2] for v in prefill.values], prefill.queries)
    with pytest.raises(ValueError, match="float16"):
        fresh.load_prefill([k.half() for k in prefill.keys], prefill.values, prefill.queries)
    assert fresh.manager is None and fresh.get_seq_length() == 0
    fresh.load_prefill(prefill.keys, prefill.values, prefill.queries)
    with pytest.raises(ValueError, match="holds nothing"):
        fresh.load_prefill(prefill.keys, prefill.values, prefill.queries)


def test_value_weighted_policies_need_the_model(smollm2):
    """CriticalKV and DefensiveKV read each layer's o_proj weight: a cache built from
    the config alone cannot run them, and says so."""
    _, model = smollm2
    with pytest.raises(ValueError, match="output projection"):
        hf.Cache(model.config, policy="critical-snapkv", budget="20%")
    hf.Cache(model.config, policy="ada-snapkv", budget="20%")  # these need no weights
    assert headpage.policy_by_name("defensivekv").needs_output_projection
    assert not headpage.policy_by_name("ada-snapkv").needs_output_projection


def test_a_policy_the_gpu_does_not_run_is_refused_for_a_model_on_a_gpu(smollm2):
    """Over a CudaArena the engine compresses on the GPU, which does not run CriticalKV,
    DefensiveKV, DBudgetKV's Frobenius metric or H2O with reduce='max': hf.Cache and
    headpage.serving refuse them for a model on a GPU when they are set up, before
    touching the model. Only the model's device is read, so a stand-in with a CUDA
    device checks it without a GPU; a model on the CPU runs every policy."""
    import types

    import headpage.serving
    from headpage._model import resolve_policy
    _, model = smollm2
    on_gpu = types.SimpleNamespace(config=model.config, device=torch.device("cuda"))
    cpu_only = [n for n in headpage.POLICIES if not headpage.policy_by_name(n).runs_on_gpu]
    assert "defensivekv" in cpu_only and "ada-snapkv" not in cpu_only
    for name in cpu_only:
        with pytest.raises(NotImplementedError, match=f"policy '{name}' does not run on the GPU"):
            hf.Cache(on_gpu, policy=name, budget="20%")
        with pytest.raises(NotImplementedError, match=f"policy '{name}' does not run on the GPU"):
            headpage.serving.enable(on_gpu, num_pages=64, policy=name, budget="20%")
    assert vars(on_gpu).keys() == {"config", "device"}  # nothing was attached to it
    # A request naming one is refused when it is added, before anything is queued
    # (a stand-in manager on a GPU: the refusal reads no more than this).
    manager = types.SimpleNamespace(
        _cache_options=dict(policy="full", budget=None), model=on_gpu,
        _default_policy=resolve_policy("full", None))
    with pytest.raises(headpage.serving.RequestRefused, match="does not run on the GPU"):
        headpage.serving.ServingManager._add_request(manager, [1, 2, 3], policy="defensivekv",
                                                     budget="20%")
    hf.Cache(on_gpu, policy="ada-snapkv", budget="20%")
    hf.Cache(on_gpu)  # the full budget compresses nothing: it runs anywhere
    hf.Cache(model, policy="defensivekv", budget="20%")


@torch.no_grad()
def test_head_classes_keep_retrieval_heads_whole(smollm2, long_prompt, tmp_path):
    """duoattention through the cache: the profile's retrieval heads keep the
    whole prompt, the others their 64 sinks and 256 recent tokens; razorattention
    takes a profile's own 1/0 classes; no profile is a clear error."""
    tok, model = smollm2
    ids = long_prompt
    scores = torch.rand(30, 3, generator=torch.Generator().manual_seed(3))
    profile = tmp_path / "heads.tsv"
    profile.write_text("# test profile\n" + "\n".join("\t".join(f"{x:.6f}" for x in row)
                                                      for row in scores.tolist()) + "\n")
    policy = headpage.policy_by_name("duoattention", profile=str(profile), sparsity=0.75)
    cache = hf.Cache(model, policy=policy, budget="100%")
    generate(model, ids, cache, new_tokens=2)
    kept = cache.compression[0].kept
    retrieval = scores >= torch.quantile(scores.flatten().double(), 0.75).float()
    n = ids.shape[1]
    assert retrieval.sum() == 23  # 90 heads, 75% streaming
    assert kept.tolist() == torch.where(retrieval, n, 64 + 256).tolist()
    cache.manager.check_invariants()

    flags = tmp_path / "razor.tsv"
    flags.write_text("\n".join("\t".join("1" if (l, h) == (4, 1) else "0" for h in range(3))
                               for l in range(30)) + "\n")
    razor = hf.Cache(model, policy=headpage.policy_by_name("razorattention", profile=str(flags)),
                     budget="100%")
    generate(model, ids, razor, new_tokens=2)
    kept = razor.compression[0].kept
    assert kept[4, 1] == n and (kept.sum() - n) == 89 * 256

    bare = hf.Cache(model, policy="duoattention", budget="100%")
    with pytest.raises(ValueError, match="needs a head profile"):
        generate(model, ids, bare, new_tokens=2)  # compression runs at the first decode step
    with pytest.raises(ValueError, match="line 1"):
        bad = tmp_path / "bad.tsv"
        bad.write_text("0.5 zebra\n")
        headpage.policy_by_name("duoattention", profile=str(bad))
