// SPDX-License-Identifier: Apache-2.0
// File: kernels/decode_attention.cu
//
// DecodeAttention on the GPU, memory-bound: every K/V byte of a stream is read
// once, by one block, for all the query heads of its GQA group.
//
// Grid: one block of 4 warps per (stream, split). A split is a page-aligned
// token range cut from the stream's own length, so the grid is fixed by the
// shapes alone (CUDA-graph capturable) and a long stream spreads over
// num_splits blocks instead of holding one multiprocessor. With one split the
// block writes out and lse; with more it writes a float partial (out, lse) to
// the workspace and MergeKernel combines a (seq, q head)'s splits.
//
// f16 and bf16 (MmaKernel, this file): each warp owns 16-token chunks of the
// range (warp w takes chunks w, w + 4, ...) and pipelines them through its own
// shared memory with cp.async, kStages deep, zero-filled past the range. The
// math runs on the tensor cores with the chunk's 16 tokens as the rows of the
// m16n8k16 tiles and the GQA group's query heads as their 8 columns:
// S^T[16 tokens][8 heads] = K Q^T, then O^T[head_dim][8 heads] += V^T P^T.
// ldmatrix gives K as the A operand and (transposed) V^T, from rows swizzled
// against bank conflicts; movmatrix turns the weights' accumulator layout into
// the B operand. A chunk costs head_dim / 16 tiles per product, and O^T fills
// every accumulator register, where heads as the rows (FlashAttention-2's way
// round) would leave 8 of each tile's 16 rows empty, doubling the tiles and
// the accumulators (docs/performance.md measures both). The softmax is
// online, in the exp2 domain, and rescales only when a chunk raises a head's
// running maximum by more than 2^8, so most chunks skip the rescale. P enters
// the second product in the cache dtype; for f16 as a hi + lo pair, which
// keeps f16 within 1e-3.
//
// A decode step's new tokens (DecodeNewTokens) are written by the block whose
// range ends where its stream does, before its pipeline starts
// (StoreNewToken): the separate WriteKV kernel and its boundary go.
//
// f32 (SimtKernel, decode_attention_simt.cu): CUDA cores, one block-wide
// cp.async pipeline of tiles. fp8 pages (Fp8Kernel, decode_attention_fp8.cu):
// the same grid, pipeline and tiles over fp8 bytes, dequantized in registers.
// What they share is in decode_attention_internal.cuh.
#include <cfloat>
#include <type_traits>

#include "kernels/cuda_common.cuh"
#include "kernels/cuda_mma.cuh"
#include "kernels/decode_attention_args.h"
#include "kernels/decode_attention_internal.cuh"

