// SPDX-License-Identifier: Apache-2.0
#ifndef HEADPAGE_TESTS_CORE_DTYPE_GPU_CONVERT_H_
#define HEADPAGE_TESTS_CORE_DTYPE_GPU_CONVERT_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace headpage::testing {

// Converts the floats with bit patterns offset + i * stride (i < count, wrapping
// mod 2^32) with __float2half_rn and __float2bfloat16_rn on the device.
cudaError_t ConvertOnDevice(uint32_t offset, uint32_t stride, uint64_t count, uint16_t* host_f16,
                            uint16_t* host_bf16);

}  // namespace headpage::testing

#endif  // HEADPAGE_TESTS_CORE_DTYPE_GPU_CONVERT_H_
