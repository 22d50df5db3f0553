// SPDX-License-Identifier: Apache-2.0
// File: kernels/window_scores_tile.cuh
//
// What a block of WindowScores' passes 1 and 3 (window_scores_pass.cuh) does with a
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
#include "kernels/cuda_wgmma.cuh"
#include "kernels/window_scores_args.h"
#include "kernels/window_scores_internal.cuh"

namespace headpage::gpu::internal::window {

// The block's shape per storage type and head_dim. The 128 rows are two
// m64 tiles, each of a warpgroup's four warps (rows 16w..16w+15 of the tile
// for its warp w): the warpgroup MMA's shape, which the warp MMA path keeps
// so that both share everything but the logits. At d <= 128 one warpgroup
// takes both m64 tiles, so that each key fragment feeds two products; at
// d = 256 their query fragments would not fit in registers, so two
// warpgroups take one each.
template <typename T, int kHeadDim>
struct Shape {
  static constexpr int kMTilesPerWarp = kHeadDim == 256 ? 1 : 2;  // = m64 tiles per warpgroup
  static constexpr int kWarps = kMTiles / kMTilesPerWarp;
  static constexpr int kThreads = kWarps * 32;
  // Blocks per SM the registers are bounded for. The warp MMA path measured
  // ~1% faster at four blocks of 128 threads (128 registers, some spilled)
  // than at three; the warpgroup MMA's two m64 x 64 accumulators and query
  // fragments need about 160 registers: three blocks (168).
  static constexpr int kMinBlocks = kThreads == 128 ? 4 : 2;
  static constexpr int kMinBlocksWarpgroup = kThreads == 128 ? 3 : 2;
  static constexpr int kRowBytes = kHeadDim * static_cast<int>(sizeof(T));
  static constexpr int kRowChunks = kRowBytes / 16;
  // A stage holds kRowBytes / 128 regions of kTile rows of 128 bytes
  // (cuda_wgmma.cuh's layout), 1024-byte aligned.
  static constexpr int kRegionBytes = kTile * kWgmmaRowBytes;
  static constexpr int kStageBytes = kTile * kRowBytes;
  static constexpr int kStages = kStageBytes <= 16384 ? 3 : 2;
  static constexpr int kThreadsPerKey = kThreads / kTile;
  // KeyTileCopies' whole rows: a warp's consecutive keys of a tile, and the
  // 16-byte copies a thread issues for them.
  static constexpr int kWarpKeys = kTile / kWarps;
  static constexpr int kWarpRowCopies = kWarpKeys * kRowChunks / 32;
  // K stages, their positions, then two buffers of the warps' column sums
  // (pass 3). The warpgroup MMA's descriptors need the stages 1024-byte
  // aligned: its blocks ask for up to 1 KiB more and start there.
  static constexpr int kPositionsOffset = kStages * kStageBytes;
  static constexpr int kColumnSumsOffset = kPositionsOffset + kStages * kTile * 4;
  static constexpr int kSmemBytes = kColumnSumsOffset + 2 * kMTiles * kTile * 4;
  static constexpr int kSmemBytesWarpgroup = kSmemBytes + kWgmmaAtomBytes;
  static_assert(kRowChunks % 8 == 0, "a stage is made of whole 128-byte regions");
  static_assert(kThreads % kTile == 0 && kRowChunks % kThreadsPerKey == 0, "whole keys per pass");
  static_assert(kThreadsPerKey == 2 || kThreadsPerKey == 4, "CopyKey pairs 2 or 4 threads a key");
  static_assert(kWarpRowCopies * 32 == kWarpKeys * kRowChunks,
                "a warp's rows split into whole rounds of 16-byte copies");
  static_assert(kTile % kWarps == 0 && kWarpKeys % 8 == 0,
                "a warp's first key is a multiple of 8: its swizzle is its rows' own");
  static_assert(kStageBytes % kWgmmaAtomBytes == 0, "stages stay 1024-byte aligned");
};

// The m16 tile (rows 16i..16i+15 of the block's 128) of warp `warp`'s
// m-tile mt: warp w % 4 of warpgroup w / 4, whose m64 tiles are consecutive.
template <int kMTilesPerWarp>
__device__ __forceinline__ int RowTile(int warp, int mt) {
  return 4 * ((warp >> 2) * kMTilesPerWarp + mt) + (warp & 3);
}

// Where 16-byte chunk `chunk` of key row `key` lives in a stage: region
// chunk / 8, row `key` of it, chunk % 8 swizzled by key % 8. The 8 rows an
// ldmatrix phase reads (8 keys, one chunk) fall in 8 different bank groups.
__device__ __forceinline__ int ChunkOffset(int key, int chunk) {
  return (chunk >> 3) * (kTile * kWgmmaRowBytes) + key * kWgmmaRowBytes +
         (SwizzleChunk(key, chunk & 7) << 4);
}

// The key a copying thread takes within each tile: kThreadsPerKey neighbours
// share a key, each taking every kThreadsPerKey-th chunk. The keys of one
// 8-thread store phase differ so that their chunks land in 8 bank groups:
// {0, 2, 4, 6} then {1, 3, 5, 7} for pairs (chunks 2j, 2j + 1: c ^ k and
// its neighbour), {0, 4}, {1, 5}, ... for quads (chunks 4j..4j + 3).
template <int kThreadsPerKey>
__device__ __forceinline__ int CopyKey(int thread) {
  const int q = thread / kThreadsPerKey;
  if constexpr (kThreadsPerKey == 2) {
    return (q & ~7) | ((q & 3) << 1) | ((q >> 2) & 1);
  } else {
    return (q & ~7) | ((q & 1) << 2) | ((q >> 1) & 3);
  }
}

// What a block works on: a chunk of one stream's keys against one row group.
struct BlockTask {
  int32_t stream, seq, kv_head, row_group, split;
  int32_t begin, end;         // keys [begin, end) of the stream
  int32_t heads, rows;        // q heads and rows (heads * padded window) of the row group
};

// `reversed`: the last block takes the first task. Pass 3 runs its tasks in
// the reverse of pass 1's order, so that its first blocks read the keys pass 1
// read last, which L2 still holds.
__device__ __forceinline__ bool MakeTask(const WindowScoresArgs& args,
                                         const WindowScoresPlan& plan, bool reversed,
                                         BlockTask* task) {
  // Row groups vary fastest, so the blocks that read the same keys run together
  // and all but the first find them in L2.
  int64_t b = reversed ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
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
                                            int warp, int lane, Queries<T, kHeadDim, kMT>* q) {
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int half_rows = 0; half_rows < 2; ++half_rows) {
      bool valid;
      const int row = RowTile<kMT>(warp, mt) * 16 + (lane >> 2) + half_rows * 8;
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
// k-step ks and key block kb add (ks / 4) * kRegionBytes + kb * 16 * 128.
// Lanes 0-7 address keys 0-7 at a k-step's low 8 columns, 8-15 the same keys'
// high 8, 16-31 keys 8-15 likewise: the B fragments of two n-tiles. Chunk
// 2 ks + hi of a region's row sits at (2 ks + hi) ^ F, F = key % 8 = lane % 8,
// which is 2 (ks ^ F / 2) + (hi ^ F % 2), where ks ^ F / 2 flips only the low
// two bits of ks.
__device__ __forceinline__ void LdMatrixBases(uint32_t stage_address, int lane,
                                              uint32_t (&bases)[4]) {
  const int key = (lane & 7) + ((lane >> 4) << 3);
  const int hi = (lane >> 3) & 1;
  const int f = lane & 7;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    bases[k] = stage_address + key * kWgmmaRowBytes + 32 * (k ^ (f >> 1)) + 16 * (hi ^ (f & 1));
  }
}

// The logits of the warp's rows for the 32 keys of half `half` of the stage:
// acc[mt][4 * half + nt][c] = q . k in the mma accumulator layout (c = 0, 1
// row g, c = 2, 3 row g + 8 of m-tile mt; columns nt * 8 + 2t + (c & 1) of
// the half), by warp MMAs (f16, bf16) or FMAs (f32). The m-tiles not in
// `active` are left at zero.
template <typename T, int kHeadDim, int kMT>
__device__ __forceinline__ void Logits(const Queries<T, kHeadDim, kMT>& q,
                                       const unsigned char* stage,
                                       const uint32_t (&ldmatrix_base)[4], uint32_t stage_offset,
                                       int half, int lane, const bool (&active)[kMT],
                                       float (&acc)[kMT][8][4]) {
  using S = Shape<T, kHeadDim>;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[mt][4 * half + nt][c] = 0.0f;
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
          const float4 kv = *reinterpret_cast<const float4*>(stage + ChunkOffset(key, chunk));
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
              float& a = acc[mt][4 * half + nt][2 * r + c];
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
        const uint32_t address = ldmatrix_base[ks & 3] + stage_offset +
                                 (ks >> 2) * S::kRegionBytes +
                                 (half * 32 + pair * 16) * kWgmmaRowBytes;
        LdMatrixX4(address, b[2 * pair][0], b[2 * pair][1], b[2 * pair + 1][0],
                   b[2 * pair + 1][1]);
      }
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        if (!active[mt]) continue;
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          const uint32_t(&a)[4] = q.frag[mt][ks];
          MmaM16N8K16<T>(acc[mt][4 * half + nt], a[0], a[1], a[2], a[3], b[nt][0], b[nt][1]);
        }
      }
    }
  }
}