namespace headpage::gpu::internal {
namespace decode {
namespace {

// ---------------------------------------------------------------------------
// f16 and bf16: tensor cores.

template <typename T, int kHeadDim>
struct MmaTraits {
  static constexpr int kChunk = 16;                         // tokens per warp step
  static constexpr int kTileTokens = kWarps * kChunk;       // tokens per block step
  static constexpr int kVecElems = ElementsPerVector<T>();  // 8
  static constexpr int kRowVecs = kHeadDim / kVecElems;     // 16-byte vectors per row, >= 8
  static constexpr int kKSteps = kHeadDim / 16;             // of K Q^T; V^T P^T's m-tiles
  static constexpr int kChunkElems = kChunk * kHeadDim;     // of K, and of V
  static constexpr int kStageBytes = 2 * kChunkElems * static_cast<int>(sizeof(T));
  // About 24 KiB of shared memory per warp: two or more chunks in flight.
  static constexpr int kStages = 24576 / kStageBytes > 2 ? 24576 / kStageBytes : 2;
  static constexpr int kCopies = kChunk * kRowVecs / 32;    // K vectors per lane per chunk
  static constexpr int kCopyRowStride = 32 / kRowVecs;
  static constexpr int kPipelineBytes = kWarps * kStages * kStageBytes;
  static constexpr int kSmemBytes = PassSmemBytes<kHeadDim>(kPipelineBytes);
  static_assert(sizeof(T) == 2 && kRowVecs >= 8, "16-bit rows of >= 64");
};

// Element offset of vector `vec` of row `row` in a chunk: vectors are XOR-
// swizzled by the row, so that the 8 rows one ldmatrix reads hit 8 bank groups.
template <int kRowVecs>
__device__ __forceinline__ int Swizzled(int row, int vec) {
  return (row * kRowVecs + SwizzleChunk(row, vec)) * 8;
}

// Two floats rounded to T, packed low element first; `rest` gets what the
// rounding lost (x - T(x)) for a second, low-order product.
template <typename T>
__device__ __forceinline__ uint32_t Pack(float lo, float hi, float* rest_lo, float* rest_hi) {
  const T a = FromFloat<T>(lo), b = FromFloat<T>(hi);
  *rest_lo = lo - ToFloat(a);
  *rest_hi = hi - ToFloat(b);
  uint16_t bits_a, bits_b;
  memcpy(&bits_a, &a, sizeof(bits_a));
  memcpy(&bits_b, &b, sizeof(bits_b));
  return static_cast<uint32_t>(bits_a) | (static_cast<uint32_t>(bits_b) << 16);
}

// Stage: Q^T as the B operand of S^T = K Q^T (column = head of the group,
// zero past it): per k-step, elements 2*pair.. and 8 + 2*pair.. of head `quad`.
template <typename T, int kHeadDim>
__device__ __forceinline__ void LoadQueryFragments(const DecodeAttentionKernelArgs& args,
                                                   const BlockWork& work, int quad, int pair,
                                                   uint32_t (&qb)[kHeadDim / 16][2]) {
  const T* q_row = static_cast<const T*>(args.q) +
                   (static_cast<int64_t>(work.seq) * args.num_q_heads +
                    work.kv_head * work.group + quad) *
                       kHeadDim;
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
    const auto* words = reinterpret_cast<const uint32_t*>(q_row + 16 * kk + 2 * pair);
    qb[kk][0] = quad < work.group ? words[0] : 0u;
    qb[kk][1] = quad < work.group ? words[4] : 0u;  // 8 elements on
  }
}

// Stage: a warp's cp.async copies of K and V chunks into its own stages
// (ChunkCursor says where they are), zero-filled past the range or for an id
// outside the cache (ForEachChunkRow). Lane copies column `col` of rows
// row0 + k * kCopyRowStride.
template <typename T, int kHeadDim>
struct WarpChunkCopies {
  using Tr = MmaTraits<T, kHeadDim>;
  static_assert(Tr::kChunk == ChunkCursor::kChunk, "the cursor's chunks");
  const PagedKV& cache;
  T* stages;
  const T* data;
  ChunkCursor cursor;
  int col, row0;

  __device__ WarpChunkCopies(const DecodeAttentionKernelArgs& args, const BlockWork& work,
                             T* warp_stages, int warp, int lane)
      : cache(args.cache), stages(warp_stages), data(static_cast<const T*>(cache.data)),
        cursor(args, work, warp), col(lane % Tr::kRowVecs), row0(lane / Tr::kRowVecs) {}

  __device__ __forceinline__ void Issue(int stage) const {
    T* k_chunk = stages + stage * 2 * Tr::kChunkElems;
    const int64_t v_offset = static_cast<int64_t>(cache.page_size) * kHeadDim;
    ForEachChunkRow<kHeadDim, Tr::kCopies, Tr::kCopyRowStride>(
        cursor, cache, row0, col * Tr::kVecElems, [&](int row, int64_t key, bool fill) {
          const int at = Swizzled<Tr::kRowVecs>(row, col);
          CpAsync16(SmemAddress(k_chunk + at), data + key, fill);
          CpAsync16(SmemAddress(k_chunk + Tr::kChunkElems + at), data + key + v_offset, fill);
        });
  }

