// SPDX-License-Identifier: Apache-2.0
// File: kernels/window_scores_pass.cuh
//
// WindowScores' passes 1 and 3 over the keys (see window_scores.cu for all
// four): the kernel and the stages it runs per tile of keys after
// window_scores_tile.cuh has computed the tile's logits. Included by
// window_scores.cu (the warp MMA and FMA instances) and window_scores_wgmma.cu
// (the warpgroup MMA instances, built for sm_90a): the one kernel template
// two .cu files include, because CMake can build a file, not an instance, for
// another architecture; each file instantiates its own kWarpgroup. CUDA and
// plain headers only.
#ifndef HEADPAGE_KERNELS_WINDOW_SCORES_PASS_CUH_
#define HEADPAGE_KERNELS_WINDOW_SCORES_PASS_CUH_

#include <climits>
#include <type_traits>

#include "kernels/cuda_common.cuh"
#include "kernels/cuda_mma.cuh"
#include "kernels/cuda_wgmma.cuh"
#include "kernels/window_scores_args.h"
#include "kernels/window_scores_internal.cuh"
#include "kernels/window_scores_tile.cuh"

namespace headpage::gpu::internal::window {

// The window start of sequence `seq` (its lowest query position), per warp.
__device__ __forceinline__ int32_t WindowStart(const WindowScoresArgs& args, int seq, int lane) {
  int32_t start = INT_MAX;
  for (int w = lane; w < args.window; w += 32) {
    start = min(start, args.query_positions[static_cast<int64_t>(seq) * args.window + w]);
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    start = min(start, __shfl_xor_sync(kFullMask, start, offset));
  }
  return start;
}

// Column k = 0..7 of v summed over the 8 lanes that share lane % 4, left in the
// lane whose bits 2..4 spell k: three exchange steps that each send half of
// what is left, 4 + 2 + 1 shuffles instead of 8 x 3.
__device__ __forceinline__ float ReduceScatter8(float (&v)[8], int lane) {
  const bool up16 = lane & 16, up8 = lane & 8, up4 = lane & 4;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float send = up16 ? v[j] : v[j + 4];
    const float keep = up16 ? v[j + 4] : v[j];
    v[j] = keep + __shfl_xor_sync(kFullMask, send, 16);
  }
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const float send = up8 ? v[j] : v[j + 2];
    const float keep = up8 ? v[j + 2] : v[j];
    v[j] = keep + __shfl_xor_sync(kFullMask, send, 8);
  }
  const float send = up4 ? v[0] : v[1];
  const float keep = up4 ? v[1] : v[0];
  return keep + __shfl_xor_sync(kFullMask, send, 4);
}

// Pass 1's slow path for row r of an m-tile's accumulators: raises the row's
// reference to the maximum logit seen so far and rescales its sum.
__device__ __forceinline__ void RaiseReference(const float (&acc)[4][4], int r, float scale,
                                               float* reference, float* sum) {
  float tile_max = -kInf;
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    tile_max = fmaxf(tile_max, fmaxf(acc[nt][2 * r], acc[nt][2 * r + 1]));
  }
  // scale > 0, so the scaled maximum is the maximum of the scaled.
  const float new_max = fmaxf(*reference, tile_max * scale);
  const float shift = new_max == -kInf ? 0.0f : new_max;
  float tile_sum = 0.0f;
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    tile_sum += FastExp2(fmaf(acc[nt][2 * r], scale, -shift));
    tile_sum += FastExp2(fmaf(acc[nt][2 * r + 1], scale, -shift));
  }
  *sum = *sum * FastExp2(*reference - shift) + tile_sum;
  *reference = new_max;
}

