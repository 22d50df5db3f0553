// SPDX-License-Identifier: Apache-2.0
// File: bench/kernels/launch_ahead.cu
#include "bench/kernels/launch_ahead.h"

namespace headpage::bench {
namespace {

__device__ __forceinline__ uint64_t GlobalTimer() {
  uint64_t ns;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns));
  return ns;
}

__global__ void HoldKernel(int64_t nanoseconds) {
  const uint64_t start = GlobalTimer();
  while (GlobalTimer() - start < static_cast<uint64_t>(nanoseconds)) __nanosleep(500);
}

// Reads `vectors` 16-byte vectors; stores only when their sum is a value a
// zeroed buffer cannot give, so the loads stay and the store never happens.
__global__ void ReadAllKernel(const uint4* data, int64_t vectors, uint32_t* sink) {
  uint32_t sum = 0;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < vectors;
       i += int64_t{gridDim.x} * blockDim.x) {
    const uint4 v = data[i];
    sum += v.x + v.y + v.z + v.w;
  }
  if (sum == 0xFFFFFFFFu) *sink = sum;
}

}  // namespace

cudaError_t EvictL2(cudaStream_t stream) {
  constexpr int64_t kBytes = int64_t{256} << 20;
  static uint4* buffer = nullptr;  // benchmark code: one device, never freed
  if (buffer == nullptr) {
    cudaError_t status = cudaMalloc(&buffer, kBytes + sizeof(uint4));
    if (status == cudaSuccess) status = cudaMemset(buffer, 0, kBytes + sizeof(uint4));
    if (status != cudaSuccess) {
      buffer = nullptr;
      return status;
    }
  }
  ReadAllKernel<<<1024, 256, 0, stream>>>(
      buffer, kBytes / sizeof(uint4), reinterpret_cast<uint32_t*>(buffer + kBytes / sizeof(uint4)));
  return cudaGetLastError();
}

cudaError_t HoldStream(int64_t nanoseconds, cudaStream_t stream) {
  HoldKernel<<<1, 1, 0, stream>>>(nanoseconds);
  return cudaGetLastError();
}

}  // namespace headpage::bench