  __device__ __forceinline__ void Advance() { cursor.Advance(); }
};

// Stage: S^T = K Q^T for the chunk (s[c]: token quad + 8 (c / 2), head
// 2 pair + c % 2). One ldmatrix.x4 gives K's A operand of a k-step: lanes
// 0-15 address rows 0-15 at the step's first 8 dims, lanes 16-31 at its last
// 8. Two accumulators (even and odd k-steps), so that the products form two
// dependent chains of head_dim / 32 tiles instead of one of head_dim / 16.
template <typename T, int kHeadDim>
__device__ __forceinline__ void ScoreChunk(const uint32_t (&qb)[kHeadDim / 16][2], const T* k_chunk,
                                           int lane, float (&s)[4]) {
  using Tr = MmaTraits<T, kHeadDim>;
  float acc[2][4] = {};
  const int row = (lane & 7) + (lane & 8);
#pragma unroll
  for (int ks = 0; ks < Tr::kKSteps; ++ks) {
    uint32_t a[4];
    LdMatrixX4(SmemAddress(k_chunk + Swizzled<Tr::kRowVecs>(row, 2 * ks + (lane >> 4))), a[0], a[1],
               a[2], a[3]);
    MmaM16N8K16<T>(acc[ks & 1], a[0], a[1], a[2], a[3], qb[ks][0], qb[ks][1]);
  }
#pragma unroll
  for (int c = 0; c < 4; ++c) s[c] = acc[0][c] + acc[1][c];
}

// Stage: the chunk's scores into the exp2 domain (tokens at or past `end`
// masked), each head's running maximum raised when the chunk exceeds it by
// more than kRescaleSlack (its d and o rescaled), s turned into the weights.
template <int kHeadDim>
__device__ __forceinline__ void OnlineSoftmaxUpdate(int chunk_token, int end, int quad,
                                                    float score_scale, float (&s)[4],
                                                    HeadColumnSoftmax<kHeadDim>& state) {
  const bool top_valid = chunk_token + quad < end;
  const bool bottom_valid = chunk_token + quad + 8 < end;
  float chunk_max[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    s[h] = top_valid ? s[h] * score_scale : -INFINITY;
    s[2 + h] = bottom_valid ? s[2 + h] * score_scale : -INFINITY;
    chunk_max[h] = MaxOverPair(fmaxf(s[h], s[2 + h]));
  }
  if (__any_sync(kFullMask, chunk_max[0] > state.m[0] + kRescaleSlack ||
                                chunk_max[1] > state.m[1] + kRescaleSlack)) {
    RaiseHeadMaxima(chunk_max, 1.0f, state.m, state.d, state.o);
  }
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    s[c] = FastExp2(s[c] - state.m[c % 2]);  // now the weight
    state.d[c % 2] += s[c];
  }
}

// Stage: O^T += V^T P^T. P, packed in the accumulator layout (row = token),
// becomes the B operand by movmatrix.trans (column = head quad; b0: tokens
// 2 pair and 2 pair + 1, b1: the same + 8); for f16, a second product adds
// what the first weights' rounding lost. One transposed ldmatrix.x4 gives
// V^T's A operand of one 16-dim tile: lanes 0-7 and 8-15 address tokens 0-7
// at the tile's first and last 8 dims, lanes 16-31 tokens 8-15.
template <typename T, int kHeadDim>
__device__ __forceinline__ void AccumulateValues(const float (&s)[4], const T* v_chunk, int lane,
                                                 float (&o)[kHeadDim / 16][4]) {
  using Tr = MmaTraits<T, kHeadDim>;
  constexpr bool kSplitWeights = std::is_same<T, __half>::value;
  float rest[4];
  const uint32_t b0 = MovMatrixTrans(Pack<T>(s[0], s[1], &rest[0], &rest[1]));
  const uint32_t b1 = MovMatrixTrans(Pack<T>(s[2], s[3], &rest[2], &rest[3]));
  uint32_t r0 = 0, r1 = 0;
  if (kSplitWeights) {
    float unused[2];
    r0 = MovMatrixTrans(Pack<T>(rest[0], rest[1], &unused[0], &unused[1]));
    r1 = MovMatrixTrans(Pack<T>(rest[2], rest[3], &unused[0], &unused[1]));
  }
  const int row = (lane & 7) + ((lane >> 4) << 3);
  const int half = (lane >> 3) & 1;
#pragma unroll
  for (int b = 0; b < Tr::kKSteps; ++b) {
    uint32_t a[4];
    LdMatrixX4Trans(SmemAddress(v_chunk + Swizzled<Tr::kRowVecs>(row, 2 * b + half)), a[0], a[1],
                    a[2], a[3]);
    MmaM16N8K16<T>(o[b], a[0], a[1], a[2], a[3], b0, b1);
    if (kSplitWeights) MmaM16N8K16<T>(o[b], a[0], a[1], a[2], a[3], r0, r1);
  }
}

template <typename T, int kHeadDim, bool kBalanced>
__global__ void __launch_bounds__(kThreads, 2)
    MmaKernel(DecodeAttentionKernelArgs args, float* partial_out, float* partial_lse,
              const uint64_t* fault, DecodeNewTokens new_tokens) {
  using Tr = MmaTraits<T, kHeadDim>;
  extern __shared__ __align__(128) unsigned char smem[];
  AllowDependentLaunch();      // the merge (LaunchDecodeAttention)
  WaitForPrerequisiteGrids();  // the tables' check, in a checked call (LaunchWithSmem)
  if (TablesFaulted(fault)) return;

  ForEachPiece<kBalanced>(args, Tr::kTileTokens, [&](const BlockWork& work) {
    StoreNewToken<T, kHeadDim>(args, new_tokens, work);
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int quad = lane >> 2;
    const int pair = lane & 3;

    uint32_t qb[Tr::kKSteps][2];
    LoadQueryFragments<T, kHeadDim>(args, work, quad, pair, qb);
    const float score_scale = args.sm_scale * kLog2E;

    T* stages = reinterpret_cast<T*>(smem) + warp * Tr::kStages * 2 * Tr::kChunkElems;
    WarpChunkCopies<T, kHeadDim> copies(args, work, stages, warp, lane);
    // o[b][h] is dim 16b + quad and o[b][2 + h] dim 16b + quad + 8 of head 2 pair + h.
    HeadColumnSoftmax<kHeadDim> state;

    const int num_chunks = (work.end - work.begin + Tr::kChunk - 1) / Tr::kChunk;
    const int my_chunks = num_chunks > warp ? (num_chunks - warp + kWarps - 1) / kWarps : 0;
    RunPipeline<Tr::kStages>(
        my_chunks, [&](int stage) { copies.Issue(stage); }, [&]() { copies.Advance(); },
        [] { __syncwarp(); },
        [&](int stage, int i) {
          const T* k_chunk = stages + stage * 2 * Tr::kChunkElems;
          float s[4];
          ScoreChunk<T, kHeadDim>(qb, k_chunk, lane, s);
          OnlineSoftmaxUpdate<kHeadDim>(work.begin + Tr::kChunk * (warp + kWarps * i), work.end,
                                        quad, score_scale, s, state);
          AccumulateValues<T, kHeadDim>(s, k_chunk + Tr::kChunkElems, lane, state.o);
        });
    __syncthreads();  // every warp's stages become the reduction's memory

    const Reduction<kHeadDim> reduce(smem);
    StoreHeadColumns(reduce, state.m, state.d, warp, quad, pair, work.group,
                     [&](int h, float* row) {
#pragma unroll
                       for (int b = 0; b < kHeadDim / 16; ++b) {
                         row[16 * b + quad] = state.o[b][h];
                         row[16 * b + quad + 8] = state.o[b][2 + h];
                       }
                     });
    __syncthreads();
    StoreCombined<T, kHeadDim, kBalanced>(args, reduce, work, partial_out, partial_lse);
  });
}

// ---------------------------------------------------------------------------
// The merge of the splits: one block per (seq, q head). Each thread folds a
// strided subset of the splits for 4 dims into a running softmax state
// (max, sum of weights, weighted sum), loading kMergeBatch splits' lse and
// outputs at once: none of those loads waits on another, so a row of up to
// kMergeBatch * kSplitGroups splits (64 at head_dim 128) costs one round trip
// to memory. The split groups' states are then combined per 4 dims. (A
// version that first reduced the lses to weights, then read the outputs,
// paid two round trips and four barriers: 5.0 us at 1x128K's 33 splits on an
// H100; a loop that waited on each split's lse cost ~0.5 us per split.)
constexpr int kMergeThreads = 256;
constexpr int kMergeBatch = 8;

// Where a row's partials are: `count` of them, the i-th at first + i * stride
// (in partials: a float lse, or head_dim floats of out).
struct RowPartials {
  int64_t first;
  int count, stride;
};

// A running softmax state over some splits, in the exp2 domain: m the largest
// lse seen (-inf: none with weight), sum the splits' weights exp2(lse - m),
// acc their outputs so weighted.
struct MergeState {
  float m = -INFINITY;
  float sum = 0.0f;
  float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);

