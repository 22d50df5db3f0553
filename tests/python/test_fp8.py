# SPDX-License-Identifier: Apache-2.0
"""fp8 KV pages (kv_dtype="fp8": e4m3 with a float scale per token and stream)
through the Python layer: the geometry and its page costs, the arena's views,
write_kv's quantization read back as the kernels read it, headpage.hf.Cache with
SmolLM2-135M-Instruct (bfloat16) against its bf16 pages on a needle prompt, the
random-weight Llama's greedy tokens at fp8 against bf16 over 64 steps, and
headpage.serving at fp8. The device cases run on the CPU, and again on CUDA
where the build and the machine have one."""
import argparse
import copy
import os

import pytest
import torch
from transformers import GenerationConfig

import headpage as hp
import headpage.hf as hf
import headpage.serve
import headpage.serving
from conftest import chat_ids
from headpage._kv_pages import check_kv_dtype, pages_in, read_pages
from test_serving import (PROMPTS, device, engine_config, run_manager,  # noqa: F401 (a fixture)
                          small_model, tokens)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPE = dict(num_layers=2, num_kv_heads=2, num_q_heads=4, head_dim=64)
PAGE = 4


def geometry(kv_dtype="fp8", dtype="bf16"):
    return hp.CacheGeometry(**SHAPE, dtype=dtype, page_size=PAGE, kv_dtype=kv_dtype)


def arena_on(device, g, pages):
    if device.type == "cuda":
        return hp.CudaArena(g, pages)
    return hp.HostArena(g, pages)


def test_the_geometry_takes_kv_dtype_and_prices_a_page_with_its_scales():
    auto, fp8 = geometry("auto"), geometry("fp8")
    assert (auto.kv_dtype, fp8.kv_dtype, geometry("fp8_e4m3").kv_dtype) == (
        "auto", "fp8_e4m3", "fp8_e4m3")
    assert hp.CacheGeometry(**SHAPE).kv_dtype == "auto"  # the default
    assert auto.page_bytes == auto.page_memory_bytes == 2 * PAGE * 64 * 2
    assert auto.page_scale_bytes == 0
    assert fp8.page_bytes == 2 * PAGE * 64  # one byte an element
    assert fp8.page_scale_bytes == 2 * PAGE * 4  # a float for K and one for V, a token
    assert fp8.page_memory_bytes == fp8.page_bytes + fp8.page_scale_bytes
    assert "kv_dtype=fp8_e4m3" in repr(fp8) and "kv_dtype" not in repr(auto)
    # A KV memory budget divides by what a page costs, its scales included.
    assert pages_in(1 << 20, fp8) == (1 << 20) // (2 * PAGE * 64 + 2 * PAGE * 4)


def test_bad_kv_dtypes_are_refused_with_the_reason(capsys):
    with pytest.raises(ValueError, match="unknown kv_dtype 'int8': want auto.*fp8"):
        geometry("int8")
    with pytest.raises(ValueError, match="fp8_e4m3 needs a model dtype of f16 or bf16, got f32"):
        geometry("fp8", dtype="f32")
    with pytest.raises(TypeError, match="kv_dtype must be a string"):
        check_kv_dtype(8, torch.bfloat16, "who")
    with pytest.raises(ValueError, match="who: .*got f32 \\(load the model in bfloat16"):
        check_kv_dtype("fp8", torch.float32, "who")
    assert check_kv_dtype("fp8", None, "who") == "fp8_e4m3"  # the dtype is not known yet
    model = small_model()  # float32
    with pytest.raises(ValueError, match="headpage.hf.Cache: .*f32"):
        hf.Cache(model, kv_dtype="fp8")
    with pytest.raises(ValueError, match="headpage.hf.Cache: unknown kv_dtype"):
        hf.Cache(model.config, kv_dtype="fp16")
    with pytest.raises(ValueError, match="headpage.serving: .*f32"):
        headpage.serving.enable(model, num_pages=64, kv_dtype="fp8")
    assert "init_continuous_batching" not in vars(model)  # nothing changed
    for bad, reason in ((["--kv-dtype", "fp8", "--dtype", "float32"], "--dtype bfloat16"),
                        (["--kv-dtype", "int4"], "invalid choice: 'int4'")):
        with pytest.raises(SystemExit) as stop:  # argparse's error: status 2
            headpage.serve.parse_args(["m", "--num-pages", "8", *bad])
        assert stop.value.code == 2 and reason in capsys.readouterr().err


