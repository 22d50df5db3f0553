// SPDX-License-Identifier: Apache-2.0
// File: core/geometry.h
//
// CacheGeometry describes one model's KV cache: how many streams a sequence has
// (num_layers * num_kv_heads), how large a page is, and in which dtype K and V are
// stored. Every part of headpage is configured by one.
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
  DType dtype = DType::kBF16;
  int32_t page_size = 16;  // tokens per page, any value >= 1

  // Streams per sequence: one per (layer, kv_head).
  int32_t streams_per_sequence() const { return num_layers * num_kv_heads; }
  int32_t group_size() const { return num_q_heads / num_kv_heads; }
  // Bytes of one page: K then V, each [page_size][head_dim].
  size_t page_bytes() const {
    return 2 * static_cast<size_t>(page_size) * static_cast<size_t>(head_dim) * SizeOf(dtype);
  }

  std::string DebugString() const;

  // The geometry of Llama-3-8B (32 layers, 8 KV heads, 32 query heads, head_dim 128).
  static CacheGeometry Llama3_8B(DType dtype = DType::kBF16, int32_t page_size = 16);
};

// OK, or InvalidArgument naming the first field that is out of range.
[[nodiscard]] absl::Status Validate(const CacheGeometry& geometry);

}  // namespace headpage

#endif  // HEADPAGE_CORE_GEOMETRY_H_
