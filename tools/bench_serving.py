#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Serving throughput: transformers' continuous-batching engine on a headpage pool,
at the full budget and with eviction, beside transformers' own paged cache, on
the same requests and the same KV memory.

usage (the H200 run of docs/serving.md):
  bench_serving.py --model llama3-8b --kv-gib 8 --workload long-prompts \\
      --configs full,uniform-snapkv:20%,ada-snapkv:20%,ada-snapkv:10%,pool-pressure \\
      --out results.json
  bench_serving.py --model tiny --device cpu --requests 6 ...   (a smoke run)

The model is an architecture with seeded random weights (end of sequence off, so
every request runs its whole output length). Workloads: long-prompts (prompt
lengths log-normal around --prompt-median, clamped to [--prompt-min,
--prompt-max], --output new tokens each), long-generation (--prompt-median
tokens each, long outputs; with --compress-every N the compressing
configurations compress each request again after every N generated tokens) and
shared-prefix (one system prompt of --prefix-tokens tokens, then --prompt-median
tokens of each request's own) and multi-turn (--requests conversations of --turns
turns after a common system prompt of --prefix-tokens tokens: each turn adds
--prompt-median user tokens to the last turn's prompt and answer, and is sent when
that answer is complete). --rate 0 submits every request (first turn) at once; a
rate r > 0 submits them as a Poisson process of r requests a second.

Each configuration runs in this process, one after another: full, POLICY:BUDGET,
pool-pressure or transformers, each with modes such as +compile, +fused or
+async (tools/serving_configs.py says what each means).
For each: output tokens a second end to end and in the decode-only steps, running
requests (peak, mean over time), TTFT and TPOT p50/p90, preemptions (headpage) or
offloads and resets (transformers), seconds spent compressing, the decode
step's time against its roofline (the weights it reads plus the K/V its
attention reads, at the copy bandwidth measured at the start of the run), and
the CUDA graphs captured and replayed.

--tensor-parallel N runs it on N ranks (tools/serving_tp.py): each holds 1/N of
every layer's kv heads and a pool of --kv-gib, one GPU each (or the CPU over gloo);
rank 0 submits and reports, and the roofline is each rank's.