// The logits of the warpgroup's m64 tiles for all 64 keys of the stage at
// shared address `stage`, by warpgroup MMAs (f16, bf16 on sm_90a): acc as
// Logits() leaves it for both halves. `second_active` (the same in every
// thread, and computed from the block's task only) skips a second tile of
// padding rows. A branch that depends on the thread would make ptxas
// serialize the MMAs.
template <typename T, int kHeadDim, int kMT>
__device__ __forceinline__ void LogitsWarpgroup(const Queries<T, kHeadDim, kMT>& q,
                                                uint32_t stage, bool second_active,
                                                float (&acc)[kMT][8][4]) {
  using S = Shape<T, kHeadDim>;
  WgmmaFence();
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    if (mt > 0 && !second_active) break;
    float(&d)[32] = reinterpret_cast<float(&)[32]>(acc[mt]);
#pragma unroll
    for (int ks = 0; ks < kHeadDim / 16; ++ks) {
      const uint64_t desc =
          WgmmaDescriptorSw128(stage + (ks >> 2) * S::kRegionBytes + (ks & 3) * 32);
      WgmmaM64N64K16<T>(d, q.frag[mt][ks], desc, ks > 0);
    }
  }
  WgmmaCommit();
  WgmmaWait<0>();
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int c = 0; c < 4; ++c) WgmmaFenceOperand(acc[mt][j][c]);
    }
  }
}

