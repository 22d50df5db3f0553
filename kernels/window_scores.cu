// SPDX-License-Identifier: Apache-2.0
// File: kernels/window_scores.cu
//
// WindowScores on the GPU, in four launches:
//
//   1. RowStats: block (row group, split, stream) streams a chunk of the
//      stream's keys through shared memory (cp.async, 2-3 stages of 64 keys,
//      page ids read a tile ahead) and computes the logits of up to 128 window
//      query rows against them on the tensor cores (mma.sync m16n8k16, queries
//      in registers, keys through ldmatrix; f32 takes plain FMAs). Each thread
//      sums exp2 of its logits relative to a per-row reference that is raised
//      only when the sum would overflow (so most tiles cost no maximum); the
//      quad merges its four (reference, sum) pairs and the block writes one
//      per row for its chunk.
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
// queries, statistics and partial scores are small beside them. Measured on an
// H100 (8 x 32K, d = 128, bf16): the two passes are latency-bound at ~40%
// tensor-pipe and ~48% DRAM utilization each; ncu names fixed-latency
// dependencies as the main stall.
#include <climits>
#include <type_traits>

#include "kernels/cuda_common.cuh"
#include "kernels/window_scores_args.h"

namespace headpage::gpu::internal {
namespace {

// A stream's length as the kernels use it: the device's `lens` cut to the
// host's max_len (which sized the grid) and to the stream's own block-table
// row, so a bad length never reads another row's page ids.
__device__ __forceinline__ int32_t StreamLength(const WindowScoresArgs& args, int32_t stream) {
  const int32_t table_tokens = (args.indptr[stream + 1] - args.indptr[stream]) * args.cache.page_size;
  return min(min(args.lens[stream], args.max_len), table_tokens);
}

constexpr int kTile = kScoreTileKeys;                // keys per pipeline stage
constexpr int kRowsPerBlock = kScoreRowsPerGroup;    // query rows per block
constexpr int kMTiles = kRowsPerBlock / 16;          // 16-row tensor-core tiles
constexpr float kInf = __builtin_huge_valf();
constexpr float kLog2e = 1.4426950408889634f;

// The block's shape per storage type and head_dim. A warp owns two m-tiles
// (32 rows) so that each key fragment read from shared memory feeds two MMAs;
// at d = 256 their query fragments would not fit in registers, so one.
template <typename T, int kHeadDim>
struct Shape {
  static constexpr int kMTilesPerWarp = kHeadDim == 256 ? 1 : 2;
  static constexpr int kWarps = kMTiles / kMTilesPerWarp;
  static constexpr int kThreads = kWarps * 32;
  // Four blocks of 128 threads per SM (128 registers, ~60 bytes spilled, three
  // stages) measured ~1% faster than three (168 registers, four stages).
  static constexpr int kMinBlocks = kThreads == 128 ? 4 : 2;
  static constexpr int kRowBytes = kHeadDim * static_cast<int>(sizeof(T));
  static constexpr int kRowChunks = kRowBytes / 16;
  static constexpr int kStageBytes = kTile * kRowBytes;
  static constexpr int kStages = kStageBytes <= 16384 ? 3 : 2;
  static constexpr int kThreadsPerKey = kThreads / kTile;
  // K stages, their positions, then two buffers of the warps' column sums (pass 3).
  static constexpr int kPositionsOffset = kStages * kStageBytes;
  static constexpr int kColumnSumsOffset = kPositionsOffset + kStages * kTile * 4;
  static constexpr int kSmemBytes = kColumnSumsOffset + 2 * kMTiles * kTile * 4;
  static_assert(kRowChunks % 8 == 0, "the swizzle permutes 8 chunks of 16 bytes");
  static_assert(kThreads % kTile == 0 && kRowChunks % kThreadsPerKey == 0, "whole keys per pass");
};

__device__ __forceinline__ uint32_t SmemAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, bypassing L1; zero-fills when !valid.
__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void CpAsync4(uint32_t dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ void LdMatrixX4(uint32_t address, uint32_t& r0, uint32_t& r1,
                                           uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(address));
}

// c += a * b for one 16x8x16 tile, float accumulators.
template <typename T>
__device__ __forceinline__ void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Where 16-byte chunk `chunk` of key row `key` lives in a stage: the chunk
// index is XORed with a permutation of key % 8, so that the 8 rows an ldmatrix
// phase reads (8 keys, one chunk) and the 8 chunks a cp.async phase writes
// (4 keys x 2 chunks) each fall in 8 different bank groups.
__device__ __forceinline__ int SwizzledChunk(int key, int chunk) {
  return chunk ^ (((key & 3) << 1) | ((key >> 2) & 1));
}

// The window start of sequence `seq` (its lowest query position), per warp.
__device__ __forceinline__ int32_t WindowStart(const WindowScoresArgs& args, int seq, int lane) {
  int32_t start = INT_MAX;
  for (int w = lane; w < args.window; w += 32) {
    start = min(start, args.query_positions[static_cast<int64_t>(seq) * args.window + w]);
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    start = min(start, __shfl_xor_sync(0xffffffffu, start, offset));
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
    v[j] = keep + __shfl_xor_sync(0xffffffffu, send, 16);
  }
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const float send = up8 ? v[j] : v[j + 2];
    const float keep = up8 ? v[j + 2] : v[j];
    v[j] = keep + __shfl_xor_sync(0xffffffffu, send, 8);
  }
  const float send = up4 ? v[0] : v[1];
  const float keep = up4 ? v[1] : v[0];
  return keep + __shfl_xor_sync(0xffffffffu, send, 4);
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
    tile_sum += Exp2(fmaf(acc[nt][2 * r], scale, -shift));
    tile_sum += Exp2(fmaf(acc[nt][2 * r + 1], scale, -shift));
  }
  *sum = *sum * Exp2(*reference - shift) + tile_sum;
  *reference = new_max;
}

