# SPDX-License-Identifier: Apache-2.0
"""headpage's Python bindings on the CPU: the pool, the arena's zero-copy views,
the block manager, the eviction engine, the reference kernels, and the exceptions
a bad argument raises."""
import numpy as np
import pytest
import torch

import headpage as hp

PAGE = 4


@pytest.fixture
def small():
    """A 2-layer, 2-KV-head, 4-query-head f32 cache of 64 pages."""
    g = hp.CacheGeometry(num_layers=2, num_kv_heads=2, num_q_heads=4, head_dim=64, dtype="f32",
                         page_size=PAGE)
    pool = hp.PagePool(64)
    arena = hp.HostArena(g, 64)
    return g, pool, arena, hp.BlockManager(g, pool)


def fill(arena, manager, seq, layers, tokens, start=0, seed=0):
    """Reserves `tokens` tokens and writes random K/V to every layer; returns them
    as [layer] -> (k, v), each [tokens][kv_heads][head_dim]."""
    gen = torch.Generator().manual_seed(seed)
    plan = manager.reserve(seq, tokens)
    assert plan.first_position == start
    positions = torch.arange(start, start + tokens, dtype=torch.int32)
    written = []
    for layer in range(layers):
        k = torch.randn(tokens, 2, 64, generator=gen)
        v = torch.randn(tokens, 2, 64, generator=gen)
        hp.write_kv(arena, k, v, plan.slot_mapping[:, layer, :], positions)
        written.append((k, v))
    return written


def gather(arena, table):
    n = int(table.lens.sum())
    keys, values = torch.empty(n, 64), torch.empty(n, 64)
    positions = torch.empty(n, dtype=torch.int32)
    hp.gather_kv(arena, table.indptr, table.page_ids, table.lens, keys, values, positions)
    return keys, values, positions


def test_geometry_and_pool():
    g = hp.CacheGeometry(num_layers=30, num_kv_heads=3, num_q_heads=9, head_dim=64, dtype="bf16")
    assert (g.page_size, g.dtype, g.streams_per_sequence) == (16, "bf16", 90)
    assert g.page_bytes == 2 * 16 * 64 * 2
    pool = hp.PagePool(100, watermark=0.1)
    assert (pool.num_pages, pool.free_pages, pool.used_pages) == (100, 100, 0)
    assert pool.can_allocate(90) and not pool.can_allocate(91)
    assert pool.stats().watermark_pages == 10
    pool.check_invariants()


def test_arena_views_are_zero_copy(small):
    g, pool, arena, manager = small
    kv = torch.from_dlpack(arena.kv)
    assert kv.shape == (64, 2, PAGE, 64) and kv.dtype == torch.float32
    assert arena.kv.__dlpack_device__() == (1, 0)  # kDLCPU
    seq = manager.add_sequence()
    (k, v), _ = fill(arena, manager, seq, 2, 3)
    page = manager.stream_pages(seq, 0, 1)[0]
    # The write is visible through a view taken before it, and through numpy.
    assert torch.equal(kv[page, 0, :3], k[:, 1])
    assert torch.equal(kv[page, 1, :3], v[:, 1])
    positions = np.from_dlpack(arena.positions)
    assert positions[page * PAGE: page * PAGE + 4].tolist() == [0, 1, 2, -1]
    kv[page, 0, 0, 0] = 42.0  # and a write through the view lands in the pool
    keys, _, _ = gather(arena, manager.block_table(0, [seq]))
    assert keys[3, 0].item() == 42.0  # row 1 (kv head 1) starts after head 0's 3 tokens


def test_write_gather_round_trip_and_stats(small):
    g, pool, arena, manager = small
    seq = manager.add_sequence()
    written = fill(arena, manager, seq, 2, 6)
    table = manager.block_table(1, [seq])
    assert table.lens.tolist() == [6, 6] and table.indptr.tolist() == [0, 2, 4]
    keys, values, positions = gather(arena, table)
    k, v = written[1]
    assert torch.equal(keys, torch.cat([k[:, 0], k[:, 1]]))
    assert torch.equal(values, torch.cat([v[:, 0], v[:, 1]]))
    assert positions.tolist() == list(range(6)) * 2
    stats = manager.stats()
    assert stats.pages_in_use == 2 * 2 * 2 and stats.used_slots == 24
    assert stats.internal_fragmentation == 4 * 2
    assert manager.stream_lengths(seq).tolist() == [[6, 6], [6, 6]]
    manager.free(seq)
    assert pool.free_pages == 64
    manager.check_invariants()


