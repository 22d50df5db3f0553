// SPDX-License-Identifier: Apache-2.0
// File: kernels/decode_attention_fp8.cu
//
// DecodeAttention's pass over fp8 pages (decode_attention.cu has the overview,
// the 16-bit pass and the merge of the splits). The grid, the splits and the
// per-warp cp.async pipeline of 16-token chunks are the 16-bit pass's; the
// math is turned around and dequantizes in registers:
//
// - Tokens are the rows of the m16n8k16 tiles and the GQA group's query heads
//   their 8 columns: S^T = K Q^T, then O^T += V^T P^T. A chunk costs D/16
//   tiles for each product (half the 16-bit pass's, which keeps heads as rows
//   and leaves 8 of 16 empty), and O^T fills all four accumulators of a lane.
// - The pages' bytes stay fp8 in shared memory (half the bytes of bf16), with
//   the chunk's 16 (K scale, V scale) pairs beside them. They become f16 in
//   registers (cvt e4m3x2 -> f16x2 is exact), so the products run on f16 tiles.
// - Per-token scales fold into the softmax instead of the elements: the score
//   of token t is scale_k[t] * (q . k_t), and its weight enters P V as
//   p_t * scale_v[t]. No element is multiplied by its scale.
// - K as the A operand: a lane needs 4 dims of each of two rows per k-step.
//   Each k-step's dims are chosen so that those 4 are adjacent bytes (the dot
//   product does not care about the order, as long as Q uses it too): one
//   16-byte load gives a lane 4 k-steps of a row.
// - V^T as the A operand needs pairs of tokens per dim: ldmatrix.trans over
//   the fp8 rows as b16 gives a lane 2 tokens x 2 dims, and a byte permute
//   splits them into an even dim (the tile's row g) and an odd one (row g + 8).
// - P^T as the B operand is the transpose of the weights' accumulator layout:
//   movmatrix.trans, two per chunk.
// - The query is rounded to f16 after a power-of-two scale per head that puts
//   its largest element in [2^14, 2^15), undone in the score scale: exact for
//   a bf16 query of any range (bf16 has fewer mantissa bits than f16) but for
//   elements 2^24 times smaller than the head's largest, which turn subnormal.
// - The weights enter P V times their token's V scale, normalized by the
//   largest V scale the warp has seen (TokenRowSoftmax::v_exp), so that small
//   values do not push small weights into f16's subnormals.
#include <cuda_fp8.h>

#include "kernels/cuda_common.cuh"
#include "kernels/cuda_mma.cuh"
#include "kernels/decode_attention_args.h"
#include "kernels/decode_attention_internal.cuh"