  // Rescales to a maximum of at least `m_new` (a no-op where it is not larger).
  __device__ __forceinline__ void RaiseMax(float m_new) {
    if (!(m_new > m)) return;
    const float scale = m == -INFINITY ? 0.0f : FastExp2(m - m_new);
    sum *= scale;
    acc.x *= scale;
    acc.y *= scale;
    acc.z *= scale;
    acc.w *= scale;
    m = m_new;
  }

  // Adds one split's `out` at `weight` (relative to m).
  __device__ __forceinline__ void Add(float weight, const float4& out) {
    sum += weight;
    AddToAcc(weight, out);
  }

  // Adds another state's weighted outputs and its weights' sum, both
  // scaled by `weight` (its maximum's, relative to m).
  __device__ __forceinline__ void AddState(float weight, const float4& other_acc, float other_sum) {
    sum = fmaf(weight, other_sum, sum);
    AddToAcc(weight, other_acc);
  }

 private:
  __device__ __forceinline__ void AddToAcc(float weight, const float4& out) {
    acc.x = fmaf(weight, out.x, acc.x);
    acc.y = fmaf(weight, out.y, acc.y);
    acc.z = fmaf(weight, out.z, acc.z);
    acc.w = fmaf(weight, out.w, acc.w);
  }
};