// What a block works on: a chunk of one stream's keys against one row group.
struct BlockTask {
  int32_t stream, seq, kv_head, row_group, split;
  int32_t begin, end;         // keys [begin, end) of the stream
  int32_t heads, rows;        // q heads and rows (heads * padded window) of the row group
};

__device__ __forceinline__ bool MakeTask(const WindowScoresArgs& args,
                                         const WindowScoresPlan& plan, BlockTask* task) {
  // Row groups vary fastest, so the blocks that read the same keys run together
  // and all but the first find them in L2.
  int64_t b = blockIdx.x;
  task->row_group = static_cast<int32_t>(b % plan.row_groups);
  b /= plan.row_groups;
  task->split = static_cast<int32_t>(b % plan.num_splits);
  task->stream = static_cast<int32_t>(b / plan.num_splits);
  const int32_t len = StreamLength(args, task->stream);
  task->begin = task->split * plan.chunk;
  if (task->begin >= len) return false;
  task->end = min(len, task->begin + plan.chunk);
  task->seq = task->stream / args.num_kv_heads;
  task->kv_head = task->stream - task->seq * args.num_kv_heads;
  task->heads = min(plan.heads_per_group, plan.group_size - task->row_group * plan.heads_per_group);
  task->rows = task->heads * plan.padded_window;
  return true;
}

// Row r of a row group is head r / padded_window of the group, window query
// r % padded_window; rows past the window or the group are padding.
__device__ __forceinline__ int64_t QueryRowOffset(const WindowScoresArgs& args,
                                                  const WindowScoresPlan& plan,
                                                  const BlockTask& task, int row, bool* valid) {
  const int head = row / plan.padded_window;
  const int w = row - head * plan.padded_window;
  *valid = row < task.rows && w < args.window;
  const int64_t q_head = static_cast<int64_t>(task.seq) * args.num_q_heads +
                         task.kv_head * plan.group_size + task.row_group * plan.heads_per_group +
                         head;
  return (q_head * args.window + w) * args.cache.head_dim;
}

// The query operand of a warp: its rows' A fragments (f16/bf16), or pointers
// to its rows (f32, read from global memory as the FMAs go).
template <typename T, int kHeadDim, int kMT>
struct Queries {
  uint32_t frag[kMT][kHeadDim / 16][4];
};
template <int kHeadDim, int kMT>
struct Queries<float, kHeadDim, kMT> {
  const float* row[kMT][2];
};