// Stage: per row of the thread's fragments, the query's position (INT_MIN for
// padding) and, in pass 3, the row's M' from pass 2.
template <int kMT, bool kScores>
__device__ __forceinline__ void LoadRowContext(const WindowScoresArgs& args,
                                               const WindowScoresPlan& plan,
                                               const BlockTask& task, int warp, int lane,
                                               int32_t (&query_position)[kMT][2],
                                               float (&row_shift)[kMT][2]) {
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = RowTile<kMT>(warp, mt) * 16 + (lane >> 2) + r * 8;
      bool valid;
      QueryRowOffset(args, plan, task, row, &valid);
      const int w = row % plan.padded_window;
      query_position[mt][r] =
          valid ? args.query_positions[static_cast<int64_t>(task.seq) * args.window + w] : INT_MIN;
      if constexpr (kScores) {
        const float* merged = reinterpret_cast<const float*>(
            static_cast<const unsigned char*>(args.workspace) + plan.merged_offset);
        row_shift[mt][r] =
            merged[(static_cast<int64_t>(task.stream) * plan.row_groups + task.row_group) *
                       kRowsPerBlock +
                   row];
      }
    }
  }
}

// Stage: -inf for the logits of keys past the tile's valid ones and of keys
// after the row's query (causal).
template <int kMT>
__device__ __forceinline__ void MaskLogits(const int32_t* key_position, int valid_keys, int half,
                                           int lane, const int32_t (&query_position)[kMT][2],
                                           float (&acc)[kMT][8][4]) {
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int col = half * 32 + nt * 8 + 2 * (lane & 3) + c;
      const bool key_valid = col < valid_keys;
      const int32_t position = key_position[col];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          if (!key_valid || position > query_position[mt][r]) {
            acc[mt][4 * half + nt][2 * r + c] = -kInf;
          }
        }
      }
    }
  }
}

// Stage (pass 1), this thread's columns only: row_sum += sum of exp2(logit -
// row_max), where row_max is a reference, not necessarily the maximum: it is
// raised only when a logit would overflow the sum, so most keys cost no max.
template <int kMT>
__device__ __forceinline__ void AccumulateRowSums(const float (&acc)[kMT][8][4], int half,
                                                  const bool (&active)[kMT], float scale,
                                                  float (&row_max)[kMT][2],
                                                  float (&row_sum)[kMT][2]) {
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    if (!active[mt]) continue;
    const float(&tile)[4][4] = reinterpret_cast<const float(&)[4][4]>(acc[mt][4 * half]);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      // exp2 relative to the row's reference; the guard catches the first keys
      // the row sees (reference -inf: NaN) and a logit more than 2^100 above
      // the reference (a huge or infinite sum).
      float e[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        e[j] = FastExp2(fmaf(tile[j >> 1][2 * r + (j & 1)], scale, -row_max[mt][r]));
      }
      const float sum = ((e[0] + e[1]) + (e[2] + e[3])) + ((e[4] + e[5]) + (e[6] + e[7]));
      if (sum <= 0x1p100f) {
        row_sum[mt][r] += sum;
      } else {
        RaiseReference(tile, r, scale, &row_max[mt][r], &row_sum[mt][r]);
      }
    }
  }
}

// Stage (pass 3): the attention exp2(logit - M') of the warp's rows summed per
// key column of the half, into the tile's buffer of column sums (one per
// m16 tile, or one for both of the warp's when merge_tiles). Inactive m-tiles
// (all padding rows) add nothing and write nothing.
template <int kMT>
__device__ __forceinline__ void StoreColumnSums(const float (&acc)[kMT][8][4], float scale,
                                                const float (&row_shift)[kMT][2], int half,
                                                int warp, int lane, const bool (&active)[kMT],
                                                bool merge_tiles, float* tile_sums) {
  // v[mt][nt * 2 + c]: column (nt, c) summed over this thread's two rows.
  float v[kMT][8];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        v[mt][nt * 2 + c] =
            active[mt] ? FastExp2(fmaf(acc[mt][4 * half + nt][c], scale, -row_shift[mt][0])) +
                             FastExp2(fmaf(acc[mt][4 * half + nt][2 + c], scale, -row_shift[mt][1]))
                       : 0.0f;
      }
    }
  }
  // The lane now holds column k = (lane >> 2) & 7 of the half: nt = k / 2, c = k % 2.
  const int k = (lane >> 2) & 7;
  const int col = half * 32 + (k >> 1) * 8 + 2 * (lane & 3) + (k & 1);
  float* sums = tile_sums + col;
  if (merge_tiles) {
#pragma unroll
    for (int j = 0; j < 8; ++j) v[0][j] += v[kMT - 1][j];
    if (active[0]) {
      sums[RowTile<kMT>(warp, 0) * kTile] = ReduceScatter8(v[0], lane);
      sums[RowTile<kMT>(warp, kMT - 1) * kTile] = 0.0f;
    }
  } else {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      if (active[mt]) sums[RowTile<kMT>(warp, mt) * kTile] = ReduceScatter8(v[mt], lane);
    }
  }
}

