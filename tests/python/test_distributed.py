# SPDX-License-Identifier: Apache-2.0
"""headpage.distributed: eviction engines of a tensor-parallel group, each holding a
slice of every layer's KV heads, in real processes joined by torch.distributed's
gloo backend, keep exactly what one engine over every head keeps: the same kept
counts and the same tokens in every stream, after a compression and after the
pool-wide budget. When one rank's call fails, every
rank raises and the group goes on serving. The same holds for engines over CUDA
pools (two ranks on one GPU), which score and compact on the device and agree
over the group's CPU side."""
import os
import socket
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import headpage as hp
from headpage.distributed import ProcessGroupCollective

# head_dim 64: the smallest the GPU kernels take.
LAYERS, HEADS, GROUP, DIM, PAGE, PROMPT = 3, 4, 2, 64, 8, 300
POLICIES = ("ada-snapkv", "ada-pyramid", "critical-ada-snapkv", "uniform-snapkv", "h2o")
# The CUDA executor refuses policies that weigh values by W_o (critical-*).
CUDA_POLICIES = tuple(p for p in POLICIES if not p.startswith("critical-"))


def prompt(seed=0):
    """Every head's K/V [layer][token][HEADS][DIM], window queries
    [layer][HEADS * GROUP][WINDOW][DIM] and W_o [layer][hidden][HEADS * GROUP * DIM]."""
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randn(LAYERS, PROMPT, HEADS, DIM, generator=gen)
    values = torch.randn(LAYERS, PROMPT, HEADS, DIM, generator=gen)
    queries = 2 * torch.randn(LAYERS, HEADS * GROUP, PROMPT, DIM, generator=gen)
    projections = torch.randn(LAYERS, 48, HEADS * GROUP * DIM, generator=gen)
    return keys, values, queries, projections


def engine_over(heads, group, device):
    """A manager and an engine over `heads` kv heads, on a HostArena or (device
    "cuda") a CudaArena; the engine joins `group` when there is one."""
    g = hp.CacheGeometry(num_layers=LAYERS, num_kv_heads=heads, num_q_heads=heads * GROUP,
                         head_dim=DIM, dtype="f32", page_size=PAGE)
    pool = hp.PagePool(4096)
    arena = (hp.CudaArena if device == "cuda" else hp.HostArena)(g, 4096)
    manager = hp.BlockManager(g, pool)
    engine = hp.EvictionEngine(manager, arena)
    if group is not None:
        engine.join_group(group)
    return arena, manager, engine


def write_prompt(arena, manager, seq, first, heads, length, device):
    """Reserves `length` tokens of seq and writes the prompt's K/V of kv heads
    [first, first + heads) to every layer."""
    keys, values, *_ = prompt()
    plan = manager.reserve(seq, length)
    slots = torch.from_numpy(plan.slot_mapping.copy()).to(device)
    positions = torch.arange(length, dtype=torch.int32, device=device)
    for layer in range(LAYERS):
        hp.write_kv(arena, keys[layer, :length, first:first + heads].contiguous().to(device),
                    values[layer, :length, first:first + heads].contiguous().to(device),
                    slots[:, layer, :], positions)


def compress_heads(first, heads, policy, budget, group=None, seq_offset=0, device="cpu"):
    """An engine over kv heads [first, first + heads): writes the prompt, compresses
    it, and returns the kept counts and each stream's kept positions."""
    _, _, queries, projections = prompt()
    arena, manager, engine = engine_over(heads, group, device)
    seq = manager.add_sequence()
    write_prompt(arena, manager, seq, first, heads, PROMPT, device)
    q_first, q_heads = first * GROUP, heads * GROUP
    # An unknown name goes to compress() as it is, for the binding to refuse.
    config = hp.policy_by_name(policy if policy in hp.POLICIES else "ada-snapkv")
    observed = config.observed_queries(PROMPT)
    window = [queries[layer, q_first:q_first + q_heads, PROMPT - observed:].contiguous()
              .to(device) for layer in range(LAYERS)]
    w_o = [projections[layer, :, q_first * DIM:(q_first + q_heads) * DIM].contiguous()
           .to(device) for layer in range(LAYERS)]
    result = engine.compress(seq + seq_offset, policy, budget, window,
                             [torch.arange(PROMPT - observed, PROMPT, dtype=torch.int32,
                                           device=device)],
                             output_projections=w_o if config.needs_output_projection else None)
    manager.check_invariants()
    return result.kept.tolist(), kept_positions(arena, manager, seq), engine, manager, seq