template <typename T, int kHeadDim, int kMT>
__device__ __forceinline__ void LoadQueries(const WindowScoresArgs& args,
                                            const WindowScoresPlan& plan, const BlockTask& task,
                                            int first_mt, int lane,
                                            Queries<T, kHeadDim, kMT>* q) {
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int half_rows = 0; half_rows < 2; ++half_rows) {
      bool valid;
      const int row = (first_mt + mt) * 16 + (lane >> 2) + half_rows * 8;
      const int64_t offset = QueryRowOffset(args, plan, task, row, &valid);
      if constexpr (std::is_same_v<T, float>) {
        q->row[mt][half_rows] = valid ? static_cast<const float*>(args.queries) + offset : nullptr;
      } else {
        // A fragment: register 0/2 hold row g, 1/3 row g + 8; 0/1 columns
        // 2t, 2t + 1 of the k-step, 2/3 the same + 8 (g = lane / 4, t = lane % 4).
        const uint32_t* words =
            reinterpret_cast<const uint32_t*>(static_cast<const T*>(args.queries) + offset);
#pragma unroll
        for (int ks = 0; ks < kHeadDim / 16; ++ks) {
          q->frag[mt][ks][half_rows] = valid ? __ldg(words + ks * 8 + (lane & 3)) : 0u;
          q->frag[mt][ks][half_rows + 2] = valid ? __ldg(words + ks * 8 + 4 + (lane & 3)) : 0u;
        }
      }
    }
  }
}

// The lane's ldmatrix addresses in a stage for k-steps 0..3 of keys 0..15;
// k-step ks and key block kb add (ks / 4) * 128 + kb * 16 * kRowBytes. Lanes
// 0-7 address keys 0-7 at a k-step's low 8 columns, 8-15 the same keys' high
// 8, 16-31 keys 8-15 likewise: the B fragments of two n-tiles. The swizzle
// XORs chunk 2 ks + hi with F = SwizzledChunk(key, 0), which depends on key % 8
// = lane % 8 only, and 2 ks + hi ^ F = 2 (ks ^ F / 2) + (hi ^ F % 2), where
// ks ^ F / 2 flips only the low two bits of ks.
template <int kRowBytes>
__device__ __forceinline__ void LdMatrixBases(uint32_t stage_address, int lane,
                                              uint32_t (&bases)[4]) {
  const int key = (lane & 7) + ((lane >> 4) << 3);
  const int hi = (lane >> 3) & 1;
  const int f = SwizzledChunk(key, 0);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    bases[k] = stage_address + key * kRowBytes + 32 * (k ^ (f >> 1)) + 16 * (hi ^ (f & 1));
  }
}

// acc[mt][nt][c] = q . k for the warp's rows and the 32 keys of half `half` of
// the stage, in the mma accumulator layout: c = 0, 1 row g, c = 2, 3 row g + 8
// of m-tile mt; columns nt * 8 + 2t + (c & 1) of the half.
template <typename T, int kHeadDim, int kMT>
__device__ __forceinline__ void Logits(const Queries<T, kHeadDim, kMT>& q,
                                       const unsigned char* stage,
                                       const uint32_t (&ldmatrix_base)[4], uint32_t stage_offset,
                                       int half, int lane, float (&acc)[kMT][4][4]) {
  using S = Shape<T, kHeadDim>;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[mt][nt][c] = 0.0f;
    }
  }
  if constexpr (std::is_same_v<T, float>) {
    for (int chunk = 0; chunk < S::kRowChunks; ++chunk) {
      float4 qv[kMT][2];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          qv[mt][r] = q.row[mt][r] != nullptr
                          ? __ldg(reinterpret_cast<const float4*>(q.row[mt][r]) + chunk)
                          : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
      }
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int key = half * 32 + nt * 8 + 2 * (lane & 3) + c;
          const float4 kv = *reinterpret_cast<const float4*>(
              stage + key * S::kRowBytes + (SwizzledChunk(key, chunk) << 4));
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
              float& a = acc[mt][nt][2 * r + c];
              a = fmaf(qv[mt][r].x, kv.x, a);
              a = fmaf(qv[mt][r].y, kv.y, a);
              a = fmaf(qv[mt][r].z, kv.z, a);
              a = fmaf(qv[mt][r].w, kv.w, a);
            }
          }
        }
      }
    }
  } else {
#pragma unroll
    for (int ks = 0; ks < kHeadDim / 16; ++ks) {
      uint32_t b[4][2];
#pragma unroll
      for (int pair = 0; pair < 2; ++pair) {
        // Register + immediate: no address arithmetic per ldmatrix.
        const uint32_t address = ldmatrix_base[ks & 3] + stage_offset + (ks >> 2) * 128 +
                                 (half * 32 + pair * 16) * S::kRowBytes;
        LdMatrixX4(address, b[2 * pair][0], b[2 * pair][1], b[2 * pair + 1][0],
                   b[2 * pair + 1][1]);
      }
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) Mma<T>(acc[mt][nt], q.frag[mt][ks], b[nt][0], b[nt][1]);
      }
    }
  }
}

