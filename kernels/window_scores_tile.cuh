// SPDX-License-Identifier: Apache-2.0
// File: kernels/window_scores_tile.cuh
//
// What a block of WindowScores' passes 1 and 3 (window_scores.cu) does with a
// tile of keys before the passes part ways: the block's shape and task, the
// cp.async copies of the keys (and their positions) into swizzled shared
// memory (fp8 keys dequantized to the model dtype on the way), the query rows
// in registers, and the tile's logits on the tensor cores (f16, bf16) or in
// FMAs (f32). CUDA and plain headers only.
#ifndef HEADPAGE_KERNELS_WINDOW_SCORES_TILE_CUH_
#define HEADPAGE_KERNELS_WINDOW_SCORES_TILE_CUH_

#include <climits>
#include <cstdint>
#include <type_traits>

#include "kernels/cuda_common.cuh"
#include "kernels/cuda_mma.cuh"
#include "kernels/window_scores_args.h"
#include "kernels/window_scores_internal.cuh"

namespace headpage::gpu::internal::window {

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

// Where 16-byte chunk `chunk` of key row `key` lives in a stage: the XOR
// swizzle of cuda_mma.cuh by a permutation of key % 8 (bits 0, 1 up one, bit
// 2 down to 0), so that the 8 rows an ldmatrix phase reads (8 keys, one chunk)
// and the 8 chunks a cp.async phase writes (4 keys x 2 chunks) each fall in 8
// different bank groups.
__device__ __forceinline__ int SwizzledChunk(int key, int chunk) {
  return SwizzleChunk(((key & 3) << 1) | ((key >> 2) & 1), chunk);
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
        for (int nt = 0; nt < 4; ++nt) {
          const uint32_t(&a)[4] = q.frag[mt][ks];
          MmaM16N8K16<T>(acc[mt][nt], a[0], a[1], a[2], a[3], b[nt][0], b[nt][1]);
        }
      }
    }
  }
}

// The block's cp.async copies of key tiles and their positions. Each
// thread copies the same key of every tile, kThreadsPerKey neighbours
// interleaving its 16-byte chunks, so a warp reads whole 32-byte sectors.
// Tiles are loaded in order, so the key's (page, offset) advances by a
// precomputed 64 / page_size, 64 % page_size: no division per tile. The page
// id is read one tile ahead, so that no cp.async waits for it.
template <typename T, int kHeadDim>
struct KeyTileCopies {
  using S = Shape<T, kHeadDim>;
  const PagedKV& cache;
  const int32_t* pages;  // the stream's block-table row
  unsigned char* smem;
  int32_t* positions;
  int32_t end;
  int my_key, my_chunk;
  int32_t page_step, offset_step;
  int32_t next_key, next_page_index, next_offset, next_page;

  __device__ KeyTileCopies(const WindowScoresArgs& args, const BlockTask& task,
                           unsigned char* block_smem)
      : cache(args.cache), smem(block_smem) {
    pages = args.page_ids + args.indptr[task.stream];
    positions = reinterpret_cast<int32_t*>(smem + S::kPositionsOffset);
    end = task.end;
    my_key = threadIdx.x / S::kThreadsPerKey;
    my_chunk = threadIdx.x % S::kThreadsPerKey;
    page_step = kTile / cache.page_size;
    offset_step = kTile - page_step * cache.page_size;
    next_key = task.begin + my_key;
    next_page_index = next_key / cache.page_size;
    next_offset = next_key - next_page_index * cache.page_size;
    next_page = next_key < end ? pages[next_page_index] : 0;
  }

  // The key's row as stored, by cp.async.
  __device__ __forceinline__ void IssueKey(unsigned char* dst, int64_t page, int32_t offset,
                                           bool valid) const {
    const unsigned char* src =
        static_cast<const unsigned char*>(cache.data) +
        (page * cache.page_elements() + static_cast<int64_t>(offset) * kHeadDim) * sizeof(T);
#pragma unroll
    for (int chunk = my_chunk; chunk < S::kRowChunks; chunk += S::kThreadsPerKey) {
      CpAsync16(SmemAddress(dst + (SwizzledChunk(my_key, chunk) << 4)), src + chunk * 16, valid);
    }
  }

  // fp8 pages: the key's row read now, dequantized and rounded to T, and
  // stored where IssueKey's copies would land, so the tile's math is the
  // 16-bit one (ref::WindowScores reads fp8 keys the same way). The stage is
  // free (the pipeline's order), and the barrier before its use publishes it.
  __device__ __forceinline__ void IssueFp8Key(unsigned char* dst, int64_t page, int32_t offset,
                                              int64_t slot, bool valid) const {
    const unsigned char* src = static_cast<const unsigned char*>(cache.data) +
                               page * cache.page_elements() +
                               static_cast<int64_t>(offset) * kHeadDim;
    const float scale = valid ? __ldg(cache.scales + 2 * slot) : 0.0f;
#pragma unroll
    for (int chunk = my_chunk; chunk < S::kRowChunks; chunk += S::kThreadsPerKey) {
      // 16 bytes of T are 8 elements: 8 fp8 bytes of the row.
      const uint2 raw = valid ? __ldg(reinterpret_cast<const uint2*>(src + chunk * 8))
                              : make_uint2(0u, 0u);
      const uint32_t words[2] = {raw.x, raw.y};
      T out[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const uint8_t bits = static_cast<uint8_t>(words[e / 4] >> (8 * (e % 4)));
        out[e] = DequantizeFp8As<T>(bits, scale);
      }
      *reinterpret_cast<uint4*>(dst + (SwizzledChunk(my_key, chunk) << 4)) =
          *reinterpret_cast<const uint4*>(out);
    }
  }

  __device__ __forceinline__ void Issue(int stage) {
    const int32_t i = next_key;
    const bool valid = i < end;
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
    next_page = next_key < end ? pages[next_page_index] : 0;
    unsigned char* dst = smem + stage * S::kStageBytes + my_key * S::kRowBytes;
    if constexpr (!std::is_same_v<T, float>) {
      if (cache.fp8()) {
        IssueFp8Key(dst, page, offset, slot, valid);
      } else {
        IssueKey(dst, page, offset, valid);
      }
    } else {
      IssueKey(dst, page, offset, valid);
    }
    if (my_chunk == 0) {
      int32_t* position = positions + stage * kTile + my_key;
      if (valid) {
        CpAsync4(SmemAddress(position), cache.positions + slot);
      } else {
        *position = INT_MAX;
      }
    }
  }
};

}  // namespace headpage::gpu::internal::window

#endif  // HEADPAGE_KERNELS_WINDOW_SCORES_TILE_CUH_
