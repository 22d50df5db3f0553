// SPDX-License-Identifier: Apache-2.0
// File: bench/kernels/page_read.cu
#include "bench/kernels/page_read.h"

namespace headpage::bench {
namespace {

constexpr int kThreads = 128;
// Vectors of 16 bytes a thread loads before it uses any: four pages' worth of
// a 8 KiB page (512 vectors, 4 a thread), so 32 KiB a block are in flight.
constexpr int kPagesInFlight = 4;

__global__ void __launch_bounds__(kThreads)
    ReadPagesKernel(const uint4* pool, int64_t page_vectors, const int32_t* page_ids,
                    int32_t num_page_ids, uint32_t* sink) {
  const int32_t first = blockIdx.x * kReadPagesPerBlock;
  uint32_t folded = 0;
  for (int32_t group = 0; group < kReadPagesPerBlock; group += kPagesInFlight) {
    int64_t page_at[kPagesInFlight];
#pragma unroll
    for (int p = 0; p < kPagesInFlight; ++p) {
      const int32_t entry = first + group + p;
      page_at[p] = entry < num_page_ids ? __ldg(page_ids + entry) * page_vectors : -1;
    }
    for (int64_t v = threadIdx.x; v < page_vectors; v += 4 * kThreads) {
      uint4 loaded[kPagesInFlight][4];
#pragma unroll
      for (int p = 0; p < kPagesInFlight; ++p) {
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const int64_t at = v + k * kThreads;
          loaded[p][k] = page_at[p] >= 0 && at < page_vectors ? __ldg(pool + page_at[p] + at)
                                                              : make_uint4(0, 0, 0, 0);
        }
      }
#pragma unroll
      for (int p = 0; p < kPagesInFlight; ++p) {
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          folded ^= loaded[p][k].x ^ loaded[p][k].y ^ loaded[p][k].z ^ loaded[p][k].w;
        }
      }
    }
  }
  // One word per block keeps the loads alive; the value itself is not used.
  folded ^= __shfl_xor_sync(0xffffffffu, folded, 16);
  if (threadIdx.x % 32 == 0) atomicXor(sink + blockIdx.x, folded);
}

}  // namespace

cudaError_t ReadPages(const void* pool, int64_t page_bytes, const int32_t* page_ids,
                      int32_t num_page_ids, uint32_t* sink, cudaStream_t stream) {
  if (num_page_ids <= 0) return cudaSuccess;
  const int32_t blocks = (num_page_ids + kReadPagesPerBlock - 1) / kReadPagesPerBlock;
  ReadPagesKernel<<<blocks, kThreads, 0, stream>>>(static_cast<const uint4*>(pool),
                                                   page_bytes / 16, page_ids, num_page_ids,
                                                   sink);
  return cudaGetLastError();
}

}  // namespace headpage::bench