// Passes 1 (kScores = false: per-row softmax statistics of the chunk) and 3
// (kScores = true: the chunk's unpooled partial scores). They share the key
// pipeline and the logits.
template <typename T, int kHeadDim, bool kScores>
__global__ void __launch_bounds__(Shape<T, kHeadDim>::kThreads, Shape<T, kHeadDim>::kMinBlocks)
    WindowPassKernel(WindowScoresArgs args, WindowScoresPlan plan) {
  using S = Shape<T, kHeadDim>;
  constexpr int kMT = S::kMTilesPerWarp;
  extern __shared__ __align__(16) unsigned char smem[];
  BlockTask task;
  if (!MakeTask(args, plan, &task)) return;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const PagedKV& cache = args.cache;
  const int32_t* pages = args.page_ids + args.indptr[task.stream];
  int32_t* positions = reinterpret_cast<int32_t*>(smem + S::kPositionsOffset);
  float* column_sums = reinterpret_cast<float*>(smem + S::kColumnSumsOffset);

  // Each thread copies the same key of every tile, kThreadsPerKey neighbours
  // interleaving its 16-byte chunks, so a warp reads whole 32-byte sectors.
  // Tiles are loaded in order, so the key's (page, offset) advances by a
  // precomputed 64 / page_size, 64 % page_size: no division per tile.
  const int my_key = threadIdx.x / S::kThreadsPerKey;
  const int my_chunk = threadIdx.x % S::kThreadsPerKey;
  const int32_t page_step = kTile / cache.page_size;
  const int32_t offset_step = kTile - page_step * cache.page_size;
  // The page id is read one tile ahead, so that no cp.async waits for it.
  int32_t next_key = task.begin + my_key;
  int32_t next_page_index = next_key / cache.page_size;
  int32_t next_offset = next_key - next_page_index * cache.page_size;
  int32_t next_page = next_key < task.end ? pages[next_page_index] : 0;
  auto load_tile = [&](int stage) {
    const int32_t i = next_key;
    const bool valid = i < task.end;
    const int64_t page = next_page;
    const int32_t offset = next_offset;
    const int64_t slot = page * cache.page_size + offset;
    next_key += kTile;
    next_page_index += page_step;
    next_offset += offset_step;
    if (next_offset >= cache.page_size) {
      next_offset -= cache.page_size;
      ++next_page_index;
    }
    next_page = next_key < task.end ? pages[next_page_index] : 0;
    const unsigned char* src =
        static_cast<const unsigned char*>(cache.data) +
        (page * cache.page_elements() + static_cast<int64_t>(offset) * kHeadDim) * sizeof(T);
    unsigned char* dst = smem + stage * S::kStageBytes + my_key * S::kRowBytes;
#pragma unroll
    for (int chunk = my_chunk; chunk < S::kRowChunks; chunk += S::kThreadsPerKey) {
      CpAsync16(SmemAddress(dst + (SwizzledChunk(my_key, chunk) << 4)), src + chunk * 16, valid);
    }
    if (my_chunk == 0) {
      int32_t* position = positions + stage * kTile + my_key;
      if (valid) {
        CpAsync4(SmemAddress(position), cache.positions + slot);
      } else {
        *position = INT_MAX;
      }
    }
  };

  const int first_mt = warp * kMT;
  const bool warp_active = first_mt * 16 < task.rows;
  Queries<T, kHeadDim, kMT> q;
  int32_t query_position[kMT][2];
  float row_shift[kMT][2];  // pass 3: M' of the row
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = (first_mt + mt) * 16 + (lane >> 2) + r * 8;
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
  if (warp_active) LoadQueries<T, kHeadDim, kMT>(args, plan, task, first_mt, lane, &q);
  const int32_t window_start = WindowStart(args, task.seq, lane);
  const float scale = args.sm_scale * kLog2e;  // logits in log2 units

  // Pass 1, this thread's columns only: row_sum = sum of exp2(logit - row_max),
  // where row_max is a reference, not necessarily the maximum: it is raised
  // only when a logit would overflow the sum, so most keys cost no max.
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
  // belong to one head, or the group mean adds every head anyway.
  const bool merge_tiles = kMT == 2 && (args.reduce == policy::GroupReduce::kMean ||
                                        plan.padded_window % 32 == 0);

  // Pass 3: one thread per key of tile t reduces the group's heads (their
  // m-tiles summed) out of the column sums the warps wrote. It runs after the
  // next tile's barrier (or a last one), so each tile costs one barrier; the
  // column sums alternate between two buffers. The partial's sign bit says
  // whether the key is at or after the window start (-0 included), so that
  // the pooling pass needs neither positions nor block tables.
  auto finalize = [&](int t, int32_t position) {
    const int key = task.begin + t * kTile + threadIdx.x;
    if (threadIdx.x >= kTile || key >= task.end) return;
    const float* sums = column_sums + (t & 1) * kMTiles * kTile + threadIdx.x;
    const int tiles_per_head = plan.padded_window / 16;
    float reduced = 0.0f;  // sums are >= 0, so 0 also starts the max
    for (int head = 0; head < task.heads; ++head) {
      float head_sum = 0.0f;
      for (int m = 0; m < tiles_per_head; ++m) head_sum += sums[(head * tiles_per_head + m) * kTile];
      reduced = args.reduce == policy::GroupReduce::kMax ? fmaxf(reduced, head_sum) : reduced + head_sum;
    }
    float* partial = reinterpret_cast<float*>(static_cast<unsigned char*>(args.workspace) +
                                              plan.partial_offset);
    partial[static_cast<int64_t>(task.row_group) * args.num_scores +
            args.score_offsets[task.stream] + key] = position < window_start ? reduced : -reduced;
  };
  // The position of the key this thread finalizes, read while its stage is
  // still resident (finalize runs after the stage may be refilled).
  int32_t pending_position = 0;

  uint32_t lane_ldmatrix_base[4];
  LdMatrixBases<S::kRowBytes>(SmemAddress(smem), lane, lane_ldmatrix_base);

  const int num_tiles = (task.end - task.begin + kTile - 1) / kTile;
#pragma unroll
  for (int stage = 0; stage < S::kStages - 1; ++stage) {
    if (stage < num_tiles) load_tile(stage);
    CpAsyncCommit();
  }
  for (int tile = 0; tile < num_tiles; ++tile) {
    CpAsyncWait<S::kStages - 2>();
    __syncthreads();
    if constexpr (kScores) {
      if (tile > 0) finalize(tile - 1, pending_position);
    }
    if (tile + S::kStages - 1 < num_tiles) {
      load_tile((tile + S::kStages - 1) % S::kStages);
    }
    CpAsyncCommit();
    const int stage = tile % S::kStages;
    const unsigned char* keys = smem + stage * S::kStageBytes;
    const int32_t* key_position = positions + stage * kTile;
    const int valid_keys = min(kTile, task.end - (task.begin + tile * kTile));
    if constexpr (kScores) {
      if (threadIdx.x < kTile) pending_position = key_position[threadIdx.x];
    }
    // A tile every row sees whole (all of the prefix but its end) skips the mask.
    const bool masked =
        valid_keys < kTile || __any_sync(0xffffffffu, key_position[lane] > window_start ||
                                                           key_position[lane + 32] > window_start);

#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float acc[kMT][4][4];
      if (warp_active) {
        Logits<T, kHeadDim, kMT>(q, keys, lane_ldmatrix_base, stage * S::kStageBytes, half, lane,
                                 acc);
        if (masked) {
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
                  if (!key_valid || position > query_position[mt][r]) acc[mt][nt][2 * r + c] = -kInf;
                }
              }
            }
          }
        }
      }
      if constexpr (!kScores) {
        if (warp_active) {
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
              // exp2 relative to the row's reference; the guard catches the
              // first keys the row sees (reference -inf: NaN) and a logit more
              // than 2^100 above the reference (a huge or infinite sum).
              float e[8];
#pragma unroll
              for (int j = 0; j < 8; ++j) {
                e[j] = Exp2(fmaf(acc[mt][j >> 1][2 * r + (j & 1)], scale, -row_max[mt][r]));
              }
              const float sum = ((e[0] + e[1]) + (e[2] + e[3])) + ((e[4] + e[5]) + (e[6] + e[7]));
              if (sum <= 0x1p100f) {
                row_sum[mt][r] += sum;
              } else {
                RaiseReference(acc[mt], r, scale, &row_max[mt][r], &row_sum[mt][r]);
              }
            }
          }
        }
      } else {
        if (warp_active) {
          // v[mt][nt * 2 + c]: column (nt, c) summed over this thread's two rows.
          float v[kMT][8];
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
              for (int c = 0; c < 2; ++c) {
                v[mt][nt * 2 + c] = Exp2(fmaf(acc[mt][nt][c], scale, -row_shift[mt][0])) +
                                    Exp2(fmaf(acc[mt][nt][2 + c], scale, -row_shift[mt][1]));
              }
            }
          }
          // The lane now holds column k = (lane >> 2) & 7 of the half: nt = k / 2, c = k % 2.
          const int k = (lane >> 2) & 7;
          const int col = half * 32 + (k >> 1) * 8 + 2 * (lane & 3) + (k & 1);
          float* sums = column_sums + (tile & 1) * kMTiles * kTile + col;
          if (merge_tiles) {
#pragma unroll
            for (int j = 0; j < 8; ++j) v[0][j] += v[kMT - 1][j];
            sums[first_mt * kTile] = ReduceScatter8(v[0], lane);
            sums[(first_mt + kMT - 1) * kTile] = 0.0f;
          } else {
#pragma unroll
            for (int mt = 0; mt < kMT; ++mt) sums[(first_mt + mt) * kTile] = ReduceScatter8(v[mt], lane);
          }
        }
      }
    }
  }
  if constexpr (kScores) {
    if (num_tiles > 0) {
      __syncthreads();
      finalize(num_tiles - 1, pending_position);
    }
  }
  CpAsyncWait<0>();

  if constexpr (!kScores) {
    // The quad's four column sets merged; lane 4g writes rows g and g + 8.
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
          const float other_m = __shfl_xor_sync(0xffffffffu, m, offset);
          const float other_l = __shfl_xor_sync(0xffffffffu, l, offset);
          const float new_max = fmaxf(m, other_m);
          const float shift = new_max == -kInf ? 0.0f : new_max;
          l = l * Exp2(m - shift) + other_l * Exp2(other_m - shift);
          m = new_max;
        }
        if (warp_active && (lane & 3) == 0) {
          stats[first + (first_mt + mt) * 16 + (lane >> 2) + r * 8] = make_float2(m, l);
        }
      }
    }
  }
}