namespace headpage::gpu::internal::decode {
namespace {

template <int kHeadDim>
struct Fp8Traits {
  static constexpr int kChunk = 16;                       // tokens per warp step
  static constexpr int kTileTokens = kWarps * kChunk;     // tokens per block step
  static constexpr int kRowVecs = kHeadDim / 16;          // 16-byte vectors per row: 4, 8, 16
  static constexpr int kLaneVecs = kRowVecs / 4;          // of them, a lane's per key row
  static constexpr int kKSteps = kHeadDim / 16;           // mma k-steps of Q K^T
  static constexpr int kChunkBytes = kChunk * kHeadDim;   // of K, and of V
  static constexpr int kScaleBytes = kChunk * 2 * static_cast<int>(sizeof(float));
  static constexpr int kStageBytes = 2 * kChunkBytes + kScaleBytes;
  // Two stages (one chunk in flight while the other computes) at four blocks
  // per SM measured 3% faster than three or five on the H200: the pass is
  // bound by its instructions, not by the copies in flight.
  static constexpr int kStages = 2;
  static constexpr int kMinBlocks = kHeadDim == 256 ? 2 : 4;
  static constexpr int kCopies = kChunk * kRowVecs / 32;  // K vectors per lane per chunk
  static constexpr int kCopyRowStride = 32 / kRowVecs;
  static constexpr int kPipelineBytes = kWarps * kStages * kStageBytes;
  static constexpr int kSmemBytes = PassSmemBytes<kHeadDim>(kPipelineBytes);
  static_assert(kRowVecs >= 4 && kKSteps == 4 * kLaneVecs, "fp8 rows of 64, 128 or 256 bytes");
  static_assert(kG == 8, "the group's heads are the 8 columns of a tile");
};

// Where vector `vec` of row `row` of a chunk lives, in 16-byte units: within
// each 128-byte line the vector's place is XORed with a row-dependent value,
// so that both readers hit 8 different bank groups per phase: the key loads
// (rows g, g + 1 at the vectors LaneVec gives) and ldmatrix (8 rows at one
// vector).
template <int kRowVecs>
__device__ __forceinline__ int Fp8Vector(int row, int vec) {
  if constexpr (kRowVecs >= 8) {
    return row * kRowVecs + (vec ^ (row & 7));
  } else {  // two rows per line
    return (row * kRowVecs + vec) ^ ((row >> 1) & 7);
  }
}

// The vector `r` of the key row that lane pair `pair` reads: its 16 bytes are
// the lane's 4 dims of k-steps 4r .. 4r + 3. Pairs read vectors of different
// parity, so that rows g and g + 1 (XORed with g, g + 1) never share a bank group.
template <int kRowVecs>
__device__ __forceinline__ int LaneVec(int pair, int r) {
  if constexpr (kRowVecs == 4) {
    return pair;
  } else {
    return 2 * pair + (r & 1) + 8 * (r >> 1);
  }
}

// Four e4m3 bytes as two f16x2 words, exactly (every e4m3 value is an f16):
// bytes 0, 1 into `low`, 2, 3 into `high`. In PTX the word splits into its
// halves for free, where a C++ shift and mask cost two instructions per word.
__device__ __forceinline__ void Fp8x4ToHalf2x2(uint32_t four_bytes, uint32_t* low,
                                               uint32_t* high) {
  asm("{\n"
      "  .reg .b16 lo, hi;\n"
      "  mov.b32 {lo, hi}, %2;\n"
      "  cvt.rn.f16x2.e4m3x2 %0, lo;\n"
      "  cvt.rn.f16x2.e4m3x2 %1, hi;\n"
      "}\n"
      : "=r"(*low), "=r"(*high)
      : "r"(four_bytes));
}

__device__ __forceinline__ uint32_t PackHalf2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  uint32_t bits;
  memcpy(&bits, &h, sizeof(bits));
  return bits;
}

// Stage: head `quad`'s query in f16 as column `quad` of the B operand of
// S^T = K Q^T, in LaneVec's dim order, times 2^e with e chosen per head so
// that its largest element lands in [2^14, 2^15); returns 2^-e (heads past
// the group are zeros).
template <typename T, int kHeadDim>
__device__ __forceinline__ float LoadScaledQuery(const DecodeAttentionKernelArgs& args,
                                                 const BlockWork& work, int quad, int pair,
                                                 uint32_t (&qb)[kHeadDim / 16][2]) {
  using Tr = Fp8Traits<kHeadDim>;
  const bool live = quad < work.group;
  const T* q_row = static_cast<const T*>(args.q) +
                   (static_cast<int64_t>(work.seq) * args.num_q_heads +
                    work.kv_head * work.group + (live ? quad : 0)) *
                       kHeadDim;
  float x[Tr::kLaneVecs][16];
  float amax = 0.0f;
#pragma unroll
  for (int r = 0; r < Tr::kLaneVecs; ++r) {
    const int dim = 16 * LaneVec<Tr::kRowVecs>(pair, r);
#pragma unroll
    for (int e = 0; e < 16; ++e) {
      x[r][e] = live ? ToFloat(q_row[dim + e]) : 0.0f;
      amax = fmaxf(amax, fabsf(x[r][e]));
    }
  }
  amax = fmaxf(amax, __shfl_xor_sync(kFullMask, amax, 1));
  amax = fmaxf(amax, __shfl_xor_sync(kFullMask, amax, 2));
  // floor(log2(amax)) from the exponent field, kept where 2^(14 - e) is a
  // normal float (a subnormal amax scales less, still exactly).
  int e = amax > 0.0f ? static_cast<int>((__float_as_uint(amax) >> 23) & 0xffu) - 127 : 0;
  e = max(-112, min(e, 127));  // 2^(14 - e) and 2^(e - 14) both normal floats
  const float factor = __uint_as_float(static_cast<uint32_t>(127 + 14 - e) << 23);
#pragma unroll
  for (int r = 0; r < Tr::kLaneVecs; ++r) {
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
      qb[4 * r + ks][0] = PackHalf2(x[r][4 * ks] * factor, x[r][4 * ks + 1] * factor);
      qb[4 * r + ks][1] = PackHalf2(x[r][4 * ks + 2] * factor, x[r][4 * ks + 3] * factor);
    }
  }
  return __uint_as_float(static_cast<uint32_t>(127 - 14 + e) << 23);
}