def test_a_config_cache_refuses_fp8_pages_for_float32_keys_and_changes_nothing():
    model = small_model()
    cache = hf.Cache(model.config, kv_dtype="fp8")
    hf.attach(model)
    with pytest.raises(ValueError, match="f32"):
        model(torch.tensor([[1, 2, 3]]), past_key_values=cache, use_cache=True)
    assert cache.manager is None and cache.arena is None and cache.get_seq_length() == 0


def reference_fp8(rows):
    """What QuantizeRowFp8 stores for rows [..][head_dim] of bf16: the fp8 bytes
    (torch's conversion, round to nearest even) and the scale amax / 448."""
    x = rows.float()
    amax = x.abs().amax(-1, keepdim=True)
    inverse = torch.where(amax > 0, torch.tensor(448.0) / amax, torch.zeros_like(amax))
    return (x * inverse).to(torch.float8_e4m3fn), (amax / 448.0).squeeze(-1)


def test_fp8_arena_views_and_write_kv_quantizes_each_token_and_stream(device):
    g = geometry("fp8")
    pool, arena = hp.PagePool(16), arena_on(device, g, 16)
    assert arena.kv_dtype == "fp8_e4m3"
    kv, scales = torch.from_dlpack(arena.kv), torch.from_dlpack(arena.scales)
    assert kv.dtype == torch.float8_e4m3fn and kv.shape == (16, 2, PAGE, 64)
    assert scales.dtype == torch.float32 and scales.shape == (16, PAGE, 2)
    assert kv.device.type == scales.device.type == device.type
    assert not scales.any()  # zeroed
    manager = hp.BlockManager(g, pool)
    seq = manager.add_sequence()
    plan = manager.reserve(seq, 3)
    gen = torch.Generator().manual_seed(0)
    k = (torch.randn(3, 2, 64, generator=gen) * 4).bfloat16()
    v = torch.randn(3, 2, 64, generator=gen).bfloat16()
    k[1, 0] = 0  # a row of zeros: scale 0
    slots = torch.tensor(plan.slot_mapping[:, 0, :], device=device)
    hp.write_kv(arena, k.to(device), v.to(device), slots,
                torch.arange(3, dtype=torch.int32, device=device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    for head in range(2):
        page = manager.stream_pages(seq, 0, head)[0]
        for part, rows in ((0, k[:, head]), (1, v[:, head])):
            want, scale = reference_fp8(rows)
            got = kv[page, part, :3].cpu()
            # Byte for byte what QuantizeRowFp8 stores, on either device.
            assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))
            torch.testing.assert_close(scales[page, :3, part].cpu(), scale, rtol=0, atol=0)
            # It reads back within fp8's precision (3 mantissa bits) of the row's amax.
            back = read_pages(arena, torch.tensor([page], device=device), torch.float32)[part][0]
            err = (back[:3].cpu() - rows.float()).abs().amax(-1)
            assert (err <= rows.float().abs().amax(-1) / 16 + 1e-6).all()
    assert scales[manager.stream_pages(seq, 0, 0)[0], 1, 0] == 0  # the zero row
    # Pages of the model's dtype have no scales.
    auto = arena_on(device, geometry("auto"), 4)
    assert auto.scales is None and auto.kv_dtype == "auto"
    assert torch.from_dlpack(auto.kv).dtype == torch.bfloat16


def host_written(kv_dtype, tokens, layer):
    """A HostArena of 8 pages, one sequence of which holds `tokens` random bf16
    tokens in `layer`: (pool, arena, manager, seq, k, v), k and v
    [tokens][kv_heads][head_dim] as written."""
    g = geometry(kv_dtype)
    pool, arena = hp.PagePool(8), hp.HostArena(g, 8)
    manager = hp.BlockManager(g, pool)
    seq = manager.add_sequence()
    plan = manager.reserve(seq, tokens)
    k, v = (torch.randn(tokens, 2, 64).bfloat16() for _ in range(2))
    hp.write_kv(arena, k, v, plan.slot_mapping[:, layer, :],
                torch.arange(tokens, dtype=torch.int32))
    return pool, arena, manager, seq, k, v