def kept_positions(arena, manager, seq):
    """[layer][kv head]: the positions each stream of seq holds, in slot order
    (read from the pool's positions, on the host or the device)."""
    slot_positions = torch.from_dlpack(arena.positions).cpu().tolist()
    out = []
    for layer in range(LAYERS):
        table = manager.block_table(layer, [seq])
        out.append([[slot_positions[table.page_ids[table.indptr[h] + i // PAGE] * PAGE + i % PAGE]
                     for i in range(table.lens[h])]
                    for h in range(len(table.lens))])
    return out


def pool_budget_heads(first, heads, pages_to_free, group=None, device="cpu"):
    """Two prompts compressed by uniform-snapkv in one pool over kv heads
    [first, first + heads), then the pool budget; each stream's kept positions."""
    _, _, queries, _ = prompt()
    arena, manager, engine = engine_over(heads, group, device)
    seqs = []
    for length in (PROMPT, PROMPT - 57):
        seq = manager.add_sequence()
        write_prompt(arena, manager, seq, first, heads, length, device)
        window = [queries[layer, first * GROUP:(first + heads) * GROUP, length - 32:length]
                  .contiguous().to(device) for layer in range(LAYERS)]
        engine.compress(seq, "uniform-snapkv", "60%", window,
                        [torch.arange(length - 32, length, dtype=torch.int32, device=device)])
        seqs.append(seq)
    freed = engine.enforce_pool_budget(pages_to_free, floor_tokens=8, protect_recent=4)
    kept = [streams for seq in seqs for streams in kept_positions(arena, manager, seq)]
    manager.check_invariants()
    return freed, kept


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank, size, port, results, device):
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=size)
        group = ProcessGroupCollective()
        heads = HEADS // size
        out = {}
        for policy in CUDA_POLICIES if device == "cuda" else POLICIES:
            for budget in ("25%", "40%"):
                kept, positions, *_ = compress_heads(rank * heads, heads, policy, budget, group,
                                                     device=device)
                out[policy, budget] = (kept, positions)
        # Rank 1 names a sequence it does not have: every rank raises, then the same
        # call without the mistake succeeds on both.
        # Then rank 1 names a policy there is none of: the binding refuses it before
        # the engine, and still the others raise instead of waiting for it.
        errors = []
        calls = [(99 if rank == 1 else 0, "ada-snapkv"), (0, "ada-snapkv"),
                 (0, "no-such-policy" if rank == 1 else "ada-snapkv"), (0, "ada-snapkv")]
        for offset, policy in calls:
            try:
                compress_heads(rank * heads, heads, policy, "20%", group, offset, device)
                errors.append(None)
            except Exception as e:  # noqa: BLE001 (the type is what is checked)
                errors.append(f"{type(e).__name__}: {e}")
        out["errors"] = errors
        out["pool"] = [pool_budget_heads(rank * heads, heads, target, group, device)
                       for target in (3, 25)]
        dist.barrier()
        dist.destroy_process_group()
        results[rank] = out
    except BaseException:  # noqa: BLE001 (reported to the test)
        results[rank] = traceback.format_exc()


