// SPDX-License-Identifier: Apache-2.0
// File: kernels/compact.cu
//
// Compact on the GPU: one kernel, two kinds of block.
//
// Fresh rows have no hazards (their destination pages are disjoint from every
// source), so their survivors are moved by warps working on one flat range of
// survivors over all rows, split evenly: a skewed plan (Ada keeps 5x more in
// one stream than in another) still spreads over the whole GPU. A warp handles
// a slab of 32 survivors at a time: lane j works out where survivor j of the
// slab comes from and goes to (keep set, then two page ids: the index chain,
// once per survivor and not once per thread), and the warp then moves the
// slab's K and V rows with every lane on one 16-byte vector, the addresses
// passed round by shuffles. The next slab's index chain is loaded while this
// slab's vectors are in flight, one dependent step per group of them.
//
// An in-place row is moved by one block alone, in ascending chunks: each chunk
// is read into registers, the block synchronizes, then writes it. Survivor i
// reads slot keep[i] >= i, so the slots a chunk writes are read only by itself
// (done before the barrier) or by earlier chunks (done before it started);
// later chunks read slots no earlier chunk writes.
//
// fp8 pages (kScales) move bytes the same way (a row is head_dim bytes); each
// survivor's K and V scales travel with its position, as one float2.
#include <atomic>

#include "kernels/compact_args.h"
#include "kernels/cuda_common.cuh"
#include "kernels/table_checks.h"

