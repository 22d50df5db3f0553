// SPDX-License-Identifier: Apache-2.0
// File: kernels/window_scores.cu
//
// WindowScores on the GPU, in four launches:
//
//   1. RowStats: block (row group, split, stream) streams a chunk of the
//      stream's keys through shared memory (cp.async, 2-3 stages of 64 keys,
//      page ids read a tile ahead) and computes the logits of up to 128 window
//      query rows against them on the tensor cores (queries in registers; on
//      an sm_90a build and a compute capability 9.0 GPU Hopper's warpgroup
//      MMA, wgmma m64n64k16, reads the keys from shared memory itself,
//      elsewhere mma.sync m16n8k16 through ldmatrix; f32 takes plain FMAs).
//      Each thread sums exp2 of its logits relative to a per-row reference
//      that is raised only when the sum would overflow (so most tiles cost no
//      maximum); the quad merges its four (reference, sum) pairs and the block
//      writes one per row for its chunk.
//   2. MergeStats: per row, the chunks' pairs merged into log2 of the row's
//      softmax denominator, M' = reference + log2(sum) (+inf for a row that
//      sees no key or is padding), so that attention = exp2(logit * scale - M').
//   3. Scores: the same blocks read the keys again, recompute the logits and
//      sum exp2(logit - M') over the rows of each q head: a butterfly
//      reduce-scatter over the warp (7 shuffles for 32 columns), then the
//      warps' sums through shared memory, reduced over the group's heads (mean
//      or max): one unpooled partial per key and row group, whose sign bit
//      marks the keys at or after the window start.
//   4. Pool: per key, the row groups' partials combined, then the keys before
//      the window pooled over their neighbours before the window, from a
//      shared-memory tile with a halo.
//
// The keys are read twice (the softmax needs every row's denominator before any
// key's score is known, and caching the logits would cost more bytes than the
// keys: 128 rows x 4 bytes against 256 bytes of a bf16 d = 128 key); the
// queries, statistics and partial scores are small beside them. With mma.sync,
// measured on an H100 (8 x 32K, d = 128, bf16), the two passes were
// latency-bound at ~40% tensor-pipe and ~48% DRAM utilization each (ncu:
// fixed-latency dependencies); the warpgroup MMA issues a tile's 16 products
// as one asynchronous group instead of 128 dependent warp instructions.
//
// This file: whether the warpgroup MMA runs here, and the warp MMA's and FMAs'
// instances (gpu::WindowScores chooses);
// window_scores_pass.cuh: passes 1 and 3; window_scores_tile.cuh: what they do
// with a tile of keys (copies, queries, logits); window_scores_wgmma.cu: the
// warpgroup MMA's instances; window_scores_pool.cu: passes 2 and 4;
// window_scores_internal.cuh: what the .cu files share.
#include <cuda_runtime.h>

#include "kernels/cuda_common.cuh"
#include "kernels/window_scores_args.h"
#include "kernels/window_scores_internal.cuh"
#include "kernels/window_scores_pass.cuh"

namespace headpage::gpu::internal {

LaunchResult WarpgroupMmaRuns(bool* runs) {
  *runs = false;
#if HEADPAGE_HAVE_WGMMA
  int device = 0, major = 0, minor = 0;
  LaunchResult result = CudaErrorResult(cudaGetDevice(&device));
  if (result.ok()) {
    result = CudaErrorResult(
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  }
  if (result.ok()) {
    result = CudaErrorResult(
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  }
  if (!result.ok()) return result;
  // sm_90a code runs on compute capability 9.0 only.
  *runs = major == 9 && minor == 0;
#endif
  return LaunchResult{};
}

LaunchResult LaunchWindowScores(const WindowScoresArgs& args, GpuStream stream) {
  const WindowScoresPlan plan = PlanWindowScores(args);
  if (plan.num_splits == 0) return LaunchResult{};
  if (args.backend == WindowScoresBackend::kWarpgroupMma) {
    return window::LaunchWarpgroupPasses(args, plan, stream);
  }
  return DispatchDTypeAndHeadDim(args.cache.dtype, args.cache.head_dim, [&](auto dtype_tag,
                                                                           auto head_dim_tag) {
    using T = typename decltype(dtype_tag)::type;
    constexpr int kHeadDim = decltype(head_dim_tag)::value;
    return window::LaunchAllPasses<T, kHeadDim, false>(args, plan, stream);
  });
}

}  // namespace headpage::gpu::internal