// Pass 2: block (stream, row group), thread = row.
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
      l = l * Exp2(m - shift) + part.y * Exp2(part.x - shift);
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
  // The key's score, negative (or -0) for a key at or after the window start
  // and for a neighbour outside the stream: both are padding.
  auto score = [&](int32_t i) {
    if (i < 0 || i >= len) return -0.0f;
    const float first_partial = partial[base + i];
    float v = fabsf(first_partial);
    for (int y = 1; y < plan.row_groups; ++y) {
      const float other = fabsf(partial[static_cast<int64_t>(y) * args.num_scores + base + i]);
      v = mean ? v + other : fmaxf(v, other);
    }
    if (mean) v /= static_cast<float>(plan.group_size);
    return signbit(first_partial) ? -v : v;
  };
  const int32_t half = args.pooling == policy::Pooling::kNone ? 0 : args.kernel_size / 2;
  const int32_t j = first + threadIdx.x;
  float out;
  if (half <= kPoolMaxHalo) {
    for (int t = threadIdx.x; t < kPoolThreads + 2 * half; t += kPoolThreads) {
      tile[t] = score(first - half + t);
    }
    __syncthreads();
    if (j >= len) return;
    const float* around = tile + threadIdx.x;  // around[half] is key j
    out = around[half];
    if (!signbit(out) && half > 0) {
      float sum = 0.0f, best = -kInf;
      for (int i = 0; i <= 2 * half; ++i) {
        if (signbit(around[i])) continue;  // padding: adds 0, never the max
        sum += around[i];
        best = fmaxf(best, around[i]);
      }
      out = args.pooling == policy::Pooling::kAvg ? sum / static_cast<float>(args.kernel_size) : best;
    }
  } else {
    if (j >= len) return;
    out = score(j);
    if (!signbit(out)) {
      float sum = 0.0f, best = -kInf;
      for (int32_t i = max(0, j - half); i <= min(len - 1, j + half); ++i) {
        const float v = score(i);
        if (signbit(v)) continue;
        sum += v;
        best = fmaxf(best, v);
      }
      out = args.pooling == policy::Pooling::kAvg ? sum / static_cast<float>(args.kernel_size) : best;
    }
  }
  args.scores[base + j] = fabsf(out);
}