def test_read_pages_dequantizes_as_the_kernels_read():
    for kv_dtype in ("auto", "fp8"):
        _, arena, manager, seq, k, v = host_written(kv_dtype, 6, layer=1)
        pages = torch.tensor(manager.stream_pages(seq, 1, 1))
        keys, values = read_pages(arena, pages, torch.bfloat16)
        assert keys.shape == (2, PAGE, 64) and keys.dtype == torch.bfloat16
        keys, values = keys.reshape(-1, 64)[:6], values.reshape(-1, 64)[:6]
        if kv_dtype == "auto":
            assert torch.equal(keys, k[:, 1]) and torch.equal(values, v[:, 1])
            continue
        raw = torch.from_dlpack(arena.kv)[pages].float()
        scale = torch.from_dlpack(arena.scales)[pages]
        want = (raw[:, 0] * scale[..., 0:1]).bfloat16().reshape(-1, 64)[:6]
        assert torch.equal(keys, want)
        torch.testing.assert_close(values.float(), v[:, 1].float(), rtol=0.07, atol=0.02)


def test_gather_kv_and_copy_pages_move_fp8_rows_with_their_scales():
    pool, arena, manager, seq, _, _ = host_written("fp8", 3, layer=0)
    table = manager.block_table(0, [seq])
    keys, values = (torch.empty(6, 64, dtype=torch.bfloat16) for _ in range(2))
    hp.gather_kv(arena, table.indptr, table.page_ids, table.lens, keys, values)
    page = manager.stream_pages(seq, 0, 1)[0]
    want_k, want_v = read_pages(arena, torch.tensor([page]), torch.bfloat16)
    assert torch.equal(keys[3:], want_k[0, :3]) and torch.equal(values[3:], want_v[0, :3])
    free = next(p for p in range(8) if pool.refcount(p) == 0)
    hp.copy_pages(arena, torch.tensor([page], dtype=torch.int32),
                  torch.tensor([free], dtype=torch.int32))
    kv, scales = torch.from_dlpack(arena.kv), torch.from_dlpack(arena.scales)
    assert torch.equal(kv[free].view(torch.uint8), kv[page].view(torch.uint8))
    assert torch.equal(scales[free], scales[page])


def test_serve_sizes_an_fp8_pool_by_what_a_page_costs():
    model = small_model().to(torch.bfloat16)
    args = argparse.Namespace(num_pages=None, kv_gib=0.01, page_size=16, kv_dtype="auto")
    auto = headpage.serve._pages_for(model, args)
    fp8 = headpage.serve._pages_for(model, argparse.Namespace(**{**vars(args), "kv_dtype": "fp8"}))
    assert auto == int(0.01 * 2**30) // (2 * 16 * 64 * 2)
    assert fp8 == int(0.01 * 2**30) // (2 * 16 * 64 + 2 * 16 * 4)  # K/V bytes and scales


# -- headpage.hf.Cache with SmolLM2 in bfloat16 ---------------------------------------

@pytest.fixture(scope="module")
def smollm2_bf16(smollm2):
    """The session's SmolLM2 (float32) copied to bfloat16: fp8 pages need a 16-bit model."""
    tok, model = smollm2
    return tok, copy.deepcopy(model).to(torch.bfloat16)