--kv-dtype fp8 stores headpage's pages in fp8 e4m3 with a scale per token and
stream: the same --kv-gib holds about twice the pages of bf16 ones, and the
roofline counts the bytes an fp8 token costs. transformers' own cache keeps the
model's dtype.
"""
import argparse
import contextlib
import json
import math
import sys
import threading
import time

import numpy as np
import torch

import serving_tp
from serving_configs import (compile_level, config_modes, decode_splits, engine_config, evicts,
                             parse_config)

MODELS = {
    # Llama-3-8B's architecture.
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      rope_theta=500000.0, max_position_embeddings=131072),
    # A small Llama for smoke runs on the CPU.
    "tiny": dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384),
}


def build_model(name, device, dtype, seed):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**MODELS[name], eos_token_id=None, bos_token_id=None,
                         pad_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.eval()
    model.generation_config.eos_token_id = None
    model.set_attn_implementation("sdpa")
    return model


def kv_bytes_per_token(model):
    import headpage._model as hm

    shape = hm.model_shape(model, "bench_serving")
    itemsize = torch.empty((), dtype=model.dtype).element_size()
    return shape, 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * itemsize


def weight_bytes_read(model):
    """Bytes of weights a decode step reads: every parameter but the input
    embedding table, of which it reads a few rows (under tensor parallelism,
    this rank's shards)."""
    from headpage._serving_tp import local_weight

    embed = model.get_input_embeddings().weight
    return sum(local_weight(p).numel() * p.element_size() for p in model.parameters()
               if p is not embed)


def local_kv_heads(model, shape):
    """The kv heads this process holds of every layer (all of them, unless tensor
    parallelism shards k_proj)."""
    from headpage._serving_tp import local_weight

    k_proj = model.model.layers[0].self_attn.k_proj.weight
    return local_weight(k_proj).shape[0] // shape.head_dim


def copy_bandwidth(device):
    """Bytes a second a device-to-device copy moves, read plus write."""
    if device.type != "cuda":
        return None
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    reps = 20
    for _ in range(reps):
        dst.copy_(src)
    stop.record()
    stop.synchronize()
    return 2 * n * reps / (start.elapsed_time(stop) / 1e3)


def make_requests(args, vocab):
    rng = np.random.default_rng(args.seed)
    if args.workload == "long-prompts":
        lengths = np.exp(rng.normal(math.log(args.prompt_median), args.prompt_sigma, args.requests))
        lengths = np.clip(np.round(lengths), args.prompt_min, args.prompt_max).astype(int)
    else:
        lengths = np.full(args.requests, args.prompt_median, dtype=int)
    prompts = [rng.integers(1, vocab, size=int(n)).tolist() for n in lengths]
    followups = [[] for _ in prompts]  # each conversation's later user turns
    if args.workload in ("shared-prefix", "multi-turn"):
        system = rng.integers(1, vocab, size=args.prefix_tokens).tolist()
        prompts = [system + own for own in prompts]
    if args.workload == "multi-turn":
        followups = [[rng.integers(1, vocab, size=args.prompt_median).tolist()
                      for _ in range(args.turns - 1)] for _ in prompts]
    gaps = (rng.exponential(1.0 / args.rate, args.requests) if args.rate > 0
            else np.zeros(args.requests))
    return prompts, np.cumsum(gaps) - gaps[0], followups


class RunningSampler:
    """Samples the engine's running requests every `period` seconds."""

    def __init__(self, manager, period=0.05):
        self.manager, self.period = manager, period
        self.samples = []  # (time, running)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            processor = self.manager.batch_processor
            if processor is not None:
                self.samples.append((time.perf_counter(),
                                     len(processor.scheduler.active_requests)))
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def percentiles(values, qs=(50, 90)):
    if not values:
        return {f"p{q}": None for q in qs}
    return {f"p{q}": float(np.percentile(values, q)) for q in qs}


def warm_up(manager, args):
    """Serves a few short requests before the measured run, so that torch.compile
    compiles the forward there (as a server would at its start): prefill chunks
    and decode steps of one and of several requests. Returns its seconds."""
    began = time.perf_counter()
    lengths = [(96, 6), (64, 2), (32, 12)]  # (prompt, new tokens): the last decodes alone
    for prompt, new in lengths:  # a no-op off the driver (tensor parallelism)
        manager.add_request([7] * prompt, max_new_tokens=new)
    for _ in lengths:
        result = manager.get_result(timeout=args.timeout)
        if result is None or result.error:
            raise RuntimeError(f"warm-up failed: {result.error if result else 'no result'}")
    return time.perf_counter() - began


def run_config(model, config, args, prompts, arrivals, followups, shape, bytes_per_token,
               roofline):
    import headpage.serving
    from headpage._kv_pages import cache_geometry, pages_in
    from transformers import GenerationConfig

    # headpage's pages store --kv-dtype (fp8 pages with their scales cost about
    # half as much as bf16 ones: the same KV memory holds more of them).
    geometry = cache_geometry(shape, model.dtype, args.page_size, args.kv_dtype)
    page_bytes = geometry.page_memory_bytes
    num_pages = pages_in(args.kv_gib * (1 << 30), geometry)
    name, modes = config_modes(config)
    if name == "transformers":
        if "init_continuous_batching" in vars(model):
            del model.init_continuous_batching  # transformers' own method again
        model.set_attn_implementation("sdpa")
    else:
        policy, budget, graphs = parse_config(config)
        headpage.serving.enable(model, num_pages=num_pages, page_size=args.page_size,
                                policy=policy, budget=budget, floor_tokens=args.floor_tokens,
                                protect_recent=args.protect_recent, cuda_graphs=graphs,
                                compress_every=args.compress_every if budget else 0,
                                kv_dtype=args.kv_dtype,
                                decode_division="balanced" if "balanced" in modes else "even",
                                decode_splits=decode_splits(modes))
    generation = GenerationConfig(max_new_tokens=args.output, do_sample=False, eos_token_id=-1)
    manager = model.init_continuous_batching(
        generation_config=generation,
        continuous_batching_config=engine_config(args, config, bytes_per_token))
    manager.start()
    while manager.batch_processor is None:  # the loop builds its cache first
        if not manager.is_running():
            raise RuntimeError(f"{config}: the engine stopped before serving")
        time.sleep(0.01)
    processor = manager.batch_processor
    if args.profile and config == args.profile.rsplit(":", 3)[0]:
        profile_steps(processor, args.profile)
    warm_up_seconds = warm_up(manager, args) if compile_level(modes) else 0.0
    resets = [0]
    if name == "transformers":
        kv_bytes = processor.cache.num_sectors * processor.cache.bytes_per_sector
        free_blocks = processor.cache.free_blocks

        def counting_free_blocks(request_id, no_cache=False):
            resets[0] += bool(no_cache)  # the offloading manager frees with no_cache
            return free_blocks(request_id, no_cache)

        processor.cache.free_blocks = counting_free_blocks
    else:
        cache = manager.serving_cache
        cache.record_steps = True
        cache.compress_seconds = 0.0  # the warm-up's are not the run's
        kv_bytes = cache.page_pool.num_pages * page_bytes
    if torch.cuda.is_available() and model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    results = {}
    try:
        with RunningSampler(manager) as sampler:
            began = time.perf_counter()
            # request -> (conversation, turn, prompt); a conversation's next turn is
            # sent when its answer to the last one is complete.
            submitted, turns_of = {}, {}

            shared = ({"compressed_prefix": args.prefix_tokens} if "compressed" in modes
                      else {})

            # Under tensor parallelism only the driver (rank 0) submits; every
            # rank gets every result.
            driver = manager.is_tp_driver

            def submit(conversation, turn, prompt):
                if not driver:
                    return
                rid = manager.add_request(prompt, record_timestamps=True, **shared)
                submitted[rid] = time.perf_counter()
                turns_of[rid] = (conversation, turn, prompt)

            for conversation, (prompt, at) in enumerate(zip(prompts, arrivals)):
                wait = began + at - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                submit(conversation, 0, prompt)
            expected = sum(1 + len(f) for f in followups)
            while len(results) < expected:
                result = manager.get_result(timeout=args.timeout)
                if result is None:
                    raise RuntimeError(f"{config}: no result within {args.timeout} s")
                results[result.request_id] = result
                if not driver:
                    continue
                conversation, turn, prompt = turns_of[result.request_id]
                if turn < len(followups[conversation]) and not result.error:
                    submit(conversation, turn + 1, prompt + list(result.generated_tokens)
                           + followups[conversation][turn])
            elapsed = time.perf_counter() - began
    finally:
        manager.stop(block=True)
    errors = [r.error for r in results.values() if r.error]
    if errors:
        raise RuntimeError(f"{config}: {len(errors)} requests failed, first: {errors[0]}")
    generated = sum(len(r.generated_tokens) for r in results.values())
    # From submission: a preempted request is queued again with new timestamps,
    # and its wait counts.
    ttft = [r.timestamps[0] - submitted[rid] for rid, r in results.items()
            if r.timestamps and rid in submitted]
    tpot = [(r.timestamps[-1] - r.timestamps[0]) / (len(r.timestamps) - 1)
            for r in results.values() if r.timestamps and len(r.timestamps) > 1]
    running = [n for _, n in sampler.samples]
    row = dict(config=config, requests=len(results), output_tokens=generated,
               seconds=elapsed, tokens_per_second=generated / elapsed,
               kv_bytes=kv_bytes, running_peak=max(running, default=0),
               running_mean=float(np.mean(running)) if running else 0.0,
               ttft=percentiles(ttft), tpot=percentiles(tpot),
               series=[(t - began, n) for t, n in sampler.samples],
               warm_up_seconds=warm_up_seconds)
    if name == "transformers":
        row.update(offloads_or_resets=resets[0])
        return row
    row.update(step_summary(cache.steps, roofline, page_bytes / args.page_size, began))
    row.update(pool_pages=cache.page_pool.num_pages,
               preemptions=manager.pool_pressure.preemptions,
               pool_budget_evictions=manager.pool_pressure.budget_evictions,
               pages_evicted_by_pool_budget=manager.pool_pressure.pages_evicted,
               starved_requests=manager.pool_pressure.starved,
               compress_seconds=cache.compress_seconds,
               failures=manager.pool_pressure.failures,
               compressed=cache.totals["compressed"],
               decode_compressions=cache.totals["decode_compressions"],
               decode_window_bytes=cache.decode_windows.bytes if cache.decode_windows else 0,
               prefix_hits=cache.totals["prefix_hits"],
               compressed_prefix_hits=cache.totals["compressed_prefix_hits"],
               prefix_hit_tokens=cache.totals["prefix_hit_tokens"],
               cached_pages_at_end=cache.pool_snapshot["cached_pages"])
    graphs = manager.decode_graphs
    if graphs is not None:
        row.update(graph_captures=graphs.captures, graph_replays=graphs.replays,
                   eager_steps=graphs.eager_steps)
    return row


def profile_steps(processor, spec):
    """Runs torch.profiler over steps [first, first + count) of the engine (spec
    CONFIG:FIRST:COUNT:FILE) and writes the operators' table to FILE."""
    from torch.profiler import ProfilerActivity, profile

    _, first, count, path = spec.rsplit(":", 3)  # CONFIG may hold a colon
    first, count = int(first), int(count)
    step = processor._generation_step
    calls = [0]
    cache = processor.cache
    if hasattr(cache, "attend"):  # headpage's share of the step, as one named range
        attend = cache.attend

        def named_attend(*args, **kwargs):
            with torch.profiler.record_function("headpage.serving.attend"):
                return attend(*args, **kwargs)

        cache.attend = named_attend
    cuda = torch.cuda.is_available()
    prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []))

    def profiled_step(model):
        calls[0] += 1
        if calls[0] == first:
            prof.__enter__()
        step(model)
        if calls[0] == first + count - 1:
            if cuda:
                torch.cuda.synchronize()
            prof.__exit__(None, None, None)
            with open(path, "w") as f:
                f.write(prof.key_averages().table(sort_by="cpu_time_total", row_limit=45))
                f.write("\n")
                if cuda:
                    f.write(prof.key_averages().table(sort_by="self_cuda_time_total",
                                                      row_limit=25))

    processor._generation_step = profiled_step