// The block's cp.async copies of key tiles and their positions, in one of
// two orders. Tiles are loaded in order, so a key's (page, offset) advances
// by a precomputed 64 / page_size, 64 % page_size: no division per tile. The
// page id is read one tile ahead, so that no cp.async waits for it.
// - Whole rows (the page size a multiple of kWarpKeys, as 16-token pages
//   are): tiles start on multiples of 64 keys, so a warp's kWarpKeys
//   consecutive keys of a tile lie in one page, one after another (pages of
//   48: the warp starts 0, 16 or 32 keys in), and the warp copies them in
//   memory order: each cp.async instruction moves 512 contiguous bytes,
//   whole 128-byte lines asked of L2 at once (fp8 pages: 256 bytes a load).
// - Otherwise each thread copies the same key of every tile (CopyKey),
//   kThreadsPerKey neighbours interleaving its 16-byte chunks, so that a
//   warp reads whole 32-byte sectors: an instruction touches a few chunks of
//   each of 8 or 16 rows, and L2 is asked for 256 bytes of each row at once
//   (3% on the H100).
// Either way a chunk lands where ChunkOffset puts it.
template <typename T, int kHeadDim>
struct KeyTileCopies {
  using S = Shape<T, kHeadDim>;
  const PagedKV& cache;
  const int32_t* pages;  // the stream's block-table row
  unsigned char* smem;   // the stages (1024-byte aligned)
  int32_t* positions;
  int32_t end;
  // Whole rows: the warp's first key of a tile and the thread's lane; else
  // the thread's key and its first chunk.
  int my_key, my_chunk;
  int32_t page_step, offset_step;
  int32_t next_key, next_page_index, next_offset, next_page;

