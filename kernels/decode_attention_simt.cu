// SPDX-License-Identifier: Apache-2.0
// File: kernels/decode_attention_simt.cu
//
// DecodeAttention's pass over the cache for f32 (decode_attention.cu has the
// overview, the f16/bf16 tensor-core pass and the merge of the splits): CUDA
// cores, one block-wide cp.async pipeline of tiles; a row is shared by the
// lanes that hold its 16-byte vectors, each lane keeps the group's queries and
// its slice of the outputs in registers.
#include <cfloat>

#include "kernels/cuda_common.cuh"
#include "kernels/cuda_mma.cuh"
#include "kernels/decode_attention_args.h"
#include "kernels/decode_attention_internal.cuh"

namespace headpage::gpu::internal::decode {
namespace {

template <int kHeadDim>
struct SimtTraits {
  static constexpr int kVecElems = ElementsPerVector<float>();        // 4
  static constexpr int kRowVecs = kHeadDim / kVecElems;               // 16-byte vectors per row
  static constexpr int kRowLanes = kRowVecs < 32 ? kRowVecs : 32;     // lanes sharing one row
  static constexpr int kLaneVecs = kRowVecs / kRowLanes;
  static constexpr int kLaneElems = kLaneVecs * kVecElems;
  static constexpr int kRowsPerPass = 32 / kRowLanes;                 // rows a warp reads at once
  static constexpr int kBatch = 4;                                    // rows per lane per tile
  static constexpr int kTileTokens = kWarps * kRowsPerPass * kBatch;
  static constexpr int kTileElems = kTileTokens * kHeadDim;           // of K, and of V
  static constexpr int kTileBytes = 2 * kTileElems * static_cast<int>(sizeof(float));
  // About 64 KiB of copies in flight per block.
  static constexpr int kStages = 65536 / kTileBytes > 2 ? 65536 / kTileBytes : 2;
  static constexpr int kLoads = kTileTokens * kRowVecs / kThreads;    // K vectors per thread
  static constexpr int kLoadRowStride = kThreads / kRowVecs;
  static constexpr int kSmemBytes = PassSmemBytes<kHeadDim>(kStages * kTileBytes);
  static_assert(kThreads % kRowVecs == 0, "a thread's vectors share one column");
  static_assert(kLoads * kThreads == kTileTokens * kRowVecs, "whole tiles per thread");
};

// The online softmax of every head of the group over this lane's rows: maxima,
// sums and this lane's elements of the unnormalized outputs (exp2 domain).
template <int kE>
struct LaneSoftmax {
  float m[kG], d[kG], acc[kG][kE];