// Stage: a warp's cp.async copies of a chunk's K and V rows and their scales
// into its own stages (ChunkCursor says where they are), zero-filled past the
// range or for an id outside the cache. Lane copies vector `col` of rows
// row0 + k * kCopyRowStride, and lanes 0..15 the scale pair of row `lane`.
template <int kHeadDim>
struct Fp8ChunkCopies {
  using Tr = Fp8Traits<kHeadDim>;
  static_assert(Tr::kChunk == ChunkCursor::kChunk, "the cursor's chunks");
  const PagedKV& cache;
  unsigned char* stages;
  const unsigned char* data;
  ChunkCursor cursor;
  int col, row0, lane;

  __device__ Fp8ChunkCopies(const DecodeAttentionKernelArgs& args, const BlockWork& work,
                            unsigned char* warp_stages, int warp, int lane_id)
      : cache(args.cache), stages(warp_stages),
        data(static_cast<const unsigned char*>(cache.data)), cursor(args, work, warp),
        col(lane_id % Tr::kRowVecs), row0(lane_id / Tr::kRowVecs), lane(lane_id) {}

  __device__ __forceinline__ void Issue(int stage) const {
    unsigned char* k_chunk = stages + stage * Tr::kStageBytes;
    const int64_t v_offset = static_cast<int64_t>(cache.page_size) * kHeadDim;
    ForEachChunkRow<kHeadDim, Tr::kCopies, Tr::kCopyRowStride>(
        cursor, cache, row0, col * 16, [&](int row, int64_t key, bool fill) {
          const int at = 16 * Fp8Vector<Tr::kRowVecs>(row, col);
          CpAsync16(SmemAddress(k_chunk + at), data + key, fill);
          CpAsync16(SmemAddress(k_chunk + Tr::kChunkBytes + at), data + key + v_offset, fill);
        });
    if (lane < Tr::kChunk) {
      int row_page, row_offset;
      const bool fill = cursor.RowPlace(lane, &row_page, &row_offset);
      const int64_t slot = fill ? static_cast<int64_t>(row_page) * cache.page_size + row_offset : 0;
      CpAsync8(SmemAddress(k_chunk + 2 * Tr::kChunkBytes + 8 * lane), cache.scales + 2 * slot,
               fill);
    }
  }

  __device__ __forceinline__ void Advance() { cursor.Advance(); }
};

// A lane's softmax state (HeadColumnSoftmax) with the V scales' exponent:
// o[b][0], o[b][1] are dim 16b + 2 quad of heads 2 pair, 2 pair + 1;
// o[b][2], o[b][3] dim 16b + 2 quad + 1.
template <int kHeadDim>
struct TokenRowSoftmax : HeadColumnSoftmax<kHeadDim> {
  // o holds the outputs times 2^-v_exp, where 2^v_exp is the largest V scale
  // the warp has seen (rounded down to a power of two): the weights enter P V
  // in f16 as weight * v_scale * 2^-v_exp, so that a layer of small values
  // (v_scale = amax / 448) does not push small weights into f16's subnormals.
  int v_exp = -126;
};

// Where a lane reads in a stage, computed once: the 16-byte vectors of key
// rows quad and quad + 8 (LaneVec's order) and the ldmatrix rows of the value
// chunk (recomputing the swizzle per chunk cost more instructions than the
// chunk's products).
template <int kHeadDim>
struct LaneOffsets {
  using Tr = Fp8Traits<kHeadDim>;
  int key_top[Tr::kLaneVecs], key_bottom[Tr::kLaneVecs];
  int value[Tr::kRowVecs / 2];

