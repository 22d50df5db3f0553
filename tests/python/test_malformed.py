# SPDX-License-Identifier: Apache-2.0
"""Malformed arguments at every bound function (issue #13). Each call must raise
a Python exception with a message, never crash, and leave everything as it was:
the pool (stats, every refcount), the manager (check_invariants, stats, every
sequence's tokens, stream lengths and pages), an unexecuted compaction plan and
the arena's bytes.

A seeded loop rather than hypothesis (no dependency): call i of the loop draws
its target and its bad arguments from random.Random(i), and a failure names i,
so it reruns exactly. Each target starts from arguments that are accepted
(test_base_arguments_are_accepted proves it on a world of its own), and the
loop spoils one or two of them, so that the refusal is the spoiled argument's.

The kernels' CSR lengths (an indptr that ends past its page_ids, a keep set or
destination list shorter than its indptr says) are test_kernel_csr_lengths."""
import math
import random

import numpy as np
import pytest
import torch

import headpage as hp

PAGE = 4
NUM_PAGES = 64
PROMPT = 38  # the parent's tokens: its tail pages are half full, so the fork copies them
PENDING = 12  # the tokens of the sequence whose eviction is pending
LAYERS, KV_HEADS, Q_HEADS, HEAD_DIM = 2, 2, 4, 64
REFUSALS = (TypeError, ValueError, RuntimeError, IndexError, KeyError, MemoryError,
            NotImplementedError, OverflowError)
CALLS = 6000  # about 140 calls a target, in about a second


def geometry(head_dim=HEAD_DIM):
    return hp.CacheGeometry(num_layers=LAYERS, num_kv_heads=KV_HEADS, num_q_heads=Q_HEADS,
                            head_dim=head_dim, dtype="f32", page_size=PAGE)


def write(arena, plan, tokens, start, seed):
    gen = torch.Generator().manual_seed(seed)
    positions = torch.arange(start, start + tokens, dtype=torch.int32)
    for layer in range(LAYERS):
        hp.write_kv(arena, torch.randn(tokens, KV_HEADS, HEAD_DIM, generator=gen),
                    torch.randn(tokens, KV_HEADS, HEAD_DIM, generator=gen),
                    plan.slot_mapping[:, layer, :], positions)


class World:
    """A pool in every state a page can be in: a PROMPT-token parent; a child forked
    from it that grew by copy-on-write (shared pages); a sequence with layer 0
    evicted into `plan` and neither compacted nor released (retired pages, and
    a sequence that must refuse reserve, fork and free); a freed sequence."""

    def __init__(self):
        self.geometry = geometry()
        self.pool = hp.PagePool(NUM_PAGES)
        self.arena = hp.HostArena(self.geometry, NUM_PAGES)
        self.manager = hp.BlockManager(self.geometry, self.pool)
        self.engine = hp.EvictionEngine(self.manager, self.arena)
        m = self.manager
        self.parent = m.add_sequence()
        write(self.arena, m.reserve(self.parent, PROMPT), PROMPT, 0, seed=1)
        self.child = m.fork(self.parent)
        self.child_plan = m.reserve(self.child, 2)
        hp.copy_pages(self.arena, self.child_plan.copy_src, self.child_plan.copy_dst)
        write(self.arena, self.child_plan, 2, PROMPT, seed=2)
        self.dead = m.add_sequence()
        m.reserve(self.dead, 3)
        self.stale_table = m.block_table(0, [self.dead])
        m.free(self.dead)
        self.pending = m.add_sequence()
        write(self.arena, m.reserve(self.pending, PENDING), PENDING, 0, seed=3)
        self.plan = hp.CompactionPlan()
        m.evict(self.pending, 0, [3, 5], self.plan)
        self.live = [self.parent, self.child, self.pending]

    def unknown_seq(self, rng):
        return max(self.live + [self.dead]) + 1 + rng.randrange(1000)

    def snapshot(self):
        m, pool = self.manager, self.pool
        seqs = {}
        for s in self.live:
            pages = [m.stream_pages(s, layer, h) for layer in range(LAYERS)
                     for h in range(KV_HEADS)]
            seqs[s] = (m.num_tokens(s), m.stream_lengths(s).tolist(), pages)
        return (pool.stats(), [pool.refcount(p) for p in range(NUM_PAGES)], m.stats(),
                m.num_sequences, m.contains(self.dead), seqs, self.plan.num_rows,
                self.plan.kept.tolist(), np.from_dlpack(self.arena.kv).tobytes(),
                np.from_dlpack(self.arena.positions).tobytes())