// Stage (pass 3): one thread per key of tile t reduces the group's heads
// (their m-tiles summed) out of the column sums the warps wrote, and writes the
// key's partial. The partial's sign bit says whether the key is at or after
// the window start (-0 included), so that the pooling pass needs neither
// positions nor block tables.
__device__ __forceinline__ void FinalizeKeyScores(const WindowScoresArgs& args,
                                                  const WindowScoresPlan& plan,
                                                  const BlockTask& task, const float* column_sums,
                                                  int t, int32_t position, int32_t window_start) {
  const int key = task.begin + t * kTile + threadIdx.x;
  if (threadIdx.x >= kTile || key >= task.end) return;
  const float* sums = column_sums + (t & 1) * kMTiles * kTile + threadIdx.x;
  const int tiles_per_head = plan.padded_window / 16;
  float reduced = 0.0f;  // sums are >= 0, so 0 also starts the max
  for (int head = 0; head < task.heads; ++head) {
    float head_sum = 0.0f;
    for (int m = 0; m < tiles_per_head; ++m) head_sum += sums[(head * tiles_per_head + m) * kTile];
    reduced =
        args.reduce == policy::GroupReduce::kMax ? fmaxf(reduced, head_sum) : reduced + head_sum;
  }
  float* partial = reinterpret_cast<float*>(static_cast<unsigned char*>(args.workspace) +
                                            plan.partial_offset);
  partial[static_cast<int64_t>(task.row_group) * args.num_scores +
          args.score_offsets[task.stream] + key] = position < window_start ? reduced : -reduced;
}

// Stage (pass 1, at the end): the quad's four column sets merged; lane 4g
// writes rows g and g + 8 of each m-tile.
template <int kMT>
__device__ __forceinline__ void WriteRowStats(const WindowScoresArgs& args,
                                              const WindowScoresPlan& plan,
                                              const BlockTask& task, int warp, int lane,
                                              const bool (&active)[kMT], const float (&row_max)[kMT][2],
                                              const float (&row_sum)[kMT][2]) {
  float2* stats = reinterpret_cast<float2*>(static_cast<unsigned char*>(args.workspace) +
                                            plan.stats_offset);
  const int64_t first =
      ((static_cast<int64_t>(task.stream) * plan.row_groups + task.row_group) * plan.num_splits +
       task.split) *
      kRowsPerBlock;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float m = row_max[mt][r], l = row_sum[mt][r];
#pragma unroll
      for (int offset = 1; offset <= 2; offset <<= 1) {
        const float other_m = __shfl_xor_sync(kFullMask, m, offset);
        const float other_l = __shfl_xor_sync(kFullMask, l, offset);
        const float new_max = fmaxf(m, other_m);
        const float shift = new_max == -kInf ? 0.0f : new_max;
        l = l * FastExp2(m - shift) + other_l * FastExp2(other_m - shift);
        m = new_max;
      }
      if (active[mt] && (lane & 3) == 0) {
        stats[first + RowTile<kMT>(warp, mt) * 16 + (lane >> 2) + r * 8] = make_float2(m, l);
      }
    }
  }
}

