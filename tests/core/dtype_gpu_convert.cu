// SPDX-License-Identifier: Apache-2.0
// CUDA's own float -> half / bfloat16 conversions over a sample of float bit
// patterns, for the host conversions of core/dtype.h to be compared with.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
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

}  // namespace

cudaError_t ConvertOnDevice(uint32_t offset, uint32_t stride, uint64_t count, uint16_t* host_f16,
                            uint16_t* host_bf16) {
  uint16_t* d_f16 = nullptr;
  uint16_t* d_bf16 = nullptr;
  cudaError_t err = cudaMalloc(&d_f16, count * sizeof(uint16_t));
  if (err == cudaSuccess) err = cudaMalloc(&d_bf16, count * sizeof(uint16_t));
  if (err == cudaSuccess) {
    ConvertKernel<<<1024, 256>>>(offset, stride, count, d_f16, d_bf16);
    err = cudaGetLastError();
  }
  if (err == cudaSuccess) {
    err = cudaMemcpy(host_f16, d_f16, count * sizeof(uint16_t), cudaMemcpyDeviceToHost);
  }
  if (err == cudaSuccess) {
    err = cudaMemcpy(host_bf16, d_bf16, count * sizeof(uint16_t), cudaMemcpyDeviceToHost);
  }
  cudaFree(d_f16);
  cudaFree(d_bf16);
  return err;
}

}  // namespace headpage::testing