def assert_refused(world, before, call, label):
    try:
        call()
    except REFUSALS as error:
        message = str(error).strip()
        assert message, f"{label}: {type(error).__name__} without a message"
        # A bare C++ exception name ("std::bad_cast") says nothing about the argument.
        assert not message.startswith("std::"), f"{label}: {type(error).__name__}: {message}"
    else:
        pytest.fail(f"{label}: accepted")
    world.manager.check_invariants()
    world.pool.check_invariants()
    assert world.snapshot() == before, f"{label}: raised, but changed the state"


# ---------------------------------------------------------------------------
# Spoilers: (world, rng, the valid value) -> a value the call must refuse.

def bad_seq(w, rng, value):
    return rng.choice([w.unknown_seq(rng), w.dead, -1 - rng.randrange(5), 2**64 + rng.randrange(5),
                       None, "seq", value + 0.5])


def bad_index(limit):
    """An int32 index into [0, limit)."""
    return lambda w, rng, value: rng.choice([
        -1 - rng.randrange(3), limit + rng.randrange(3), 2**31 + rng.randrange(5), -2**31 - 1,
        None, "first", 0.5])


def bad_count(w, rng, value):
    """A token count (int64): negative, past int32 positions, past int64, not an int."""
    return rng.choice([-1 - rng.randrange(100), 2**31 + rng.randrange(10), 2**62, 2**63, None,
                       "many", value + 0.5])


def noncontiguous(array):
    """The same values with a stride of two elements (needs more than one element)."""
    if isinstance(array, torch.Tensor):
        doubled = torch.empty(*array.shape[:-1], 2 * array.shape[-1], dtype=array.dtype)
        doubled[..., ::2] = array
        return doubled[..., ::2]
    return np.repeat(array, 2, axis=-1)[..., ::2]


def bad_ints(w, rng, value):
    """Anything but a contiguous int32 vector."""
    choices = [value.astype(rng.choice([np.int64, np.uint32, np.int16, np.float32])),
               value.reshape(1, -1), value.reshape(-1, 1), None, value.tolist(), "ids"]
    if value.size > 1:
        choices.append(noncontiguous(value))
    return rng.choice(choices)


def resized(w, rng, value):
    """One entry more or fewer, where the length is fixed by another argument."""
    return value[:-1] if rng.randrange(2) else np.append(value, value[-1:])


def with_entry(entries):
    """Replaces one entry by one of entries(w, rng, value)."""
    def spoil(w, rng, value):
        value = value.copy()
        value[rng.randrange(value.size)] = rng.choice(entries(w, rng, value))
        return value
    return spoil


def bad_page(w, rng, value):
    return [-1 - rng.randrange(5), NUM_PAGES + rng.randrange(5), 2**31 - 1]


