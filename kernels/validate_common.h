// SPDX-License-Identifier: Apache-2.0
// File: kernels/validate_common.h
//
// Checks every op's Validate() shares. Host only (Abseil).
#ifndef HEADPAGE_KERNELS_VALIDATE_COMMON_H_
#define HEADPAGE_KERNELS_VALIDATE_COMMON_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "core/paged_kv.h"
#include "kernels/table_checks.h"

namespace headpage {

// The CUDA kernels move K/V rows, queries and workspaces in 16-byte vectors;
// a misaligned pointer would be a sticky device fault, so Validate() rejects it.
inline constexpr size_t kKernelAlignment = 16;
inline bool IsKernelAligned(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % kKernelAlignment == 0;
}

// InvalidArgument for null pointers, misaligned data (kKernelAlignment),
// non-positive sizes, an unknown dtype or kv_dtype, and fp8 pages without
// scales or over f32. Any head_dim the geometry allows
// (1 to 1024): the host references loop over it.
[[nodiscard]] absl::Status ValidatePagedKV(const PagedKV& cache, const char* op);

// What a gpu:: entry checks beyond ValidatePagedKV: its kernels are compiled
// for kSupportedHeadDims only. Unimplemented naming them, and that the host
// reference takes the rest, otherwise.
[[nodiscard]] absl::Status ValidateGpuHeadDim(const PagedKV& cache, const char* op);

// What a ref:: implementation checks before it reads through CSR block tables
// (host arrays): for each of `num_streams` streams, table_checks.h's checks
// (indptr from 0, ascending and inside page_ids; lens[i] tokens inside the
// stream's pages; every page id it uses inside the cache). OutOfRange naming
// the stream otherwise.
[[nodiscard]] absl::Status CheckBlockTables(const PagedKV& cache, int32_t num_streams,
                                            const BlockTableArrays& table, const char* op);

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_VALIDATE_COMMON_H_
