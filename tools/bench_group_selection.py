#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""What a tensor-parallel group's agreement adds to a compression: each of R
processes (gloo) holds 1/R of every layer's KV heads in a host pool and
compresses the same prompt with EvictionEngine.compress, once in the group
(join_group: Ada-KV's top-k agreed across the ranks) and once alone (its heads'
own top-k), alternating, on fresh sequences. It prints, per rank count, the
median compression time of each and the difference: the time the global
selection adds per compression (the all-reduces, and waiting for the slowest
rank). On one host the ranks share its cores: compare the difference, not the
totals.

usage: bench_group_selection.py [--ranks 1 2 4] [--layers 8] [--kv-heads 8] [--group 4]
           [--head-dim 128] [--prompt 2048] [--policy ada-snapkv] [--budget 20%] [--reps 5]
"""
import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import headpage as hp
from headpage.distributed import ProcessGroupCollective


def rank_main(rank, ranks, port, args, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=ranks)
    torch.set_num_threads(1)
    heads = args.kv_heads // ranks
    g = hp.CacheGeometry(num_layers=args.layers, num_kv_heads=heads,
                         num_q_heads=heads * args.group, head_dim=args.head_dim, dtype="f32",
                         page_size=16)
    pages = 2 * args.layers * heads * (args.prompt // 16 + 1) + 64
    pool, arena = hp.PagePool(pages), hp.HostArena(g, pages)
    manager = hp.BlockManager(g, pool)
    grouped, alone = hp.EvictionEngine(manager, arena), hp.EvictionEngine(manager, arena)
    grouped.join_group(ProcessGroupCollective())
    gen = torch.Generator().manual_seed(rank)
    keys = torch.randn(args.prompt, heads, args.head_dim, generator=gen)
    window = hp.policy_by_name(args.policy).observed_queries(args.prompt)
    queries = [torch.randn(heads * args.group, window, args.head_dim, generator=gen)
               for _ in range(args.layers)]
    positions = torch.arange(args.prompt - window, args.prompt, dtype=torch.int32)
    times = {"group": [], "alone": []}
    for rep in range(args.reps + 1):
        for mode, engine in (("group", grouped), ("alone", alone)):
            seq = manager.add_sequence()
            plan = manager.reserve(seq, args.prompt)
            for layer in range(args.layers):
                hp.write_kv(arena, keys, keys, plan.slot_mapping[:, layer, :],
                            torch.arange(args.prompt, dtype=torch.int32))
            dist.barrier()
            began = time.perf_counter()
            engine.compress(seq, args.policy, args.budget, queries, [positions])
            if rep:  # the first is a warm-up
                times[mode].append(time.perf_counter() - began)
            manager.free(seq)
    results[rank] = times
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=2048)
    ap.add_argument("--policy", default="ada-snapkv")
    ap.add_argument("--budget", default="20%")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    print(f"{args.layers} layers x {args.kv_heads} KV heads (x{args.group} query heads), "
          f"head_dim {args.head_dim}, prompt {args.prompt}, {args.policy} {args.budget}, "
          f"median of {args.reps}")
    print("| ranks | compress in the group (ms) | alone (ms) | added by the agreement (ms) |")
    print("|---|---|---|---|")
    for ranks in args.ranks:
        if args.kv_heads % ranks:
            continue
        results = mp.Manager().dict()
        mp.start_processes(rank_main, args=(ranks, free_port(), args, results), nprocs=ranks,
                           join=True, start_method="spawn")
        # The group waits for its slowest rank: take the slowest rank's medians.
        group = max(statistics.median(results[r]["group"]) for r in range(ranks)) * 1e3
        alone = max(statistics.median(results[r]["alone"]) for r in range(ranks)) * 1e3
        print(f"| {ranks} | {group:.2f} | {alone:.2f} | {group - alone:+.2f} |", flush=True)


if __name__ == "__main__":
    main()
