// SPDX-License-Identifier: Apache-2.0
// File: core/geometry.h
//
// CacheGeometry describes one model's KV cache: how many streams a sequence has
// (num_layers * num_kv_heads), how large a page is, the model's dtype, and how
// pages store K and V (in that dtype, or as fp8 with a scale per token). Every
// part of headpage is configured by one.
#ifndef HEADPAGE_CORE_GEOMETRY_H_
#define HEADPAGE_CORE_GEOMETRY_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "core/dtype.h"

namespace headpage {

// The largest head_dim a geometry (and the host references) take; the GPU
// kernels take the subset kernels/supported.h lists.
inline constexpr int32_t kMaxHeadDim = 1024;

struct CacheGeometry {
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t num_q_heads = 0;  // a multiple of num_kv_heads (GQA group size = q / kv)
  int32_t head_dim = 0;
  DType dtype = DType::kBF16;  // the model's: queries, new K/V, attention outputs
  int32_t page_size = 16;  // tokens per page, any value >= 1
  // kAuto: pages hold K/V in `dtype`. kFP8E4M3: in fp8 e4m3, each token's K and V
  // row with a float scale (core/dtype.h QuantizeRowFp8); needs dtype f16 or bf16.
  KvDType kv_dtype = KvDType::kAuto;

  // Streams per sequence: one per (layer, kv_head).
  int32_t streams_per_sequence() const { return num_layers * num_kv_heads; }
  int32_t group_size() const { return num_q_heads / num_kv_heads; }
  bool fp8() const { return kv_dtype == KvDType::kFP8E4M3; }
  // Bytes of one page in the K/V block: K then V, each [page_size][head_dim] of
  // the stored element.
  size_t page_bytes() const {
    return 2 * static_cast<size_t>(page_size) * static_cast<size_t>(head_dim) *
           KvElementBytes(dtype, kv_dtype);
  }
  // Bytes of the per-token scales of one page (fp8 only): a float for K and one
  // for V per slot, kept beside the K/V block (PagedKV::scales).
  size_t page_scale_bytes() const {
    return fp8() ? 2 * static_cast<size_t>(page_size) * sizeof(float) : 0;
  }
  // What a page costs in memory: its K/V and its scales. Memory budgets (GiB of
  // KV cache) divide by this.
  size_t page_memory_bytes() const { return page_bytes() + page_scale_bytes(); }

  std::string DebugString() const;

  // The geometry of Llama-3-8B (32 layers, 8 KV heads, 32 query heads, head_dim 128).
  static CacheGeometry Llama3_8B(DType dtype = DType::kBF16, int32_t page_size = 16);
};

// OK, or InvalidArgument naming the first field that is out of range.
[[nodiscard]] absl::Status Validate(const CacheGeometry& geometry);

}  // namespace headpage

#endif  // HEADPAGE_CORE_GEOMETRY_H_
