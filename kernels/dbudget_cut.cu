// SPDX-License-Identifier: Apache-2.0
// File: kernels/dbudget_cut.cu
//
// DBudgetCut on the GPU, in five steps on the caller's stream:
//
//  1. PrepareKernel: each stream's token range (offsets clamped to
//     [0, num_tokens]) and candidate range, and, to order by score, the sort's
//     input: the candidates' order-preserving score keys (select_internal.cuh's
//     OrderedKey, the CPU's) with their slots, laid out highest slot first.
//  2. CUB's segmented radix sort, one segment per stream, keys ascending. It
//     is stable, so equal scores keep the higher slot first: the policy's
//     order (by_position needs no sort: slot order is position order).
//  3. GatherKernel, one block per attention row (stream, q head): the row's
//     candidates in that order into the workspace (gathered from a copy of the
//     row in shared memory, or from global memory for rows too long for it),
//     and, per tile of kDBudgetTileRanks ranks, the sum of squares of every
//     later tile (the "carry", in double).
//  4. KeptSumKernel, one warp per (sequence, tile): for each of the
//     sequence's rows in a fixed order, the sum of squares from each rank of
//     the tile to the end of the row (a warp's suffix scan plus the carry),
//     its square root added to the warp's per-rank sums in registers. The
//     sums, kept_sum[k] for the tile's ranks k, go to the workspace. Rows are
//     added in the same order for every k, without atomics: deterministic.
//  5. CutKernel, one block per sequence: the largest k whose loss ratio is
//     within the threshold (a parallel scan, then a max), and kept = n_s - cut.
//
// Threshold 0 runs only steps 1 and 5. No step synchronizes with the host or
// allocates: the workspace's layout is PlanDBudgetCut's (dbudget_cut_args.h).
#include <algorithm>
#include <cstdint>
#include <mutex>

#include <cub/device/device_segmented_radix_sort.cuh>

#include "kernels/cuda_common.cuh"
#include "kernels/dbudget_cut_args.h"
#include "kernels/select_internal.cuh"

