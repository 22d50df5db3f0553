// SPDX-License-Identifier: Apache-2.0
// File: bench/kernels/page_read.h
//
// The floor under DecodeAttention on a pool: a kernel that only reads every
// page of every stream (K and V, whole pages) and folds them into one word per
// block, so that the time it takes is what reading those pages where they lie
// costs: scattered 8 KiB pages of a pool of any size, at the GPU's own
// scheduling. decode_serving_bench.cc times it beside DecodeAttention.
#ifndef HEADPAGE_BENCH_KERNELS_PAGE_READ_H_
#define HEADPAGE_BENCH_KERNELS_PAGE_READ_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace headpage::bench {

// Pages read by one block of ReadPages.
inline constexpr int32_t kReadPagesPerBlock = 16;

// Reads pages page_ids[0 .. num_page_ids) of `page_bytes` bytes each (a
// multiple of 16) from `pool`, and folds them into `sink`, one word per block
// (ceil(num_page_ids / kReadPagesPerBlock) words, zeroed by the caller).
cudaError_t ReadPages(const void* pool, int64_t page_bytes, const int32_t* page_ids,
                      int32_t num_page_ids, uint32_t* sink, cudaStream_t stream);

}  // namespace headpage::bench

#endif  // HEADPAGE_BENCH_KERNELS_PAGE_READ_H_