def step_summary(steps, roofline, per_stream_token, began):
    """Decode-phase throughput and the decode step against its roofline, from the
    cache's step records (a step lasts until the next one begins); a token of a
    stream costs `per_stream_token` bytes to read (its K, V and fp8 scales)."""
    decode_tokens, decode_seconds, ratios, step_ms = 0, 0.0, [], []
    pairs = [(s, f.began - s.began) for s, f in zip(steps, steps[1:])
             if not s.prefill_tokens and s.decoding]
    # A step that ends the work in hand is followed by the engine's idle wait (up
    # to 0.1 s, until a request arrives): such a gap is not the step's time.
    typical = float(np.median([d for _, d in pairs])) if pairs else 0.0
    for step, seconds in pairs:
        if seconds > max(5 * typical, typical + 0.1):
            continue
        decode_tokens += step.decoding
        decode_seconds += seconds
        step_ms.append(seconds * 1e3)
        if roofline is not None:
            weights, bandwidth = roofline
            floor = (weights + step.kv_tokens_read * per_stream_token) / bandwidth
            ratios.append(seconds / floor)
    # The decode steps that took over twice the median, and what ran in them.
    slow = [(s, d) for s, d in pairs if step_ms and d * 1e3 > 2 * float(np.median(step_ms))
            and d <= max(5 * typical, typical + 0.1)]
    slow_steps = dict(count=len(slow), seconds=sum(d for _, d in slow),
                      with_pool_eviction=sum(1 for s, _ in slow if s.pool_evictions),
                      eager=sum(1 for s, _ in slow if not s.graph),
                      tables={kind: sum(1 for s, _ in slow if s.tables == kind)
                              for kind in ("new", "refresh", "rebuilt", "reset")})
    return dict(steps=len(steps), decode_steps=len(step_ms), slow_decode_steps=slow_steps,
                decode_tokens_per_second=decode_tokens / decode_seconds if decode_seconds else None,
                decode_step_ms=percentiles(step_ms),
                decode_step_over_roofline=percentiles(ratios),
                step_series=[(s.began - began, s.requests, s.decoding, s.prefill_tokens,
                              s.pool_evictions, s.graph, s.tables) for s in steps])


