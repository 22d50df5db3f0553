// SPDX-License-Identifier: Apache-2.0
// File: kernels/supported.h
//
// The compile-time sets of the kernels, declared once. Validate() of every op and
// the CUDA dispatchers both read them, and a test holds them to agree.
// Plain C++: .cu files include it.
#ifndef HEADPAGE_KERNELS_SUPPORTED_H_
#define HEADPAGE_KERNELS_SUPPORTED_H_

#include <cstdint>

namespace headpage {

inline constexpr int32_t kSupportedHeadDims[] = {64, 128, 256};

constexpr bool IsSupportedHeadDim(int32_t head_dim) {
  for (int32_t d : kSupportedHeadDims) {
    if (d == head_dim) return true;
  }
  return false;
}

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_SUPPORTED_H_
