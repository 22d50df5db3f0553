// SPDX-License-Identifier: Apache-2.0
// File: kernels/window_scores_internal.cuh
//
// What the .cu files of WindowScores share: window_scores.cu (the launch of
// all four passes), window_scores_wgmma.cu (passes 1 and 3 by the warpgroup
// MMA) and window_scores_pool.cu (passes 2 and 4, per row and per key). CUDA
// and plain headers only.
#ifndef HEADPAGE_KERNELS_WINDOW_SCORES_INTERNAL_CUH_
#define HEADPAGE_KERNELS_WINDOW_SCORES_INTERNAL_CUH_

#include <cstdint>

#include "kernels/cuda_common.cuh"
#include "kernels/window_scores_args.h"

namespace headpage::gpu::internal::window {

inline constexpr int kTile = kScoreTileKeys;              // keys per pipeline stage
inline constexpr int kRowsPerBlock = kScoreRowsPerGroup;  // query rows per block
inline constexpr int kMTiles = kRowsPerBlock / 16;        // 16-row tensor-core tiles
inline constexpr float kInf = __builtin_huge_valf();

// A stream's length as the kernels use it: the device's `lens` cut to the
// host's max_len (which sized the grid) and to the stream's own block-table
// row.
__device__ __forceinline__ int32_t StreamLength(const WindowScoresArgs& args, int32_t stream) {
  return min(TableClampedLength<int32_t>(args.lens, args.indptr, stream, args.cache.page_size),
             args.max_len);
}

// window_scores_pool.cu: pass 2, block (stream, row group), thread = row.
LaunchResult LaunchMergeStats(const WindowScoresArgs& args, const WindowScoresPlan& plan,
                              GpuStream stream);
// window_scores_pool.cu: pass 4, block = 256 consecutive keys of one stream.
LaunchResult LaunchPool(const WindowScoresArgs& args, const WindowScoresPlan& plan,
                        GpuStream stream);
// window_scores_wgmma.cu (built where 90 is among the CUDA architectures):
// all four launches, passes 1 and 3 by the warpgroup MMA; f16 or bf16 keys.
LaunchResult LaunchWarpgroupPasses(const WindowScoresArgs& args, const WindowScoresPlan& plan,
                                   GpuStream stream);

}  // namespace headpage::gpu::internal::window

#endif  // HEADPAGE_KERNELS_WINDOW_SCORES_INTERNAL_CUH_
