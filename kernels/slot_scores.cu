// SPDX-License-Identifier: Apache-2.0
// SlotScores on the GPU. kStore and kAdd: a grid of (stream, chunk of tokens),
// one thread per token. kLoad with shift_to_zero needs the stream's lowest
// stored score before it writes, so one block per stream finds it first.
// Every value is computed as ref:: computes it (one rounded add or subtract),
// so the results are bit-equal.
#include "kernels/cuda_common.cuh"
#include "kernels/slot_scores_args.h"

namespace headpage::gpu::internal {
namespace {

constexpr int kThreads = 256;
constexpr int32_t kMaxChunks = 65535;  // gridDim.y

struct StreamView {
  int32_t len = 0;
  int32_t scored = 0;
  const int32_t* pages = nullptr;
  float* dense = nullptr;
};

__device__ __forceinline__ StreamView ViewOf(const SlotScoresArgs& a, int32_t s) {
  StreamView v;
  // Lengths past the block table and scored counts outside [0, len] are
  // clamped: the device's arrays were not checked.
  v.len = max(0, TableClampedLength<int32_t>(a.lens, a.indptr, s, a.cache.page_size));
  v.scored = a.scored != nullptr ? min(max(a.scored[s], 0), v.len) : v.len;
  v.pages = a.page_ids + a.indptr[s];
  v.dense = a.dense + a.offsets[s];
  return v;
}

__device__ __forceinline__ float* StoredAt(const SlotScoresArgs& a, const StreamView& v, int32_t j) {
  return a.slot_scores + SlotOf(v.pages, j, a.cache.page_size);
}

__global__ void __launch_bounds__(kThreads) StoreOrAddKernel(SlotScoresArgs a) {
  const StreamView v = ViewOf(a, static_cast<int32_t>(blockIdx.x));
  const int32_t stride = static_cast<int32_t>(gridDim.y) * kThreads;
  for (int32_t j = static_cast<int32_t>(blockIdx.y) * kThreads + threadIdx.x; j < v.len; j += stride) {
    float* stored = StoredAt(a, v, j);
    if (a.op == SlotScoresOp::kStore) {
      *stored = v.dense[j];
    } else {
      const float total = __fadd_rn(j < v.scored ? *stored : 0.0f, v.dense[j]);
      *stored = total;
      v.dense[j] = total;
    }
  }
}

__global__ void __launch_bounds__(kThreads) LoadKernel(SlotScoresArgs a) {
  __shared__ float lowest_of_warp[kThreads / 32];
  const StreamView v = ViewOf(a, static_cast<int32_t>(blockIdx.x));
  float lowest = 0.0f;
  if (a.shift_to_zero) {
    for (int32_t j = threadIdx.x; j < v.scored; j += kThreads) lowest = fminf(lowest, *StoredAt(a, v, j));
    for (int offset = 16; offset > 0; offset /= 2) {
      lowest = fminf(lowest, __shfl_xor_sync(0xffffffffu, lowest, offset));
    }
    if (threadIdx.x % 32 == 0) lowest_of_warp[threadIdx.x / 32] = lowest;
    __syncthreads();
    lowest = 0.0f;
    for (int w = 0; w < kThreads / 32; ++w) lowest = fminf(lowest, lowest_of_warp[w]);
  }
  for (int32_t j = threadIdx.x; j < v.len; j += kThreads) {
    v.dense[j] = j < v.scored ? __fsub_rn(*StoredAt(a, v, j), lowest) : a.unscored;
  }
}

}  // namespace

LaunchResult LaunchSlotScores(const SlotScoresArgs& args, GpuStream stream) {
  if (args.op == SlotScoresOp::kLoad) {
    LoadKernel<<<static_cast<unsigned>(args.num_streams), kThreads, 0, stream>>>(args);
  } else {
    const int64_t chunks = CeilDiv(args.max_len, kThreads);
    const dim3 grid(static_cast<unsigned>(args.num_streams),
                    static_cast<unsigned>(chunks < kMaxChunks ? chunks : kMaxChunks));
    StoreOrAddKernel<<<grid, kThreads, 0, stream>>>(args);
  }
  return CheckLaunch();
}

}  // namespace headpage::gpu::internal
