// SPDX-License-Identifier: Apache-2.0
// File: bench/kernels/gather_floor.cu
#include "bench/kernels/gather_floor.h"

namespace headpage::bench {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
// Tokens a warp holds in flight at once: each lane loads one vector of each
// before it stores any (Compact's kHeld).
constexpr int kHeld = 8;
// Compact's kMinBlocksPerSM: the same warps, so the same bytes, in flight per
// SM (left to itself the compiler takes registers enough for only two blocks).
constexpr int kMinBlocksPerSM = 3;

// Each warp takes a contiguous range of tokens, kHeld at a time: the next
// group's sources and destinations are loaded while this group's vectors are
// in flight, so that the index loads do not wait on the data.
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM)
    GatherTokensKernel(uint4* pool, const int64_t* src, const int64_t* dst, int64_t num_tokens,
                       int32_t row_vectors, int64_t value_offset) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int64_t per_warp = (num_tokens + warps - 1) / warps;
  const int64_t begin = warp * per_warp;
  const int64_t end = begin + per_warp < num_tokens ? begin + per_warp : num_tokens;
  // This lane's vector of a token: K row vectors first, then the V row's.
  const int64_t within = lane < row_vectors ? lane : value_offset + (lane - row_vectors);
  int64_t from[kHeld], to[kHeld];
#pragma unroll
  for (int u = 0; u < kHeld; ++u) {
    from[u] = begin + u < end ? __ldg(src + begin + u) : -1;
    to[u] = begin + u < end ? __ldg(dst + begin + u) : 0;
  }
  for (int64_t group = begin; group < end; group += kHeld) {
    uint4 held[kHeld];
#pragma unroll
    for (int u = 0; u < kHeld; ++u) {
      if (from[u] >= 0) held[u] = __ldcs(pool + from[u] + within);
    }
    int64_t next_from[kHeld], next_to[kHeld];
#pragma unroll
    for (int u = 0; u < kHeld; ++u) {
      const int64_t t = group + kHeld + u;
      next_from[u] = t < end ? __ldg(src + t) : -1;
      next_to[u] = t < end ? __ldg(dst + t) : 0;
    }
#pragma unroll
    for (int u = 0; u < kHeld; ++u) {
      if (from[u] >= 0) __stcs(pool + to[u] + within, held[u]);
      from[u] = next_from[u];
      to[u] = next_to[u];
    }
  }
}

}  // namespace

cudaError_t GatherTokens(void* pool, const int64_t* src, const int64_t* dst, int64_t num_tokens,
                         int32_t row_vectors, int64_t value_offset, cudaStream_t stream) {
  if (2 * row_vectors != 32) return cudaErrorInvalidValue;
  if (num_tokens <= 0) return cudaSuccess;
  // One wave of resident blocks, as Compact launches; asked once (the
  // benchmark runs on one device).
  static int blocks = 0;
  if (blocks == 0) {
    int device = 0, sms = 0, per_sm = 0;
    cudaError_t status = cudaGetDevice(&device);
    if (status == cudaSuccess) {
      status = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    }
    if (status == cudaSuccess) {
      status =
          cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, GatherTokensKernel, kThreads, 0);
    }
    if (status != cudaSuccess) return status;
    blocks = sms * (per_sm > 0 ? per_sm : 1);
  }
  GatherTokensKernel<<<blocks, kThreads, 0, stream>>>(static_cast<uint4*>(pool), src, dst,
                                                      num_tokens, row_vectors, value_offset);
  return cudaGetLastError();
}

}  // namespace headpage::bench
