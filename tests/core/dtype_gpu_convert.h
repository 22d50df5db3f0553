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

// Rotates a float's bits by 16: the partner of each float in the fp8x2 sweep.
#if defined(__CUDACC__)
__host__ __device__
#endif
inline uint32_t PartnerBits(uint32_t bits) { return (bits << 16) | (bits >> 16); }

// The same floats x_i to fp8 e4m3 on the device, saturating
// (__NV_SATFINITE): with __nv_cvt_float_to_fp8 into host_fp8[i], and with
// __nv_cvt_float2_to_fp8x2 of (x_i, y_i) into host_fp8x2[i], y_i the float of
// PartnerBits(x_i's bits) (x_i the low byte, as the kernels store pairs).
cudaError_t ConvertFp8OnDevice(uint32_t offset, uint32_t stride, uint64_t count, uint8_t* host_fp8,
                               uint16_t* host_fp8x2);

// Every e4m3 byte b (0..255) back to float on the device through half
// (__nv_cvt_fp8_to_halfraw, as the kernels read fp8 pages): host_float[b].
cudaError_t Fp8ToFloatOnDevice(float* host_float);

}  // namespace headpage::testing

#endif  // HEADPAGE_TESTS_CORE_DTYPE_GPU_CONVERT_H_