// The weight exp2(lse - m) of a state or split of log-sum `lse` under a
// maximum m >= lse; 0 for an empty one (lse -inf), whatever m is.
__device__ __forceinline__ float WeightUnder(float lse, float m) {
  return lse == -INFINITY ? 0.0f : FastExp2(lse - m);
}

// This thread's share: dims 4 vec.. of splits split_group, split_group +
// kSplitGroups, ... Every split is written, an empty one as out 0 and lse
// -inf (weight 0).
template <int kDimVecs, int kSplitGroups>
__device__ __forceinline__ MergeState FoldSplitShare(const float* partial_out,
                                                     const float* partial_lse,
                                                     const RowPartials& row, int vec,
                                                     int split_group) {
  const auto* parts = reinterpret_cast<const float4*>(partial_out) + row.first * kDimVecs;
  const float* lses = partial_lse + row.first;
  MergeState state;
  for (int i0 = split_group; i0 < row.count; i0 += kMergeBatch * kSplitGroups) {
    float lse[kMergeBatch];
    float4 out[kMergeBatch];
#pragma unroll
    for (int u = 0; u < kMergeBatch; ++u) {
      const int i = i0 + u * kSplitGroups;
      const int64_t at = static_cast<int64_t>(i) * row.stride;
      lse[u] = i < row.count ? lses[at] : -INFINITY;
      out[u] = i < row.count ? parts[at * kDimVecs + vec] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    float m_batch = lse[0];
#pragma unroll
    for (int u = 1; u < kMergeBatch; ++u) m_batch = fmaxf(m_batch, lse[u]);
    state.RaiseMax(m_batch);
#pragma unroll
    for (int u = 0; u < kMergeBatch; ++u) {
      state.Add(WeightUnder(lse[u], state.m), out[u]);
    }
  }
  return state;
}

// The partials of row `row` = (seq, q head) under the balanced division:
// its stream's pieces (decode_attention_plan.h), at query head h of the
// group, found from where the pass's block 0 wrote that the stream begins. A
// count of 1 means the pass wrote the row itself.
__device__ __forceinline__ RowPartials BalancedRowPartials(const DecodeAttentionKernelArgs& args,
                                                           int64_t row) {
  const int group = args.num_q_heads / args.num_kv_heads;
  const int seq = static_cast<int>(row / args.num_q_heads);
  const int q_head = static_cast<int>(row - static_cast<int64_t>(seq) * args.num_q_heads);
  const int stream = seq * args.num_kv_heads + q_head / group;
  const long long* begins = BalancedBegins(args);
  const int unit_tokens = decode_plan::UnitTokens(args.cache.page_size);
  const decode_plan::BalancedDivision division = decode_plan::BalancedDivision::Of(
      begins[args.num_seqs * args.num_kv_heads], unit_tokens, args.balanced_blocks);
  int64_t len;
  const int64_t units = StreamUnits(args, stream, unit_tokens, &len);
  RowPartials partials;
  int64_t first_piece;
  division.StreamPieces(stream, begins[stream], units, &first_piece, &partials.count);
  partials.first = first_piece * group + (q_head - (q_head / group) * group);
  partials.stride = group;
  return partials;
}

// One block per row (seq, q head); one instance per division, as the passes.
template <typename T, int kHeadDim, bool kBalanced>
__global__ void __launch_bounds__(kMergeThreads)
    MergeKernel(DecodeAttentionKernelArgs args, const float* partial_out,
                const float* partial_lse, const uint64_t* fault) {
  constexpr int kDimVecs = kHeadDim / 4;                   // float4s per partial row
  constexpr int kSplitGroups = kMergeThreads / kDimVecs;   // threads per dim vector
  __shared__ float4 group_acc[kSplitGroups][kDimVecs];
  __shared__ float group_m[kSplitGroups], group_sum[kSplitGroups];
  WaitForPrerequisiteGrids();  // the pass's partials
  if (TablesFaulted(fault)) return;
  const int64_t row = blockIdx.x;
  RowPartials partials{row * args.num_splits, args.num_splits, 1};
  if constexpr (kBalanced) {
    partials = BalancedRowPartials(args, row);
    if (partials.count == 1) return;  // a piece that was the whole stream
  }
  const int vec = threadIdx.x % kDimVecs;
  const int split_group = threadIdx.x / kDimVecs;
  const MergeState mine = FoldSplitShare<kDimVecs, kSplitGroups>(partial_out, partial_lse,
                                                                  partials, vec, split_group);
  group_acc[split_group][vec] = mine.acc;
  if (vec == 0) {  // a group's lanes saw the same splits: the same m and sum
    group_m[split_group] = mine.m;
    group_sum[split_group] = mine.sum;
  }
  __syncthreads();
  if (threadIdx.x < kDimVecs) {
    MergeState all;
#pragma unroll
    for (int g = 0; g < kSplitGroups; ++g) all.RaiseMax(group_m[g]);
#pragma unroll
    for (int g = 0; g < kSplitGroups; ++g) {
      all.AddState(WeightUnder(group_m[g], all.m), group_acc[g][threadIdx.x], group_sum[g]);
    }
    const float scale = all.sum > 0.0f ? 1.0f / all.sum : 0.0f;
    T* dst = static_cast<T*>(args.out) + row * kHeadDim + 4 * threadIdx.x;
    dst[0] = FromFloat<T>(all.acc.x * scale);
    dst[1] = FromFloat<T>(all.acc.y * scale);
    dst[2] = FromFloat<T>(all.acc.z * scale);
    dst[3] = FromFloat<T>(all.acc.w * scale);
    if (threadIdx.x == 0 && args.lse != nullptr) {
      args.lse[row] = all.sum > 0.0f ? (all.m + log2f(all.sum)) * kLn2 : -INFINITY;
    }
  }
}

}  // namespace
}  // namespace decode

