# SPDX-License-Identifier: Apache-2.0
"""The kernels on a CudaArena: the same results as on a HostArena, and bad CSR
arrays refused on the device as the CPU reference refuses them (ValueError with
the same message, nothing written). Skipped without a CUDA build and device; on
the GPU machine scripts/gpu-check runs it (with pytest, or this file as a script
where pytest is not installed)."""
import contextlib

import numpy as np
import torch

import headpage as hp

try:
    import pytest
except ImportError:  # the GPU machine may lack pytest: run as a script there
    pytest = None

if pytest is not None:
    pytestmark = pytest.mark.skipif(not (hp.has_cuda and torch.cuda.is_available()),
                                    reason="needs a CUDA build and a CUDA device")


class _Raised:
    value = None


@contextlib.contextmanager
def raises(kind, match=None):
    """pytest.raises' subset used here, with or without pytest."""
    raised = _Raised()
    try:
        yield raised
    except kind as error:
        raised.value = error
        assert match is None or match in str(error), f"{error!r} does not name {match!r}"
        return
    raise AssertionError(f"{kind.__name__} not raised")

PAGE = 4
HEAD_DIM = 64


def build(arena_type, device, lengths=(5, 9), num_pages=64):
    """Two sequences of `lengths` tokens, one layer, two kv heads, the same K/V,
    in a pool of num_pages pages."""
    g = hp.CacheGeometry(num_layers=1, num_kv_heads=2, num_q_heads=4, head_dim=HEAD_DIM,
                         dtype="f32", page_size=PAGE)
    pool = hp.PagePool(num_pages)
    arena = arena_type(g, num_pages)
    manager = hp.BlockManager(g, pool)
    gen = torch.Generator().manual_seed(5)
    seqs = []
    for n in lengths:
        seq = manager.add_sequence()
        plan = manager.reserve(seq, n)
        k = torch.randn(n, 2, HEAD_DIM, generator=gen).to(device)
        v = torch.randn(n, 2, HEAD_DIM, generator=gen).to(device)
        hp.write_kv(arena, k, v, torch.from_numpy(plan.slot_mapping[:, 0, :].copy()).to(device),
                    torch.arange(n, dtype=torch.int32, device=device))
        seqs.append(seq)
    return arena, manager, seqs


def attend(arena, device, indptr, page_ids, lens, **kwargs):
    gen = torch.Generator().manual_seed(6)
    q = torch.randn(2, 4, HEAD_DIM, generator=gen).to(device)
    out = torch.full((2, 4, HEAD_DIM), 7.0, device=device)
    to = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int32)).to(device)
    hp.decode_attention(arena, q, to(indptr), to(page_ids), to(lens), out, **kwargs)
    return out