// Passes 1 (kScores = false: per-row softmax statistics of the chunk) and 3
// (kScores = true: the chunk's unpooled partial scores). They share the key
// pipeline and the logits, which kWarpgroup takes from the warpgroup MMA
// (sm_90a, window_scores_wgmma.cu) and otherwise from Logits().
template <typename T, int kHeadDim, bool kScores, bool kWarpgroup>
__global__ void __launch_bounds__(Shape<T, kHeadDim>::kThreads,
                                  kWarpgroup ? Shape<T, kHeadDim>::kMinBlocksWarpgroup
                                             : Shape<T, kHeadDim>::kMinBlocks)
    WindowPassKernel(WindowScoresArgs args, WindowScoresPlan plan) {
  using S = Shape<T, kHeadDim>;
  constexpr int kMT = S::kMTilesPerWarp;
  static_assert(!kWarpgroup || !std::is_same_v<T, float>, "the warpgroup MMA takes 16-bit keys");
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  // cuda_wgmma.cuh's wrappers trap outside sm_90a code: refuse to build them.
  static_assert(!kWarpgroup, "warpgroup MMA instances must be built for sm_90a");
#endif
  extern __shared__ __align__(16) unsigned char raw_smem[];
  // The warpgroup MMA's stages start at the first 1024-byte boundary (the
  // swizzle's atom).
  unsigned char* smem = raw_smem;
  if constexpr (kWarpgroup) {
    smem += (kWgmmaAtomBytes - (SmemAddress(raw_smem) & (kWgmmaAtomBytes - 1))) &
            (kWgmmaAtomBytes - 1);
  }
  BlockTask task;
  if (!MakeTask(args, plan, /*reversed=*/kScores, &task)) return;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  KeyTileCopies<T, kHeadDim> copies(args, task, smem);
  float* column_sums = reinterpret_cast<float*>(smem + S::kColumnSumsOffset);

  // An m-tile is computed when its m64 tile holds a row of the row group: the
  // same answer for the four warps of a warpgroup, as its MMAs need.
  bool active[kMT];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) active[mt] = RowTile<kMT>(warp, mt) / 4 * 64 < task.rows;
  // The warpgroup MMA computes every m64 tile of a warpgroup (one at d = 256,
  // where the second warpgroup's may be padding: its epilogue skips it) and
  // skips the second of one warpgroup's two when the row group is 64 rows or
  // fewer, a condition of the block's alone.
  const bool second_active = task.rows > 64;
  Queries<T, kHeadDim, kMT> q;
  int32_t query_position[kMT][2];
  float row_shift[kMT][2];  // pass 3: M' of the row
  LoadRowContext<kMT, kScores>(args, plan, task, warp, lane, query_position, row_shift);
  LoadQueries<T, kHeadDim, kMT>(args, plan, task, warp, lane, &q);
  const int32_t window_start = WindowStart(args, task.seq, lane);
  const float scale = args.sm_scale * kLog2E;  // logits in log2 units

  // Pass 1: the thread's (reference, sum) per row (AccumulateRowSums).
  float row_max[kMT][2], row_sum[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row_max[mt][r] = -kInf;
      row_sum[mt][r] = 0.0f;
    }
  }
  // Pass 3, for a warp that sums its two m-tiles into one column sum: both
  // belong to one head (rows 16w and 64 + 16w: only a 128-row window), or
  // the group mean adds every head anyway.
  const bool merge_tiles = kMT == 2 && (args.reduce == policy::GroupReduce::kMean ||
                                        plan.padded_window == kRowsPerBlock);
  // Pass 3: tile t's keys are finalized after the next tile's barrier (or a
  // last one), so each tile costs one barrier; the column sums alternate
  // between two buffers. The position of the key this thread finalizes is read
  // while its stage is still resident (the stage may be refilled by then).
  int32_t pending_position = 0;

  uint32_t lane_ldmatrix_base[4];
  LdMatrixBases(SmemAddress(smem), lane, lane_ldmatrix_base);

  const int num_tiles = (task.end - task.begin + kTile - 1) / kTile;
