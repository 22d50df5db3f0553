// SPDX-License-Identifier: Apache-2.0
// File: kernels/window_scores_pool.cu
//
// WindowScores' passes 2 and 4 (window_scores.cu has the overview, passes 1
// and 3 over the keys, and the launch of all four): the merge of the chunks'
// softmax statistics per query row, and the pooling of the keys' scores.
#include <cstdint>

#include "kernels/cuda_common.cuh"
#include "kernels/cuda_mma.cuh"
#include "kernels/window_scores_args.h"
#include "kernels/window_scores_internal.cuh"

namespace headpage::gpu::internal::window {
namespace {

// Pass 2: block (stream, row group), thread = row. The chunks' (reference,
// sum) pairs merged into log2 of the row's softmax denominator.
__global__ void __launch_bounds__(kRowsPerBlock)
    MergeStatsKernel(WindowScoresArgs args, WindowScoresPlan plan) {
  const int64_t set = blockIdx.x;  // stream * row_groups + row_group
  const int32_t stream = static_cast<int32_t>(set / plan.row_groups);
  const int32_t row_group = static_cast<int32_t>(set % plan.row_groups);
  const int row = threadIdx.x;
  const int32_t len = StreamLength(args, stream);
  const int32_t splits = (len + plan.chunk - 1) / plan.chunk;
  const int heads = min(plan.heads_per_group, plan.group_size - row_group * plan.heads_per_group);
  const bool valid = row < heads * plan.padded_window && row % plan.padded_window < args.window;
  const auto* stats = reinterpret_cast<const float2*>(
      static_cast<const unsigned char*>(args.workspace) + plan.stats_offset);
  float m = -kInf, l = 0.0f;
  if (valid) {
    for (int32_t k = 0; k < splits; ++k) {
      const float2 part = stats[(set * plan.num_splits + k) * kRowsPerBlock + row];
      const float new_max = fmaxf(m, part.x);
      const float shift = new_max == -kInf ? 0.0f : new_max;
      l = l * FastExp2(m - shift) + part.y * FastExp2(part.x - shift);
      m = new_max;
    }
  }
  // +inf makes exp2(x - M') = 0 for every logit: padding and rows that see no key.
  float* merged = reinterpret_cast<float*>(static_cast<unsigned char*>(args.workspace) +
                                           plan.merged_offset);
  merged[set * kRowsPerBlock + row] = l > 0.0f ? m + log2f(l) : kInf;
}

// Pass 4: block = 256 consecutive keys of one stream, thread = key. The row
// groups' partials are combined once per key into shared memory (with a halo of
// kernel_size / 2 keys on each side), then each key before the window is
// pooled over its neighbours before the window; the others keep their value.
constexpr int kPoolThreads = 256;
constexpr int kPoolMaxHalo = 64;  // kernel sizes up to 129 pool from shared memory

// Key i's score, its row groups' partials combined: negative (or -0) for a key
// at or after the window start and for a neighbour outside the stream, both
// padding.
__device__ __forceinline__ float KeyScore(const WindowScoresArgs& args,
                                          const WindowScoresPlan& plan, const float* partial,
                                          bool mean, int64_t base, int32_t len, int32_t i) {
  if (i < 0 || i >= len) return -0.0f;
  const float first_partial = partial[base + i];
  float v = fabsf(first_partial);
  for (int y = 1; y < plan.row_groups; ++y) {
    const float other = fabsf(partial[static_cast<int64_t>(y) * args.num_scores + base + i]);
    v = mean ? v + other : fmaxf(v, other);
  }
  if (mean) v /= static_cast<float>(plan.group_size);
  return signbit(first_partial) ? -v : v;
}

// A key's pooled score from the scores of its window around[0 .. 2 half]
// (around[half] is the key), padding skipped: adds 0, never the max.
template <typename Around>
__device__ __forceinline__ float PoolWindow(const WindowScoresArgs& args, int32_t lo, int32_t hi,
                                            Around&& around) {
  float sum = 0.0f, best = -kInf;
  for (int32_t i = lo; i <= hi; ++i) {
    const float v = around(i);
    if (signbit(v)) continue;
    sum += v;
    best = fmaxf(best, v);
  }
  return args.pooling == policy::Pooling::kAvg ? sum / static_cast<float>(args.kernel_size) : best;
}

__global__ void __launch_bounds__(kPoolThreads)
    PoolKernel(WindowScoresArgs args, WindowScoresPlan plan, int32_t blocks_per_stream) {
  __shared__ float tile[kPoolThreads + 2 * kPoolMaxHalo];
  const int32_t stream = static_cast<int32_t>(blockIdx.x / blocks_per_stream);
  const int32_t first = static_cast<int32_t>(blockIdx.x % blocks_per_stream) * kPoolThreads;
  const int32_t len = StreamLength(args, stream);
  if (first >= len) return;
  const int64_t base = args.score_offsets[stream];
  const float* partial = reinterpret_cast<const float*>(
      static_cast<const unsigned char*>(args.workspace) + plan.partial_offset);
  const bool mean = args.reduce == policy::GroupReduce::kMean;
  const int32_t half = args.pooling == policy::Pooling::kNone ? 0 : args.kernel_size / 2;
  const int32_t j = first + threadIdx.x;
  float out;
  if (half <= kPoolMaxHalo) {
    for (int t = threadIdx.x; t < kPoolThreads + 2 * half; t += kPoolThreads) {
      tile[t] = KeyScore(args, plan, partial, mean, base, len, first - half + t);
    }
    __syncthreads();
    if (j >= len) return;
    const float* around = tile + threadIdx.x;  // around[half] is key j
    out = around[half];
    if (!signbit(out) && half > 0) {
      out = PoolWindow(args, 0, 2 * half, [&](int32_t i) { return around[i]; });
    }
  } else {
    if (j >= len) return;
    out = KeyScore(args, plan, partial, mean, base, len, j);
    if (!signbit(out)) {
      out = PoolWindow(args, max(0, j - half), min(len - 1, j + half), [&](int32_t i) {
        return KeyScore(args, plan, partial, mean, base, len, i);
      });
    }
  }
  const float score = fabsf(out);
  args.scores[base + j] = args.accumulate ? args.scores[base + j] + score : score;
}

}  // namespace

LaunchResult LaunchMergeStats(const WindowScoresArgs& args, const WindowScoresPlan& plan,
                              GpuStream stream) {
  MergeStatsKernel<<<static_cast<unsigned>(plan.num_streams * plan.row_groups), kRowsPerBlock, 0,
                     stream>>>(args, plan);
  return CheckLaunch();
}

LaunchResult LaunchPool(const WindowScoresArgs& args, const WindowScoresPlan& plan,
                        GpuStream stream) {
  const int32_t blocks_per_stream = static_cast<int32_t>(CeilDiv(args.max_len, kPoolThreads));
  PoolKernel<<<static_cast<unsigned>(static_cast<int64_t>(plan.num_streams) * blocks_per_stream),
               kPoolThreads, 0, stream>>>(args, plan, blocks_per_stream);
  return CheckLaunch();
}

}  // namespace headpage::gpu::internal::window