  __device__ LaneOffsets(int lane, int quad, int pair) {
#pragma unroll
    for (int r = 0; r < Tr::kLaneVecs; ++r) {
      const int vec = LaneVec<Tr::kRowVecs>(pair, r);
      key_top[r] = 16 * Fp8Vector<Tr::kRowVecs>(quad, vec);
      key_bottom[r] = 16 * Fp8Vector<Tr::kRowVecs>(quad + 8, vec);
    }
#pragma unroll
    for (int i = 0; i < Tr::kRowVecs / 2; ++i) {
      value[i] = Tr::kChunkBytes +
                 16 * Fp8Vector<Tr::kRowVecs>((lane & 7) + (lane & 8), 2 * i + (lane >> 4));
    }
  }
};

// Stage: S^T = K Q'^T for the chunk (s[c]: token quad + 8 (c / 2), head
// 2 pair + c % 2), times each token's K scale; `kv_scales` gets the (K, V)
// scales of tokens quad and quad + 8.
template <int kHeadDim>
__device__ __forceinline__ void ScoreFp8Chunk(const uint32_t (&qb)[kHeadDim / 16][2],
                                              const unsigned char* k_chunk,
                                              const LaneOffsets<kHeadDim>& at, int quad,
                                              float (&s)[4], float2 (&kv_scales)[2]) {
  using Tr = Fp8Traits<kHeadDim>;
  // Two accumulators (even and odd k-steps), so that the products form two
  // dependent chains of D/32 tiles instead of one of D/16.
  float acc[2][4] = {};
#pragma unroll
  for (int r = 0; r < Tr::kLaneVecs; ++r) {
    const uint4 top = *reinterpret_cast<const uint4*>(k_chunk + at.key_top[r]);
    const uint4 bottom = *reinterpret_cast<const uint4*>(k_chunk + at.key_bottom[r]);
    const uint32_t t[4] = {top.x, top.y, top.z, top.w};
    const uint32_t b[4] = {bottom.x, bottom.y, bottom.z, bottom.w};
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
      uint32_t a[4];
      Fp8x4ToHalf2x2(t[ks], &a[0], &a[2]);
      Fp8x4ToHalf2x2(b[ks], &a[1], &a[3]);
      MmaM16N8K16<__half>(acc[ks & 1], a[0], a[1], a[2], a[3], qb[4 * r + ks][0],
                          qb[4 * r + ks][1]);
    }
  }
#pragma unroll
  for (int c = 0; c < 4; ++c) s[c] = acc[0][c] + acc[1][c];
  const float2* scales = reinterpret_cast<const float2*>(k_chunk + 2 * Tr::kChunkBytes);
  kv_scales[0] = scales[quad];
  kv_scales[1] = scales[quad + 8];
  s[0] *= kv_scales[0].x;
  s[1] *= kv_scales[0].x;
  s[2] *= kv_scales[1].x;
  s[3] *= kv_scales[1].x;
}