#pragma unroll
  for (int stage = 0; stage < S::kStages - 1; ++stage) {
    if (stage < num_tiles) copies.Issue(stage);
    CpAsyncCommit();
  }
  for (int tile = 0; tile < num_tiles; ++tile) {
    CpAsyncWait<S::kStages - 2>();
    // The stage's keys, copied or dequantized by the generic proxy, become
    // visible to the warpgroup MMA's reads (the async proxy).
    if constexpr (kWarpgroup) FenceProxyAsyncShared();
    __syncthreads();
    if constexpr (kScores) {
      if (tile > 0) {
        FinalizeKeyScores(args, plan, task, column_sums, tile - 1, pending_position, window_start);
      }
    }
    if (tile + S::kStages - 1 < num_tiles) copies.Issue((tile + S::kStages - 1) % S::kStages);
    CpAsyncCommit();
    const int stage = tile % S::kStages;
    const unsigned char* keys = smem + stage * S::kStageBytes;
    const int32_t* key_position = copies.positions + stage * kTile;
    const int valid_keys = min(kTile, task.end - (task.begin + tile * kTile));
    if constexpr (kScores) {
      if (threadIdx.x < kTile) pending_position = key_position[threadIdx.x];
    }
    // A tile every row sees whole (all of the prefix but its end) skips the mask.
    const bool masked =
        valid_keys < kTile || __any_sync(kFullMask, key_position[lane] > window_start ||
                                                        key_position[lane + 32] > window_start);
    float acc[kMT][8][4];
    if constexpr (kWarpgroup) {
      LogitsWarpgroup<T, kHeadDim, kMT>(q, SmemAddress(keys), second_active, acc);
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      if constexpr (!kWarpgroup) {
        Logits<T, kHeadDim, kMT>(q, keys, lane_ldmatrix_base, stage * S::kStageBytes, half, lane,
                                 active, acc);
      }
      if (masked) MaskLogits<kMT>(key_position, valid_keys, half, lane, query_position, acc);
      if constexpr (!kScores) {
        AccumulateRowSums<kMT>(acc, half, active, scale, row_max, row_sum);
      } else {
        StoreColumnSums<kMT>(acc, scale, row_shift, half, warp, lane, active, merge_tiles,
                             column_sums + (tile & 1) * kMTiles * kTile);
      }
    }
  }
  if constexpr (kScores) {
    if (num_tiles > 0) {
      __syncthreads();
      FinalizeKeyScores(args, plan, task, column_sums, num_tiles - 1, pending_position,
                        window_start);
    }
  }
  CpAsyncWait<0>();

  if constexpr (!kScores) {
    WriteRowStats<kMT>(args, plan, task, warp, lane, active, row_max, row_sum);
  }
}

template <typename T, int kHeadDim, bool kScores, bool kWarpgroup>
LaunchResult LaunchPass(const WindowScoresArgs& args, const WindowScoresPlan& plan,
                        GpuStream stream) {
  using S = Shape<T, kHeadDim>;
  auto* kernel = WindowPassKernel<T, kHeadDim, kScores, kWarpgroup>;
  constexpr int kSmemBytes = kWarpgroup ? S::kSmemBytesWarpgroup : S::kSmemBytes;
  LaunchResult result = CudaErrorResult(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  if (!result.ok()) return result;
  const int64_t blocks =
      static_cast<int64_t>(plan.num_streams) * plan.num_splits * plan.row_groups;
  kernel<<<static_cast<unsigned>(blocks), S::kThreads, kSmemBytes, stream>>>(args, plan);
  return CheckLaunch();
}

// Both passes' launches and the two between them, with the passes' logits
// from the warp MMA (kWarpgroup = false) or the warpgroup MMA.
template <typename T, int kHeadDim, bool kWarpgroup>
LaunchResult LaunchAllPasses(const WindowScoresArgs& args, const WindowScoresPlan& plan,
                             GpuStream stream) {
  LaunchResult result = LaunchPass<T, kHeadDim, false, kWarpgroup>(args, plan, stream);
  if (!result.ok()) return result;
  result = LaunchMergeStats(args, plan, stream);
  if (!result.ok()) return result;
  result = LaunchPass<T, kHeadDim, true, kWarpgroup>(args, plan, stream);
  if (!result.ok()) return result;
  return LaunchPool(args, plan, stream);
}

}  // namespace headpage::gpu::internal::window

#endif  // HEADPAGE_KERNELS_WINDOW_SCORES_PASS_CUH_
