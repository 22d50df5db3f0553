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

}  // namespace

cudaError_t HoldStream(int64_t nanoseconds, cudaStream_t stream) {
  HoldKernel<<<1, 1, 0, stream>>>(nanoseconds);
  return cudaGetLastError();
}

}  // namespace headpage::bench