  __device__ KeyTileCopies(const WindowScoresArgs& args, const BlockTask& task,
                           unsigned char* block_smem)
      : cache(args.cache), smem(block_smem) {
    pages = args.page_ids + args.indptr[task.stream];
    positions = reinterpret_cast<int32_t*>(smem + S::kPositionsOffset);
    end = task.end;
    if (WholeRows()) {
      my_key = static_cast<int>(threadIdx.x / 32) * S::kWarpKeys;
      my_chunk = threadIdx.x % 32;
    } else {
      my_key = CopyKey<S::kThreadsPerKey>(threadIdx.x);
      my_chunk = threadIdx.x % S::kThreadsPerKey;
    }
    page_step = kTile / cache.page_size;
    offset_step = kTile - page_step * cache.page_size;
    next_key = task.begin + my_key;
    next_page_index = next_key / cache.page_size;
    next_offset = next_key - next_page_index * cache.page_size;
    next_page = next_key < end ? pages[next_page_index] : 0;
  }

  // Whole rows or not: the same for the whole launch, and read from the
  // parameters each time rather than held in a register (the warpgroup MMA's
  // passes spilled more with it).
  __device__ __forceinline__ bool WholeRows() const { return cache.page_size % S::kWarpKeys == 0; }

  // The key's row as stored, by cp.async.
  __device__ __forceinline__ void IssueKey(unsigned char* dst, int64_t page, int32_t offset,
                                           bool valid) const {
    const unsigned char* src =
        static_cast<const unsigned char*>(cache.data) +
        (page * cache.page_elements() + static_cast<int64_t>(offset) * kHeadDim) * sizeof(T);
#pragma unroll
    for (int chunk = my_chunk; chunk < S::kRowChunks; chunk += S::kThreadsPerKey) {
      CpAsync16Prefetch256(SmemAddress(dst + ChunkOffset(my_key, chunk)), src + chunk * 16,
                           valid);
    }
  }

  // Whole rows: the warp's keys first.. (first the key at `offset` of
  // `page`) as stored, by cp.async; copy i of the thread is chunk
  // (32 i + lane) of the warp's rows laid end to end. Keys past the end read
  // nothing (zero-filled, their addresses still inside the page).
  __device__ __forceinline__ void IssueWarpRows(unsigned char* dst, int64_t page, int32_t offset,
                                                int32_t first) const {
    const unsigned char* src =
        static_cast<const unsigned char*>(cache.data) +
        (page * cache.page_elements() + static_cast<int64_t>(offset) * kHeadDim) * sizeof(T);
    // my_key is a multiple of 8, so the swizzle of key my_key + k is k's.
    unsigned char* const warp_dst = dst + my_key * kWgmmaRowBytes;
#pragma unroll 2
    for (int i = 0; i < S::kWarpRowCopies; ++i) {
      const int copy = 32 * i + my_chunk;
      const int key = copy / S::kRowChunks, chunk = copy % S::kRowChunks;
      CpAsync16Prefetch256(SmemAddress(warp_dst + ChunkOffset(key, chunk)), src + copy * 16,
                           first + key < end);
    }
  }