def run_group(size, device):
    """Runs rank_main in `size` processes; checks what they kept against one
    engine over every head on the same device."""
    results = mp.Manager().dict()
    mp.start_processes(rank_main, args=(size, free_port(), results, device), nprocs=size,
                       join=True, start_method="spawn")
    heads = HEADS // size
    for rank in range(size):
        assert not isinstance(results[rank], str), results[rank]
    for policy in CUDA_POLICIES if device == "cuda" else POLICIES:
        for budget in ("25%", "40%"):
            kept, positions, *_ = compress_heads(0, HEADS, policy, budget, device=device)
            assert sum(map(sum, kept)) < LAYERS * HEADS * PROMPT  # it did compress
            for rank in range(size):
                got_kept, got_positions = results[rank][policy, budget]
                for layer in range(LAYERS):
                    mine = slice(rank * heads, (rank + 1) * heads)
                    assert got_kept[layer] == kept[layer][mine], (policy, budget, rank, layer)
                    assert got_positions[layer] == positions[layer][mine], (policy, budget)
    for i, target in enumerate((3, 25)):
        freed, kept = pool_budget_heads(0, HEADS, target, device=device)
        assert freed >= target
        assert sum(results[rank]["pool"][i][0] for rank in range(size)) == freed
        for rank in range(size):
            for stream, streams in enumerate(results[rank]["pool"][i][1]):
                assert streams == kept[stream][rank * heads:(rank + 1) * heads], (target, rank)
    failed = results[1]["errors"]
    assert failed[0].startswith("KeyError") and failed[1] is None and failed[3] is None
    assert failed[2].startswith("ValueError") and "no-such-policy" in failed[2], failed[2]
    for rank in [0] + list(range(2, size)):
        first, second, third, fourth = results[rank]["errors"]
        for refused in (first, third):
            assert refused.startswith("RuntimeError") and "other member of the group" in refused
        assert second is None and fourth is None


@pytest.mark.parametrize("size", [2, 4])
def test_a_gloo_group_keeps_what_one_engine_keeps(size):
    run_group(size, "cpu")


@pytest.mark.skipif(not (hp.has_cuda and torch.cuda.is_available()),
                    reason="needs a CUDA build and a CUDA device")
def test_cuda_engines_of_a_gloo_group_keep_what_one_cuda_engine_keeps():
    """Two ranks on one GPU, each a CudaArena: the device executor scores and
    compacts, the group agrees over gloo, and they keep one CUDA engine's tokens."""
    run_group(2, "cuda")


class BrokenGroup:
    """A group of one whose all_reduce_sum raises, as a lost peer's would."""
    rank, size = 0, 1

    def all_reduce_sum(self, array):
        raise ConnectionError("peer 1 went away")


def test_a_group_that_cannot_exchange_raises_and_changes_nothing():
    g = hp.CacheGeometry(num_layers=1, num_kv_heads=2, num_q_heads=2, head_dim=32, dtype="f32",
                         page_size=8)
    pool, arena = hp.PagePool(64), hp.HostArena(g, 64)
    manager = hp.BlockManager(g, pool)
    engine = hp.EvictionEngine(manager, arena)
    group = BrokenGroup()
    engine.join_group(group)
    assert engine.group is group
    with pytest.raises(ValueError, match="in a group already"):
        engine.join_group(group)
    seq = manager.add_sequence()
    plan = manager.reserve(seq, 64)
    hp.write_kv(arena, torch.randn(64, 2, 32), torch.randn(64, 2, 32), plan.slot_mapping[:, 0, :],
                torch.arange(64, dtype=torch.int32))
    policy = hp.policy_by_name("ada-snapkv")
    policy.window = 8
    with pytest.raises(RuntimeError, match="all_reduce_sum failed: .*peer 1 went away"):
        engine.compress(seq, policy, "25%", [torch.randn(2, 8, 32)],
                        [torch.arange(56, 64, dtype=torch.int32)])
    assert manager.stream_lengths(seq).tolist() == [[64, 64]]
    with pytest.raises(NotImplementedError, match="across a layer's kv heads"):
        engine.compress(seq, "tova", "25%", [torch.randn(2, 8, 32)],
                        [torch.arange(56, 64, dtype=torch.int32)])
    with pytest.raises(ValueError, match="rank 3 of a group of 2"):
        hp.EvictionEngine(manager, arena).join_group(type("G", (), {"rank": 3, "size": 2})())
