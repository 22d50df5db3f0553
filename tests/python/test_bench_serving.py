# SPDX-License-Identifier: Apache-2.0
"""tools/bench_serving.py runs end to end on the CPU with a tiny model: every
configuration serves every request, and the figures it reports hang together."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))

import bench_serving  # noqa: E402

# A tiny model on the CPU, in f32.
TINY = ["--model", "tiny", "--device", "cpu", "--dtype", "f32"]


def test_the_serving_benchmark_runs_every_configuration(tmp_path):
    out = tmp_path / "results.json"
    arrivals = tmp_path / "arrivals.csv"
    common = TINY + ["--requests", "6",
              "--prompt-median", "160", "--prompt-min", "100", "--prompt-max", "300",
              "--output", "12", "--max-batch-tokens", "256"]
    assert bench_serving.main(common + [
        "--kv-gib", "0.002", "--transformers-page-size", "16",
        "--configs", "full,ada-snapkv:50%+fused,ada-snapkv:50%,pool-pressure,transformers,"
        "full+compile", "--out", str(out)]) == 0
    rows = {r["config"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"full", "ada-snapkv:50%", "pool-pressure", "transformers",
                         "full+compile", "ada-snapkv:50%+fused"}
    # A fused configuration serves, and the ones after it run on the restored model
    # (test_fused_projections.py compares their tokens).
    assert rows["ada-snapkv:50%+fused"]["compressed"] == 6
    for row in rows.values():
        assert row["requests"] == 6 and row["output_tokens"] == 6 * 12
        assert row["tokens_per_second"] > 0 and row["running_peak"] >= 1
    assert rows["ada-snapkv:50%"]["compressed"] == 6
    assert rows["full"]["compressed"] == 0 and rows["full"]["decode_steps"] > 0
    # Only a compiled configuration warms up before its run.
    assert rows["full+compile"]["warm_up_seconds"] > 0 and rows["full"]["warm_up_seconds"] == 0
    # The same KV bytes for headpage and transformers' own cache (transformers
    # rounds its pool to whole sectors).
    full = rows["full"]["kv_bytes"]
    assert abs(rows["transformers"]["kv_bytes"] - full) <= 0.05 * full
    assert bench_serving.main(common + ["--arrivals-csv", str(arrivals)]) == 0
    lines = arrivals.read_text().splitlines()
    assert lines[0] == "arrival_s,prompt_len,output_len" and len(lines) == 7


def test_the_shared_prefix_workload_hits_the_prefix_cache(tmp_path):
    out = tmp_path / "prefix.json"
    assert bench_serving.main(TINY + [
        "--requests", "5",
        "--workload", "shared-prefix", "--prefix-tokens", "128", "--prompt-median", "96",
        "--output", "8", "--max-batch-tokens", "192", "--kv-gib", "0.004",
        "--configs", "full,full+prefix,uniform-snapkv:50%+prefix,"
        "uniform-snapkv:50%+prefix+compressed", "--out", str(out)]) == 0
    rows = {r["config"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["full"]["prefix_hits"] == 0
    # The first request computes the system prompt; the later ones start on it.
    for config in ("full+prefix", "uniform-snapkv:50%+prefix"):
        assert rows[config]["requests"] == 5 and rows[config]["prefix_hits"] >= 3
        assert rows[config]["prefix_hit_tokens"] >= 3 * 128
    assert rows["uniform-snapkv:50%+prefix"]["compressed"] == 5
    # The system prompt compressed once; the later requests start on it.
    shared = rows["uniform-snapkv:50%+prefix+compressed"]
    assert shared["requests"] == 5 and shared["compressed_prefix_hits"] >= 3


def test_the_multi_turn_workload_sends_each_turn_after_the_last_answer(tmp_path):
    out = tmp_path / "turns.json"
    assert bench_serving.main(TINY + [
        "--requests", "3",
        "--workload", "multi-turn", "--turns", "3", "--prefix-tokens", "64",
        "--prompt-median", "40", "--output", "16", "--max-batch-tokens", "192",
        "--kv-gib", "0.004", "--configs", "full,full+prefix", "--out", str(out)]) == 0
    rows = {r["config"]: r for r in json.loads(out.read_text())["rows"]}
    for row in rows.values():
        assert row["requests"] == 3 * 3 and row["output_tokens"] == 3 * 3 * 16
    # Each later turn starts with the last turn's prompt and answer: with the
    # cache, it starts on their blocks.
    assert rows["full"]["prefix_hits"] == 0
    assert rows["full+prefix"]["prefix_hits"] >= 3 * 2
    assert rows["full+prefix"]["prefix_hit_tokens"] >= 3 * 2 * (64 + 40)


def test_fp8_pages_give_the_same_kv_memory_more_pages(tmp_path):
    rows = {}
    for kv_dtype in ("auto", "fp8"):
        out = tmp_path / f"{kv_dtype}.json"
        assert bench_serving.main([
            "--model", "tiny", "--device", "cpu", "--dtype", "bf16", "--kv-dtype", kv_dtype,
            "--requests", "3", "--prompt-median", "96", "--prompt-min", "64",
            "--prompt-max", "128", "--output", "8", "--max-batch-tokens", "256",
            "--kv-gib", "0.002", "--configs", "full", "--out", str(out)]) == 0
        result = json.loads(out.read_text())
        assert result["header"]["kv_dtype"] == kv_dtype
        rows[kv_dtype] = result["rows"][0]
    auto, fp8 = rows["auto"], rows["fp8"]
    assert fp8["requests"] == auto["requests"] == 3 and fp8["output_tokens"] == 3 * 8
    # tiny: head_dim 64, pages of 16 tokens: 4096 bytes of bf16, or 2048 of fp8
    # and 128 of scales, within the same 0.002 GiB.
    assert auto["pool_pages"] == int(0.002 * 2**30) // 4096
    assert fp8["pool_pages"] == int(0.002 * 2**30) // (2048 + 128)
    assert fp8["kv_bytes"] == fp8["pool_pages"] * (2048 + 128) <= 0.002 * 2**30
    with pytest.raises(SystemExit):  # fp8 pages of an f32 model
        bench_serving.parse_args(TINY + ["--kv-dtype", "fp8"])


def test_the_serving_benchmark_runs_under_tensor_parallelism(tmp_path):
    # Two ranks over gloo, each with half of the tiny model's kv heads and a pool of
    # its own: rank 0 submits and reports, and every request is served (and
    # compressed, the group agreeing its Ada budget) on both.
    out = tmp_path / "tp.json"
    assert bench_serving.main(TINY + [
        "--tensor-parallel", "2", "--requests", "4", "--prompt-median", "160",
        "--prompt-min", "100", "--prompt-max", "300", "--output", "8",
        "--max-batch-tokens", "256", "--kv-gib", "0.002",
        "--configs", "full,ada-snapkv:50%", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["header"]["tensor_parallel"] == 2
    assert results["header"]["kv_heads_per_rank"] == 1  # of the tiny model's 2
    rows = {r["config"]: r for r in results["rows"]}
    for row in rows.values():
        assert row["requests"] == 4 and row["output_tokens"] == 4 * 8
        assert row["tokens_per_second"] > 0 and row["ttft"]["p50"] is not None
    assert rows["ada-snapkv:50%"]["compressed"] == 4 and rows["full"]["compressed"] == 0


def test_autotune_compiles_at_transformers_second_level():
    from serving_configs import compile_level, config_modes

    assert compile_level(config_modes("full+autotune+fused+async")[1]) == 2
    assert compile_level(config_modes("ada-snapkv:20%+compile")[1]) == 1
    assert compile_level(config_modes("full")[1]) == 0
    with pytest.raises(SystemExit, match="unknown mode"):
        config_modes("full+turbo")


def test_a_split_count_mode_names_enables_decode_splits():
    from serving_configs import config_modes, decode_splits

    assert decode_splits(config_modes("full+compile+splits6")[1]) == 6
    assert decode_splits(config_modes("full+compile")[1]) is None
    for bad in ("full+splits0", "full+splits", "full+splitsx"):
        with pytest.raises(SystemExit, match="unknown mode"):
            config_modes(bad)
    with pytest.raises(SystemExit, match="at most"):
        config_modes("full+splits4+balanced")
    with pytest.raises(SystemExit, match="headpage's"):
        config_modes("transformers+splits4")