def parse_args(argv):
    from headpage._kv_pages import KV_DTYPES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--model", choices=sorted(MODELS), default="llama3-8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--kv-gib", type=float, default=8.0, help="KV memory of every configuration")
    ap.add_argument("--kv-dtype", choices=KV_DTYPES, default="auto",
                    help="how headpage's pages store K/V: auto (the model's dtype) or fp8 "
                         "(e4m3 with a scale per token and stream; --dtype bf16). "
                         "transformers' own cache stays in the model's dtype")
    ap.add_argument("--page-size", type=int, default=16, help="headpage's page, in tokens")
    ap.add_argument("--transformers-page-size", type=int, default=256,
                    help="transformers' page (its default)")
    ap.add_argument("--workload", default="long-prompts",
                    choices=["long-prompts", "long-generation", "shared-prefix", "multi-turn"])
    ap.add_argument("--turns", type=int, default=4, help="multi-turn: turns a conversation")
    ap.add_argument("--prefix-tokens", type=int, default=4096,
                    help="shared-prefix: the system prompt every request starts with")
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--prompt-median", type=int, default=4096)
    ap.add_argument("--prompt-sigma", type=float, default=0.5, help="log-normal sigma")
    ap.add_argument("--prompt-min", type=int, default=1024)
    ap.add_argument("--prompt-max", type=int, default=8192)
    ap.add_argument("--output", type=int, default=512, help="new tokens of every request")
    ap.add_argument("--rate", type=float, default=0.0, help="requests a second; 0: all at once")
    ap.add_argument("--configs", default="full,uniform-snapkv:20%,ada-snapkv:20%,"
                    "ada-snapkv:10%,pool-pressure")
    ap.add_argument("--max-batch-tokens", type=int, default=8192)
    ap.add_argument("--max-requests-per-batch", type=int, default=256)
    ap.add_argument("--compress-every", type=int, default=0,
                    help="generated tokens between decode-time compressions (0: the prompt only)")
    ap.add_argument("--floor-tokens", type=int, default=64)
    ap.add_argument("--protect-recent", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tensor-parallel", type=int, default=1, metavar="N",
                    help="N ranks, each holding 1/N of every layer's kv heads and a pool of "
                         "--kv-gib (tools/serving_tp.py; one GPU each, or the CPU over gloo)")
    ap.add_argument("--tp-checkpoint", metavar="DIR",
                    help="--tensor-parallel: save the model here (reused when it holds the "
                         "same model and seed) instead of a temporary folder")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for a result")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--arrivals-csv", metavar="FILE",
                    help="also write the requests as `headpage workload --dist csv:FILE` "
                         "reads them (arrival_s,prompt_len,output_len) and stop")
    ap.add_argument("--profile", metavar="CONFIG:FIRST:COUNT:FILE",
                    help="torch.profiler over COUNT engine steps of CONFIG from step FIRST")
    args = ap.parse_args(argv)
    if args.prompt_min > args.prompt_max or args.requests < 1 or args.output < 1 or args.turns < 1:
        ap.error("want --prompt-min <= --prompt-max, --requests >= 1, --output >= 1, --turns >= 1")
    if args.tensor_parallel < 1:
        ap.error(f"--tensor-parallel {args.tensor_parallel}: want at least 1")
    if args.arrivals_csv and args.workload == "multi-turn":
        ap.error("--arrivals-csv: a multi-turn workload's later turns depend on the answers")
    if args.kv_dtype != "auto" and args.dtype == "f32":
        ap.error(f"--kv-dtype {args.kv_dtype} needs a bf16 or f16 model: --dtype bf16")
    return args