namespace {

// The pass over args.cache's pages (launched, or with `occupancy` only queried).
template <typename T, int kHeadDim>
LaunchResult LaunchPass(const DecodeAttentionArgs& args, float* partial_out, float* partial_lse,
                        GpuStream stream, int* occupancy) {
  if (args.cache.fp8()) {
    return decode::LaunchFp8Pass(args, partial_out, partial_lse, stream, occupancy);
  } else if constexpr (std::is_same<T, float>::value) {
    return decode::LaunchSimtPass(args, partial_out, partial_lse, stream, occupancy);
  } else {
    return decode::LaunchWithSmem(decode::MmaKernel<T, kHeadDim, false>,
                                  decode::MmaKernel<T, kHeadDim, true>,
                                  decode::MmaTraits<T, kHeadDim>::kSmemBytes, args, partial_out,
                                  partial_lse, stream, occupancy);
  }
}

}  // namespace

LaunchResult DecodeAttentionResidentBlocks(const DecodeAttentionArgs& args, int* blocks_per_sm) {
  return DispatchDTypeAndHeadDim(args.cache.dtype, args.cache.head_dim, [&](auto dtype_tag,
                                                                           auto head_dim_tag) {
    using T = typename decltype(dtype_tag)::type;
    return LaunchPass<T, decltype(head_dim_tag)::value>(args, nullptr, nullptr, nullptr,
                                                         blocks_per_sm);
  });
}

