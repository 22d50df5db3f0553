// SPDX-License-Identifier: Apache-2.0
// TokenScores on the GPU: one thread per token. Each score is computed in the
// same order and roundings as its policy/ function (no contraction into FMA,
// IEEE sqrt), so the results equal ref:: bit for bit. On fp8 pages a key
// element is read as ref:: reads it through GatherKV: the byte's value times
// the row's scale, rounded to the model dtype.
#include "kernels/cuda_common.cuh"
#include "kernels/token_scores_args.h"

namespace headpage::gpu::internal {
namespace {

constexpr int kThreads = 256;

// splitmix64's output function; the j-th draw of a stream seeded with `seed`
// mixes seed + (j + 1) * golden (policy::RandomScores advances its state so).
__device__ __forceinline__ uint64_t SplitMix64At(uint64_t seed, int64_t j) {
  uint64_t z = seed + static_cast<uint64_t>(j + 1) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// T: the model dtype; S: the stored element (T, or __nv_fp8_e4m3 on fp8 pages).
template <typename T, typename S, int kHeadDim>
__device__ __forceinline__ float NegKeyNorm(const TokenScoresArgs& a, int64_t slot) {
  constexpr bool kFp8 = std::is_same_v<S, __nv_fp8_e4m3>;
  const S* key = static_cast<const S*>(a.cache.data) + a.cache.KeyOffset(slot);
  const float scale = kFp8 ? a.cache.scales[2 * slot] : 0.0f;
  constexpr int kPerVector = kVectorBytes / static_cast<int>(sizeof(S));
  float sum_sq = 0.0f;
#pragma unroll 4
  for (int v = 0; v < kHeadDim / kPerVector; ++v) {
    const Vector packed = reinterpret_cast<const Vector*>(key)[v];
    const S* x = reinterpret_cast<const S*>(&packed);
#pragma unroll
    for (int e = 0; e < kPerVector; ++e) {
      float f;
      if constexpr (kFp8) {
        f = ToFloat(DequantizeFp8As<T>(x[e].__x, scale));
      } else {
        f = ToFloat(x[e]);
      }
      sum_sq = __fadd_rn(sum_sq, __fmul_rn(f, f));
    }
  }
  return -__fsqrt_rn(sum_sq);
}

template <typename T, typename S, int kHeadDim>
__global__ void TokenScoresKernel(TokenScoresArgs a) {
  const int32_t s = blockIdx.x;
  const int32_t j = blockIdx.y * kThreads + threadIdx.x;
  // A length the block table cannot hold is clamped to it (the host checked
  // nothing on the device's arrays): no page id is read past the row.
  const int32_t len = TableClampedLength<int32_t>(a.lens, a.indptr, s, a.cache.page_size);
  if (j >= len) return;
  const int32_t* pages = a.page_ids + a.indptr[s];
  const int64_t slot = SlotOf(pages, j, a.cache.page_size);
  const int32_t position = a.cache.positions[slot];
  const int64_t out = static_cast<int64_t>(a.offsets[s]) + j;
  a.positions[out] = position;
  switch (a.score) {
    case TokenScore::kPosition:
      a.scores[out] = __int2float_rn(position);
      break;
    case TokenScore::kKeyNorm:
      a.scores[out] = NegKeyNorm<T, S, kHeadDim>(a, slot);
      break;
    case TokenScore::kRandom:
      // The top 24 bits fill a float's significand exactly.
      a.scores[out] = static_cast<float>(SplitMix64At(a.seed + s, j) >> 40) * 0x1p-24f;
      break;
    case TokenScore::kNone:
      break;
  }
}

// One thread per (group, token): reads every head's score of the token, then
// writes the mean to all of them, so no thread reads what another writes.
__global__ void MeanOverHeadsKernel(MeanOverHeadsArgs a) {
  const int32_t g = blockIdx.x;
  const int32_t j = blockIdx.y * kThreads + threadIdx.x;
  const int32_t first = g * a.heads_per_group;
  if (j >= a.lens[first]) return;
  float sum = 0.0f;
  for (int32_t h = 0; h < a.heads_per_group; ++h) {
    sum = __fadd_rn(sum, a.scores[a.offsets[first + h] + j]);
  }
  const float mean = __fdiv_rn(sum, static_cast<float>(a.heads_per_group));
  for (int32_t h = 0; h < a.heads_per_group; ++h) a.scores[a.offsets[first + h] + j] = mean;
}

}  // namespace

LaunchResult LaunchMeanOverHeads(const MeanOverHeadsArgs& args, GpuStream stream) {
  const dim3 grid(static_cast<unsigned>(args.num_groups),
                  static_cast<unsigned>(CeilDiv(args.max_len, kThreads)));
  MeanOverHeadsKernel<<<grid, kThreads, 0, stream>>>(args);
  return CheckLaunch();
}

LaunchResult LaunchTokenScores(const TokenScoresArgs& args, GpuStream stream) {
  return DispatchDTypeAndHeadDim(args.cache.dtype, args.cache.head_dim, [&](auto dtype, auto dim) {
    using T = typename decltype(dtype)::type;
    constexpr int kHeadDim = decltype(dim)::value;
    const dim3 grid(static_cast<unsigned>(args.num_streams),
                    static_cast<unsigned>(CeilDiv(args.max_len, kThreads)));
    if (!args.cache.fp8()) {
      TokenScoresKernel<T, T, kHeadDim><<<grid, kThreads, 0, stream>>>(args);
    } else if constexpr (std::is_same_v<T, float>) {
      // Validate() refuses fp8 pages over f32; the switch refuses it too.
      return Unsupported(LaunchResult::Kind::kUnsupportedDType);
    } else {
      TokenScoresKernel<T, __nv_fp8_e4m3, kHeadDim><<<grid, kThreads, 0, stream>>>(args);
    }
    return CheckLaunch();
  });
}

}  // namespace headpage::gpu::internal
