# SPDX-License-Identifier: Apache-2.0
"""How pages store K and V, for headpage.hf and headpage.serving: the kv_dtype
they are asked for ("auto": the model's dtype; "fp8": fp8 e4m3 with a float
scale per token and stream, core/dtype.h), checked once; a model's
CacheGeometry; a KV memory budget in pages; and the K/V of some pages read back
in the model's dtype, dequantized as the kernels read them.

Everything that writes K/V into pages goes through headpage.write_kv, which
quantizes fp8 rows; nothing here writes."""
import torch

import headpage
from headpage._model import DTYPES

# The names CacheGeometry takes (it is the one place that reads them), for
# command-line choices.
KV_DTYPES = ("auto", "fp8", "fp8_e4m3")


def check_kv_dtype(kv_dtype, dtype, who):
    """The canonical name ("auto" or "fp8_e4m3") of `kv_dtype` for a model of
    torch `dtype` (None: not known yet, only the name is checked). ValueError
    naming `who` for an unknown name, or fp8 pages for a float32 model (fp8 is
    stored and read against a 16-bit model dtype); TypeError for a non-string."""
    if not isinstance(kv_dtype, str):
        raise TypeError(f"{who}: kv_dtype must be a string ({', '.join(KV_DTYPES)}), "
                        f"got {kv_dtype!r}")
    try:
        # The smallest valid geometry: the binding parses the name and the core
        # validates it against the dtype, as they will for the real one.
        probe = headpage.CacheGeometry(num_layers=1, num_kv_heads=1, num_q_heads=1, head_dim=1,
                                       dtype=DTYPES.get(dtype, "bf16"), kv_dtype=kv_dtype)
    except ValueError as error:
        hint = " (load the model in bfloat16 or float16)" if dtype == torch.float32 else ""
        raise ValueError(f"{who}: {error}{hint}") from None
    return probe.kv_dtype


def cache_geometry(shape, dtype, page_size, kv_dtype):
    """The CacheGeometry of a model of headpage._model.ModelShape `shape` and
    torch `dtype`, with pages of `page_size` tokens that store `kv_dtype`."""
    return headpage.CacheGeometry(
        num_layers=shape.num_layers, num_kv_heads=shape.num_kv_heads,
        num_q_heads=shape.num_q_heads, head_dim=shape.head_dim, dtype=DTYPES[dtype],
        page_size=page_size, kv_dtype=kv_dtype)


def pages_in(kv_bytes, geometry):
    """Pages a KV memory of `kv_bytes` holds: a page costs its K/V and, for fp8,
    its scales (CacheGeometry.page_memory_bytes)."""
    return int(kv_bytes // geometry.page_memory_bytes)


def read_pages(arena, pages, dtype):
    """(keys, values) of the pages `pages` (a long tensor of page ids of any shape
    S, on the arena's device) as two [*S][page_size][head_dim] tensors of torch
    `dtype`. fp8 pages are dequantized with their slots' scales in float32 (as
    the kernels read them), then rounded to `dtype`."""
    kv = torch.from_dlpack(arena.kv)
    keys, values = kv[pages, 0], kv[pages, 1]
    scales = arena.scales
    if scales is None:
        return keys, values
    scales = torch.from_dlpack(scales)[pages]  # [*S][page_size][2]: K then V
    return ((keys.float() * scales[..., 0:1]).to(dtype),
            (values.float() * scales[..., 1:2]).to(dtype))