LaunchResult LaunchDecodeAttention(const DecodeAttentionArgs& args, GpuStream stream) {
  return DispatchDTypeAndHeadDim(args.cache.dtype, args.cache.head_dim, [&](auto dtype_tag,
                                                                           auto head_dim_tag) {
    using T = typename decltype(dtype_tag)::type;
    constexpr int kHeadDim = decltype(head_dim_tag)::value;
    const int64_t rows = static_cast<int64_t>(args.num_seqs) * args.num_q_heads;
    // The workspace (decode_plan::DecodeWorkspace): partial outs, then lses.
    const bool merged = args.num_splits > 1 || args.balanced_blocks > 0;
    const decode_plan::DecodeWorkspace layout = decode_plan::DecodeWorkspace::Of(
        args.num_seqs, args.num_q_heads, args.num_kv_heads, kHeadDim, args.num_splits,
        args.balanced_blocks);
    float* partial_out = static_cast<float*>(args.workspace);
    float* partial_lse =
        merged ? partial_out + layout.lse_offset / static_cast<int64_t>(sizeof(float)) : nullptr;
    const LaunchResult launched =
        LaunchPass<T, kHeadDim>(args, partial_out, partial_lse, stream, nullptr);
    if (!launched.ok() || !merged) return launched;
    const auto merge = args.balanced_blocks > 0 ? decode::MergeKernel<T, kHeadDim, true>
                                                : decode::MergeKernel<T, kHeadDim, false>;
    // Scheduled under the pass's last wave (the passes allow it as their blocks
    // start); its blocks wait there for the pass to finish.
    return LaunchOverlappingTail(merge, static_cast<unsigned>(rows), decode::kMergeThreads, 0,
                                 stream, static_cast<const DecodeAttentionKernelArgs&>(args),
                                 static_cast<const float*>(partial_out),
                                 static_cast<const float*>(partial_lse), args.fault);
  });
}

}  // namespace headpage::gpu::internal
