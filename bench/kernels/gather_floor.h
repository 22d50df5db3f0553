// SPDX-License-Identifier: Apache-2.0
// File: bench/kernels/gather_floor.h
//
// The floor under Compact, and the layout question beside it: a kernel that
// moves whole tokens (a K row and a V row each) between pages and does nothing
// else, with every source and destination precomputed on the host. A warp
// moves one token a step, 32 lanes on 16 bytes each. Where a token's V row
// lies against its K row is a parameter, so that one survivor set can be moved
// as the pool lays pages out today (the V rows half a page after the K rows)
// and as a token-major page would (V right after K, 512 contiguous bytes),
// with the same bytes, the same pages and the same order.
// data_movement_bench.cc times it beside Compact.
#ifndef HEADPAGE_BENCH_KERNELS_GATHER_FLOOR_H_
#define HEADPAGE_BENCH_KERNELS_GATHER_FLOOR_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace headpage::bench {

// Moves tokens 0 .. num_tokens) of `pool` (16-byte vectors): token i's K row,
// `row_vectors` vectors from vector src[i], goes to vector dst[i], and its V
// row, `row_vectors` vectors from src[i] + value_offset, to dst[i] +
// value_offset. 2 * row_vectors must be 32 (a warp per token). The sources
// and destinations must not overlap.
cudaError_t GatherTokens(void* pool, const int64_t* src, const int64_t* dst, int64_t num_tokens,
                         int32_t row_vectors, int64_t value_offset, cudaStream_t stream);

}  // namespace headpage::bench

#endif  // HEADPAGE_BENCH_KERNELS_GATHER_FLOOR_H_