@pytest.fixture(scope="module")
def needle_prompt(smollm2):
    """About 600 tokens of Proverbs with a sentence planted near their end, and the
    question about it (tools/prompts/needle.txt, cut short): SmolLM2 in bfloat16
    answers it with its bf16 pages (not every cut of the text: at this size the
    model's answer is fragile)."""
    tok, _ = smollm2
    with open(os.path.join(ROOT, "tools", "prompts", "needle.txt"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    question = next(line for line in lines if line.startswith("Question:"))
    return chat_ids(tok, "\n".join(lines[:27] + ["", question]))


def fed_tokens_predictions(model, cache, ids, tokens):
    """Greedy predictions through `cache`: after the prompt `ids`, then after each of
    `tokens` fed one at a time as decode steps (the history is `tokens`, not the
    model's own picks)."""
    with torch.no_grad():
        logits = model(ids, past_key_values=cache, use_cache=True).logits
        predictions = [int(logits[0, -1].argmax())]
        for token in tokens:
            logits = model(torch.tensor([[token]]), past_key_values=cache, use_cache=True).logits
            predictions.append(int(logits[0, -1].argmax()))
    return predictions


@pytest.mark.parametrize("policy,budget", [("full", None), ("uniform-snapkv", "50%")])
def test_smollm2_at_fp8_finds_the_needle_bf16_finds(smollm2_bf16, needle_prompt, policy, budget):
    """SmolLM2 in bfloat16 answers the needle prompt with its bf16 pages (the colour, as
    tools/eval_needle.py counts it). With fp8 pages, fed the bf16 answer as its history,
    it predicts the colour at the same place, and most of the answer's tokens before it.
    Free-running fp8 generation is printed, not held to the bf16 words: at this model's
    size one token's difference sends it elsewhere, and where it parts depends on the
    CPU's bf16 arithmetic (on an AVX2-only AMD EPYC, the 12th token of 20)."""
    tok, model = smollm2_bf16
    ids, new = needle_prompt, 20
    answers, caches = {}, {}
    for kv_dtype in ("auto", "fp8"):
        cache = hf.Cache(model, policy, budget, kv_dtype=kv_dtype)
        out = model.generate(ids, past_key_values=cache, max_new_tokens=new, min_new_tokens=new,
                             do_sample=False)
        answers[kv_dtype], caches[kv_dtype] = out[0, ids.shape[1]:].tolist(), cache
    agree = sum(a == b for a, b in zip(answers["auto"], answers["fp8"]))
    print(f"\nSmolLM2 needle ({ids.shape[1]} tokens, {policy}): free-running fp8 agrees with "
          f"bf16 on {agree}/{new} tokens: {tok.decode(answers['fp8'])!r}")
    reference = answers["auto"]
    assert "blue" in tok.decode(reference).lower(), tok.decode(reference)
    at = next(i for i, t in enumerate(reference) if "blue" in tok.decode([t]).lower())
    fed = fed_tokens_predictions(model, hf.Cache(model, policy, budget, kv_dtype="fp8"), ids,
                                 reference[:at])
    fed_agree = sum(a == b for a, b in zip(fed, reference[:at + 1]))
    print(f"fed bf16's answer, fp8 picks its tokens at {fed_agree}/{at + 1} places: "
          f"{tok.decode(fed)!r}")
    assert fed[at] == reference[at], tok.decode(fed)
    assert fed_agree >= (at + 1) * 3 // 4
    fp8 = caches["fp8"]
    assert fp8.geometry.kv_dtype == "fp8_e4m3" and fp8.arena.scales is not None
    # The same pages as bf16's: fp8 changes their bytes, not their number.
    assert fp8.stats().pages_in_use == caches["auto"].stats().pages_in_use
    if budget is not None:
        auto_result, fp8_result = caches["auto"].compression[0], fp8.compression[0]
        assert fp8_result.pages_freed == auto_result.pages_freed > 0
        assert fp8_result.kept.tolist() == auto_result.kept.tolist()
    fp8.manager.check_invariants()


# -- the random-weight Llama: greedy tokens at fp8 against bf16 ------------------------

def test_random_weight_greedy_tokens_at_fp8_against_bf16_over_64_steps(device, record_property):
    """Greedy decoding of test_serving's random-weight Llama in bfloat16 for 64
    steps through headpage.hf.Cache, bf16 pages against fp8 ones. Reported (and
    recorded as properties): the steps at which both pick the same token when
    fed the bf16 run's tokens (teacher-forced, every step compared on the same
    history), and where the free-running fp8 run first leaves the bf16 one."""
    steps = 64
    model = small_model(device).to(torch.bfloat16)
    ids = torch.randint(0, 128, (1, 100), generator=torch.Generator().manual_seed(1)).to(device)
    runs = {}
    for kv_dtype in ("auto", "fp8"):
        out = model.generate(ids, past_key_values=hf.Cache(model, kv_dtype=kv_dtype),
                             max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
        runs[kv_dtype] = out[0, ids.shape[1]:].tolist()
    first_difference = next((i for i, (a, b) in enumerate(zip(runs["auto"], runs["fp8"]))
                             if a != b), steps)
    caches = {kv_dtype: hf.Cache(model, kv_dtype=kv_dtype) for kv_dtype in ("auto", "fp8")}
    inputs, same, largest = ids, 0, 0.0
    with torch.no_grad():
        for _ in range(steps):
            logits = {kv_dtype: model(inputs, past_key_values=cache, use_cache=True)
                      .logits[0, -1].float() for kv_dtype, cache in caches.items()}
            token = logits["auto"].argmax()
            same += int(logits["fp8"].argmax() == token)
            largest = max(largest, float((logits["fp8"] - logits["auto"]).abs().max()))
            inputs = token.view(1, 1)
    record_property("teacher_forced_agreement", f"{same}/{steps}")
    record_property("free_running_first_difference", first_difference)
    print(f"\nrandom-weight Llama on {device.type}: fp8 picks bf16's token at {same}/{steps} "
          f"teacher-forced steps (largest logit difference {largest:.4f}); the free-running "
          f"fp8 run first differs at step {first_difference} of {steps}")
    assert same >= steps * 7 // 8
    assert largest < 0.1


# -- headpage.serving at fp8 ---------------------------------------------------------------

def test_serving_at_fp8_compresses_and_frees_pages_like_auto(device):
    stats, kept, served = {}, {}, {}
    for kv_dtype in ("auto", "fp8"):
        model = headpage.serving.enable(small_model(device).to(torch.bfloat16), num_pages=2048,
                                        policy="uniform-snapkv", budget="50%",
                                        check_invariants=True, kv_dtype=kv_dtype)
        manager, results = run_manager(model, PROMPTS, 12)
        cache = manager.serving_cache
        assert cache.geometry.kv_dtype == {"auto": "auto", "fp8": "fp8_e4m3"}[kv_dtype]
        assert all(len(r.generated_tokens) == 12 and not r.error for r in results.values())
        stats[kv_dtype] = manager.stats()
        kept[kv_dtype] = sorted(c.kept.tolist() for c in cache.compressions.values()
                                if isinstance(c, hp.CompressResult))
        served[kv_dtype] = len(results)
    auto, fp8 = stats["auto"], stats["fp8"]
    assert served["fp8"] == served["auto"] == len(PROMPTS)
    # Uniform budgets: every stream keeps the same count whatever the pages store.
    assert fp8["compressed"] == auto["compressed"] == 2 and kept["fp8"] == kept["auto"]
    assert fp8["pages_freed_by_compression"] == auto["pages_freed_by_compression"] > 0
    assert fp8["free_pages"] == auto["free_pages"] == 2048  # every page back in the pool


def test_serving_at_fp8_forks_and_chunks_like_auto(device):
    """The full budget with two children a request: the 67- and 118-token prompts
    are prefilled in 64-token chunks (a later chunk attends to fp8 K/V read back
    from the pool), and the children copy the forked tail page with its scales."""
    generation = GenerationConfig(max_new_tokens=12, eos_token_id=-1, num_return_sequences=2,
                                  do_sample=True, top_k=1)
    got = {}
    for kv_dtype in ("auto", "fp8"):
        model = headpage.serving.enable(small_model(device).to(torch.bfloat16), num_pages=2048,
                                        kv_dtype=kv_dtype, check_invariants=True)
        got[kv_dtype] = tokens(model.generate_batch(PROMPTS, generation_config=generation,
                                                    continuous_batching_config=engine_config()))
    assert len(got["fp8"]) == len(PROMPTS) * 2
    # A child reads its parent's pages, the copied tail page with its scales
    # included: greedy, the two give the same tokens, as they do at bf16.
    for kv_dtype in ("auto", "fp8"):
        for rid, generated in got[kv_dtype].items():
            if "__child" in rid:
                assert generated == got[kv_dtype][rid.split("__child")[0]], (kv_dtype, rid)
    same = sum(a == b for rid in got["auto"] for a, b in zip(got["auto"][rid], got["fp8"][rid]))
    print(f"\nserving at fp8 on {device.type}: {same}/{len(PROMPTS) * 2 * 12} tokens as bf16's")
    assert same >= len(PROMPTS) * 2 * 12 * 3 // 4