  // fp8 pages: 16 bytes of T are 8 elements, 8 fp8 bytes of the row at
  // `src`, dequantized with `scale` and rounded to T.
  __device__ __forceinline__ static uint4 DequantizeChunk(const unsigned char* src, float scale,
                                                          bool valid) {
    const uint2 raw = valid ? __ldg(reinterpret_cast<const uint2*>(src)) : make_uint2(0u, 0u);
    const uint32_t words[2] = {raw.x, raw.y};
    T out[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const uint8_t bits = static_cast<uint8_t>(words[e / 4] >> (8 * (e % 4)));
      out[e] = DequantizeFp8As<T>(bits, scale);
    }
    return *reinterpret_cast<const uint4*>(out);
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
      *reinterpret_cast<uint4*>(dst + ChunkOffset(my_key, chunk)) =
          DequantizeChunk(src + chunk * 8, scale, valid);
    }
  }

  // IssueFp8Key over whole rows, in IssueWarpRows' order.
  __device__ __forceinline__ void IssueFp8WarpRows(unsigned char* dst, int64_t page, int32_t offset,
                                                   int32_t first) const {
    const unsigned char* src = static_cast<const unsigned char*>(cache.data) +
                               page * cache.page_elements() +
                               static_cast<int64_t>(offset) * kHeadDim;
    const int64_t slot = page * cache.page_size + offset;
#pragma unroll 2
    for (int i = 0; i < S::kWarpRowCopies; ++i) {
      const int copy = 32 * i + my_chunk;
      const int key = copy / S::kRowChunks, chunk = copy % S::kRowChunks;
      const bool valid = first + key < end;
      const float scale = valid ? __ldg(cache.scales + 2 * (slot + key)) : 0.0f;
      *reinterpret_cast<uint4*>(dst + ChunkOffset(my_key + key, chunk)) =
          DequantizeChunk(src + copy * 8, scale, valid);
    }
  }

  // A tile's key rows from `page` at `offset` (the tile's first key `first`,
  // at `slot`) into the stage at `dst`, as whole rows or as the thread's
  // chunks of its key; the page kind picks the copy.
  template <bool kWholeRows>
  __device__ __forceinline__ void IssueRows(unsigned char* dst, int64_t page, int32_t offset,
                                            int64_t slot, int32_t first, bool valid) const {
    // fp8 keys are dequantized into 16-bit tiles: the f32 pass has no fp8 pages.
    if constexpr (!std::is_same_v<T, float>) {
      if (cache.fp8()) {
        if constexpr (kWholeRows) {
          IssueFp8WarpRows(dst, page, offset, first);
        } else {
          IssueFp8Key(dst, page, offset, slot, valid);
        }
        return;
      }
    }
    if constexpr (kWholeRows) {
      IssueWarpRows(dst, page, offset, first);
    } else {
      IssueKey(dst, page, offset, valid);
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
    unsigned char* dst = smem + stage * S::kStageBytes;
    int32_t* const stage_positions = positions + stage * kTile;
    if (WholeRows()) {
      IssueRows<true>(dst, page, offset, slot, i, valid);
      if (my_chunk < S::kWarpKeys) {  // a lane a key: the warp's positions, contiguous
        int32_t* position = stage_positions + my_key + my_chunk;
        if (i + my_chunk < end) {
          CpAsync4(SmemAddress(position), cache.positions + slot + my_chunk);
        } else {
          *position = INT_MAX;
        }
      }
      return;
    }
    IssueRows<false>(dst, page, offset, slot, i, valid);
    if (my_chunk == 0) {
      int32_t* position = stage_positions + my_key;
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
