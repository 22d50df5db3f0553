// SPDX-License-Identifier: Apache-2.0
// File: kernels/global_kept.cu
//
// GlobalKept on the GPU. The simple way would sort every candidate in the pool
// by its share: tens of millions of 64-bit keys. This sorts only what decides
// the answer.
//
// The key fact is that a token frees a page exactly when it was alone on its
// stream's last page. For a stream of n tokens, that happens when it is the
// e-th token evicted from the stream with e = first + j * page_size, where
// first = n - page_size (P(n) - 1) is the count on the last page. Call such a
// token an event. A stream has P(n) - P(min_kept) events, and they are its
// first, (first + page_size)-th, ... lowest candidates. The shortest prefix of
// the global eviction order that frees pages_to_free pages therefore ends
// exactly at the pages_to_free-th event in that order. The steps:
//
//  0. ClampOffsetsKernel and a CUB scan (running maximum) clamp the offsets
//     into [0, num_scores] and make them non-decreasing, so that even bad
//     offsets give disjoint streams.
//  1. PlanKernel works out each stream's range and min_kept, and sums
//     its candidate mass in slot order, which is the order and the double
//     rounding the policy uses. A warp owns 32 streams, one lane each. Rows of
//     32 scores pass through a shared-memory transpose, so that the loads are
//     coalesced while each lane still adds its own stream serially.
//  2. CUB's segmented radix sort sorts each evicting stream's candidates.
//     Within one stream the share order is the score order.
//  3. EmitEventsKernel writes each stream's events, with the bits of the
//     double share as the key. They are laid out highest stream first: the
//     offsets come from a scan of the per-stream event counts in reverse
//     stream order. PadEventsKernel fills the rest of the capacity with the
//     largest key. CUB's radix sort is stable, so equal shares stay highest
//     stream first, and a stream's events stay in rank order. That is the
//     policy's order.
//  4. FindThresholdKernel reads the pages_to_free-th sorted event: its share,
//     stream and rank. ApplyThresholdKernel gives each stream
//     min(max_evicted, the number of its candidates ahead of that event). For
//     the event's own stream that number is the rank. For any other stream it
//     comes from a binary search of its sorted candidates: share < threshold,
//     or share <= threshold for a higher stream, which goes first on a tie.
//     When there are fewer events (freeable pages) than pages_to_free, there
//     is no threshold and every stream drops to min_kept.
//
// A share is double(score) / mass, the same IEEE division as on the host, and
// the mass is the same serial sum. So the counts are the policy's bit for
// bit. The work is two sorts: the candidates, as 32-bit keys in short
// segments, and about one 62-bit key per page.
#include <algorithm>
#include <cstdint>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>
#include <cub/util_type.cuh>
#include <cuda/functional>

#include "kernels/cuda_common.cuh"
#include "kernels/global_kept_args.h"

namespace headpage::gpu::internal {
namespace global_kept {
namespace {

constexpr uint64_t kKeyMask = (uint64_t{1} << kGlobalKeptKeyBits) - 1;
constexpr uint64_t kPaddingKey = kKeyMask;  // above every share: bits(1.0) = 0x3FF0...
constexpr int kPlanWarps = 2;
constexpr int kEmitWarps = 8;
constexpr int kThreads = 256;

__host__ __device__ __forceinline__ int64_t PagesFor(int64_t tokens, int32_t page_size) {
  return (tokens + page_size - 1) / page_size;
}

// One stream as gpu:: sees it once its arrays are clamped (global_kept.h).
struct StreamPlan {
  double mass;             // its candidates' scores summed in slot order; 0 unless it evicts
  int32_t begin;           // its first score
  int32_t num_tokens;
  int32_t num_candidates;  // the first slots; the rest are protected
  int32_t min_kept;        // max(protected, min(floor, num_tokens))