// Stage: the chunk's scores into the exp2 domain (tokens at or past `end`
// masked), each head's running maximum raised when the chunk exceeds it by
// more than kRescaleSlack (its d and o rescaled), and s turned into the
// weights exp2(s - m).
template <int kHeadDim>
__device__ __forceinline__ void TokenRowSoftmaxUpdate(int chunk_token, int end, int quad,
                                                      const float (&score_scale)[2],
                                                      const float2 (&kv_scales)[2], float (&s)[4],
                                                      TokenRowSoftmax<kHeadDim>& state) {
  const bool top_valid = chunk_token + quad < end;
  const bool bottom_valid = chunk_token + quad + 8 < end;
  float chunk_max[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    s[h] = top_valid ? s[h] * score_scale[h] : -INFINITY;
    s[2 + h] = bottom_valid ? s[2 + h] * score_scale[h] : -INFINITY;
    chunk_max[h] = MaxOverPair(fmaxf(s[h], s[2 + h]));
  }
  // The chunk's largest V scale (every lane of a quad holds the same two).
  const float v_max = MaxOverPair(fmaxf(kv_scales[0].y, kv_scales[1].y));
  const int chunk_v_exp = static_cast<int>((__float_as_uint(v_max) >> 23) & 0xffu) - 127;
  if (__any_sync(kFullMask, chunk_max[0] > state.m[0] + kRescaleSlack ||
                                chunk_max[1] > state.m[1] + kRescaleSlack) ||
      chunk_v_exp > state.v_exp) {
    // A power of two, exact (0 when the old range was empty).
    const float v_rescale = chunk_v_exp > state.v_exp ? ldexpf(1.0f, state.v_exp - chunk_v_exp)
                                                      : 1.0f;
    state.v_exp = max(state.v_exp, chunk_v_exp);
    RaiseHeadMaxima(chunk_max, v_rescale, state.m, state.d, state.o);
  }
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    s[c] = FastExp2(s[c] - state.m[c % 2]);  // now the weight
    state.d[c % 2] += s[c];
  }
}

// Stage: O^T += V^T P'^T with P' = weight * V scale * 2^-v_exp in f16. P' is packed in
// the accumulator layout (row = token) and transposed by movmatrix into the B
// operand (column = head, rows = tokens 2 pair, + 1 and + 8). One transposed
// ldmatrix.x4 over the fp8 rows as b16 gives two 16-dim blocks of tokens 0-7
// and 8-15; per block the byte permute makes the A operand whose row g is dim
// 16b + 2g and row g + 8 dim 16b + 2g + 1.
template <int kHeadDim>
__device__ __forceinline__ void AccumulateFp8Values(const float (&s)[4],
                                                    const float2 (&kv_scales)[2],
                                                    const unsigned char* k_chunk,
                                                    const LaneOffsets<kHeadDim>& at, int v_exp,
                                                    float (&o)[kHeadDim / 16][4]) {
  using Tr = Fp8Traits<kHeadDim>;
  const float v_norm = __uint_as_float(static_cast<uint32_t>(127 - v_exp) << 23);  // 2^-v_exp
  const float top = kv_scales[0].y * v_norm, bottom = kv_scales[1].y * v_norm;
  const uint32_t b0 = MovMatrixTrans(PackHalf2(s[0] * top, s[1] * top));
  const uint32_t b1 = MovMatrixTrans(PackHalf2(s[2] * bottom, s[3] * bottom));
#pragma unroll
  for (int i = 0; i < Tr::kRowVecs / 2; ++i) {
    uint32_t vb[4];
    LdMatrixX4Trans(SmemAddress(k_chunk + at.value[i]), vb[0], vb[1], vb[2], vb[3]);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      // Bytes (t, d), (t, d + 1), (t + 1, d), (t + 1, d + 1) -> (t, d), (t + 1, d), ...
      const uint32_t first = __byte_perm(vb[2 * h], 0u, 0x3120);       // tokens 2 pair, + 1
      const uint32_t second = __byte_perm(vb[2 * h + 1], 0u, 0x3120);  // tokens 8 + 2 pair, + 1
      uint32_t a[4];
      Fp8x4ToHalf2x2(first, &a[0], &a[1]);
      Fp8x4ToHalf2x2(second, &a[2], &a[3]);
      MmaM16N8K16<__half>(o[2 * i + h], a[0], a[1], a[2], a[3], b0, b1);
    }
  }
}

