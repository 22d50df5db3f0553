# SPDX-License-Identifier: Apache-2.0
"""bench/kernel_report.py, the table docs/performance.md quotes, on made-up
figures: each benchmark's median where bench_kernels ran repetitions, the issues'
targets judged, and a missing benchmark an error rather than a silent gap."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPORT = os.path.join(ROOT, "bench", "kernel_report.py")

# name -> (time in us, counters): every benchmark the report reads.
FIGURES = {
    "BM_CopyBandwidth/manual_time": (700.0, {"read_write_Bps": 3.0e12}),
    "BM_DecodeAttention/batch:8/len:32768/manual_time": (350.0, {"kv_read_Bps": 3.05e12}),
    "BM_DecodeAttention/batch:1/len:131072/manual_time": (185.0, {"kv_read_Bps": 2.9e12}),
    "BM_ReadDecodePages/batch:8/len:32768/manual_time": (340.0, {"kv_read_Bps": 3.15e12}),
    "BM_ReadDecodePages/batch:1/len:131072/manual_time": (173.0, {"kv_read_Bps": 3.1e12}),
    "BM_DecodeAttentionFp8/batch:8/len:32768/manual_time": (190.0, {"kv_read_Bps": 2.9e12}),
    "BM_DecodeAttentionHeadwise20/batch:8/len:32768/manual_time": (80.0, {"kv_read_Bps": 2.6e12}),
    "BM_DecodeAttentionHeadwise20/batch:1/len:131072/manual_time": (45.0, {"kv_read_Bps": 2.4e12}),
    # Its floor: 1e12 / 3e12 + 1.4e14 / 7.9e14 of its time, so it takes 1.96x the floor.
    "BM_WindowScores/batch:8/len:32768/manual_time": (500.0, {"key_read_Bps": 1.0e12,
                                                              "qk_flops": 1.4e14}),
    "BM_SelectAda/batch:8/len:32768/manual_time": (29.0, {"scores_Bps": 2e11}),
    "BM_SelectAdaTraceLike/batch:8/len:32768/manual_time": (33.0, {"scores_Bps": 1.8e11}),
    "BM_CompactTo20Percent/batch:8/len:32768/manual_time": (170.0, {"read_write_Bps": 2.4e12}),
    # With L2 emptied before every call (SDPA too, TORCH's *_cold).
    "BM_DecodeAttentionColdL2/batch:8/len:32768/manual_time": (352.0, {"kv_read_Bps": 3.0e12}),
    "BM_DecodeAttentionColdL2/batch:1/len:131072/manual_time": (186.0, {"kv_read_Bps": 2.9e12}),
    "BM_ReadDecodePagesColdL2/batch:8/len:32768/manual_time": (342.0, {"kv_read_Bps": 3.1e12}),
    "BM_ReadDecodePagesColdL2/batch:1/len:131072/manual_time": (174.0, {"kv_read_Bps": 3.1e12}),
    "BM_DecodeAttentionHeadwise20ColdL2/batch:8/len:32768/manual_time": (
        84.0, {"kv_read_Bps": 2.5e12}),
    "BM_DecodeAttentionHeadwise20ColdL2/batch:1/len:131072/manual_time": (
        47.0, {"kv_read_Bps": 2.3e12}),
}
TORCH = {
    "device": "made up", "torch": "0",
    "copy": {"ms": 0.7, "read_write_Bps": 3.0e12},
    "matmul": {"ms": 1.4, "flops": 7.9e14},
    "sdpa": {"8x32768": {"ms": 0.36, "kv_Bps": 3.0e12}, "1x131072": {"ms": 0.18, "kv_Bps": 3.0e12}},
    "sdpa20": {"8x32768": {"ms": 0.079}, "1x131072": {"ms": 0.046}},
    "sdpa_cold": {"8x32768": {"ms": 0.365}, "1x131072": {"ms": 0.185}},
    "sdpa20_cold": {"8x32768": {"ms": 0.085}, "1x131072": {"ms": 0.046}},
    "gather_sdpa20": {"8x32768": {"ms": 0.44}},
    "snapkv": {"8x32768": {"ms": 6.0}},
    "topk": {"8x8x32768": {"ms": 0.23}},
}


def entry(name, us, counters, aggregate=None):
    """One run of bench_kernels' JSON: an iteration, or (Google Benchmark's way)
    an aggregate named after its runs, whose run_name is theirs."""
    run = {"name": name, "run_name": name, "real_time": us, "time_unit": "us", **counters,
           "run_type": "iteration"}
    if aggregate is not None:
        run.update(name=f"{name}_{aggregate}", run_type="aggregate", aggregate_name=aggregate)
    return run


def report(tmp_path, benchmarks):
    bench, baselines = tmp_path / "bench.json", tmp_path / "torch.json"
    bench.write_text(json.dumps({"context": {}, "benchmarks": benchmarks}))
    baselines.write_text(json.dumps(TORCH))
    return subprocess.run([sys.executable, REPORT, str(bench), str(baselines)],
                          capture_output=True, text=True)


def row(table, figure):
    lines = [line for line in table.splitlines() if line.startswith(f"| {figure} |")]
    assert len(lines) == 1, table
    return [cell.strip() for cell in lines[0].strip("|").split("|")]


def test_the_median_of_repetitions_is_the_figure(tmp_path):
    benchmarks = []
    for name, (us, counters) in FIGURES.items():
        # Three repetitions, neither the first nor the last at the median, and
        # the mean after the median: only the median aggregate gives `us`.
        for scale in (0.9, 1.0, 3.0):
            benchmarks.append(entry(name, us * scale, counters))
        benchmarks.append(entry(name, us, counters, aggregate="median"))
        benchmarks.append(entry(name, us * 1.6, counters, aggregate="mean"))
    done = report(tmp_path, benchmarks)
    assert done.returncode == 0, done.stderr
    assert row(done.stdout, "Select, Ada, 8 seqs x 8 heads x 32K: time against 30 us")[1:] == [
        "0.0290 ms", "0.0300 ms", "0.97", "<= 1", "yes"]
    assert row(done.stdout, "Select, Ada, 8 seqs x 8 heads x 32K, scores like SnapKV's: time "
                            "against 30 us")[1:] == ["0.0330 ms", "0.0300 ms", "1.10", "<= 1",
                                                     "**no**"]
    # 0.36 ms of SDPA against 0.350: ahead; 0.18 against 0.185: behind.
    assert row(done.stdout, "DecodeAttention, full, 8x32K vs dense SDPA")[-1] == "yes"
    assert row(done.stdout, "DecodeAttention, full, 1x128K vs dense SDPA")[-1] == "**no**"
    assert row(done.stdout, "DecodeAttention, full, 1x128K: K/V read rate")[3:] == [
        "0.97", ">= 0.95", "yes"]
    assert row(done.stdout, "DecodeAttention, fp8 pages vs bf16, 8x32K")[3] == "1.84"
    assert row(done.stdout, "Compact to 20%, 8x32K: bytes read + written")[3:] == [
        "0.80", ">= 0.85", "**no**"]
    # SDPA's 0.079 ms against 0.080 at 8x32K: behind; 0.046 against 0.045 at 1x128K: ahead.
    assert row(done.stdout, "DecodeAttention, head-wise 20% (5x skew), 8x32K vs dense SDPA on "
                            "uniform 20%")[3:] == ["0.99", "> 1 (ahead)", "**no**"]
    assert row(done.stdout, "DecodeAttention, head-wise 20% (5x skew), 1x128K vs dense SDPA on "
                            "uniform 20%")[3:] == ["1.02", "> 1 (ahead)", "yes"]
    assert row(done.stdout, "WindowScores (W=32), 8x32K vs its floor (keys once + QK^T FLOPs)")[
        3:] == ["1.96", "<= 2", "yes"]
    # Cold L2 on both sides, judged by the same targets: 0.365 ms of SDPA against 0.352
    # ahead, 0.185 against 0.186 behind; head-wise 0.085 against 0.084 ahead, 0.046
    # against 0.047 behind.
    cold = "L2 cold (both)"
    assert row(done.stdout, f"DecodeAttention, full, 8x32K vs dense SDPA, {cold}")[3:] == [
        "1.04", "> 1 (ahead)", "yes"]
    assert row(done.stdout, f"DecodeAttention, full, 1x128K vs dense SDPA, {cold}")[-1] == "**no**"
    assert row(done.stdout, f"DecodeAttention, full, 8x32K vs reading its pages alone, {cold}")[
        1:4] == ["0.3520 ms", "0.3420 ms", "1.03"]
    assert row(done.stdout, "DecodeAttention, head-wise 20% (5x skew), 8x32K vs dense SDPA on "
                            f"uniform 20%, {cold}")[-1] == "yes"
    assert row(done.stdout, "DecodeAttention, head-wise 20% (5x skew), 1x128K vs dense SDPA on "
                            f"uniform 20%, {cold}")[-1] == "**no**"


def test_a_missing_benchmark_fails_the_report(tmp_path):
    benchmarks = [entry(name, us, counters)
                  for name, (us, counters) in FIGURES.items() if "SelectAda" not in name]
    done = report(tmp_path, benchmarks)
    assert done.returncode == 1
    assert "missing: \"0 benchmarks match 'BM_SelectAda" in done.stderr
    assert "| DecodeAttention, fp8 pages vs bf16, 8x32K |" in done.stdout
