// SPDX-License-Identifier: Apache-2.0
// File: kernels/window_scores_wgmma.cu
//
// WindowScores' passes 1 and 3 with their logits by Hopper's warpgroup MMA
// (window_scores_pass.cuh, kWarpgroup = true), for f16 and bf16 keys. CMake
// builds this file, and only this one, for sm_90a, and only when 90 is among
// the CUDA architectures; window_scores.cu calls it on compute capability 9.0.
#include "kernels/cuda_common.cuh"
#include "kernels/window_scores_args.h"
#include "kernels/window_scores_internal.cuh"
#include "kernels/window_scores_pass.cuh"

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "window_scores_wgmma.cu must be built for sm_90a (the warpgroup MMA)"
#endif

namespace headpage::gpu::internal::window {

LaunchResult LaunchWarpgroupPasses(const WindowScoresArgs& args, const WindowScoresPlan& plan,
                                   GpuStream stream) {
  return DispatchHeadDim(args.cache.head_dim, [&](auto head_dim_tag) {
    constexpr int kHeadDim = decltype(head_dim_tag)::value;
    if (args.cache.dtype == DType::kBF16) {
      return LaunchAllPasses<__nv_bfloat16, kHeadDim, true>(args, plan, stream);
    }
    return LaunchAllPasses<__half, kHeadDim, true>(args, plan, stream);
  });
}

}  // namespace headpage::gpu::internal::window