def write_arrivals(args, path):
    """The workload as the simulator's arrivals CSV, without building a model."""
    vocab = MODELS[args.model]["vocab_size"]
    prompts, arrivals, _ = make_requests(args, vocab)
    with open(path, "w") as f:
        f.write("arrival_s,prompt_len,output_len\n")
        for prompt, at in zip(prompts, arrivals):
            f.write(f"{at:.6f},{len(prompt)},{args.output}\n")


def main(argv=None):
    from headpage.serving import fused_projections

    args = parse_args(argv)
    if args.arrivals_csv:
        write_arrivals(args, args.arrivals_csv)
        return 0
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[args.dtype]
    if args.tensor_parallel > 1 and not serving_tp.in_rank():
        return serving_tp.launch(argv if argv is not None else sys.argv[1:], args, build_model,
                                 dtype)
    if serving_tp.in_rank():
        model = serving_tp.load_model(dtype)
    else:
        model = build_model(args.model, torch.device(args.device), dtype, args.seed)
    device = model.device
    # Under tensor parallelism rank 0 reports; the others run silently.
    lead = serving_tp.rank() == 0
    say = print if lead else (lambda *a, **k: None)
    if not lead:
        args.profile = None  # rank 0's steps stand for the others'
    shape, bytes_per_token = kv_bytes_per_token(model)
    # Under tensor parallelism a token of this rank's pool holds its heads only.
    bytes_per_token = bytes_per_token * local_kv_heads(model, shape) // shape.num_kv_heads
    bandwidth = copy_bandwidth(device)
    weights = weight_bytes_read(model)
    roofline = (weights, bandwidth) if bandwidth else None
    prompts, arrivals, followups = make_requests(args, model.config.vocab_size)
    header = dict(model=args.model, device=(torch.cuda.get_device_name(device)
                                            if device.type == "cuda" else "cpu"),
                  kv_gib=args.kv_gib, kv_dtype=args.kv_dtype, workload=args.workload,
                  tensor_parallel=args.tensor_parallel,
                  kv_heads_per_rank=local_kv_heads(model, shape),
                  tp_checkpoint=args.tp_checkpoint,
                  requests=args.requests,
                  turns=args.turns if args.workload == "multi-turn" else 1,
                  prompt_tokens=sum(map(len, prompts)), output=args.output, rate=args.rate,
                  copy_bandwidth=bandwidth, weight_bytes_read=weights,
                  kv_bytes_per_token=bytes_per_token,
                  pool_tokens_full=int(args.kv_gib * (1 << 30) // bytes_per_token))
    say(json.dumps(header), flush=True)
    rows = []
    for config in args.configs.split(","):
        fused = "fused" in config_modes(config)[1]
        with fused_projections(model) if fused else contextlib.nullcontext():
            row = run_config(model, config, args, prompts, arrivals, followups, shape,
                             bytes_per_token, roofline)
        rows.append(row)
        brief = {k: v for k, v in row.items() if k not in ("series", "step_series")}
        say(json.dumps(brief), flush=True)
        if args.out and lead:  # after every configuration, so a run cut short keeps its rows
            with open(args.out, "w") as f:
                json.dump(dict(header=header, rows=rows), f)
    # The baseline: the first headpage configuration whose policy evicts nothing.
    base = next((r for r in rows if r["config"] not in ("transformers", "pool-pressure")
                 and not evicts(r["config"])), None)
    if base:
        for r in rows:
            r["end_to_end_vs_full"] = r["tokens_per_second"] / base["tokens_per_second"]
            if r.get("decode_tokens_per_second") and base.get("decode_tokens_per_second"):
                r["decode_vs_full"] = (r["decode_tokens_per_second"] /
                                       base["decode_tokens_per_second"])
    if not lead:
        return 0
    print(f"{'config':<20} {'tok/s':>8} {'decode tok/s':>12} {'x full':>6} {'running':>11} "
          f"{'TTFT p50':>8} {'TPOT p50':>8} {'preempt':>7} {'compress s':>10} {'step/roof':>9}")
    for r in rows:
        decode = r.get("decode_tokens_per_second")
        roof = (r.get("decode_step_over_roofline") or {}).get("p50")
        print(f"{r['config']:<20} {r['tokens_per_second']:8.1f} "
              f"{decode if decode else float('nan'):12.1f} "
              f"{r.get('end_to_end_vs_full', float('nan')):6.2f} "
              f"{r['running_mean']:5.1f}/{r['running_peak']:<5d} "
              f"{r['ttft']['p50'] or float('nan'):8.2f} {r['tpot']['p50'] or float('nan'):8.4f} "
              f"{r.get('preemptions', r.get('offloads_or_resets', 0)):7d} "
              f"{r.get('compress_seconds', 0.0):10.2f} {roof if roof else float('nan'):9.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(header=header, rows=rows), f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
