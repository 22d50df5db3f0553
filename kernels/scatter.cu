// SPDX-License-Identifier: Apache-2.0
// ScatterInt32 on the GPU: one thread per pair.
#include "kernels/cuda_common.cuh"
#include "kernels/scatter_args.h"

namespace headpage::gpu::internal {
namespace {

constexpr int kThreads = 256;

__global__ void ScatterInt32Kernel(ScatterInt32Args a) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= a.count) return;
  const int2 pair = reinterpret_cast<const int2*>(a.pairs)[i];
  // The caller guarantees the indices; a bad one is dropped, never written past dst.
  if (pair.x >= 0 && pair.x < a.dst_size) a.dst[pair.x] = pair.y;
}

}  // namespace

LaunchResult LaunchScatterInt32(const ScatterInt32Args& args, GpuStream stream) {
  ScatterInt32Kernel<<<static_cast<unsigned>(CeilDiv(args.count, kThreads)), kThreads, 0, stream>>>(
      args);
  return CheckLaunch();
}

}  // namespace headpage::gpu::internal
