// SPDX-License-Identifier: Apache-2.0
#include "core/geometry.h"

#include <limits>

#include "absl/strings/str_cat.h"

namespace headpage {

std::string CacheGeometry::DebugString() const {
  return absl::StrCat("{layers=", num_layers, " kv_heads=", num_kv_heads, " q_heads=", num_q_heads,
                      " head_dim=", head_dim, " dtype=", DTypeName(dtype),
                      " page_size=", page_size,
                      fp8() ? absl::StrCat(" kv_dtype=", KvDTypeName(kv_dtype)) : "", "}");
}

CacheGeometry CacheGeometry::Llama3_8B(DType dtype, int32_t page_size) {
  CacheGeometry g;
  g.num_layers = 32;
  g.num_kv_heads = 8;
  g.num_q_heads = 32;
  g.head_dim = 128;
  g.dtype = dtype;
  g.page_size = page_size;
  return g;
}

absl::Status Validate(const CacheGeometry& g) {
  // Bounds keep streams_per_sequence() and the slot ids of one page in int32.
  constexpr int32_t kMaxLayers = 1 << 12;
  constexpr int32_t kMaxHeads = 1 << 12;
  constexpr int32_t kMaxPageSize = 1 << 16;
  if (g.num_layers <= 0 || g.num_layers > kMaxLayers) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_layers must be in [1, ", kMaxLayers, "], got ", g.num_layers));
  }
  if (g.num_kv_heads <= 0 || g.num_kv_heads > kMaxHeads) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_kv_heads must be in [1, ", kMaxHeads, "], got ", g.num_kv_heads));
  }
  if (g.num_q_heads <= 0 || g.num_q_heads > kMaxHeads) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_q_heads must be in [1, ", kMaxHeads, "], got ", g.num_q_heads));
  }
  if (g.num_q_heads % g.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_q_heads (", g.num_q_heads,
                                                   ") must be a multiple of num_kv_heads (",
                                                   g.num_kv_heads, ")"));
  }
  if (g.head_dim <= 0 || g.head_dim > kMaxHeadDim) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_dim must be in [1, ", kMaxHeadDim, "], got ", g.head_dim));
  }
  if (SizeOf(g.dtype) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown dtype value ", static_cast<int>(g.dtype)));
  }
  if (!IsKnown(g.kv_dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown kv_dtype value ", static_cast<int>(g.kv_dtype)));
  }
  if (g.fp8() && g.dtype == DType::kF32) {
    return absl::InvalidArgumentError(
        "kv_dtype fp8_e4m3 needs a model dtype of f16 or bf16, got f32");
  }
  if (g.page_size <= 0 || g.page_size > kMaxPageSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size must be in [1, ", kMaxPageSize, "], got ", g.page_size));
  }
  return absl::OkStatus();
}

}  // namespace headpage
