# SPDX-License-Identifier: Apache-2.0
"""headpage: a paged KV cache in which every (sequence, layer, KV head) stream has
its own block table and length, for head-wise eviction (SnapKV, Ada-KV, PyramidKV,
DBudgetKV, StreamingLLM, ...).

The objects are the C++ library's (headpage._ext, nanobind):

    geometry = headpage.CacheGeometry(num_layers=30, num_kv_heads=3, num_q_heads=9,
                                      head_dim=64, dtype="f32", page_size=16)
    pool = headpage.PagePool(num_pages=4096)          # page ids and refcounts
    arena = headpage.HostArena(geometry, 4096)        # the bytes (CudaArena on a GPU)
    manager = headpage.BlockManager(geometry, pool)   # sequences -> streams -> pages
    seq = manager.add_sequence()
    plan = manager.reserve(seq, num_tokens)           # a ReservePlan: slot_mapping
    headpage.write_kv(arena, k, v, plan.slot_mapping[:, layer, :], positions)
    table = manager.block_table(layer, [seq])         # CSR: indptr, page_ids, lens
    headpage.decode_attention(arena, q, table.indptr, table.page_ids, table.lens, out)
    engine = headpage.EvictionEngine(manager, arena)
    result = engine.compress(seq, "ada-snapkv", "20%", window_queries, [window_positions])
    result.kept                                       # int32 [layers][kv_heads]

Tensors cross through DLPack without copies: the kernels take torch tensors or numpy
arrays (CPU tensors with a HostArena, which runs the CPU reference kernels; CUDA
tensors with a CudaArena, which runs the CUDA kernels on the `stream` given), and
`arena.kv` / `arena.positions` are views of the pool's memory (torch.from_dlpack).
With CacheGeometry(..., kv_dtype="fp8") pages store K/V as fp8 e4m3 with a float
scale per token and stream: write_kv quantizes, the kernels dequantize, `arena.kv`
is torch.float8_e4m3fn and `arena.scales` holds the scales (None otherwise), and a
page costs geometry.page_memory_bytes.
What the bookkeeping returns is a small read-only object, never a dict
(ReservePlan, CompressResult, BlockManagerStats, PagePoolStats, CompactionArgs);
the arrays it carries are read-only numpy views of its own copy.
A failed call raises with the library's message: ValueError for bad arguments,
headpage.ResourceExhausted (a MemoryError) when the pool is short,
NotImplementedError for what is not supported, KeyError for an unknown sequence.

headpage.hf holds a Hugging Face transformers Cache stored in a headpage pool.
"""
from headpage._ext import (  # noqa: F401
    BlockManager,
    BlockManagerStats,
    BlockTable,
    CacheGeometry,
    CompactionArgs,
    CompactionPlan,
    CompressResult,
    CudaArena,
    DeviceBlockTables,
    EvictionEngine,
    HostArena,
    PagePool,
    PagePoolStats,
    PolicyConfig,
    ReservePlan,
    ResourceExhausted,
    budget_capacity,
    compact,
    copy_pages,
    decode_attention,
    decode_attention_balanced_blocks,
    decode_attention_balanced_workspace_bytes,
    decode_attention_resident_blocks,
    decode_attention_splits,
    decode_max_splits,
    decode_attention_workspace_bytes,
    gather_kv,
    has_cuda,
    policy_by_name,
    policy_names,
    supported_head_dims,
    write_kv,
)

__version__ = "0.1.0"

# The policies headpage.hf.Cache and the tools name: the registry's (policy/config.h).
POLICIES = tuple(policy_names())
