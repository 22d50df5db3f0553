// SPDX-License-Identifier: Apache-2.0
// File: kernels/validate_common.h
//
// Checks every op's Validate() shares. Host only (Abseil).
#ifndef HEADPAGE_KERNELS_VALIDATE_COMMON_H_
#define HEADPAGE_KERNELS_VALIDATE_COMMON_H_

#include "absl/status/status.h"
#include "core/paged_kv.h"

namespace headpage {

// InvalidArgument for null pointers, non-positive sizes or an unknown dtype;
// Unimplemented for a head_dim outside kSupportedHeadDims.
[[nodiscard]] absl::Status ValidatePagedKV(const PagedKV& cache, const char* op);

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_VALIDATE_COMMON_H_