namespace headpage::gpu::internal {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = kThreads / kWarpSize;
// Vectors a lane holds at once, so that many loads are in flight together.
constexpr int kHeld = 8;
// Bytes in flight per SM are blocks x warps x kHeld vectors: ask the compiler
// for registers enough for three blocks (the fresh path needs about 75).
constexpr int kMinBlocksPerSM = 3;

__device__ __forceinline__ int32_t KeepBegin(const CompactArgs& a, int32_t r) {
  return a.keep_offsets != nullptr ? a.keep_offsets[r] : a.keep_indptr[r];
}

// The vector index of the first vector of a token's K row; its V row starts
// page_size * kRowVectors vectors later.
template <int kRowVectors>
__device__ __forceinline__ int64_t KeyVectorOf(int32_t page, int32_t offset, int32_t page_size) {
  return static_cast<int64_t>(page) * (2 * page_size * kRowVectors) + offset * kRowVectors;
}

// The slot of the token whose K row starts at vector `key` (KeyVectorOf's
// inverse): recomputed where it is stored rather than held across a slab.
template <int kRowVectors>
__device__ __forceinline__ int64_t SlotOfKeyVector(int64_t key, int32_t page_size) {
  const int64_t row = key / kRowVectors;  // page * 2 page_size + offset
  const int64_t page = row / (2 * page_size);
  return row - page * page_size;
}

// ---- Fresh rows: flat slabs of survivors ----------------------------------

// One survivor of a slab, as its lane sees it.
struct SurvivorMove {
  int64_t from = -1;  // K row vector index of the source; < 0: nothing to move
  int64_t to = 0;     // K row vector index of the destination
  int32_t position = 0;
  float score = 0.0f;  // the slot's score, when the caller keeps them
  float2 scales{};     // the slot's K and V scales, on fp8 pages
};

// The K and V scales of `slot` (fp8 pages: cache.scales is [slot][2], 16-byte
// aligned, so a slot's pair is one 8-byte access).
__device__ __forceinline__ float2& ScalesOf(const PagedKV& cache, int64_t slot) {
  return reinterpret_cast<float2*>(cache.scales)[slot];
}

// The row that holds flat survivor i: the last r with keep_indptr[r] <= i.
// Binary search over keep_indptr, which the rows' kept counts make
// non-decreasing.
__device__ __forceinline__ int32_t RowOf(const CompactArgs& a, int64_t i) {
  int32_t lo = 0, hi = a.num_rows - 1;
  while (lo < hi) {
    const int32_t mid = (lo + hi + 1) / 2;
    if (a.keep_indptr[mid] <= i) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Where a fresh row's survivor goes is a chain of three dependent loads: its
// keep index, then its source and destination pages, then its position (and
// score and scales). A warp resolves the next slab's chain one step per group
// of this slab's vectors, each step issued while a group's loads are in
// flight and read a group later, so that no step waits on the loads of the
// one just before it.
struct PendingMove {
  int32_t row = 0;
  int32_t j = -1;  // index in its row's keep set; < 0: nothing to move
  int32_t k = 0;   // its token in the row's source (step 1)
  int32_t from_page = 0;
  int32_t to_page = 0;  // (step 2)
};

// Step 1 for flat survivor i of row r: its keep index, if i < end and its row
// is fresh.
__device__ __forceinline__ PendingMove StartFreshMove(const CompactArgs& a, int32_t r, int64_t i,
                                                      int64_t end) {
  PendingMove pending;
  pending.row = r;
  if (i >= end || a.in_place[r]) return pending;
  pending.j = static_cast<int32_t>(i - a.keep_indptr[r]);
  pending.k = a.keep[KeepBegin(a, r) + pending.j] - a.keep_base;
  return pending;
}

// Step 2: the survivor's source and destination pages.
__device__ __forceinline__ void ResolvePages(const CompactArgs& a, PendingMove& pending) {
  if (pending.j < 0) return;
  const int32_t ps = a.cache.page_size;
  pending.from_page = a.src_page_ids[a.src_indptr[pending.row] + pending.k / ps];
  pending.to_page = a.dst_page_ids[a.dst_indptr[pending.row] + pending.j / ps];
}

// Step 3: the move itself, with the survivor's position (to be stored once
// the move happens), score and scales loaded.
template <int kRowVectors, bool kScales>
__device__ __forceinline__ SurvivorMove FinishFreshMove(const CompactArgs& a,
                                                        const PendingMove& pending) {
  SurvivorMove move;
  if (pending.j < 0) return move;
  const int32_t ps = a.cache.page_size;
  const int32_t from_offset = pending.k % ps, to_offset = pending.j % ps;
  move.from = KeyVectorOf<kRowVectors>(pending.from_page, from_offset, ps);
  move.to = KeyVectorOf<kRowVectors>(pending.to_page, to_offset, ps);
  const int64_t from_slot = static_cast<int64_t>(pending.from_page) * ps + from_offset;
  move.position = a.cache.positions[from_slot];
  if (a.slot_scores != nullptr) move.score = a.slot_scores[from_slot];
  if constexpr (kScales) move.scales = ScalesOf(a.cache, from_slot);
  return move;
}

// The row of flat survivor i, given the row of an earlier survivor: rows are
// walked forward (a slab rarely crosses more than one row boundary).
__device__ __forceinline__ int32_t AdvanceRow(const CompactArgs& a, int32_t r, int64_t i) {
  while (r + 1 < a.num_rows && a.keep_indptr[r + 1] <= i) ++r;
  return r;
}

template <int kRowVectors, bool kScales>
__device__ __forceinline__ void MoveFreshSurvivors(const CompactArgs& a, int32_t flat_block,
                                                   int32_t flat_blocks) {
  // A token is 2 * kRowVectors vectors (K, then V); step m of a slab moves
  // vector lane + 32 m of the slab, token (lane + 32 m) / kTokenVectors.
  constexpr int kTokenVectors = 2 * kRowVectors;
  static_assert(kTokenVectors % kHeld == 0, "a slab's steps must split into groups of kHeld");
  const int lane = threadIdx.x % kWarpSize;
  const int64_t first = a.keep_indptr[0];
  const int64_t total = a.keep_indptr[a.num_rows] - first;
  const int64_t warps = static_cast<int64_t>(flat_blocks) * kWarpsPerBlock;
  const int64_t warp = static_cast<int64_t>(flat_block) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  // Contiguous ranges, at least one slab each: a warp walks its survivors (and
  // so its rows' pages) in order.
  const int64_t per_warp = max(static_cast<int64_t>(kWarpSize), CeilDiv(total, warps));
  const int64_t begin = first + warp * per_warp;
  const int64_t end = min(first + total, begin + per_warp);
  if (begin >= end) return;

  // Vector `part` of a token, from its K row's first vector: K row vectors,
  // then V row vectors (half a page later).
  const int64_t value_row = static_cast<int64_t>(a.cache.page_size) * kRowVectors;
  const auto VectorWithin = [value_row](int part) -> int64_t {
    return part < kRowVectors ? part : value_row + (part - kRowVectors);
  };
  Vector* data = static_cast<Vector*>(a.cache.data);
  // The groups of a slab that take the next slab's chain steps 2 and 3 (step
  // 1 goes with group 0); where a token's vectors make fewer groups, the last
  // group takes what is left.
  constexpr int kGroups = kTokenVectors / kHeld;
  constexpr int kPagesGroup = (kGroups > 1 ? 1 : 0) * kHeld;
  constexpr int kFinishGroup = (kGroups > 2 ? 2 : kGroups - 1) * kHeld;
  int32_t row = RowOf(a, min(begin + lane, end - 1));
  PendingMove pending = StartFreshMove(a, row, begin + lane, end);
  ResolvePages(a, pending);
  SurvivorMove move = FinishFreshMove<kRowVectors, kScales>(a, pending);
  for (int64_t slab = begin; slab < end; slab += kWarpSize) {
    SurvivorMove next;
    // Not unrolled: the compiler would hoist later groups' loads and hold
    // more registers than the bytes in flight are worth.
#pragma unroll 1
    for (int group = 0; group < kTokenVectors; group += kHeld) {
      Vector held[kHeld];
#pragma unroll
      for (int u = 0; u < kHeld; ++u) {
        const int vector = lane + kWarpSize * (group + u);
        const int64_t from = __shfl_sync(kFullMask, move.from, vector / kTokenVectors);
        if (from >= 0) held[u] = __ldcs(data + from + VectorWithin(vector % kTokenVectors));
      }
      // The next slab's chain, a step while this group's loads are in flight.
      if (group == 0) {
        const int64_t next_i = slab + kWarpSize + lane;
        if (next_i < end) row = AdvanceRow(a, row, next_i);
        pending = StartFreshMove(a, row, next_i, end);
      }
      if (group == kPagesGroup) ResolvePages(a, pending);
      if (group == kFinishGroup) next = FinishFreshMove<kRowVectors, kScales>(a, pending);
#pragma unroll
      for (int u = 0; u < kHeld; ++u) {
        const int vector = lane + kWarpSize * (group + u);
        const int64_t from = __shfl_sync(kFullMask, move.from, vector / kTokenVectors);
        const int64_t to = __shfl_sync(kFullMask, move.to, vector / kTokenVectors);
        if (from >= 0) __stcs(data + to + VectorWithin(vector % kTokenVectors), held[u]);
      }
    }
    if (move.from >= 0) {
      const int64_t to_slot = SlotOfKeyVector<kRowVectors>(move.to, a.cache.page_size);
      a.cache.positions[to_slot] = move.position;
      if (a.slot_scores != nullptr) a.slot_scores[to_slot] = move.score;
      if constexpr (kScales) ScalesOf(a.cache, to_slot) = move.scales;
    }
    move = next;
  }
}

// ---- In-place rows: one block each, in ascending chunks ---------------------

// Survivors a thread holds per chunk.
constexpr int kInPlaceUnroll = 8;

// Where survivor i of row r goes, if i < kept: pages and offsets in 32-bit
// arithmetic. from_page < 0: nothing to move (past the keep set, or it stays
// put).
struct TokenMove {
  int32_t from_page = -1;
  int32_t from_offset = 0;
  int32_t to_page = 0;
  int32_t to_offset = 0;

  __device__ __forceinline__ bool moves() const { return from_page >= 0; }
};

__device__ __forceinline__ TokenMove InPlaceMoveOf(const CompactArgs& a, int32_t r, int32_t i,
                                                   int32_t kept) {
  if (i >= kept) return {};
  const int32_t ps = a.cache.page_size;
  const int32_t k = a.keep[KeepBegin(a, r) + i] - a.keep_base;
  const int32_t from_index = k / ps, to_index = i / ps;
  TokenMove move;
  move.from_page = a.src_page_ids[a.src_indptr[r] + from_index];
  move.from_offset = k - from_index * ps;
  move.to_page = a.dst_page_ids[a.dst_indptr[r] + to_index];
  move.to_offset = i - to_index * ps;
  if (move.from_page == move.to_page && move.from_offset == move.to_offset) move.from_page = -1;
  return move;
}

// The thread's vector of a token: K for lane < kRowVectors, else V.
template <int kRowVectors>
__device__ __forceinline__ Vector* VectorAt(const PagedKV& cache, int32_t page, int32_t offset,
                                            int lane) {
  const int64_t key = KeyVectorOf<kRowVectors>(page, offset, cache.page_size);
  const int64_t within = lane < kRowVectors
                             ? lane
                             : static_cast<int64_t>(cache.page_size) * kRowVectors + (lane - kRowVectors);
  return static_cast<Vector*>(cache.data) + key + within;
}

template <int kRowVectors, bool kScales>
__device__ __forceinline__ void MoveInPlaceRow(const CompactArgs& a, int32_t r) {
  constexpr int kThreadsPerToken = 2 * kRowVectors;
  constexpr int kTokensPerStep = kThreads / kThreadsPerToken;
  constexpr int kTokensPerChunk = kTokensPerStep * kInPlaceUnroll;
  const int lane = threadIdx.x % kThreadsPerToken;
  const int token_in_step = threadIdx.x / kThreadsPerToken;
  const int32_t kept = a.keep_indptr[r + 1] - a.keep_indptr[r];
  const int32_t ps = a.cache.page_size;
  // Beside its vector, lane 0 of a token holds the token's position and score
  // (as float bits), and on fp8 pages lane 1 its K and V scales: two words a
  // thread, whatever the pages.
  constexpr int kSideLanes = kScales ? 2 : 1;
  for (int32_t chunk = 0; chunk < kept; chunk += kTokensPerChunk) {
    Vector held[kInPlaceUnroll];
    float2 held_side[kInPlaceUnroll];
    TokenMove moves[kInPlaceUnroll];
#pragma unroll
    for (int u = 0; u < kInPlaceUnroll; ++u) {
      moves[u] = InPlaceMoveOf(a, r, chunk + u * kTokensPerStep + token_in_step, kept);
      if (moves[u].moves()) {
        held[u] = *VectorAt<kRowVectors>(a.cache, moves[u].from_page, moves[u].from_offset, lane);
        if (lane < kSideLanes) {
          const int64_t from_slot = static_cast<int64_t>(moves[u].from_page) * ps + moves[u].from_offset;
          held_side[u] = lane == 0 ? make_float2(__int_as_float(a.cache.positions[from_slot]),
                                                 a.slot_scores != nullptr ? a.slot_scores[from_slot]
                                                                          : 0.0f)
                                   : ScalesOf(a.cache, from_slot);
        }
      }
    }
    __syncthreads();
#pragma unroll
    for (int u = 0; u < kInPlaceUnroll; ++u) {
      if (!moves[u].moves()) continue;
      *VectorAt<kRowVectors>(a.cache, moves[u].to_page, moves[u].to_offset, lane) = held[u];
      if (lane < kSideLanes) {
        const int64_t to_slot = static_cast<int64_t>(moves[u].to_page) * ps + moves[u].to_offset;
        if (lane == 0) {
          a.cache.positions[to_slot] = __float_as_int(held_side[u].x);
          if (a.slot_scores != nullptr) a.slot_scores[to_slot] = held_side[u].y;
        } else {
          ScalesOf(a.cache, to_slot) = held_side[u];
        }
      }
    }
    __syncthreads();
  }
}

// Blocks [0, in_place_blocks) take the in-place rows, a stride of rows each
// (a block skips a fresh row at the cost of one load); the rest move the fresh
// rows' survivors. The in-place blocks come first so that the GPU starts their
// sequential rows before anything else.
template <int kRowVectors, bool kScales>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM) CompactKernel(CompactArgs a, int32_t in_place_blocks) {
  if (TablesFaulted(a.fault)) return;
  const int32_t block = blockIdx.x;
  if (block < in_place_blocks) {
    for (int32_t r = block; r < a.num_rows; r += in_place_blocks) {
      if (a.in_place[r]) MoveInPlaceRow<kRowVectors, kScales>(a, r);
    }
    return;
  }
  MoveFreshSurvivors<kRowVectors, kScales>(a, block - in_place_blocks,
                                           static_cast<int32_t>(gridDim.x) - in_place_blocks);
}

// Blocks of CompactKernel<kRowVectors, kScales> the current GPU holds at once
// (SMs x blocks per SM), asked once per instantiation and device.
constexpr int kMaxDevices = 64;

template <int kRowVectors, bool kScales>
int ResidentBlocks() {
  static std::atomic<int> cached[kMaxDevices];  // 0: not asked yet
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 1;
  if (device >= 0 && device < kMaxDevices) {
    const int known = cached[device].load(std::memory_order_relaxed);
    if (known > 0) return known;
  }
  int sms = 0, per_sm = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, CompactKernel<kRowVectors, kScales>,
                                                    kThreads, 0) != cudaSuccess) {
    return 1;
  }
  const int resident = sms * (per_sm > 0 ? per_sm : 1);
  if (device >= 0 && device < kMaxDevices) cached[device].store(resident, std::memory_order_relaxed);
  return resident;
}

}  // namespace

LaunchResult LaunchCompact(const CompactArgs& args, GpuStream stream) {
  return DispatchKvElementAndHeadDim(args.cache.dtype, args.cache.kv_dtype, args.cache.head_dim,
                                     [&](auto element_tag, auto head_dim_tag) {
    using T = typename decltype(element_tag)::type;
    constexpr int kRowVectors = decltype(head_dim_tag)::value * sizeof(T) / kVectorBytes;
    constexpr bool kScales = std::is_same_v<T, __nv_fp8_e4m3>;
    // The kept counts and the in-place flags live on the device, so the grid
    // is sized without them: one wave of resident blocks for the fresh
    // survivors (a second, partial wave would run as long as the first), and
    // one block per row, up to a wave, for the in-place rows. Blocks with
    // nothing to do exit at once.
    const auto kernel = CompactKernel<kRowVectors, kScales>;
    const int resident = ResidentBlocks<kRowVectors, kScales>();
    const int32_t in_place_blocks = args.num_rows < resident ? args.num_rows : resident;
    kernel<<<static_cast<unsigned>(in_place_blocks + resident), kThreads, 0, stream>>>(
        args, in_place_blocks);
    return CheckLaunch();
  });
}

}  // namespace headpage::gpu::internal