def bad_floats(w, rng, value):
    """Anything but a contiguous f32 tensor of value's shape (last dimension head_dim)."""
    shape = tuple(value.shape)
    return rng.choice([
        value.to(rng.choice([torch.float64, torch.float16, torch.bfloat16, torch.int32])),
        torch.zeros(*shape[:-1], rng.choice([HEAD_DIM // 2, HEAD_DIM + 1])),
        value.reshape(-1), value.unsqueeze(0), noncontiguous(value), None,
        value.tolist() if value.numel() < 64 else 1.0,
        torch.zeros(shape[0] + 1, *shape[1:])])


def bad_output(w, rng, value):
    """An output the kernel must not write: bad as an input, or read-only (not None:
    gather_kv's outputs are optional)."""
    spoiled = bad_floats(w, rng, value)
    if spoiled is None or rng.randrange(3) == 0:
        spoiled = value.numpy().copy()
        spoiled.flags.writeable = False
    return spoiled


def bad_object(w, rng, value):
    """None, or an object of a class no bound function takes where this one is spoiled
    (a BlockTable: the stale one, which refresh_block_table must refuse too)."""
    return rng.choice([None, 0, "x", 1.5, [], w.stale_table])


def one_of(*values):
    return lambda w, rng, value: rng.choice(values)


def either(*spoilers):
    return lambda w, rng, value: rng.choice(spoilers)(w, rng, value)


def bad_config(w, rng, value, fields=()):
    """A SnapKV-family policy with one field out of range (or one of `fields`)."""
    config = hp.policy_by_name(rng.choice(["ada-snapkv", "uniform-snapkv", "pyramid",
                                           "ada-pyramid"]))
    field, bad = rng.choice([*fields, ("window", -1), ("sinks", -1), ("snapkv_kernel_size", 4),
                             ("snapkv_kernel_size", 0), ("snapkv_kernel_size", -3),
                             ("ada_alpha", math.nan), ("ada_alpha", 1.5),
                             ("pyramid_beta", math.nan), ("pyramid_beta", -1.0)])
    setattr(config, field, bad)
    return config


def bad_policy(w, rng, value):
    # A window longer than the prompt is valid until it meets the prompt.
    past_prompt = [("window", PROMPT + 1), ("window", 2**31 - 1)]
    return rng.choice([bad_config(w, rng, value, past_prompt), "snapkv", "", "ADA-SNAPKV", None,
                       5, w.plan])


def bad_budget(w, rng, value):
    return rng.choice([0, -1, 2**31, 2**70, "0%", "150%", "-3", "abc", "", "20%%", 0.0, -0.5,
                       1.5, math.nan, math.inf, True, None, [1], w.plan])


def bad_queries(w, rng, value):
    q = value[0]
    layer = rng.randrange(LAYERS)
    spoiled = list(value)
    n = q.shape[1]
    spoiled[layer] = rng.choice([
        q.double(), q[:Q_HEADS - 1], torch.zeros(Q_HEADS, n, HEAD_DIM + 1), q.reshape(Q_HEADS, -1),
        noncontiguous(q), None, torch.zeros(Q_HEADS, n + 1, HEAD_DIM)])
    return rng.choice([spoiled, value[:1], value + value[:1], [], None, q])


def bad_positions(w, rng, value):
    p = value[0]
    n = p.shape[0]
    return rng.choice([
        [p.to(torch.int64)], [p[1:]], [torch.cat([p, p[-1:] + 1])],
        [p + (PROMPT - int(p[0]))],                      # past the prompt
        [p - int(p[0]) - 1],                             # negative
        [p.flip(0)], [torch.full((n,), int(p[0]), dtype=torch.int32)],  # descending, repeated
        [p.reshape(1, -1)], value * 3, [], None, p])


def bad_slots(w, rng, value):
    slots = value.copy()
    slots[rng.randrange(slots.shape[0]), rng.randrange(slots.shape[1])] = rng.choice(
        [-2, NUM_PAGES * PAGE, 2**31 - 1])
    wide = np.zeros((value.shape[0], 2 * KV_HEADS), dtype=np.int32)
    return rng.choice([slots, value.astype(np.int64), value[:1], value[:, :1], value.reshape(-1),
                       wide[:, ::2], None])


def lens_spoiler(w, rng, value):
    """A stream length that is negative or needs more pages than its row has."""
    lens = value.copy()
    row = rng.randrange(lens.size)
    lens[row] = rng.choice([-1, -2**31, lens[row] + PAGE * 3, 2**31 - 1])
    return lens


def keep_spoiler(w, rng, value):
    """A keep set with an entry out of its row's range, or not ascending."""
    keep = value.copy()
    first = int(w.plan.kept[0])  # row 0 keeps entries [0, first)
    i = rng.randrange(1, first)
    keep[i] = rng.choice([-1, keep[i - 1], PENDING + rng.randrange(3), 2**31 - 1])
    return keep


# ---------------------------------------------------------------------------
# Targets: a name, the call's accepted arguments, and a spoiler per argument.

class Target:
    def __init__(self, name, call, args, spoilers):
        self.name, self.call, self.args, self.spoilers = name, call, args, spoilers


def table_args(w):
    table = w.manager.block_table(0, [w.parent, w.child])
    return table.indptr, table.page_ids, table.lens


def decode_args(w):
    indptr, page_ids, lens = table_args(w)
    return dict(arena=w.arena, q=torch.zeros(2, Q_HEADS, HEAD_DIM), indptr=indptr,
                page_ids=page_ids, lens=lens, out=torch.zeros(2, Q_HEADS, HEAD_DIM),
                lse=torch.zeros(2, Q_HEADS), num_splits=1, sm_scale=None, balanced_blocks=0)


def gather_args(w):
    indptr, page_ids, lens = table_args(w)
    total = int(lens.sum())
    return dict(arena=w.arena, indptr=indptr, page_ids=page_ids, lens=lens,
                keys=torch.zeros(total, HEAD_DIM), values=torch.zeros(total, HEAD_DIM),
                positions=torch.zeros(total, dtype=torch.int32))


def compact_args(w):
    a = w.plan.kernel_args()
    keep = np.concatenate([np.arange(k, dtype=np.int32) for k in w.plan.kept])
    return dict(arena=w.arena, src_indptr=a.src_indptr, src_page_ids=a.src_page_ids,
                src_lens=a.src_lens, dst_indptr=a.dst_indptr, dst_page_ids=a.dst_page_ids,
                keep_indptr=a.keep_indptr, keep=keep, in_place=a.in_place)


def write_kv_args(w):
    return dict(arena=w.arena, keys=torch.zeros(2, KV_HEADS, HEAD_DIM),
                values=torch.zeros(2, KV_HEADS, HEAD_DIM),
                slot_mapping=w.child_plan.slot_mapping[:, 1, :],
                positions=torch.arange(PROMPT, PROMPT + 2, dtype=torch.int32))


def compress_args(w):
    policy = hp.policy_by_name("ada-snapkv")
    policy.window = 4  # the queries given: a budget of 8 can keep them
    return dict(seq=w.parent, policy=policy, budget=8,
                queries=[torch.randn(Q_HEADS, 4, HEAD_DIM) for _ in range(LAYERS)],
                positions=[torch.arange(PROMPT - 4, PROMPT, dtype=torch.int32)])


def no_args(name, method):
    """A call that takes no argument: given one, it is refused (TypeError)."""
    return Target(name, lambda extra: method(*extra), lambda w: dict(extra=()),
                  {"extra": one_of((1,), (None,), ("x",), (0, 1))})


def set_field(config, field, value):
    setattr(config, field, value)


def targets(w):
    """Every bound function, called on w's objects."""
    m, pool, engine = w.manager, w.pool, w.engine
    seq = bad_seq
    seq_or_pending = either(bad_seq, lambda w, rng, v: w.pending)
    row_arrays = either(resized, bad_ints)
    page_ids = either(with_entry(bad_page), bad_ints)
    table_lens = either(lens_spoiler, bad_ints)
    result = [
        Target("CacheGeometry", hp.CacheGeometry,
               lambda w: dict(num_layers=2, num_kv_heads=2, num_q_heads=4, head_dim=64, dtype="f32",
                              page_size=4),
               {"num_layers": one_of(0, -1, 5000, 2**31, None, "two"),
                "num_kv_heads": one_of(0, -1, 3, 2**31, None),
                "num_q_heads": one_of(0, -4, 5, 2**31, None),  # 5: neither 2 nor 3 kv heads divide
                "head_dim": one_of(0, -64, 2**31, None, 64.0),
                "dtype": one_of("f8", "int32", "", None, 32),
                "page_size": one_of(0, -4, 2**31, None)}),
        Target("PagePool", hp.PagePool, lambda w: dict(num_pages=8, watermark=0.0),
               {"num_pages": one_of(0, -1, 2**31, 2**40, 2**64, None, "eight", 8.5),
                "watermark": one_of(-0.1, 1.0, 2.0, math.nan, math.inf, None, "none")}),
        Target("PagePool.refcount", lambda page: pool.refcount(page), lambda w: dict(page=0),
               {"page": one_of(-1, NUM_PAGES, 2**31 - 1, 2**63, None, "first")}),
        Target("PagePool.can_allocate", pool.can_allocate, lambda w: dict(n=1),
               {"n": one_of(-1, -2**63, 2**63, None, "one", 1.5)}),
        no_args("PagePool.stats", pool.stats),
        no_args("PagePool.reset_peak", pool.reset_peak),
        no_args("PagePool.check_invariants", pool.check_invariants),
        Target("HostArena", hp.HostArena, lambda w: dict(geometry=w.geometry, num_pages=8),
               {"geometry": bad_object, "num_pages": one_of(0, -1, 2**31, 2**62, None, "eight")}),
        Target("BlockManager", hp.BlockManager, lambda w: dict(geometry=w.geometry, pool=w.pool),
               {"geometry": bad_object, "pool": bad_object}),
        no_args("BlockManager.add_sequence", m.add_sequence),
        Target("BlockManager.reserve", m.reserve, lambda w: dict(seq=w.parent, num_tokens=3),
               {"seq": seq_or_pending,
                "num_tokens": either(bad_count, one_of(NUM_PAGES * PAGE))}),
        Target("BlockManager.pages_needed", m.pages_needed,
               lambda w: dict(seq=w.parent, num_tokens=3), {"seq": seq, "num_tokens": bad_count}),
        Target("BlockManager.fork", m.fork, lambda w: dict(seq=w.parent),
               {"seq": seq_or_pending}),
        Target("BlockManager.free", m.free, lambda w: dict(seq=w.parent),
               {"seq": seq_or_pending}),
        Target("BlockManager.evict", m.evict,
               lambda w: dict(seq=w.parent, layer=1, kept_counts=[3, 5], plan=hp.CompactionPlan()),
               {"seq": seq, "layer": bad_index(LAYERS), "plan": bad_object,
                "kept_counts": one_of([3], [3, 5, 1], [-1, 5], [3, PROMPT + 1], [3, 2**31 - 1], [],
                                      None, "35", [3.0, 5.0], [3, None])}),
        no_args("BlockManager.release_retired_pages", m.release_retired_pages),
        Target("BlockManager.block_table", m.block_table,
               lambda w: dict(layer=0, seqs=[w.parent, w.child], headroom_pages=2),
               {"layer": bad_index(LAYERS),
                "seqs": lambda w, rng, v: rng.choice(
                    [[], [w.dead], [w.parent, w.unknown_seq(rng)], [-1], None, "1", w.parent]),
                "headroom_pages": one_of(-1, -2**31, 2**31 - 1, 2**31, None, "two")}),
        Target("BlockManager.refresh_block_table", m.refresh_block_table,
               lambda w: dict(table=w.manager.block_table(0, [w.parent])), {"table": bad_object}),
        no_args("BlockManager.stats", m.stats),
        Target("BlockManager.contains", m.contains, lambda w: dict(seq=w.parent),
               {"seq": one_of(-1, 2**64, None, "seq", 1.5)}),
        Target("BlockManager.num_tokens", m.num_tokens, lambda w: dict(seq=w.parent), {"seq": seq}),
        Target("BlockManager.stream_lengths", m.stream_lengths, lambda w: dict(seq=w.parent),
               {"seq": seq}),
        Target("BlockManager.stream_pages", m.stream_pages,
               lambda w: dict(seq=w.parent, layer=0, kv_head=1),
               {"seq": seq, "layer": bad_index(LAYERS), "kv_head": bad_index(KV_HEADS)}),
        no_args("BlockManager.check_invariants", m.check_invariants),
        no_args("CompactionPlan.kernel_args", w.plan.kernel_args),
        no_args("CompactionPlan.clear", w.plan.clear),
        Target("policy_by_name", hp.policy_by_name, lambda w: dict(name="ada-snapkv"),
               {"name": one_of("", "snapkv", "ADA-SNAPKV", "ada-snapkv ", None, 5)}),
        no_args("policy_names", hp.policy_names),
        Target("PolicyConfig fields", set_field,
               lambda w: dict(config=hp.policy_by_name("ada-snapkv"), field="window", value=8),
               {"value": one_of("eight", None, 2**31, 8.5, [8])}),
        Target("PolicyConfig.observed_queries",
               lambda prompt_queries: hp.policy_by_name("ada-snapkv").observed_queries(
                   prompt_queries),
               lambda w: dict(prompt_queries=40),
               {"prompt_queries": one_of(-1, -2**31, 2**31, None, "forty", 4.5)}),
        Target("PolicyConfig.validate", lambda config: config.validate(),
               lambda w: dict(config=hp.policy_by_name("ada-snapkv")), {"config": bad_config}),
        Target("budget_capacity", hp.budget_capacity, lambda w: dict(budget="20%", prompt_len=100),
               {"budget": bad_budget, "prompt_len": one_of(-1, -2**31, 2**31, None, "long")}),
        Target("EvictionEngine", hp.EvictionEngine,
               lambda w: dict(manager=w.manager, arena=w.arena),
               {"manager": either(bad_object, lambda w, rng, v: w.pool),
                "arena": lambda w, rng, v: rng.choice([
                    hp.HostArena(w.geometry, NUM_PAGES // 2),  # smaller than the pool
                    hp.HostArena(geometry(head_dim=128), NUM_PAGES),  # another geometry
                    bad_object(w, rng, v), w.pool, w.manager])}),
        Target("EvictionEngine.compress", engine.compress, compress_args,
               {"seq": seq_or_pending, "policy": bad_policy, "budget": bad_budget,
                "queries": bad_queries, "positions": bad_positions}),
        Target("EvictionEngine.enforce_pool_budget", engine.enforce_pool_budget,
               lambda w: dict(pages_to_free=1, floor_tokens=0, protect_recent=0),
               {"pages_to_free": one_of(-1, -2**63, 2**63, None, "one", 1.5),
                "floor_tokens": one_of(-1, 2**31, None, "none", 0.5),
                "protect_recent": one_of(-1, 2**31, None, "none", 0.5)}),
        Target("EvictionEngine.forget", engine.forget, lambda w: dict(seq=w.parent),
               {"seq": one_of(-1, 2**64, None, "seq", 1.5)}),
        Target("write_kv", hp.write_kv, write_kv_args,
               {"arena": bad_object, "keys": bad_floats, "values": bad_floats,
                "slot_mapping": bad_slots,
                "positions": lambda w, rng, v: rng.choice(
                    [v[:1], torch.cat([v, v[:1]]), v.to(torch.int64), v.reshape(1, -1), None,
                     v.tolist()])}),
        Target("decode_attention", hp.decode_attention, decode_args,
               {"arena": bad_object, "q": bad_floats, "out": bad_output,
                "lse": lambda w, rng, v: rng.choice(
                    [v.double(), v[:1], v.reshape(-1), noncontiguous(v), "lse"]),
                "lens": either(table_lens, lambda w, rng, v: v[:3]),
                "page_ids": page_ids, "indptr": row_arrays,
                "num_splits": one_of(0, -1, 10**6, 2**31, None, "one"),
                "balanced_blocks": one_of(-1, 10**6, 2**31, None, "one"),
                "sm_scale": one_of(math.nan, math.inf, -math.inf, "x")}),
        Target("gather_kv", hp.gather_kv, gather_args,
               {"arena": bad_object, "keys": bad_output, "values": bad_output,
                "positions": lambda w, rng, v: rng.choice(
                    [v[1:], v.to(torch.int64), v.reshape(1, -1), noncontiguous(v), "p"]),
                "lens": table_lens, "page_ids": page_ids, "indptr": row_arrays}),
        Target("compact", hp.compact, compact_args,
               {"arena": bad_object, "src_indptr": row_arrays, "dst_indptr": row_arrays,
                "keep_indptr": row_arrays, "src_page_ids": page_ids, "dst_page_ids": page_ids,
                "src_lens": lambda w, rng, v: rng.choice(
                    [v - PENDING - 1, v + PAGE * 3, v[:1], bad_ints(w, rng, v)]),
                "keep": either(keep_spoiler, bad_ints),
                "in_place": lambda w, rng, v: rng.choice(
                    [v.astype(np.int32), v.astype(bool), v[:1], np.append(v, v[:1]), None])}),
        Target("copy_pages", hp.copy_pages,
               lambda w: dict(arena=w.arena, src=w.child_plan.copy_src, dst=w.child_plan.copy_dst),
               {"arena": bad_object, "src": page_ids,
                "dst": either(page_ids, resized)}),
        Target("decode_attention_workspace_bytes", hp.decode_attention_workspace_bytes,
               lambda w: dict(num_seqs=2, num_q_heads=4, head_dim=64, num_splits=2),
               {"num_seqs": one_of(None, "two", 2**31, 2.5), "num_splits": one_of(None, 2**31)}),
        Target("decode_attention_balanced_workspace_bytes",
               hp.decode_attention_balanced_workspace_bytes,
               lambda w: dict(num_seqs=2, num_q_heads=4, num_kv_heads=2, head_dim=64,
                              balanced_blocks=8),
               {"num_kv_heads": one_of(None, "two", 2**31, 2.5),
                "balanced_blocks": one_of(None, 2**31)}),
        Target("decode_attention_balanced_blocks", hp.decode_attention_balanced_blocks,
               lambda w: dict(arena=w.arena, num_sms=132),
               {"arena": bad_object, "num_sms": one_of(None, 2**31, "many")}),
        Target("decode_attention_splits", hp.decode_attention_splits,
               lambda w: dict(max_len=1000, num_streams=4, num_sms=132, resident_blocks=4),
               {"max_len": one_of(None, 2**63, "long"), "num_streams": one_of(None, 2**31, 1.5),
                "resident_blocks": one_of(None, 2**31, "two")}),
        Target("decode_attention_resident_blocks", hp.decode_attention_resident_blocks,
               lambda w: dict(arena=w.arena), {"arena": bad_object}),
    ]
    if hp.has_cuda:
        result += [
            Target("CudaArena", hp.CudaArena, lambda w: dict(geometry=w.geometry, num_pages=8),
                   {"geometry": bad_object, "num_pages": one_of(0, -1, 2**31, None)}),
            Target("DeviceBlockTables", hp.DeviceBlockTables,
                   lambda w: dict(manager=w.manager, seqs=[w.parent]),
                   {"manager": bad_object,
                    "seqs": lambda w, rng, v: rng.choice([[w.dead], [], None, [-1]])}),
        ]
    else:  # Refused whatever the arguments: NotImplementedError when they are good.
        result += [
            Target("CudaArena", hp.CudaArena, lambda w: dict(geometry=w.geometry, num_pages=8),
                   {"geometry": bad_object, "num_pages": one_of(8, 0, None)}),
            Target("DeviceBlockTables", hp.DeviceBlockTables,
                   lambda w: dict(manager=w.manager, seqs=[w.parent]),
                   {"manager": bad_object, "seqs": one_of([w.parent], [w.dead], None)}),
        ]
    return result


def test_malformed_arguments_raise_and_change_nothing():
    w = World()
    all_targets = targets(w)
    before = w.snapshot()
    for i in range(CALLS):
        rng = random.Random(i)
        target = all_targets[i % len(all_targets)]
        args = target.args(w)
        how_many = min(len(target.spoilers), rng.choice([1, 1, 2]))
        spoiled = rng.sample(sorted(target.spoilers), how_many)
        for name in spoiled:
            args[name] = target.spoilers[name](w, rng, args[name])
        shown = ", ".join(f"{name}={args[name]!r:.80}" for name in spoiled)
        assert_refused(w, before, lambda: target.call(**args),
                       f"call {i} (random.Random({i})): {target.name}({shown})")


def test_base_arguments_are_accepted():
    """Every target's unspoiled arguments are accepted (each on a world of its own,
    since some change it): the loop's refusals are its spoiled arguments'."""
    # A pool serves one manager (the world's has one); without CUDA these are refused.
    refused_anyway = {"BlockManager"} if hp.has_cuda else {"BlockManager", "CudaArena",
                                                           "DeviceBlockTables"}
    for index in range(len(targets(World()))):
        w = World()
        target = targets(w)[index]
        if target.name in refused_anyway:
            with pytest.raises(REFUSALS):
                target.call(**target.args(w))
        else:
            target.call(**target.args(w))
        w.manager.check_invariants()


def test_kernel_csr_lengths():
    """CSR arrays whose lengths disagree: an indptr past the end of page_ids (the
    issue's indptr=[0, 2] with one page id), one not starting at 0 or going
    down, a keep set or a destination list shorter than its indptr says. Each
    must be refused before a kernel reads past an array."""
    w = World()
    before = w.snapshot()
    cases = []
    for name, make in (("decode_attention", decode_args), ("gather_kv", gather_args)):
        for spoil, what in ((lambda a: a["page_ids"][:-1], "page_ids one short"),
                            (lambda a: a["page_ids"][:1], "page_ids one entry")):
            args = make(w)
            args["page_ids"] = spoil(args)
            cases.append((name, what, args))
        for spoil, what in ((lambda v: v + 1, "indptr starts at 1"),
                            (lambda v: np.concatenate([v[:1], v[2:3], v[1:2], v[3:]]),
                             "indptr goes down"),
                            (lambda v: np.append(v[:-1], v[-1] + 2 * PAGE), "indptr ends past")):
            args = make(w)
            args["indptr"] = spoil(args["indptr"]).astype(np.int32)
            cases.append((name, what, args))
    # The issue's own: one stream, indptr [0, 2], page_ids of one entry, 5 tokens.
    cases.append(("decode_attention", "indptr [0, 2] over one page id",
                  dict(arena=w.arena, q=torch.zeros(1, Q_HEADS, HEAD_DIM),
                       indptr=np.array([0, 2], np.int32), page_ids=np.array([0], np.int32),
                       lens=np.array([5], np.int32), out=torch.zeros(1, Q_HEADS, HEAD_DIM))))
    for field, spoil, what in (
            ("keep", lambda v: v[:-1], "keep one short"),
            ("keep", lambda v: v[:1], "keep one entry"),
            ("dst_page_ids", lambda v: v[:-1], "dst_page_ids one short"),
            ("src_page_ids", lambda v: v[:-1], "src_page_ids one short"),
            ("keep_indptr", lambda v: v + 1, "keep_indptr starts at 1"),
            ("keep_indptr", lambda v: np.append(v[:-1], v[-1] + 4), "keep_indptr ends past"),
            ("dst_indptr", lambda v: np.append(v[:-1], v[-1] + 4), "dst_indptr ends past"),
            ("src_indptr", lambda v: np.concatenate([v[:1], v[2:], v[1:2]]),
             "src_indptr goes down")):
        args = compact_args(w)
        args[field] = spoil(args[field]).astype(np.int32)
        cases.append(("compact", what, args))
    kernels = {"decode_attention": hp.decode_attention, "gather_kv": hp.gather_kv,
               "compact": hp.compact}
    for name, what, args in cases:
        assert_refused(w, before, lambda: kernels[name](**args), f"{name}: {what}")