def test_decode_attention_matches_dense(small):
    g, pool, arena, manager = small
    seqs = [manager.add_sequence() for _ in range(2)]
    data = [fill(arena, manager, s, 2, n, seed=i) for i, (s, n) in enumerate(zip(seqs, (5, 9)))]
    table = manager.block_table(1, seqs, headroom_pages=2)
    q = torch.randn(2, 4, 64)
    out, lse = torch.empty(2, 4, 64), torch.empty(2, 4)
    hp.decode_attention(arena, q, table.indptr, table.page_ids, table.lens, out, lse=lse)
    for b in range(2):
        k, v = data[b][1]
        kr = k.transpose(0, 1).repeat_interleave(2, 0)  # q head h reads kv head h // 2
        vr = v.transpose(0, 1).repeat_interleave(2, 0)
        scores = (q[b].unsqueeze(1) @ kr.transpose(1, 2)).squeeze(1) / 8.0
        want = (torch.softmax(scores, -1).unsqueeze(1) @ vr).squeeze(1)
        torch.testing.assert_close(out[b], want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lse[b], torch.logsumexp(scores, -1), rtol=1e-5, atol=1e-5)


def test_decode_attention_divisions_are_checked_on_the_host(small):
    g, pool, arena, manager = small
    seqs = [manager.add_sequence() for _ in range(2)]
    for i, (s, n) in enumerate(zip(seqs, (5, 9))):
        fill(arena, manager, s, 2, n, seed=i)
    table = manager.block_table(1, seqs)
    q = torch.randn(2, 4, 64)
    want = torch.empty(2, 4, 64)
    hp.decode_attention(arena, q, table.indptr, table.page_ids, table.lens, want)
    size = hp.decode_attention_balanced_workspace_bytes(2, 4, 2, 64, 6)
    # A partial per piece and query head of the group, then each stream's first unit.
    assert size == (2 * 2 + 6) * 2 * 65 * 4 + (2 * 2 + 1) * 8
    out = torch.empty(2, 4, 64)
    # The CPU reference divides nothing, but checks the arguments as the GPU does.
    hp.decode_attention(arena, q, table.indptr, table.page_ids, table.lens, out,
                        balanced_blocks=6, workspace=torch.empty(size, dtype=torch.uint8))
    torch.testing.assert_close(out, want)
    with pytest.raises(ValueError, match="6 balanced blocks need"):
        hp.decode_attention(arena, q, table.indptr, table.page_ids, table.lens, out,
                            balanced_blocks=6, workspace=torch.empty(size - 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="two divisions of the work"):
        hp.decode_attention(arena, q, table.indptr, table.page_ids, table.lens, out,
                            num_splits=2, balanced_blocks=6,
                            workspace=torch.empty(size, dtype=torch.uint8))


def test_decode_attention_writes_the_steps_tokens_first(small):
    """new_keys/new_values/new_positions: the same pool and outputs as write_kv
    over reserve's slots, then decode_attention; bad ones write nothing."""
    g, pool, arena, manager = small
    seqs = [manager.add_sequence() for _ in range(2)]
    for i, (s, n) in enumerate(zip(seqs, (5, 8))):  # the second step's token opens a page
        fill(arena, manager, s, 2, n, seed=i)
    plans = [manager.reserve(s, 1) for s in seqs]
    k, v = torch.randn(2, 2, 64), torch.randn(2, 2, 64)
    positions = torch.tensor([5, 8], dtype=torch.int32)
    table = manager.block_table(1, seqs)
    q = torch.randn(2, 4, 64)
    kv = torch.from_dlpack(arena.kv).view(torch.int32)  # bits: unwritten slots may be NaN
    positions_view = torch.from_dlpack(arena.positions)
    before = (kv.clone(), positions_view.clone())

    fused = torch.empty(2, 4, 64)
    hp.decode_attention(arena, q, table.indptr, table.page_ids, table.lens, fused,
                        new_keys=k, new_values=v, new_positions=positions)
    after = (kv.clone(), positions_view.clone())
    kv.copy_(before[0])
    positions_view.copy_(before[1])
    slots = np.concatenate([p.slot_mapping[:, 1, :] for p in plans])
    hp.write_kv(arena, k, v, slots, positions)
    want = torch.empty(2, 4, 64)
    hp.decode_attention(arena, q, table.indptr, table.page_ids, table.lens, want)
    assert torch.equal(kv, after[0]) and torch.equal(positions_view, after[1])
    assert not torch.equal(after[0], before[0]) and not torch.equal(after[1], before[1])
    torch.testing.assert_close(fused, want, rtol=0, atol=0)

    with pytest.raises(ValueError, match="all three or none"):
        hp.decode_attention(arena, q, table.indptr, table.page_ids, table.lens, fused,
                            new_keys=k, new_values=v)
    with pytest.raises(ValueError, match="new_values"):
        hp.decode_attention(arena, q, table.indptr, table.page_ids, table.lens, fused,
                            new_keys=k, new_values=v[:1], new_positions=positions)
    with pytest.raises(ValueError, match="new_positions"):
        hp.decode_attention(arena, q, table.indptr, table.page_ids, table.lens, fused,
                            new_keys=k, new_values=v, new_positions=positions.long())
    # A seq at position -1 has no new token: seq 1's streams keep what they hold.
    kv.copy_(before[0])
    positions_view.copy_(before[1])
    hp.decode_attention(arena, q, table.indptr, table.page_ids, table.lens, fused,
                        new_keys=k, new_values=v,
                        new_positions=torch.tensor([5, -1], dtype=torch.int32))
    seq1_slots = torch.as_tensor(slots[1].astype(np.int64))
    assert torch.equal(positions_view[seq1_slots], before[1][seq1_slots])
    for slot in slots[1].tolist():
        page, offset = divmod(slot, PAGE)
        assert torch.equal(kv[page, :, offset], before[0][page, :, offset])
    assert torch.equal(positions_view[torch.as_tensor(slots[0].astype(np.int64))],
                       torch.tensor([5, 5], dtype=torch.int32))
    kv.copy_(after[0])
    positions_view.copy_(after[1])
    bad_ids = table.page_ids.copy()
    bad_ids[-1] = 64  # outside the pool
    with pytest.raises(ValueError, match="page"):
        hp.decode_attention(arena, q, table.indptr, bad_ids, table.lens, fused,
                            new_keys=k * 2, new_values=v, new_positions=positions)
    assert torch.equal(kv, after[0])


def test_the_split_count_fills_whole_waves_of_the_arenas_blocks(small):
    arena = small[2]
    assert hp.decode_attention_resident_blocks(arena) == 2  # f32 pages
    fp8 = hp.HostArena(hp.CacheGeometry(num_layers=1, num_kv_heads=2, num_q_heads=4, head_dim=128,
                                        dtype="bf16", page_size=16, kv_dtype="fp8"), 4)
    assert hp.decode_attention_resident_blocks(fp8) == 4
    # About six blocks per SM: three waves of two, one wave of four.
    assert hp.decode_attention_splits(32768, 64, 132, 2) == 12
    assert hp.decode_attention_splits(32768, 64, 132, 4) == 8
    assert hp.decode_attention_splits(32768, 64, 132) == 12  # the 16-bit pass's two
    assert hp.decode_attention_splits(2048, 8, 132) == 8      # one wave, none under 256 tokens


def test_fork_copy_on_write(small):
    g, pool, arena, manager = small
    parent = manager.add_sequence()
    fill(arena, manager, parent, 2, 6)
    used = pool.used_pages
    child = manager.fork(parent)
    assert pool.used_pages == used  # sharing, no copy
    plan = manager.reserve(child, 1)
    # Each stream's half-full tail page is shared: copied before the child writes.
    assert len(plan.copy_src) == 4
    hp.copy_pages(arena, plan.copy_src, plan.copy_dst)
    # Whole pages, byte for byte (unwritten slots hold whatever the memory held, NaN too).
    kv = torch.from_dlpack(arena.kv).view(torch.int32)
    assert torch.equal(kv[plan.copy_dst.astype(np.int64)], kv[plan.copy_src.astype(np.int64)])
    assert manager.num_tokens(child) == 7 and manager.num_tokens(parent) == 6
    manager.check_invariants()


def test_evict_and_compact(small):
    g, pool, arena, manager = small
    seq = manager.add_sequence()
    written = fill(arena, manager, seq, 2, 10)
    plan = hp.CompactionPlan()
    manager.evict(seq, 0, [3, 10], plan)  # head 0 keeps 3 tokens, head 1 all 10
    assert plan.num_rows == 2 and plan.kept.tolist() == [3, 10]
    keep = np.array([1, 4, 9] + list(range(10)), dtype=np.int32)
    args = plan.kernel_args()
    hp.compact(arena, args.src_indptr, args.src_page_ids, args.src_lens, args.dst_indptr,
               args.dst_page_ids, args.keep_indptr, keep, args.in_place)
    manager.release_retired_pages()
    table = manager.block_table(0, [seq])
    assert table.lens.tolist() == [3, 10]
    keys, _, positions = gather(arena, table)
    k, _ = written[0]
    assert torch.equal(keys[:3], k[[1, 4, 9], 0])
    assert positions.tolist() == [1, 4, 9] + list(range(10))
    # 10 tokens took 3 pages in each of 4 streams; head 0 of layer 0 now needs 1.
    assert manager.stats().pages_in_use == 12 - 2
    manager.check_invariants()


def test_prefix_cache_shares_pages_and_freezes_them_in_evictions(small):
    g, pool, arena, manager = small
    ids = list(range(100, 110))
    first = manager.add_sequence()
    written = fill(arena, manager, first, 2, 10)
    assert manager.cache_prefix(first, ids) == 8  # two full pages
    assert manager.cached_prefix_tokens(ids) == 8
    assert manager.cached_prefix_tokens(ids, salt=3) == 0
    free = pool.free_pages
    seq, cached = manager.add_sequence_with_prefix(ids[:9])
    assert cached == 8 and pool.free_pages == free  # no page taken
    assert manager.num_tokens(seq) == 8
    assert manager.stream_pages(seq, 1, 1) == manager.stream_pages(first, 1, 1)[:2]
    fill(arena, manager, seq, 2, 6, start=8, seed=1)
    # Head 0 of layer 0 keeps the 8 shared tokens and 2 of its own 6.
    plan = hp.CompactionPlan()
    manager.evict(seq, 0, [10, 14], plan, frozen_tokens=8)
    assert plan.kept.tolist() == [2, 6]  # the rows cover the suffixes
    keep = np.array([1, 4] + list(range(6)), dtype=np.int32)
    args = plan.kernel_args()
    hp.compact(arena, args.src_indptr, args.src_page_ids, args.src_lens, args.dst_indptr,
               args.dst_page_ids, args.keep_indptr, keep, args.in_place)
    manager.release_retired_pages()
    table = manager.block_table(0, [seq])
    assert table.lens.tolist() == [10, 14]
    keys, _, positions = gather(arena, table)
    assert positions[:10].tolist() == list(range(8)) + [9, 12]
    assert torch.equal(keys[:8], written[0][0][:8, 0])  # the shared pages, untouched
    manager.check_invariants()
    manager.free(first)
    manager.free(seq)
    stats = manager.stats()
    assert stats.cached_blocks == 2 and stats.cached_blocks_unused == 2
    assert stats.pages_cached_only == 8 and manager.available_pages == 64
    assert manager.cached_pages == stats.pages_cached == 8
    assert manager.reclaim_cached_pages(64) == 8 and pool.free_pages == 64
    with pytest.raises(ValueError, match="multiple of the page size"):
        manager.evict(manager.add_sequence(), 0, [0, 0], plan, frozen_tokens=3)
    with pytest.raises(ValueError, match="token ids for a sequence of 0"):
        manager.cache_prefix(manager.add_sequence(), [1, 2])
    manager.check_invariants()


def test_a_pool_serves_one_manager(small):
    """A second manager on a pool in use would break its reference counts: refused."""
    g, pool, arena, manager = small
    with pytest.raises(RuntimeError, match="already serves a block manager"):
        hp.BlockManager(g, pool)
    seq = manager.add_sequence()
    manager.reserve(seq, 5)
    manager.check_invariants()
    other = hp.PagePool(64)
    hp.BlockManager(g, other)  # a pool of its own is fine


def test_compress_refuses_bad_query_positions(small):
    """Positions past the sequence, negative, or not strictly ascending are refused,
    changing nothing."""
    g, pool, arena, manager = small
    engine = hp.EvictionEngine(manager, arena)
    seq = manager.add_sequence()
    fill(arena, manager, seq, 2, 40)
    queries = [torch.randn(4, 3, 64) for _ in range(2)]
    stats = manager.stats()
    for bad in ([38, 39, 40], [-1, 0, 1], [5, 4, 6], [5, 5, 6]):
        with pytest.raises(ValueError, match="ascend strictly within"):
            engine.compress(seq, "uniform-snapkv", 36, queries,
                            [torch.tensor(bad, dtype=torch.int32)])
    assert manager.stats() == stats
    assert (manager.stream_lengths(seq) == 40).all()
    manager.check_invariants()


def test_a_manager_in_use_by_another_thread_raises():
    """compress() releases the GIL; meanwhile every call on its manager or pool from
    another thread raises RuntimeError instead of racing, and nothing is corrupted."""
    import threading
    g = hp.CacheGeometry(num_layers=2, num_kv_heads=2, num_q_heads=4, head_dim=64, dtype="f32",
                         page_size=16)
    pool = hp.PagePool(1024)
    arena = hp.HostArena(g, 1024)
    manager = hp.BlockManager(g, pool)
    engine = hp.EvictionEngine(manager, arena)
    seq = manager.add_sequence()
    tokens = 2000
    plan = manager.reserve(seq, tokens)
    positions = torch.arange(tokens, dtype=torch.int32)
    for layer in range(2):
        hp.write_kv(arena, torch.randn(tokens, 2, 64), torch.randn(tokens, 2, 64),
                    plan.slot_mapping[:, layer, :], positions)
    # H2O scores every prompt query against every key: long enough to overlap.
    queries = [torch.randn(4, tokens, 64) for _ in range(2)]
    started, done, result = threading.Event(), threading.Event(), {}

    def compress():
        started.set()
        try:
            result["value"] = engine.compress(seq, "h2o", "20%", queries, [positions])
        finally:
            done.set()

    worker = threading.Thread(target=compress)
    worker.start()
    started.wait()
    refused = 0
    while not done.is_set():
        # Reads only: a write that slipped in before compress() started would
        # change what it compresses (every call takes the same check).
        for call in (manager.stats, lambda: manager.num_tokens(seq), lambda: pool.free_pages):
            try:
                call()
            except RuntimeError as error:
                assert "in use by EvictionEngine.compress in another thread" in str(error)
                refused += 1
    worker.join()
    assert refused > 0
    assert result["value"].tokens_after < result["value"].tokens_before
    assert (manager.stream_lengths(seq) == result["value"].kept).all()
    manager.check_invariants()
    pool.check_invariants()


def test_table_and_plan_arrays_outlive_later_changes(small):
    """A BlockTable's and a CompactionPlan's arrays are copies: a refresh that rebuilds
    the table and a second evict() into the plan reallocate the C++ arrays, and the
    arrays taken before must still hold what they held."""
    g, pool, arena, manager = small
    seq = manager.add_sequence()
    fill(arena, manager, seq, 2, 40)
    table = manager.block_table(0, [seq])
    page_ids, lens = table.page_ids, table.lens
    before = (page_ids.copy(), lens.copy())
    plan = hp.CompactionPlan()
    manager.evict(seq, 0, [3, 5], plan)
    kept = plan.kept
    manager.evict(seq, 1, [2, 2], plan)  # grows the plan's arrays
    manager.release_retired_pages()
    manager.reserve(seq, 12)  # new pages, past the table's (zero) headroom
    manager.refresh_block_table(table)
    # The table changed; the arrays taken before did not (a view would have).
    assert (table.page_ids != before[0]).any() and (table.lens != before[1]).any()
    assert (page_ids == before[0]).all() and (lens == before[1]).all()
    assert kept.tolist() == [3, 5] and plan.kept.tolist() == [3, 5, 2, 2]
    assert (table.lens == manager.stream_lengths(seq)[0]).all()
    manager.check_invariants()


def test_eviction_engine_uniform_budget(small):
    g, pool, arena, manager = small
    engine = hp.EvictionEngine(manager, arena)
    seq = manager.add_sequence()
    fill(arena, manager, seq, 2, 40)
    window = 8
    queries = [torch.randn(4, window, 64) for _ in range(2)]
    positions = torch.arange(40 - window, 40, dtype=torch.int32)
    policy = hp.policy_by_name("uniform-snapkv")
    policy.window = window
    free_before = pool.free_pages
    result = engine.compress(seq, policy, 12, queries, [positions])
    assert isinstance(result, hp.CompressResult)
    assert result.tokens_before == 4 * 40 and result.tokens_after == 4 * 12
    assert result.kept.tolist() == [[12, 12], [12, 12]]
    # 40 tokens = 10 pages per stream; 12 tokens = 3.
    assert result.pages_freed == 4 * (10 - 3) == pool.free_pages - free_before
    manager.check_invariants()


def test_results_are_read_only_objects_that_own_their_arrays(small):
    g, pool, arena, manager = small
    seq = manager.add_sequence()
    plan = manager.reserve(seq, 3)
    assert isinstance(plan, hp.ReservePlan)
    assert repr(plan) == "ReservePlan(num_tokens=3, first_position=0, copies=0)"
    view = plan.slot_mapping
    want = view.copy()
    assert view.shape == (3, 2, 2) and not view.flags.writeable
    with pytest.raises(AttributeError):
        plan.first_position = 7
    del plan  # the view keeps its result alive
    for _ in range(8):  # later calls grow and reallocate the manager's own arrays
        manager.reserve(seq, 5)
    assert np.array_equal(view, want)

    compaction = hp.CompactionPlan()
    manager.evict(seq, 0, [1, 2], compaction)
    args = compaction.kernel_args()
    assert isinstance(args, hp.CompactionArgs) and args.num_rows == 2
    src, in_place = args.src_page_ids.copy(), args.in_place.copy()
    manager.evict(seq, 1, [3, 4], compaction)  # appends to the plan, not to args
    assert compaction.num_rows == 4 and args.num_rows == 2
    assert np.array_equal(args.src_page_ids, src) and np.array_equal(args.in_place, in_place)

    stats = manager.stats()
    assert isinstance(stats, hp.BlockManagerStats) and stats == manager.stats()
    assert stats != pool.stats() and "pages_in_use=" in repr(stats)
    with pytest.raises(AttributeError):
        stats.pages_in_use = 0
    assert isinstance(pool.stats(), hp.PagePoolStats)
    assert repr(pool.stats()).startswith("PagePoolStats(num_pages=64, ")


def test_policies_and_budgets():
    for name in hp.POLICIES:
        assert hp.policy_by_name(name).name == name
    assert hp.policy_by_name("streamingllm").sinks == 4
    assert hp.budget_capacity("20%", 1000) == 200
    assert hp.budget_capacity(128, 1000) == 128
    assert hp.budget_capacity(0.5, 100) == 50


def test_policy_options_replace_the_registrys_values_and_bad_ones_are_refused():
    ada = hp.policy_by_name("ada-snapkv", window=64, kernel=5, pooling="avg", reduce="max",
                            alpha=0.3, floor="protect-top", sinks=2)
    assert ada.window == 64 and ada.snapkv_kernel_size == 5 and ada.ada_alpha == 0.3
    assert ada.options == dict(window="64", kernel="5", pooling="avg", reduce="max", alpha="0.3",
                               floor="protect-top", beta="20", threshold="0.05", sinks="2",
                               profile="-", sparsity="0.5")
    assert hp.policy_by_name("pyramid", beta=10).pyramid_beta == 10
    assert hp.policy_by_name("dbudget", threshold=0.01).dbudget_threshold == 0.01
    assert hp.policy_by_name("ada-snapkv").options["window"] == "32"  # the defaults stay
    for options, error, match in [
            (dict(kernel=4), ValueError, "policy ada-snapkv: pooling kernel 4 must be odd"),
            (dict(alpha=1.5), ValueError, r"alpha 1.5 is outside \[0, 1\]"),
            (dict(pooling="mean"), ValueError, "want one of avg, max, none"),
            (dict(window=3.5), ValueError, "want a whole number"),
            (dict(window=2**40), ValueError, "want a whole number"),
            (dict(kernal=3), ValueError, "unknown policy option 'kernal'"),
            (dict(window=True), TypeError, "got bool"),
            (dict(window=[64]), TypeError, "got list")]:
        with pytest.raises(error, match=match):
            hp.policy_by_name("ada-snapkv", **options)


def test_bad_arguments_raise_clear_exceptions(small):
    g, pool, arena, manager = small
    with pytest.raises(ValueError, match="page_size"):
        hp.CacheGeometry(num_layers=2, num_kv_heads=2, num_q_heads=4, head_dim=64, page_size=0)
    with pytest.raises(ValueError, match="unknown dtype 'f8'"):
        hp.CacheGeometry(num_layers=2, num_kv_heads=2, num_q_heads=4, head_dim=64, dtype="f8")
    with pytest.raises(ValueError, match="num_pages"):
        hp.PagePool(0)
    with pytest.raises(ValueError, match="unknown policy 'snapkv'"):
        hp.policy_by_name("snapkv")
    with pytest.raises(ValueError):
        hp.budget_capacity("150%", 100)
    with pytest.raises(TypeError):
        hp.budget_capacity([1], 100)
    with pytest.raises(KeyError, match="sequence 999"):
        manager.reserve(999, 1)
    seq = manager.add_sequence()
    with pytest.raises(hp.ResourceExhausted) as err:
        manager.reserve(seq, 10_000)
    assert isinstance(err.value, MemoryError) and "pages" in str(err.value)
    assert manager.num_tokens(seq) == 0  # nothing changed
    plan = manager.reserve(seq, 2)
    slots = plan.slot_mapping[:, 0, :]
    pos = torch.arange(2, dtype=torch.int32)
    with pytest.raises(ValueError, match="keys: want dtype f32"):
        hp.write_kv(arena, torch.zeros(2, 2, 64, dtype=torch.float64), torch.zeros(2, 2, 64), slots, pos)
    with pytest.raises(ValueError, match=r"values: want shape \[2, 2, 64\]"):
        hp.write_kv(arena, torch.zeros(2, 2, 64), torch.zeros(2, 2, 32), slots, pos)
    with pytest.raises(ValueError, match="positions"):
        hp.write_kv(arena, torch.zeros(2, 2, 64), torch.zeros(2, 2, 64), slots, pos[:1])
    with pytest.raises(ValueError, match="contiguous"):
        hp.write_kv(arena, torch.zeros(2, 64, 2).transpose(1, 2), torch.zeros(2, 2, 64), slots, pos)
    with pytest.raises(ValueError, match="out of range|outside"):
        hp.write_kv(arena, torch.zeros(2, 2, 64), torch.zeros(2, 2, 64),
                    np.full((2, 2), 10_000, dtype=np.int32), pos)
    table = manager.block_table(0, [seq])
    with pytest.raises(ValueError, match="head_dim|shape"):
        hp.decode_attention(arena, torch.zeros(1, 4, 32), table.indptr, table.page_ids, table.lens,
                            torch.zeros(1, 4, 32))
    with pytest.raises(ValueError, match="multiple"):
        hp.decode_attention(arena, torch.zeros(3, 4, 64), table.indptr, table.page_ids, table.lens,
                            torch.zeros(3, 4, 64))
    with pytest.raises(ValueError, match="kept_counts|count|kv_heads"):
        manager.evict(seq, 0, [1], hp.CompactionPlan())
    engine = hp.EvictionEngine(manager, arena)
    with pytest.raises(ValueError, match="queries: 1 layers; the model has 2"):
        engine.compress(seq, "uniform-snapkv", "20%", [torch.zeros(4, 1, 64)],
                        [torch.zeros(1, dtype=torch.int32)])
    if not hp.has_cuda:
        with pytest.raises(NotImplementedError, match="without CUDA"):
            hp.CudaArena(g, 4)
