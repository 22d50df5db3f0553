// SPDX-License-Identifier: Apache-2.0
#include "kernels/validate_common.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/geometry.h"
#include "kernels/supported.h"
#include "kernels/table_checks_host.h"

namespace headpage {

absl::Status ValidatePagedKV(const PagedKV& cache, const char* op) {
  if (cache.data == nullptr || cache.positions == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": cache data or positions is null"));
  }
  if (!IsKernelAligned(cache.data)) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": cache data is not ", kKernelAlignment, "-byte aligned"));
  }
  if (cache.num_pages <= 0 || cache.page_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": cache has ", cache.num_pages,
                                                   " pages of ", cache.page_size, " tokens"));
  }
  if (cache.num_slots() > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", cache.num_slots(),
                                                   " slots exceed the int32 slot id range"));
  }
  if (SizeOf(cache.dtype) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": unknown dtype value ", static_cast<int>(cache.dtype)));
  }
  if (cache.head_dim <= 0 || cache.head_dim > kMaxHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": head_dim ", cache.head_dim,
                                                   " is outside [1, ", kMaxHeadDim, "]"));
  }
  if (!IsKnown(cache.kv_dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": unknown kv_dtype value ", static_cast<int>(cache.kv_dtype)));
  }
  if (cache.fp8()) {
    if (cache.dtype == DType::kF32) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": fp8 pages need a model dtype of f16 or bf16, got f32"));
    }
    if (cache.scales == nullptr || !IsKernelAligned(cache.scales)) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": fp8 pages need their scales (null or not ", kKernelAlignment, "-byte aligned)"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateGpuHeadDim(const PagedKV& cache, const char* op) {
  if (!IsSupportedHeadDim(cache.head_dim)) {
    return absl::UnimplementedError(absl::StrCat(
        op, ": head_dim ", cache.head_dim, " is not compiled into the GPU kernels (they take ",
        absl::StrJoin(kSupportedHeadDims, ", "), "); the host reference takes any head_dim"));
  }
  return absl::OkStatus();
}

absl::Status CheckBlockTables(const PagedKV& cache, int32_t num_streams,
                              const BlockTableArrays& table, const char* op) {
  TableFaultContext context;
  context.op = op;
  context.row_noun = "stream";
  context.num_page_ids = table.num_page_ids;
  context.num_pages = cache.num_pages;
  return TableFaultStatus(
      FirstTableFault(table, num_streams, cache.page_size, cache.num_pages), context);
}

}  // namespace headpage