template <typename T, int kHeadDim, bool kScores>
LaunchResult LaunchPass(const WindowScoresArgs& args, const WindowScoresPlan& plan,
                        GpuStream stream) {
  using S = Shape<T, kHeadDim>;
  auto* kernel = WindowPassKernel<T, kHeadDim, kScores>;
  LaunchResult result = CudaErrorResult(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, S::kSmemBytes));
  if (!result.ok()) return result;
  const int64_t blocks =
      static_cast<int64_t>(plan.num_streams) * plan.num_splits * plan.row_groups;
  kernel<<<static_cast<unsigned>(blocks), S::kThreads, S::kSmemBytes, stream>>>(args, plan);
  return CheckLaunch();
}

}  // namespace

LaunchResult LaunchWindowScores(const WindowScoresArgs& args, GpuStream stream) {
  return DispatchDTypeAndHeadDim(args.cache.dtype, args.cache.head_dim, [&](auto dtype_tag,
                                                                           auto head_dim_tag) {
    using T = typename decltype(dtype_tag)::type;
    constexpr int kHeadDim = decltype(head_dim_tag)::value;
    const WindowScoresPlan plan = PlanWindowScores(args);
    if (plan.num_splits == 0) return LaunchResult{};
    LaunchResult result = LaunchPass<T, kHeadDim, false>(args, plan, stream);
    if (!result.ok()) return result;
    MergeStatsKernel<<<static_cast<unsigned>(plan.num_streams * plan.row_groups), kRowsPerBlock,
                       0, stream>>>(args, plan);
    result = CheckLaunch();
    if (!result.ok()) return result;
    result = LaunchPass<T, kHeadDim, true>(args, plan, stream);
    if (!result.ok()) return result;
    const int32_t blocks_per_stream =
        static_cast<int32_t>(CeilDiv(args.max_len, kPoolThreads));
    PoolKernel<<<static_cast<unsigned>(static_cast<int64_t>(plan.num_streams) * blocks_per_stream),
                 kPoolThreads, 0, stream>>>(args, plan, blocks_per_stream);
    return CheckLaunch();
  });
}

}  // namespace headpage::gpu::internal