namespace headpage::gpu::internal {
namespace dbudget {
namespace {

constexpr int kTile = kDBudgetTileRanks;
constexpr int kRanksPerLane = kTile / 32;
static_assert(kRanksPerLane * 32 == kTile, "a tile is one warp's ranks");

constexpr int kPrepareThreads = 256;
constexpr int kGatherThreads = 512;
constexpr int kGatherWarps = kGatherThreads / 32;
constexpr int kSumThreads = 256;
constexpr int kSumWarps = kSumThreads / 32;
constexpr int kCutThreads = 256;
constexpr int kCutWarps = kCutThreads / 32;
// The longest row of candidates GatherKernel copies to shared memory (192 KiB,
// one block per SM); longer rows are gathered from global memory (L2).
constexpr int32_t kMaxRowCacheFloats = 48 * 1024;

// A stream's tokens are [lo, lo + len) of the arrays; its candidates are
// slots [begin, end).
struct alignas(16) StreamSpan {
  int32_t lo;
  int32_t len;
  int32_t begin;
  int32_t end;
};

// The workspace regions (PlanDBudgetCut), typed.
struct Workspace {
  StreamSpan* spans;
  int32_t* sort_begin;
  int32_t* sort_end;
  uint32_t* keys[2];
  int32_t* slots[2];
  void* sort_temp;
  float* gathered;
  double* carries;
  double* kept_sums;
};

// Called by a whole warp.
__device__ StreamSpan LocateStream(const DBudgetCutArgs& a, int32_t s) {
  const int64_t total = a.num_tokens;
  const int64_t lo = min(max(int64_t{a.score_offsets[s]}, int64_t{0}), total);
  const int64_t hi = min(max(int64_t{a.score_offsets[s + 1]}, lo), total);
  const int32_t len = static_cast<int32_t>(hi - lo);
  // WarpLowerBound answers at least 32 when the first min(len, 32) positions
  // are all below sinks; clamp, so that begin <= end <= len holds everywhere.
  const int32_t begin = min(selection::WarpLowerBound(a.positions + lo, len, a.sinks), len);
  const int32_t end =
      static_cast<int32_t>(min(max(int64_t{len} - a.recent, int64_t{begin}), int64_t{len}));
  return StreamSpan{static_cast<int32_t>(lo), len, begin, end};
}

// The candidates every stream of sequence q has, or -1 when they differ (the
// policy's error: the sequence keeps everything).
__device__ int32_t SequenceCandidates(const StreamSpan* spans, int32_t q, int32_t heads) {
  const StreamSpan* seq = spans + int64_t{q} * heads;
  const int32_t n = seq[0].end - seq[0].begin;
  for (int32_t h = 1; h < heads; ++h) {
    if (seq[h].end - seq[h].begin != n) return -1;
  }
  return n;
}

// Where sequence q's kept_sum[0..n) starts in kept_sums (PlanDBudgetCut).
__device__ int64_t KeptSumsStart(const StreamSpan* spans, int32_t q, int32_t heads) {
  return int64_t{spans[int64_t{q} * heads].lo / heads} + q;
}

// Where row (stream s, q head g)'s carry of tile t is (PlanDBudgetCut).
__device__ int64_t CarryIndex(const StreamSpan& span, int32_t s, int32_t group, int32_t g,
                              int64_t t) {
  return (int64_t{span.lo / kTile} + s + t) * group + g;
}

// Step 1. Grid: (streams, blocks sharing a stream's keys).
__global__ void __launch_bounds__(kPrepareThreads)
    PrepareKernel(const DBudgetCutArgs a, Workspace w, bool sorts) {
  __shared__ StreamSpan shared_span;
  const int32_t s = static_cast<int32_t>(blockIdx.x);
  if (threadIdx.x < 32) {
    const StreamSpan located = LocateStream(a, s);
    if (threadIdx.x == 0) shared_span = located;
  }
  __syncthreads();
  const StreamSpan span = shared_span;
  const int32_t n = span.end - span.begin;
  if (blockIdx.y == 0 && threadIdx.x == 0) {
    w.spans[s] = span;
    if (sorts) {
      w.sort_begin[s] = span.lo;
      w.sort_end[s] = span.lo + n;
    }
  }
  if (!sorts) return;
  // Highest slot first, so that the stable sort leaves equal scores in the
  // policy's order.
  const int32_t stride = static_cast<int32_t>(gridDim.y) * kPrepareThreads;
  for (int32_t i = static_cast<int32_t>(blockIdx.y) * kPrepareThreads + threadIdx.x; i < n;
       i += stride) {
    const int32_t slot = span.end - 1 - i;
    w.keys[0][span.lo + i] = selection::OrderedKey(__ldg(a.scores + span.lo + slot));
    w.slots[0][span.lo + i] = slot;
  }
}

__device__ __forceinline__ double WarpSum(double x) {
#pragma unroll
  for (int d = 16; d > 0; d /= 2) x += __shfl_xor_sync(kFullMask, x, d);
  return x;
}

// Overwrites totals[t * stride], t < count, with the sum of the totals after
// t (the last gets 0), added from the end in a fixed order. Called by a warp.
__device__ void ReverseExclusiveScan(double* totals, int32_t stride, int32_t count, int lane) {
  double running = 0.0;
  for (int32_t chunk = 0; chunk < count; chunk += 32) {
    const int32_t t = count - 1 - (chunk + lane);  // lane 0 takes the last
    const double own = t >= 0 ? totals[int64_t{t} * stride] : 0.0;
    const double inclusive = LaneInclusiveSum(own, lane);
    const double exclusive = __shfl_up_sync(kFullMask, inclusive, 1);
    if (t >= 0) totals[int64_t{t} * stride] = running + (lane == 0 ? 0.0 : exclusive);
    running += __shfl_sync(kFullMask, inclusive, 31);
  }
}

// Step 3. One block per attention row: row = stream * group_size + q head.
// `order` holds the sorted slots (null: by position, where the row is read in
// place and nothing is gathered).
__global__ void __launch_bounds__(kGatherThreads, 1)
    GatherKernel(const DBudgetCutArgs a, Workspace w, const int32_t* __restrict__ order,
                 int32_t cache_floats) {
  extern __shared__ float row_cache[];  // cache_floats
  const int32_t group = a.group_size;
  const int32_t s = static_cast<int32_t>(blockIdx.x) / group;
  const int32_t g = static_cast<int32_t>(blockIdx.x) % group;
  const StreamSpan span = w.spans[s];
  const int32_t n = span.end - span.begin;
  if (n <= 0) return;
  const int64_t row_start = int64_t{group} * span.lo + int64_t{g} * span.len;
  const float* __restrict__ candidates = a.attention + row_start + span.begin;
  // Uniform over the block, as is the barrier under it.
  const bool cached = order != nullptr && n <= cache_floats;
  if (cached) {
    for (int32_t i = threadIdx.x; i < n; i += kGatherThreads) row_cache[i] = __ldg(candidates + i);
    __syncthreads();
  }
  float* out = order != nullptr ? w.gathered + row_start : nullptr;
  double* carries = w.carries + CarryIndex(span, s, group, g, 0);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int32_t tiles = (n + kTile - 1) / kTile;
  for (int32_t t = warp; t < tiles; t += kGatherWarps) {
    double squares = 0.0;
#pragma unroll
    for (int j = 0; j < kRanksPerLane; ++j) {
      const int32_t i = t * kTile + j * 32 + lane;  // coalesced; a total has no order
      if (i < n) {
        float x;
        if (order == nullptr) {
          x = __ldg(candidates + i);
        } else {
          // Sorted slots are the stream's own candidates; the clamp only
          // keeps offsets the host never checked inside the row.
          const int32_t slot = min(max(__ldg(order + span.lo + i) - span.begin, 0), n - 1);
          x = cached ? row_cache[slot] : __ldg(candidates + slot);
          out[i] = x;
        }
        const double d = x;
        squares += d * d;
      }
    }
    squares = WarpSum(squares);
    if (lane == 0) carries[int64_t{t} * group] = squares;
  }
  __syncthreads();  // the tiles' totals, written by every warp, are visible
  if (warp == 0) ReverseExclusiveScan(carries, group, tiles, lane);
}

// One row's share of a tile: each lane's kRanksPerLane consecutive values and
// the row's carry.
struct RowTile {
  float x[kRanksPerLane];
  double carry;
};

__device__ __forceinline__ RowTile LoadRowTile(const DBudgetCutArgs& a, const Workspace& w,
                                               int32_t first_stream, int32_t row, int32_t n,
                                               int64_t tile, int32_t first_rank) {
  const int32_t group = a.group_size;
  const int32_t h = row / group, g = row % group;
  const StreamSpan span = w.spans[first_stream + h];
  const int64_t row_start = int64_t{group} * span.lo + int64_t{g} * span.len;
  const float* values =
      a.by_position ? a.attention + row_start + span.begin : w.gathered + row_start;
  RowTile load;
#pragma unroll
  for (int j = 0; j < kRanksPerLane; ++j) {
    const int32_t i = first_rank + j;
    load.x[j] = i < n ? __ldg(values + i) : 0.0f;
  }
  load.carry = __ldg(w.carries + CarryIndex(span, first_stream + h, group, g, tile));
  return load;
}

// Step 4. Grid: (sequences, blocks sharing a sequence's tiles); a warp a tile.
__global__ void __launch_bounds__(kSumThreads) KeptSumKernel(const DBudgetCutArgs a, Workspace w) {
  __shared__ int32_t shared_n;
  const int32_t q = static_cast<int32_t>(blockIdx.x);
  const int32_t heads = a.num_kv_heads;
  const int32_t first_stream = q * heads;
  if (threadIdx.x == 0) shared_n = SequenceCandidates(w.spans, q, heads);
  __syncthreads();
  const int32_t n = shared_n;
  if (n <= 0) return;  // nothing to measure, or the sequence keeps everything
  double* sums = w.kept_sums + KeptSumsStart(w.spans, q, heads);
  const int32_t num_rows = heads * a.group_size;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t tile_stride = int64_t{gridDim.y} * kSumWarps;
  for (int64_t tile = int64_t{blockIdx.y} * kSumWarps + warp; tile * kTile < n;
       tile += tile_stride) {
    const int32_t first_rank = static_cast<int32_t>(tile * kTile) + lane * kRanksPerLane;
    double kept[kRanksPerLane] = {};
    // The next row's loads are issued before this row's arithmetic.
    RowTile next = LoadRowTile(a, w, first_stream, 0, n, tile, first_rank);
    for (int32_t row = 0; row < num_rows; ++row) {
      const RowTile current = next;
      if (row + 1 < num_rows) next = LoadRowTile(a, w, first_stream, row + 1, n, tile, first_rank);
      // suffix[j]: squares from rank first_rank + j to the lane's last (x*x
      // of a float is exact in double).
      double suffix[kRanksPerLane];
#pragma unroll
      for (int j = kRanksPerLane - 1; j >= 0; --j) {
        const double x = current.x[j];
        suffix[j] = x * x + (j + 1 < kRanksPerLane ? suffix[j + 1] : 0.0);
      }
      // The lanes after this one: a suffix scan over the warp.
      double inclusive = suffix[0];
#pragma unroll
      for (int d = 1; d < 32; d *= 2) {
        const double above = __shfl_down_sync(kFullMask, inclusive, d);
        if (lane + d < 32) inclusive += above;
      }
      const double after_lane = __shfl_down_sync(kFullMask, inclusive, 1);
      const double rest = current.carry + (lane == 31 ? 0.0 : after_lane);
#pragma unroll
      for (int j = 0; j < kRanksPerLane; ++j) kept[j] += sqrt(rest + suffix[j]);
    }
#pragma unroll
    for (int j = 0; j < kRanksPerLane; ++j) {
      if (first_rank + j < n) sums[first_rank + j] = kept[j];
    }
  }
}

// Step 5. One block per sequence. `measured`: steps 3 and 4 ran (threshold >
// 0); otherwise every sequence keeps everything.
__global__ void __launch_bounds__(kCutThreads)
    CutKernel(const DBudgetCutArgs a, Workspace w, bool measured) {
  __shared__ int32_t shared_n;
  __shared__ int32_t warp_best[kCutWarps];
  const int32_t q = static_cast<int32_t>(blockIdx.x);
  const int32_t heads = a.num_kv_heads;
  const int32_t first_stream = q * heads;
  if (threadIdx.x == 0) shared_n = SequenceCandidates(w.spans, q, heads);
  __syncthreads();
  const int32_t n = shared_n;
  int32_t best = 0;  // this thread's largest admissible k
  if (measured && n > 0) {
    const double* sums = w.kept_sums + KeptSumsStart(w.spans, q, heads);
    const double num_heads = static_cast<double>(heads) * a.group_size;
    const double base = sums[0] / num_heads;
    // No attention on any candidate (or a non-finite one): keep everything,
    // as the policy does.
    if (base > 0.0) {
      // The policy's expression, operation for operation; kept_sum[n] is 0
      // (every candidate cut). Each thread walks its k downwards and stops at
      // its first admissible one.
      for (int32_t k = n - static_cast<int32_t>(threadIdx.x); k >= 1; k -= kCutThreads) {
        const double kept_k = k == n ? 0.0 : sums[k];
        if ((base - kept_k / num_heads) / base <= a.threshold) {
          best = k;
          break;
        }
      }
    }
  }
  best = __reduce_max_sync(kFullMask, best);
  if (threadIdx.x % 32 == 0) warp_best[threadIdx.x / 32] = best;
  __syncthreads();
  int32_t cut = 0;
#pragma unroll
  for (int i = 0; i < kCutWarps; ++i) cut = max(cut, warp_best[i]);
  for (int32_t h = threadIdx.x; h < heads; h += kCutThreads) {
    a.kept[first_stream + h] = w.spans[first_stream + h].len - cut;
  }
}

// Per device, once: GatherKernel's dynamic shared memory limit raised to the
// largest row cache.
constexpr int kMaxDevices = 64;

cudaError_t AllowRowCache() {
  int device = 0;
  cudaError_t error = cudaGetDevice(&device);
  if (error != cudaSuccess) return error;
  static std::mutex mutex;
  static bool ready[kMaxDevices] = {};
  std::lock_guard<std::mutex> lock(mutex);
  bool& entry = ready[device % kMaxDevices];
  if (!entry) {
    error = cudaFuncSetAttribute(GatherKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(sizeof(float) * kMaxRowCacheFloats));
    if (error != cudaSuccess) return error;
    entry = true;
  }
  return cudaSuccess;
}

Workspace MapWorkspace(const DBudgetCutArgs& args, const DBudgetCutLayout& layout) {
  char* base = static_cast<char*>(args.workspace);
  Workspace w;
  w.spans = reinterpret_cast<StreamSpan*>(base + layout.spans);
  w.sort_begin = reinterpret_cast<int32_t*>(base + layout.sort_begin);
  w.sort_end = reinterpret_cast<int32_t*>(base + layout.sort_end);
  for (int i = 0; i < 2; ++i) {
    w.keys[i] = reinterpret_cast<uint32_t*>(base + layout.keys[i]);
    w.slots[i] = reinterpret_cast<int32_t*>(base + layout.slots[i]);
  }
  w.sort_temp = base + layout.sort_temp;
  w.gathered = reinterpret_cast<float*>(base + layout.gathered);
  w.carries = reinterpret_cast<double*>(base + layout.carries);
  w.kept_sums = reinterpret_cast<double*>(base + layout.kept_sums);
  return w;
}

// Step 2: sorts each stream's candidates (keys[0], slots[0]) by key; `order`
// gets the buffer that holds the sorted slots.
LaunchResult SortCandidates(const DBudgetCutArgs& args, const Workspace& w, GpuStream stream,
                            const int32_t** order) {
  cub::DoubleBuffer<uint32_t> keys(w.keys[0], w.keys[1]);
  cub::DoubleBuffer<int32_t> slots(w.slots[0], w.slots[1]);
  const int num_segments = args.num_streams();
  size_t temp_bytes = 0;
  cudaError_t error = cub::DeviceSegmentedRadixSort::SortPairs(
      nullptr, temp_bytes, keys, slots, args.num_tokens, num_segments, w.sort_begin, w.sort_end, 0,
      32, stream);
  if (error != cudaSuccess) return CudaErrorResult(error);
  // Double buffers leave CUB only its alignment slack to ask for; a CUB that
  // wanted more than the workspace reserves is refused, not overrun.
  if (temp_bytes > kDBudgetSortTempBytes) return CudaErrorResult(cudaErrorInvalidValue);
  temp_bytes = kDBudgetSortTempBytes;
  error = cub::DeviceSegmentedRadixSort::SortPairs(w.sort_temp, temp_bytes, keys, slots,
                                                   args.num_tokens, num_segments, w.sort_begin,
                                                   w.sort_end, 0, 32, stream);
  if (error != cudaSuccess) return CudaErrorResult(error);
  *order = slots.Current();  // the selector CUB leaves is known on the host
  return CheckLaunch();
}

LaunchResult Launch(const DBudgetCutArgs& args, GpuStream stream) {
  const int64_t num_streams = args.num_streams();
  const DBudgetCutLayout layout = PlanDBudgetCut(args);
  if (num_streams == 0 || layout.bytes == 0) return LaunchResult{};
  const Workspace w = MapWorkspace(args, layout);
  // threshold 0 keeps everything: only the spans (for the lengths) and the cut.
  const bool measured = args.threshold > 0.0 && args.num_tokens > 0;
  const bool sorts = measured && !args.by_position;
  // Grids are sized for the mean stream length; longer streams are walked by
  // the same blocks (a grid-stride loop), and shorter ones leave some idle.
  const int64_t mean_len = CeilDiv(args.num_tokens, num_streams);

  const unsigned prepare_blocks = sorts ? static_cast<unsigned>(std::min<int64_t>(
                                              std::max<int64_t>(CeilDiv(mean_len, 4096), 1), 64))
                                        : 1u;
  PrepareKernel<<<dim3(static_cast<unsigned>(num_streams), prepare_blocks), kPrepareThreads, 0,
                  stream>>>(args, w, sorts);
  LaunchResult result = CheckLaunch();
  if (!result.ok()) return result;

  if (measured) {
    const int32_t* order = nullptr;
    if (sorts) {
      result = SortCandidates(args, w, stream, &order);
      if (!result.ok()) return result;
    }
    // The mean row fits the cache whole (rounded up to 1K floats); only rows
    // beyond kMaxRowCacheFloats, or above the mean, read global memory.
    int32_t cache_floats = 0;
    if (sorts) {
      cache_floats = static_cast<int32_t>(std::min<int64_t>(
          kMaxRowCacheFloats, CeilDiv(std::max<int64_t>(mean_len, 1), 1024) * 1024));
      const cudaError_t error = AllowRowCache();
      if (error != cudaSuccess) return CudaErrorResult(error);
    }
    const int64_t rows = num_streams * args.group_size;  // < 2^31 (Validate)
    GatherKernel<<<static_cast<unsigned>(rows), kGatherThreads, sizeof(float) * cache_floats,
                   stream>>>(args, w, order, cache_floats);
    result = CheckLaunch();
    if (!result.ok()) return result;
    const int64_t tile_blocks = CeilDiv(std::max<int64_t>(mean_len, 1), int64_t{kSumWarps} * kTile);
    KeptSumKernel<<<dim3(static_cast<unsigned>(args.num_seqs),
                         static_cast<unsigned>(std::min<int64_t>(tile_blocks, 65535))),
                    kSumThreads, 0, stream>>>(args, w);
    result = CheckLaunch();
    if (!result.ok()) return result;
  }
  CutKernel<<<static_cast<unsigned>(args.num_seqs), kCutThreads, 0, stream>>>(args, w, measured);
  return CheckLaunch();
}

}  // namespace
}  // namespace dbudget

LaunchResult LaunchDBudgetCut(const DBudgetCutArgs& args, GpuStream stream) {
  return dbudget::Launch(args, stream);
}

}  // namespace headpage::gpu::internal
