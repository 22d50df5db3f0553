// SPDX-License-Identifier: Apache-2.0
// CUDA's own float -> half / bfloat16 / fp8 e4m3 conversions over a sample of
// float bit patterns (and fp8 -> float over all of them), for the host
// conversions of core/dtype.h to be compared with.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "tests/core/dtype_gpu_convert.h"

namespace headpage::testing {
namespace {

__global__ void ConvertKernel(uint32_t offset, uint32_t stride, uint64_t count, uint16_t* f16,
                              uint16_t* bf16) {
  for (uint64_t i = blockIdx.x * uint64_t{blockDim.x} + threadIdx.x; i < count;
       i += uint64_t{gridDim.x} * blockDim.x) {
    const float x = __uint_as_float(static_cast<uint32_t>(offset + i * stride));
    f16[i] = __half_as_ushort(__float2half_rn(x));
    bf16[i] = __bfloat16_as_ushort(__float2bfloat16_rn(x));
  }
}

__global__ void ConvertFp8Kernel(uint32_t offset, uint32_t stride, uint64_t count, uint8_t* fp8,
                                 uint16_t* fp8x2) {
  for (uint64_t i = blockIdx.x * uint64_t{blockDim.x} + threadIdx.x; i < count;
       i += uint64_t{gridDim.x} * blockDim.x) {
    const auto bits = static_cast<uint32_t>(offset + i * stride);
    const float x = __uint_as_float(bits);
    const float y = __uint_as_float(PartnerBits(bits));
    fp8[i] = __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
    fp8x2[i] = __nv_cvt_float2_to_fp8x2(make_float2(x, y), __NV_SATFINITE, __NV_E4M3);
  }
}

__global__ void Fp8ToFloatKernel(float* out) {
  const auto b = static_cast<__nv_fp8_storage_t>(threadIdx.x);
  out[threadIdx.x] = __half2float(__half(__nv_cvt_fp8_to_halfraw(b, __NV_E4M3)));
}

// Device arrays of `count` elements for two outputs, launch(d_a, d_b) on
// them, and the results copied back into host_a and host_b.
template <typename A, typename B, typename Launch>
cudaError_t RunWithTwoOutputs(uint64_t count, A* host_a, B* host_b, Launch launch) {
  A* d_a = nullptr;
  B* d_b = nullptr;
  cudaError_t err = cudaMalloc(&d_a, count * sizeof(A));
  if (err == cudaSuccess) err = cudaMalloc(&d_b, count * sizeof(B));
  if (err == cudaSuccess) {
    launch(d_a, d_b);
    err = cudaGetLastError();
  }
  if (err == cudaSuccess) err = cudaMemcpy(host_a, d_a, count * sizeof(A), cudaMemcpyDeviceToHost);
  if (err == cudaSuccess) err = cudaMemcpy(host_b, d_b, count * sizeof(B), cudaMemcpyDeviceToHost);
  cudaFree(d_a);
  cudaFree(d_b);
  return err;
}

}  // namespace

cudaError_t ConvertOnDevice(uint32_t offset, uint32_t stride, uint64_t count, uint16_t* host_f16,
                            uint16_t* host_bf16) {
  return RunWithTwoOutputs(count, host_f16, host_bf16, [&](uint16_t* f16, uint16_t* bf16) {
    ConvertKernel<<<1024, 256>>>(offset, stride, count, f16, bf16);
  });
}

cudaError_t ConvertFp8OnDevice(uint32_t offset, uint32_t stride, uint64_t count, uint8_t* host_fp8,
                               uint16_t* host_fp8x2) {
  return RunWithTwoOutputs(count, host_fp8, host_fp8x2, [&](uint8_t* fp8, uint16_t* fp8x2) {
    ConvertFp8Kernel<<<1024, 256>>>(offset, stride, count, fp8, fp8x2);
  });
}

cudaError_t Fp8ToFloatOnDevice(float* host_float) {
  float* d_float = nullptr;
  cudaError_t err = cudaMalloc(&d_float, 256 * sizeof(float));
  if (err == cudaSuccess) {
    Fp8ToFloatKernel<<<1, 256>>>(d_float);
    err = cudaGetLastError();
  }
  if (err == cudaSuccess) {
    err = cudaMemcpy(host_float, d_float, 256 * sizeof(float), cudaMemcpyDeviceToHost);
  }
  cudaFree(d_float);
  return err;
}

}  // namespace headpage::testing