  __device__ LaneSoftmax() {
#pragma unroll
    for (int h = 0; h < kG; ++h) {
      m[h] = kNoScore;
      d[h] = 0.0f;
#pragma unroll
      for (int e = 0; e < kE; ++e) acc[h][e] = 0.0f;
    }
  }
};

// Per lane: the group's queries (scaled), and a tile's scores of the warp's
// rows (then their weights).
template <int kHeadDim>
using LaneQueries = float[kG][SimtTraits<kHeadDim>::kLaneElems];
template <int kHeadDim>
using TileScores = float[SimtTraits<kHeadDim>::kBatch][kG];
template <int kHeadDim>
using SimtState = LaneSoftmax<SimtTraits<kHeadDim>::kLaneElems>;

// Stage: the group's queries, this lane's elements, scaled for exp2.
template <int kHeadDim>
__device__ __forceinline__ void LoadScaledQueries(const DecodeAttentionKernelArgs& args,
                                                  const BlockWork& work, int row_lane,
                                                  LaneQueries<kHeadDim>& q) {
  using Tr = SimtTraits<kHeadDim>;
  const float q_scale = args.sm_scale * kLog2E;
  const float* q_row = static_cast<const float*>(args.q) +
                       (static_cast<int64_t>(work.seq) * args.num_q_heads +
                        work.kv_head * work.group) *
                           kHeadDim;
#pragma unroll
  for (int h = 0; h < kG; ++h) {
#pragma unroll
    for (int i = 0; i < Tr::kLaneVecs; ++i) {
      float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (h < work.group) {
        v = reinterpret_cast<const float4*>(q_row + h * kHeadDim)[row_lane + i * Tr::kRowLanes];
      }
      q[h][i * 4 + 0] = v.x * q_scale;
      q[h][i * 4 + 1] = v.y * q_scale;
      q[h][i * 4 + 2] = v.z * q_scale;
      q[h][i * 4 + 3] = v.w * q_scale;
    }
  }
}

// This lane's elements of row `row` of a tile.
template <int kHeadDim>
__device__ __forceinline__ void LoadRowSlice(const float* tile, int row, int row_lane,
                                             float* out) {
  using Tr = SimtTraits<kHeadDim>;
#pragma unroll
  for (int i = 0; i < Tr::kLaneVecs; ++i) {
    const float4 v =
        reinterpret_cast<const float4*>(tile + row * kHeadDim)[row_lane + i * Tr::kRowLanes];
    out[i * 4 + 0] = v.x;
    out[i * 4 + 1] = v.y;
    out[i * 4 + 2] = v.z;
    out[i * 4 + 3] = v.w;
  }
}

// The tile row of batch b of this lane's warp.
template <int kHeadDim>
__device__ __forceinline__ int TileRow(int warp, int b, int row_group) {
  using Tr = SimtTraits<kHeadDim>;
  return (warp * Tr::kBatch + b) * Tr::kRowsPerPass + row_group;
}

// Stage: the scores of the warp's kBatch rows of the tile for every head of
// the group (q . k summed over the row's lanes), -inf past the range.
template <int kHeadDim>
__device__ __forceinline__ void ScoreTile(
    const LaneQueries<kHeadDim>& q, const float* k_tile, int tile_token,
    int end, int group, int warp, int row_group, int row_lane,
    TileScores<kHeadDim>& s) {
  using Tr = SimtTraits<kHeadDim>;
  constexpr int kE = Tr::kLaneElems;
#pragma unroll
  for (int b = 0; b < Tr::kBatch; ++b) {
    float key[kE];
    LoadRowSlice<kHeadDim>(k_tile, TileRow<kHeadDim>(warp, b, row_group), row_lane, key);
#pragma unroll
    for (int h = 0; h < kG; ++h) {
      s[b][h] = 0.0f;
      if (h < group) {
#pragma unroll
        for (int e = 0; e < kE; ++e) s[b][h] = fmaf(q[h][e], key[e], s[b][h]);
      }
    }
  }
#pragma unroll
  for (int b = 0; b < Tr::kBatch; ++b) {
    const bool valid = tile_token + TileRow<kHeadDim>(warp, b, row_group) < end;
#pragma unroll
    for (int h = 0; h < kG; ++h) {
      if (h < group) {
#pragma unroll
        for (int o = Tr::kRowLanes / 2; o > 0; o /= 2) {
          s[b][h] += __shfl_xor_sync(kFullMask, s[b][h], o);
        }
        if (!valid) s[b][h] = -INFINITY;
      }
    }
  }
}

// Stage: per head, the running maximum raised to the tile's (d and acc
// rescaled) and the scores turned into the weights exp2(s - m).
template <int kHeadDim>
__device__ __forceinline__ void OnlineSoftmaxUpdate(int group,
                                                    TileScores<kHeadDim>& s,
                                                    SimtState<kHeadDim>& state) {
  using Tr = SimtTraits<kHeadDim>;
#pragma unroll
  for (int h = 0; h < kG; ++h) {
    if (h < group) {
      float m_new = state.m[h];
#pragma unroll
      for (int b = 0; b < Tr::kBatch; ++b) m_new = fmaxf(m_new, s[b][h]);
      const float rescale = FastExp2(state.m[h] - m_new);
      state.m[h] = m_new;
      state.d[h] *= rescale;
#pragma unroll
      for (int e = 0; e < Tr::kLaneElems; ++e) state.acc[h][e] *= rescale;
#pragma unroll
      for (int b = 0; b < Tr::kBatch; ++b) {
        s[b][h] = FastExp2(s[b][h] - m_new);  // now the weight
        state.d[h] += s[b][h];
      }
    }
  }
}

// Stage: acc += weight * v over the warp's kBatch rows of the tile.
template <int kHeadDim>
__device__ __forceinline__ void AccumulateValues(
    const TileScores<kHeadDim>& s, const float* v_tile, int group, int warp,
    int row_group, int row_lane, SimtState<kHeadDim>& state) {
  using Tr = SimtTraits<kHeadDim>;
  constexpr int kE = Tr::kLaneElems;
#pragma unroll
  for (int b = 0; b < Tr::kBatch; ++b) {
    float value[kE];
    LoadRowSlice<kHeadDim>(v_tile, TileRow<kHeadDim>(warp, b, row_group), row_lane, value);
#pragma unroll
    for (int h = 0; h < kG; ++h) {
      if (h < group) {
#pragma unroll
        for (int e = 0; e < kE; ++e) state.acc[h][e] = fmaf(s[b][h], value[e], state.acc[h][e]);
      }
    }
  }
}

// Stage: the row groups of each warp merged (lanes kRowLanes apart hold the
// same elements of different rows).
template <int kHeadDim>
__device__ __forceinline__ void MergeRowGroups(int group,
                                               SimtState<kHeadDim>& state) {
  using Tr = SimtTraits<kHeadDim>;
#pragma unroll
  for (int o = Tr::kRowLanes; o < 32; o *= 2) {
#pragma unroll
    for (int h = 0; h < kG; ++h) {
      if (h < group) {
        const float m_other = __shfl_xor_sync(kFullMask, state.m[h], o);
        const float d_other = __shfl_xor_sync(kFullMask, state.d[h], o);
        const float m_new = fmaxf(state.m[h], m_other);
        const float mine = FastExp2(state.m[h] - m_new);
        const float theirs = FastExp2(m_other - m_new);
        state.m[h] = m_new;
        state.d[h] = state.d[h] * mine + d_other * theirs;
#pragma unroll
        for (int e = 0; e < Tr::kLaneElems; ++e) {
          state.acc[h][e] =
              state.acc[h][e] * mine + __shfl_xor_sync(kFullMask, state.acc[h][e], o) * theirs;
        }
      }
    }
  }
}

// Stage: the warp's merged state (held by its first row group) into the
// reduction's shared memory.
template <int kHeadDim>
__device__ __forceinline__ void StoreWarpState(const Reduction<kHeadDim>& reduce,
                                               const SimtState<kHeadDim>& state,
                                               int group, int warp, int lane, int row_group,
                                               int row_lane) {
  using Tr = SimtTraits<kHeadDim>;
  if (row_group == 0) {
#pragma unroll
    for (int h = 0; h < kG; ++h) {
      if (h < group) {
        float* dst = reduce.acc + (warp * kG + h) * kHeadDim;
#pragma unroll
        for (int i = 0; i < Tr::kLaneVecs; ++i) {
#pragma unroll
          for (int e = 0; e < Tr::kVecElems; ++e) {
            dst[(row_lane + i * Tr::kRowLanes) * Tr::kVecElems + e] =
                state.acc[h][i * Tr::kVecElems + e];
          }
        }
        if (lane == 0) {
          reduce.m[warp * kG + h] = state.m[h];
          reduce.d[warp * kG + h] = state.d[h];
        }
      }
    }
  }
}

template <int kHeadDim, bool kBalanced>
__global__ void __launch_bounds__(kThreads, 2)
    SimtKernel(DecodeAttentionKernelArgs args, float* partial_out, float* partial_lse,
               const uint64_t* fault, DecodeNewTokens new_tokens) {
  using Tr = SimtTraits<kHeadDim>;
  extern __shared__ __align__(128) unsigned char smem[];
  AllowDependentLaunch();      // the merge (LaunchDecodeAttention)
  WaitForPrerequisiteGrids();  // the tables' check, in a checked call (LaunchWithSmem)
  if (TablesFaulted(fault)) return;

  ForEachPiece<kBalanced>(args, Tr::kTileTokens, [&](const BlockWork& work) {
    StoreNewToken<float, kHeadDim>(args, new_tokens, work);
    const int group = work.group;
    const int num_tiles = (work.end - work.begin + Tr::kTileTokens - 1) / Tr::kTileTokens;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int row_group = lane / Tr::kRowLanes;  // which row of a pass this lane reads
    const int row_lane = lane % Tr::kRowLanes;   // which vectors of the row

    LaneQueries<kHeadDim> q;
    LoadScaledQueries<kHeadDim>(args, work, row_lane, q);

    // Stage: the block's cp.async copies of K and V tiles. This thread's vectors
    // are column load_col of rows load_row0 + k * kLoadRowStride of every tile;
    // per row, where its next token lives. (Lambdas over the kernel's locals: as
    // a struct, the compiler re-derived addresses in the loop, 2-3% more
    // instructions.)
    float* tiles = reinterpret_cast<float*>(smem);
    const PagedKV& cache = args.cache;
    const int page_size = cache.page_size;
    const int end = work.end;
    const float* data = static_cast<const float*>(cache.data);
    const int32_t* table = args.page_ids + args.indptr[work.stream];
    const int load_col = threadIdx.x % Tr::kRowVecs;
    const int load_row0 = threadIdx.x / Tr::kRowVecs;
    const int step_pages = Tr::kTileTokens / page_size;
    const int step_offset = Tr::kTileTokens - step_pages * page_size;
    int page_index[Tr::kLoads], offset[Tr::kLoads], page[Tr::kLoads];
    int load_tile_token = work.begin;  // first token of the tile the copy state describes
#pragma unroll
    for (int k = 0; k < Tr::kLoads; ++k) {
      const int token = work.begin + load_row0 + k * Tr::kLoadRowStride;
      page_index[k] = token / page_size;
      offset[k] = token - page_index[k] * page_size;
      page[k] = token < end ? __ldg(table + page_index[k]) : -1;
    }
    auto issue_copies = [&](int stage) {
      float* k_tile = tiles + stage * 2 * Tr::kTileElems;
      float* v_tile = k_tile + Tr::kTileElems;
#pragma unroll
      for (int k = 0; k < Tr::kLoads; ++k) {
        // page is -1 past the range; an id outside the cache reads as zeros.
        const bool fill = page[k] >= 0 && page[k] < cache.num_pages;
        const int64_t key = fill ? page[k] * cache.page_elements() +
                                       static_cast<int64_t>(offset[k]) * kHeadDim +
                                       load_col * Tr::kVecElems
                                 : 0;
        const int at = (load_row0 + k * Tr::kLoadRowStride) * kHeadDim + load_col * Tr::kVecElems;
        CpAsync16(SmemAddress(k_tile + at), data + key, fill);
        CpAsync16(SmemAddress(v_tile + at), data + key + static_cast<int64_t>(page_size) * kHeadDim,
                  fill);
      }
    };
    auto advance_copies = [&]() {
      load_tile_token += Tr::kTileTokens;
#pragma unroll
      for (int k = 0; k < Tr::kLoads; ++k) {
        offset[k] += step_offset;
        page_index[k] += step_pages;
        if (offset[k] >= page_size) {
          offset[k] -= page_size;
          ++page_index[k];
        }
        const int token = load_tile_token + load_row0 + k * Tr::kLoadRowStride;
        page[k] = token < end ? __ldg(table + page_index[k]) : -1;
      }
    };

    SimtState<kHeadDim> state;

    // One pipeline for the block: every warp reads every thread's copies.
    RunPipeline<Tr::kStages>(
        num_tiles, issue_copies, advance_copies, [] { __syncthreads(); },
        [&](int stage, int t) {
          const float* k_tile = tiles + stage * 2 * Tr::kTileElems;
          TileScores<kHeadDim> s;
          ScoreTile<kHeadDim>(q, k_tile, work.begin + t * Tr::kTileTokens, work.end, group, warp,
                              row_group, row_lane, s);
          OnlineSoftmaxUpdate<kHeadDim>(group, s, state);
          AccumulateValues<kHeadDim>(s, k_tile + Tr::kTileElems, group, warp, row_group, row_lane,
                                     state);
        });
    __syncthreads();  // the tiles' memory becomes the reduction's

    MergeRowGroups<kHeadDim>(group, state);
    const Reduction<kHeadDim> reduce(smem);
    StoreWarpState<kHeadDim>(reduce, state, group, warp, lane, row_group, row_lane);
    __syncthreads();
    StoreCombined<float, kHeadDim, kBalanced>(args, reduce, work, partial_out, partial_lse);
  });
}

}  // namespace

LaunchResult LaunchSimtPass(const DecodeAttentionArgs& args, float* partial_out,
                            float* partial_lse, GpuStream stream, int* occupancy) {
  return DispatchHeadDim(args.cache.head_dim, [&](auto head_dim_tag) {
    constexpr int kHeadDim = decltype(head_dim_tag)::value;
    return LaunchWithSmem(SimtKernel<kHeadDim, false>, SimtKernel<kHeadDim, true>,
                          SimtTraits<kHeadDim>::kSmemBytes, args, partial_out, partial_lse,
                          stream, occupancy);
  });
}

}  // namespace headpage::gpu::internal::decode
