// SPDX-License-Identifier: Apache-2.0
// File: kernels/compact.cu
//
// Compact on the GPU. A token's K and V rows are moved by 2 * kRowVectors
// threads, one 16-byte vector each (a 128-dim bf16 token: 32 threads, one warp),
// so a 256-thread block moves several tokens per step.
//
// Fresh rows have no hazards (destination pages are disjoint from every source),
// so their survivors are spread over gridDim.y blocks per row. An in-place row
// is handled by the row's first block alone, in ascending chunks: each chunk is
// read into registers, the block synchronizes, then writes it. Survivor i reads
// slot keep[i] >= i, so the slots a chunk writes are read only by itself (done
// before the barrier) or by earlier chunks (done before it started); later
// chunks read slots no earlier chunk writes.
#include "kernels/compact_args.h"
#include "kernels/cuda_common.cuh"

namespace headpage::gpu::internal {
namespace {

constexpr int kThreads = 256;
// Survivors a thread holds in registers at once: more bytes in flight per
// round (and, in place, per round of the sequential loop).
constexpr int kUnroll = 8;

// Where one survivor goes: pages and offsets in 32-bit arithmetic (one
// division each), since every thread of a token computes them.
struct TokenMove {
  int32_t from_page = -1;  // < 0: nothing to move (past the keep set, or stays put)
  int32_t from_offset = 0;
  int32_t to_page = 0;
  int32_t to_offset = 0;