// kStages and kMinBlocks are Fp8Traits' (template parameters so that a tuning
// run can instantiate others side by side).
template <typename T, int kHeadDim, int kStages, int kMinBlocks, bool kBalanced>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    Fp8Kernel(DecodeAttentionKernelArgs args, float* partial_out, float* partial_lse,
              const uint64_t* fault, DecodeNewTokens new_tokens) {
  using Tr = Fp8Traits<kHeadDim>;
  extern __shared__ __align__(128) unsigned char smem[];
  AllowDependentLaunch();      // the merge (LaunchDecodeAttention)
  WaitForPrerequisiteGrids();  // the tables' check, in a checked call (LaunchWithSmem)
  if (TablesFaulted(fault)) return;

  ForEachPiece<kBalanced>(args, Tr::kTileTokens, [&](const BlockWork& work) {
    StoreNewTokenFp8<T, kHeadDim>(args, new_tokens, work);
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int quad = lane >> 2;
    const int pair = lane & 3;

    // Q'^T as the B operand: column `quad` is head quad (the same registers as
    // an A operand whose row is that head).
    uint32_t qb[Tr::kKSteps][2];
    const float query_unscale = LoadScaledQuery<T, kHeadDim>(args, work, quad, pair, qb);
    // The lane's columns are heads 2 pair and 2 pair + 1: their unscales.
    float score_scale[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      score_scale[h] =
          args.sm_scale * kLog2E * __shfl_sync(kFullMask, query_unscale, 4 * (2 * pair + h));
    }

    unsigned char* stages = smem + warp * kStages * Tr::kStageBytes;
    Fp8ChunkCopies<kHeadDim> copies(args, work, stages, warp, lane);
    TokenRowSoftmax<kHeadDim> state;
    const LaneOffsets<kHeadDim> offsets(lane, quad, pair);

    const int num_chunks = (work.end - work.begin + Tr::kChunk - 1) / Tr::kChunk;
    const int my_chunks = num_chunks > warp ? (num_chunks - warp + kWarps - 1) / kWarps : 0;
    RunPipeline<kStages>(
        my_chunks, [&](int stage) { copies.Issue(stage); }, [&]() { copies.Advance(); },
        [] { __syncwarp(); },
        [&](int stage, int i) {
          const unsigned char* k_chunk = stages + stage * Tr::kStageBytes;
          float s[4];
          float2 kv_scales[2];
          ScoreFp8Chunk<kHeadDim>(qb, k_chunk, offsets, quad, s, kv_scales);
          TokenRowSoftmaxUpdate<kHeadDim>(work.begin + Tr::kChunk * (warp + kWarps * i), work.end,
                                          quad, score_scale, kv_scales, s, state);
          AccumulateFp8Values<kHeadDim>(s, kv_scales, k_chunk, offsets, state.v_exp, state.o);
        });
    __syncthreads();  // every warp's stages become the reduction's memory

    const Reduction<kHeadDim> reduce(smem);
    // o holds the outputs times 2^-v_exp (TokenRowSoftmax).
    const float v_unnorm = __uint_as_float(static_cast<uint32_t>(127 + state.v_exp) << 23);
    StoreHeadColumns(reduce, state.m, state.d, warp, quad, pair, work.group,
                     [&](int h, float* row) {
#pragma unroll
                       for (int b = 0; b < kHeadDim / 16; ++b) {
                         *reinterpret_cast<float2*>(row + 16 * b + 2 * quad) = make_float2(
                             state.o[b][h] * v_unnorm, state.o[b][2 + h] * v_unnorm);
                       }
                     });
    __syncthreads();
    StoreCombined<T, kHeadDim, kBalanced>(args, reduce, work, partial_out, partial_lse);
  });
}

}  // namespace

LaunchResult LaunchFp8Pass(const DecodeAttentionArgs& args, float* partial_out,
                           float* partial_lse, GpuStream stream, int* occupancy) {
  return DispatchDTypeAndHeadDim(args.cache.dtype, args.cache.head_dim, [&](auto dtype_tag,
                                                                           auto head_dim_tag) {
    using T = typename decltype(dtype_tag)::type;
    constexpr int kHeadDim = decltype(head_dim_tag)::value;
    if constexpr (std::is_same<T, float>::value) {
      // Validate() refuses fp8 pages under an f32 model.
      return Unsupported(LaunchResult::Kind::kUnsupportedDType);
    } else {
      using Tr = Fp8Traits<kHeadDim>;
      return LaunchWithSmem(Fp8Kernel<T, kHeadDim, Tr::kStages, Tr::kMinBlocks, false>,
                            Fp8Kernel<T, kHeadDim, Tr::kStages, Tr::kMinBlocks, true>,
                            Tr::kSmemBytes, args, partial_out, partial_lse, stream,
                            occupancy);
    }
  });
}

}  // namespace headpage::gpu::internal::decode