  __device__ int32_t max_evicted() const { return num_tokens - min_kept; }
  __device__ int64_t num_events(int32_t page_size) const {
    return PagesFor(num_tokens, page_size) - PagesFor(min_kept, page_size);
  }
  // The count of tokens on the last page: evicting that many frees the first page.
  __device__ int64_t first_event_rank(int32_t page_size) const {
    return num_tokens - int64_t{page_size} * (PagesFor(num_tokens, page_size) - 1);
  }
  // A candidate's share of the stream's mass. A stream without mass is
  // uniform. Only called on evicting streams, which have candidates.
  __device__ double Share(float score) const {
    return mass > 0.0 ? static_cast<double>(score) / mass
                      : 1.0 / static_cast<double>(num_candidates);
  }
};

// The pages_to_free-th event, the last token evicted. stream < 0: there is
// none, because the floors cannot free pages_to_free pages.
struct Threshold {
  double share;
  int32_t stream;
  int32_t rank;  // the stream's evictions, this token included
};

// The sort key of a share, with -0 folded into +0: they compare equal as
// doubles, and the key must agree.
__device__ __forceinline__ uint64_t ShareKey(double share) {
  if (share == 0.0) share = 0.0;
  return static_cast<uint64_t>(__double_as_longlong(share)) & kKeyMask;
}

__device__ __forceinline__ int32_t ClampedOffset(const GlobalKeptArgs& args, int64_t i) {
  return min(max(args.score_offsets[i], 0), args.num_scores);
}

// Stream s over [begin, end), its candidate count and floor clamped.
__device__ StreamPlan ClampedPlan(const GlobalKeptArgs& args, int64_t s, int32_t begin,
                                  int32_t end) {
  end = max(end, begin);
  StreamPlan plan;
  plan.mass = 0.0;
  plan.begin = begin;
  plan.num_tokens = end - begin;
  plan.num_candidates = min(max(args.candidate_counts[s], 0), plan.num_tokens);
  plan.min_kept = max(plan.num_tokens - plan.num_candidates,
                      min(max(args.floors[s], 0), plan.num_tokens));
  return plan;
}

__global__ void __launch_bounds__(kThreads) KeepAllKernel(const GlobalKeptArgs args) {
  const int64_t s = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (s >= args.num_streams) return;
  const int32_t end = max(ClampedOffset(args, s + 1), ClampedOffset(args, s));
  args.kept_counts[s] = end - ClampedOffset(args, s);
}

// The clamped offsets, made non-decreasing by the running maximum that
// follows: with bad offsets, streams could otherwise overlap, and two CTAs of
// the segmented sort would write the same scores while reading them (its
// scatter offsets come from counts, so they could then leave the segment).
__global__ void __launch_bounds__(kThreads)
    ClampOffsetsKernel(const GlobalKeptArgs args, int32_t* __restrict__ bounds) {
  const int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i <= args.num_streams) bounds[i] = ClampedOffset(args, i);
}

// This lane's column of the warp's tile: row r's score at `column`, 0 past the
// row's length. The 32 lanes read 32 consecutive scores of each row, so each
// of the 32 independent loads is coalesced.
__device__ __forceinline__ void LoadColumn(float (&values)[32], const float* __restrict__ scores,
                                           const int32_t* row_begin, const int32_t* row_length,
                                           int64_t column) {
#pragma unroll
  for (int r = 0; r < 32; ++r) {
    values[r] = column < row_length[r] ? __ldg(scores + row_begin[r] + column) : 0.0f;
  }
}

// Step 1. Each lane plans one stream and writes its sort segment and event
// count; then the warp sums its 32 streams' masses. The zeros past a row's end
// come after all of its scores, and adding +0.0 to a sum that is never -0.0
// leaves it unchanged, so each sum is exactly the policy's.
__global__ void __launch_bounds__(kPlanWarps * 32)
    PlanKernel(const GlobalKeptArgs args, const int32_t* __restrict__ bounds,
               StreamPlan* __restrict__ plans,
               int32_t* __restrict__ sort_begin, int32_t* __restrict__ sort_end,
               int64_t* __restrict__ event_counts) {
  __shared__ float tile[kPlanWarps][32][33];  // padded: conflict-free by row and by column
  __shared__ int32_t row_begin[kPlanWarps][32];
  __shared__ int32_t row_length[kPlanWarps][32];
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int32_t num_streams = args.num_streams;
  const int64_t s = (int64_t{blockIdx.x} * kPlanWarps + warp) * 32 + lane;
  StreamPlan plan = {0.0, 0, 0, 0, 0};
  int32_t summed = 0;  // the candidates whose mass matters: only an evicting stream's
  if (s < num_streams) {
    plan = ClampedPlan(args, s, bounds[s], bounds[s + 1]);
    summed = plan.max_evicted() > 0 ? plan.num_candidates : 0;
    sort_begin[s] = plan.begin;
    sort_end[s] = plan.begin + summed;
    event_counts[num_streams - 1 - s] = plan.num_events(args.page_size);
    if (s == 0) event_counts[num_streams] = 0;  // the scan's total lands there
  }
  row_begin[warp][lane] = plan.begin;
  row_length[warp][lane] = summed;
  __syncwarp();
  const int32_t longest = __reduce_max_sync(~0u, summed);

  double mass = 0.0;
  float chunk[32];
  LoadColumn(chunk, args.scores, row_begin[warp], row_length[warp], lane);
  for (int64_t base = 0; base < longest; base += 32) {
#pragma unroll
    for (int r = 0; r < 32; ++r) tile[warp][r][lane] = chunk[r];
    __syncwarp();
    // The next chunk's loads are in flight while the adds run.
    if (base + 32 < longest) {
      LoadColumn(chunk, args.scores, row_begin[warp], row_length[warp], base + 32 + lane);
    }
#pragma unroll
    for (int k = 0; k < 32; ++k) mass += static_cast<double>(tile[warp][lane][k]);
    __syncwarp();
  }
  if (s < num_streams) {
    plan.mass = mass;
    plans[s] = plan;
  }
}

// Step 3. One warp per stream writes its events at its offset in the
// reversed layout. Only offsets that overlap (bad contents) can make the
// events outgrow the capacity; those past it are dropped.
__global__ void __launch_bounds__(kEmitWarps * 32)
    EmitEventsKernel(const StreamPlan* __restrict__ plans, int32_t num_streams, int32_t page_size,
                     const float* __restrict__ sorted, const int64_t* __restrict__ event_starts,
                     int32_t capacity, uint64_t* __restrict__ keys, uint32_t* __restrict__ values) {
  const int64_t s = int64_t{blockIdx.x} * kEmitWarps + threadIdx.x / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  if (s >= num_streams) return;
  const StreamPlan plan = plans[s];
  const int64_t count = plan.num_events(page_size);
  const int64_t start = event_starts[num_streams - 1 - s];
  const int64_t first = plan.first_event_rank(page_size);
  const float* candidates = sorted + plan.begin;
  for (int64_t j = lane; j < count; j += 32) {
    const int64_t at = start + j;
    if (at >= capacity) break;
    // Rank in [1, max_evicted] <= num_candidates: inside the sorted segment.
    const int64_t rank = first + j * page_size;
    keys[at] = ShareKey(plan.Share(candidates[rank - 1]));
    values[at] = static_cast<uint32_t>(at);
  }
}

// The capacity past the last event, padded with the largest key so that it
// sorts after every event (stable: even after a garbage key that equals it).
__global__ void __launch_bounds__(kThreads)
    PadEventsKernel(const int64_t* __restrict__ total_events, int32_t capacity,
                    uint64_t* __restrict__ keys, uint32_t* __restrict__ values) {
  const int64_t first = max(*total_events, int64_t{0});
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t at = first + int64_t{blockIdx.x} * blockDim.x + threadIdx.x; at < capacity;
       at += stride) {
    keys[at] = kPaddingKey;
    values[at] = static_cast<uint32_t>(at);
  }
}

// Step 4, one thread. event_starts is over streams in reverse order, [S + 1],
// with the total number of events at [S].
__global__ void FindThresholdKernel(const StreamPlan* __restrict__ plans, int32_t num_streams,
                                    int32_t page_size, const int64_t* __restrict__ event_starts,
                                    const uint64_t* __restrict__ keys,
                                    const uint32_t* __restrict__ values, int32_t capacity,
                                    int64_t pages_to_free, Threshold* __restrict__ threshold) {
  Threshold t = {0.0, -1, 0};
  const int64_t total = event_starts[num_streams];
  if (pages_to_free >= 1 && pages_to_free <= total && pages_to_free <= capacity) {
    const int64_t event = values[pages_to_free - 1];
    if (event < total) {
      // The reversed index whose events hold `event`: the last one starting at
      // or before it (a stream without events shares its start with the next).
      int32_t lo = 0, hi = num_streams - 1;
      while (lo < hi) {
        const int32_t mid = lo + (hi - lo + 1) / 2;
        if (event_starts[mid] <= event) {
          lo = mid;
        } else {
          hi = mid - 1;
        }
      }
      const int32_t stream = num_streams - 1 - lo;
      const StreamPlan plan = plans[stream];
      const int64_t rank =
          plan.first_event_rank(page_size) + (event - event_starts[lo]) * page_size;
      t.share = __longlong_as_double(static_cast<long long>(keys[pages_to_free - 1]));
      t.stream = stream;
      t.rank = static_cast<int32_t>(min(max(rank, int64_t{0}), int64_t{plan.max_evicted()}));
    }
  }
  *threshold = t;
}

// How many of a stream's max_evicted lowest candidates come before the
// threshold in the global order: a binary search over its sorted candidates,
// whose shares do not decrease.
__device__ int32_t EvictedBefore(const StreamPlan& plan, const float* __restrict__ candidates,
                                 double threshold_share, bool ties_first) {
  int32_t lo = 0, hi = plan.max_evicted();
  while (lo < hi) {
    const int32_t mid = lo + (hi - lo) / 2;
    const double share = plan.Share(candidates[mid]);
    const bool before = ties_first ? share <= threshold_share : share < threshold_share;
    if (before) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

__global__ void __launch_bounds__(kThreads)
    ApplyThresholdKernel(const StreamPlan* __restrict__ plans, int32_t num_streams,
                         const float* __restrict__ sorted, const Threshold* __restrict__ threshold,
                         int32_t* __restrict__ kept_counts) {
  const int64_t s = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (s >= num_streams) return;
  const StreamPlan plan = plans[s];
  const Threshold t = *threshold;
  int32_t evicted = 0;
  if (t.stream < 0) {
    evicted = plan.max_evicted();
  } else if (s == t.stream) {
    evicted = t.rank;
  } else if (plan.max_evicted() > 0) {
    // Equal shares go higher stream first: a higher stream's ties are ahead.
    evicted = EvictedBefore(plan, sorted + plan.begin, t.share, s > t.stream);
  }
  kept_counts[s] = plan.num_tokens - evicted;
}

// The CUB calls, one function each, so that sizing and running instantiate
// the same templates. A null `scratch` only sets `bytes`.
cudaError_t SortStreams(void* scratch, size_t& bytes, const float* scores, float* sorted,
                        int32_t num_scores, int32_t num_streams, const int32_t* begin,
                        const int32_t* end, cudaStream_t stream) {
  return cub::DeviceSegmentedRadixSort::SortKeys(scratch, bytes, scores, sorted, num_scores,
                                                 num_streams, begin, end, 0, 32, stream);
}

cudaError_t RunningMaximum(void* scratch, size_t& bytes, int32_t* bounds, int32_t num_items,
                           cudaStream_t stream) {
  return cub::DeviceScan::InclusiveScan(scratch, bytes, bounds, cuda::maximum<int32_t>{},
                                        num_items, stream);
}

cudaError_t ScanEvents(void* scratch, size_t& bytes, const int64_t* counts, int64_t* starts,
                       int32_t num_items, cudaStream_t stream) {
  return cub::DeviceScan::ExclusiveSum(scratch, bytes, counts, starts, num_items, stream);
}

cudaError_t SortEvents(void* scratch, size_t& bytes, cub::DoubleBuffer<uint64_t>& keys,
                       cub::DoubleBuffer<uint32_t>& values, int32_t num_items,
                       cudaStream_t stream) {
  return cub::DeviceRadixSort::SortPairs(scratch, bytes, keys, values, num_items, 0,
                                         kGlobalKeptKeyBits, stream);
}

// The workspace's sections, in bytes from its start, each 256-byte aligned.
struct Layout {
  int32_t capacity = 0;  // events: num_scores / page_size + num_streams (global_kept.cc)
  size_t bounds = 0;        // [S + 1] int32, the offsets clamped and non-decreasing
  size_t plans = 0;         // [S] StreamPlan
  size_t sort_begin = 0;    // [S] int32, CUB's segments
  size_t sort_end = 0;      // [S] int32
  size_t event_counts = 0;  // [S + 1] int64, reversed stream order
  size_t event_starts = 0;  // [S + 1] int64, their exclusive scan
  size_t threshold = 0;     // Threshold
  size_t sorted = 0;        // [num_scores] float, each evicting stream's candidates sorted
  size_t keys[2] = {0, 0};    // [capacity] uint64, the events' double buffer
  size_t values[2] = {0, 0};  // [capacity] uint32
  size_t scratch = 0;       // CUB's scratch, shared by its four calls in turn
  size_t scratch_bytes = 0;
  size_t total = 0;
};

LaunchResult PlanLayout(const GlobalKeptArgs& args, Layout* layout) {
  Layout l;
  const size_t num_streams = static_cast<size_t>(args.num_streams);
  l.capacity = static_cast<int32_t>(int64_t{args.num_scores} / args.page_size + args.num_streams);
  const size_t capacity = static_cast<size_t>(l.capacity);
  size_t at = 0;
  auto take = [&at](size_t bytes) {
    const size_t start = at;
    at += (bytes + 255) / 256 * 256;
    return start;
  };
  l.bounds = take((num_streams + 1) * sizeof(int32_t));
  l.plans = take(num_streams * sizeof(StreamPlan));
  l.sort_begin = take(num_streams * sizeof(int32_t));
  l.sort_end = take(num_streams * sizeof(int32_t));
  l.event_counts = take((num_streams + 1) * sizeof(int64_t));
  l.event_starts = take((num_streams + 1) * sizeof(int64_t));
  l.threshold = take(sizeof(Threshold));
  l.sorted = take(static_cast<size_t>(args.num_scores) * sizeof(float));
  for (int i = 0; i < 2; ++i) l.keys[i] = take(capacity * sizeof(uint64_t));
  for (int i = 0; i < 2; ++i) l.values[i] = take(capacity * sizeof(uint32_t));

  size_t maximum = 0, segmented = 0, scan = 0, radix = 0;
  cudaError_t error = RunningMaximum(nullptr, maximum, nullptr, args.num_streams + 1, nullptr);
  if (error == cudaSuccess) {
    error = SortStreams(nullptr, segmented, nullptr, nullptr, args.num_scores, args.num_streams,
                        nullptr, nullptr, nullptr);
  }
  if (error == cudaSuccess) {
    error = ScanEvents(nullptr, scan, nullptr, nullptr, args.num_streams + 1, nullptr);
  }
  if (error == cudaSuccess) {
    cub::DoubleBuffer<uint64_t> keys;
    cub::DoubleBuffer<uint32_t> values;
    error = SortEvents(nullptr, radix, keys, values, l.capacity, nullptr);
  }
  if (error != cudaSuccess) return CudaErrorResult(error);
  l.scratch_bytes = std::max({maximum, segmented, scan, radix, size_t{1}});
  l.scratch = take(l.scratch_bytes);
  l.total = at;
  *layout = l;
  return LaunchResult{};
}

unsigned BlocksFor(int64_t items, int64_t per_block) {
  return static_cast<unsigned>((items + per_block - 1) / per_block);
}

}  // namespace
}  // namespace global_kept

LaunchResult GlobalKeptWorkspaceBytesOnDevice(const GlobalKeptArgs& args, size_t* bytes) {
  global_kept::Layout layout;
  const LaunchResult result = global_kept::PlanLayout(args, &layout);
  *bytes = result.ok() ? layout.total : 0;
  return result;
}

LaunchResult LaunchGlobalKept(const GlobalKeptArgs& args, GpuStream stream) {
  using global_kept::ApplyThresholdKernel;
  using global_kept::BlocksFor;
  using global_kept::ClampOffsetsKernel;
  using global_kept::EmitEventsKernel;
  using global_kept::FindThresholdKernel;
  using global_kept::KeepAllKernel;
  using global_kept::kEmitWarps;
  using global_kept::kPlanWarps;
  using global_kept::kThreads;
  using global_kept::Layout;
  using global_kept::PadEventsKernel;
  using global_kept::PlanKernel;
  using global_kept::RunningMaximum;
  using global_kept::ScanEvents;
  using global_kept::SortEvents;
  using global_kept::SortStreams;
  using global_kept::StreamPlan;
  using global_kept::Threshold;
  const int32_t num_streams = args.num_streams;
  if (num_streams == 0) return LaunchResult{};
  if (args.pages_to_free == 0) {
    KeepAllKernel<<<BlocksFor(num_streams, kThreads), kThreads, 0, stream>>>(args);
    return CheckLaunch();
  }
  Layout layout;
  LaunchResult result = global_kept::PlanLayout(args, &layout);
  if (!result.ok()) return result;
  char* workspace = static_cast<char*>(args.workspace);
  auto* bounds = reinterpret_cast<int32_t*>(workspace + layout.bounds);
  auto* plans = reinterpret_cast<StreamPlan*>(workspace + layout.plans);
  auto* sort_begin = reinterpret_cast<int32_t*>(workspace + layout.sort_begin);
  auto* sort_end = reinterpret_cast<int32_t*>(workspace + layout.sort_end);
  auto* event_counts = reinterpret_cast<int64_t*>(workspace + layout.event_counts);
  auto* event_starts = reinterpret_cast<int64_t*>(workspace + layout.event_starts);
  auto* threshold = reinterpret_cast<Threshold*>(workspace + layout.threshold);
  auto* sorted = reinterpret_cast<float*>(workspace + layout.sorted);
  cub::DoubleBuffer<uint64_t> keys(reinterpret_cast<uint64_t*>(workspace + layout.keys[0]),
                                   reinterpret_cast<uint64_t*>(workspace + layout.keys[1]));
  cub::DoubleBuffer<uint32_t> values(reinterpret_cast<uint32_t*>(workspace + layout.values[0]),
                                     reinterpret_cast<uint32_t*>(workspace + layout.values[1]));
  void* scratch = workspace + layout.scratch;

  ClampOffsetsKernel<<<BlocksFor(int64_t{num_streams} + 1, kThreads), kThreads, 0, stream>>>(
      args, bounds);
  if (!(result = CheckLaunch()).ok()) return result;
  size_t bytes = layout.scratch_bytes;
  cudaError_t error = RunningMaximum(scratch, bytes, bounds, num_streams + 1, stream);
  if (error != cudaSuccess) return CudaErrorResult(error);
  PlanKernel<<<BlocksFor(num_streams, kPlanWarps * 32), kPlanWarps * 32, 0, stream>>>(
      args, bounds, plans, sort_begin, sort_end, event_counts);
  if (!(result = CheckLaunch()).ok()) return result;
  if (args.num_scores > 0) {
    bytes = layout.scratch_bytes;
    error = SortStreams(scratch, bytes, args.scores, sorted, args.num_scores, num_streams,
                        sort_begin, sort_end, stream);
    if (error != cudaSuccess) return CudaErrorResult(error);
  }
  bytes = layout.scratch_bytes;
  error = ScanEvents(scratch, bytes, event_counts, event_starts, num_streams + 1, stream);
  if (error != cudaSuccess) return CudaErrorResult(error);
  EmitEventsKernel<<<BlocksFor(num_streams, kEmitWarps), kEmitWarps * 32, 0, stream>>>(
      plans, num_streams, args.page_size, sorted, event_starts, layout.capacity, keys.Current(),
      values.Current());
  if (!(result = CheckLaunch()).ok()) return result;
  // A grid-stride loop: enough blocks to fill the GPU, not one per padded event.
  const unsigned pad_blocks = std::min(BlocksFor(layout.capacity, kThreads), 2048u);
  PadEventsKernel<<<pad_blocks, kThreads, 0, stream>>>(event_starts + num_streams,
                                                       layout.capacity, keys.Current(),
                                                       values.Current());
  if (!(result = CheckLaunch()).ok()) return result;
  bytes = layout.scratch_bytes;
  error = SortEvents(scratch, bytes, keys, values, layout.capacity, stream);
  if (error != cudaSuccess) return CudaErrorResult(error);
  FindThresholdKernel<<<1, 1, 0, stream>>>(plans, num_streams, args.page_size, event_starts,
                                           keys.Current(), values.Current(), layout.capacity,
                                           args.pages_to_free, threshold);
  if (!(result = CheckLaunch()).ok()) return result;
  ApplyThresholdKernel<<<BlocksFor(num_streams, kThreads), kThreads, 0, stream>>>(
      plans, num_streams, sorted, threshold, args.kept_counts);
  return CheckLaunch();
}

}  // namespace headpage::gpu::internal