  __device__ __forceinline__ bool moves() const { return from_page >= 0; }
  __device__ __forceinline__ int64_t from_slot(int32_t page_size) const {
    return static_cast<int64_t>(from_page) * page_size + from_offset;
  }
  __device__ __forceinline__ int64_t to_slot(int32_t page_size) const {
    return static_cast<int64_t>(to_page) * page_size + to_offset;
  }
};

// Survivor i of row r, if i < end (end <= the row's kept count).
__device__ __forceinline__ TokenMove MoveOf(const CompactArgs& a, int32_t r, int32_t i,
                                           int32_t end) {
  if (i >= end) return {};
  const int32_t keep_begin = a.keep_offsets != nullptr ? a.keep_offsets[r] : a.keep_indptr[r];
  const int32_t page_size = a.cache.page_size;
  const int32_t k = a.keep[keep_begin + i];
  const int32_t from_index = k / page_size, to_index = i / page_size;
  TokenMove move;
  move.from_page = a.src_page_ids[a.src_indptr[r] + from_index];
  move.from_offset = k - from_index * page_size;
  move.to_page = a.dst_page_ids[a.dst_indptr[r] + to_index];
  move.to_offset = i - to_index * page_size;
  if (move.from_page == move.to_page && move.from_offset == move.to_offset) move.from_page = -1;
  return move;
}

// The thread's vector of a token: K for lane < kRowVectors, else V.
template <int kRowVectors>
__device__ __forceinline__ Vector* VectorAt(const PagedKV& cache, int32_t page, int32_t offset,
                                            int lane) {
  const int64_t page_vectors = 2LL * cache.page_size * kRowVectors;
  const int32_t within = lane < kRowVectors ? offset * kRowVectors + lane
                                            : (cache.page_size + offset) * kRowVectors +
                                                  (lane - kRowVectors);
  return static_cast<Vector*>(cache.data) + page * page_vectors + within;
}

template <int kRowVectors>
__global__ void __launch_bounds__(kThreads) CompactKernel(CompactArgs a) {
  constexpr int kThreadsPerToken = 2 * kRowVectors;
  constexpr int kTokensPerStep = kThreads / kThreadsPerToken;
  const int32_t r = blockIdx.x;  // rows on x: up to 2^31 - 1 of them
  const int lane = threadIdx.x % kThreadsPerToken;
  const int token_in_step = threadIdx.x / kThreadsPerToken;
  const int32_t kept = a.keep_indptr[r + 1] - a.keep_indptr[r];
  const int32_t ps = a.cache.page_size;

  if (!a.in_place[r]) {
    // kUnroll survivors per thread per round, their vector loads issued
    // together.
    // Each block takes one contiguous range of survivors, so that its rounds
    // walk the row's source pages in order (DRAM page locality).
    constexpr int kStride = kTokensPerStep * kUnroll;
    const int32_t per_block =
        static_cast<int32_t>(CeilDiv(CeilDiv(kept, gridDim.y), kStride) * kStride);
    const int32_t begin = blockIdx.y * per_block;
    const int32_t end = min(kept, begin + per_block);
    // Software-pipelined: the next round's index chain (keep -> page ids) is
    // loaded while this round's K/V vectors are in flight, so each round
    // waits for one memory latency, not three.
    TokenMove moves[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      moves[u] = MoveOf(a, r, begin + token_in_step + u * kTokensPerStep, end);
    }
    for (int32_t base = begin + token_in_step; base < end; base += kStride) {
      Vector held[kUnroll];
      int32_t held_position[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (moves[u].moves()) {
          held[u] = *VectorAt<kRowVectors>(a.cache, moves[u].from_page, moves[u].from_offset, lane);
          if (lane == 0) held_position[u] = a.cache.positions[moves[u].from_slot(ps)];
        }
      }
      TokenMove next[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        next[u] = MoveOf(a, r, base + kStride + u * kTokensPerStep, end);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (!moves[u].moves()) continue;
        *VectorAt<kRowVectors>(a.cache, moves[u].to_page, moves[u].to_offset, lane) = held[u];
        if (lane == 0) a.cache.positions[moves[u].to_slot(ps)] = held_position[u];
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) moves[u] = next[u];
    }
    return;
  }
  if (blockIdx.y != 0) return;
  constexpr int kTokensPerChunk = kTokensPerStep * kUnroll;
  for (int32_t chunk = 0; chunk < kept; chunk += kTokensPerChunk) {
    Vector held[kUnroll];
    int32_t held_position[kUnroll];
    TokenMove moves[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      moves[u] = MoveOf(a, r, chunk + u * kTokensPerStep + token_in_step, kept);
      if (moves[u].moves()) {
        held[u] = *VectorAt<kRowVectors>(a.cache, moves[u].from_page, moves[u].from_offset, lane);
        held_position[u] = a.cache.positions[moves[u].from_slot(ps)];
      }
    }
    __syncthreads();
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (!moves[u].moves()) continue;
      *VectorAt<kRowVectors>(a.cache, moves[u].to_page, moves[u].to_offset, lane) = held[u];
      if (lane == 0) a.cache.positions[moves[u].to_slot(ps)] = held_position[u];
    }
    __syncthreads();
  }
}

// Blocks of `kernel` the whole GPU holds at once (SMs x blocks per SM), asked
// once per kernel instantiation.
template <typename Kernel>
int ResidentBlocks(Kernel kernel) {
  static const int resident = [kernel] {
    int device = 0, sms = 0, per_sm = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0) !=
            cudaSuccess) {
      return 1;
    }
    return sms * (per_sm > 0 ? per_sm : 1);
  }();
  return resident;
}

}  // namespace

LaunchResult LaunchCompact(const CompactArgs& args, GpuStream stream) {
  return DispatchDTypeAndHeadDim(args.cache.dtype, args.cache.head_dim, [&](auto dtype_tag,
                                                                           auto head_dim_tag) {
    using T = typename decltype(dtype_tag)::type;
    constexpr int kRowVectors = decltype(head_dim_tag)::value * sizeof(T) / kVectorBytes;
    // The kept counts live on the device, so rows share the GPU evenly: as
    // many blocks per row as keep the grid within one wave of resident blocks
    // (a second, partial wave would run as long as the first), at least one.
    // A block with no survivor left exits at once.
    const auto kernel = CompactKernel<kRowVectors>;
    const int64_t per_row = ResidentBlocks(kernel) / args.num_rows;
    const dim3 grid(static_cast<unsigned>(args.num_rows),
                    static_cast<unsigned>(per_row < 1 ? 1 : per_row));
    kernel<<<grid, kThreads, 0, stream>>>(args);
    return CheckLaunch();
  });
}

}  // namespace headpage::gpu::internal