def test_decode_attention_on_the_device_equals_the_host():
    host, host_manager, host_seqs = build(hp.HostArena, "cpu")
    dev, dev_manager, dev_seqs = build(hp.CudaArena, "cuda")
    t = host_manager.block_table(0, host_seqs)
    want = attend(host, "cpu", t.indptr, t.page_ids, t.lens)
    d = dev_manager.block_table(0, dev_seqs)
    for check in (True, False):
        got = attend(dev, "cuda", d.indptr, d.page_ids, d.lens, check=check)
        torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)
    # Split: three ranges per stream, and the balanced division over 3 blocks.
    streams = len(d.lens)
    for kwargs, size in [
            (dict(num_splits=3), hp.decode_attention_workspace_bytes(2, 4, HEAD_DIM, 3)),
            (dict(balanced_blocks=3),
             hp.decode_attention_balanced_workspace_bytes(2, 4, streams // 2, HEAD_DIM, 3))]:
        workspace = torch.empty(size, dtype=torch.uint8, device="cuda")
        got = attend(dev, "cuda", d.indptr, d.page_ids, d.lens, workspace=workspace, **kwargs)
        torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)
    assert hp.decode_attention_balanced_blocks(dev, 132) == 264


def test_decode_attention_writes_new_tokens_on_the_device_as_on_the_host():
    """A decode step's tokens through decode_attention's new_keys, over streams of
    150 and 301 tokens: the device pool's tokens and the outputs equal the host's,
    one range per stream and under each division of the work, each from a pool
    that has not seen the write."""
    gen = torch.Generator().manual_seed(8)
    k, v = torch.randn(2, 2, HEAD_DIM, generator=gen), torch.randn(2, 2, HEAD_DIM, generator=gen)
    positions = torch.tensor([150, 301], dtype=torch.int32)

    def step(arena_type, device, **division):
        arena, manager, seqs = build(arena_type, device, lengths=(150, 301), num_pages=256)
        for s in seqs:
            manager.reserve(s, 1)
        t = manager.block_table(0, seqs)
        if "num_splits" in division:
            size = hp.decode_attention_workspace_bytes(2, 4, HEAD_DIM, division["num_splits"])
        else:
            size = hp.decode_attention_balanced_workspace_bytes(
                2, 4, len(t.lens) // 2, HEAD_DIM, division.get("balanced_blocks", 0))
        workspace = torch.empty(max(size, 16), dtype=torch.uint8, device=device)
        out = attend(arena, device, t.indptr, t.page_ids, t.lens, workspace=workspace,
                     new_keys=k.to(device), new_values=v.to(device),
                     new_positions=positions.to(device), **division)
        if device == "cuda":
            torch.cuda.synchronize()
        # Every stream's tokens, K and V, and their positions (slots past them hold
        # what they held).
        pool = torch.from_dlpack(arena.kv).cpu()
        slot_positions = torch.from_dlpack(arena.positions).cpu()
        places = [(t.page_ids[t.indptr[s] + i // PAGE], i % PAGE)
                  for s in range(len(t.lens)) for i in range(t.lens[s])]
        kv = torch.stack([pool[page, :, offset] for page, offset in places])
        held = [int(slot_positions[page * PAGE + offset]) for page, offset in places]
        return out.cpu(), kv, held

    want_out, want_kv, want_positions = step(hp.HostArena, "cpu")
    assert 150 in want_positions and 301 in want_positions
    for division in (dict(num_splits=1), dict(num_splits=3), dict(num_splits=40),
                     dict(balanced_blocks=3), dict(balanced_blocks=7)):
        out, kv, held = step(hp.CudaArena, "cuda", **division)
        torch.testing.assert_close(out, want_out, rtol=1e-4, atol=1e-4)
        assert torch.equal(kv, want_kv), division
        assert held == want_positions, division


def test_bad_tables_are_refused_on_the_device_as_on_the_host():
    host, host_manager, host_seqs = build(hp.HostArena, "cpu")
    dev, dev_manager, dev_seqs = build(hp.CudaArena, "cuda")
    t = host_manager.block_table(0, host_seqs)
    indptr, page_ids, lens = t.indptr.tolist(), t.page_ids.tolist(), t.lens.tolist()
    cases = [
        ([0, 2] + indptr[2:], page_ids[:1], lens),       # the issue's: past a one-entry array
        (indptr, page_ids[:-1], lens),                   # the last stream past the end
        ([1] + indptr[1:], page_ids, lens),              # not from 0
        (indptr, page_ids, lens[:1] + [-1] + lens[2:]),  # a negative length
        (indptr, page_ids, lens[:1] + [4000] + lens[2:]),  # a 1000-page stream on 2 pages
        (indptr, [64] + page_ids[1:], lens),             # a page outside the pool
    ]
    for bad_indptr, bad_pages, bad_lens in cases:
        with raises(ValueError) as on_host:
            attend(host, "cpu", bad_indptr, bad_pages, bad_lens)
        out = None
        with raises(ValueError) as on_device:
            out = attend(dev, "cuda", bad_indptr, bad_pages, bad_lens)
        assert str(on_device.value) == str(on_host.value)
        assert out is None
    dev_manager.check_invariants()


def test_compact_plan_past_its_keep_array_is_refused_on_the_device():
    dev, manager, seqs = build(hp.CudaArena, "cuda")
    before = torch.from_dlpack(dev.kv).clone()
    plan = hp.CompactionPlan()
    manager.evict(seqs[1], 0, [3, 9], plan)
    args = plan.kernel_args()
    to = lambda a: torch.as_tensor(np.asarray(a)).to("cuda")
    keep = to(np.array([1, 4, 8] + list(range(8)), dtype=np.int32))  # one short
    with raises(ValueError, match="keep set reaches past the end of keep"):
        hp.compact(dev, to(args.src_indptr), to(args.src_page_ids), to(args.src_lens),
                   to(args.dst_indptr), to(args.dst_page_ids), to(args.keep_indptr), keep,
                   to(args.in_place))
    torch.cuda.synchronize()
    assert torch.equal(torch.from_dlpack(dev.kv), before)  # nothing moved


if __name__ == "__main__":
    for name, test in list(globals().items()):
        if name.startswith("test_"):
            test()
            print("passed", name)
