// SPDX-License-Identifier: Apache-2.0
// File: kernels/select.cu
//
// Select on the GPU: an exact MSD radix select on order-preserving keys of the
// float scores (the CPU's policy::internal::OrderedKey), run by one
// thread-block cluster per group, then a stable compaction.
//
//  - A group is one stream (the keep sets), or the competing streams of one
//    kAda sequence (the allocation). Its candidates are split evenly over the
//    cluster's CTAs; each pass builds a histogram of one digit (11, 11, 10 bits)
//    of the keys still tied with the answer, in shared memory, and every CTA
//    sums the cluster's histograms through distributed shared memory and finds
//    the same bucket. A bucket the top k takes whole ends the select early.
//    The result is a cut: every key above a threshold, plus the first `ties`
//    keys equal to it in (stream, slot) order.
//  - Keep sets: each warp counts the keys above and at the threshold in its
//    contiguous slice of the stream; prefix sums over the warps and the
//    cluster's CTAs give each warp its first output index and the ties before
//    it, and a ballot pass writes the kept slots, ascending.
//  - kAda: per sequence, one cut over the competing streams' candidates gives
//    the hits c_h per stream (ties handed out in stream order) and the kept
//    counts, written to kept_counts; the keep-set kernel then reads them.
//    kProtectTop first finds each stream's own top floor(alpha B'_h) (the same
//    stream kernel, storing the cut in the workspace); the sequence's select
//    then ranks, per stream, only the keys that cut leaves out.
//
// Every CTA reads its share of the scores from global memory once, building
// the first histogram as it goes, and keeps the keys in shared memory (160 KiB,
// one 1024-thread CTA per SM) for the later passes, the counts and the keep
// sets; a share too large for that (a group much longer than 40K candidates
// per CTA) is read from global memory (L2) on every pass instead. The cluster
// size is the largest (up to 8) with which every group's cluster runs at once
// (cudaOccupancyMaxActiveClusters), so that a launch is one wave.
#include <mutex>

#include "kernels/cuda_common.cuh"
#include "kernels/select_args.h"
#include "kernels/select_internal.cuh"

namespace headpage::gpu::internal {
namespace selection {
namespace {

// kProtectTop's per-stream remainder in the workspace (16 bytes a stream).
struct RestCut {
  int64_t limit;
  int32_t extra;
  int32_t unused;
};

struct EmitShared {
  int32_t warp_above[kWarps];  // per warp: keys above the threshold, then their prefix
  int32_t warp_equal[kWarps];  // keys equal to it
  int32_t cta_above;           // this CTA's totals (peers read them)
  int32_t cta_equal;
  int32_t base_above;  // what the lower ranks of the cluster hold
  int32_t base_equal;
};

// Stage: the keys above the threshold and equal to it in this warp's slice
// [warp_lo, warp_hi) of the share, into es.warp_above/warp_equal[warp].
__device__ __forceinline__ void CountWarpSlice(EmitShared& es, const Share& share,
                                               const float* scores, int32_t warp_lo,
                                               int32_t warp_hi, int64_t threshold, int warp,
                                               int lane) {
  int32_t above = 0, equal = 0;
#pragma unroll 4
  for (int32_t i = warp_lo + lane; i < warp_hi; i += 32) {
    const int64_t key = KeyAt(share, scores, i);
    above += key > threshold;
    equal += key == threshold;
  }
  above = __reduce_add_sync(~0u, above);
  equal = __reduce_add_sync(~0u, equal);
  if (lane == 0) {
    es.warp_above[warp] = above;
    es.warp_equal[warp] = equal;
  }
}

// Stage, after the warps' counts (and a barrier): their exclusive prefix sums
// over the warps, and this CTA's base, the counts of the cluster's lower ranks.
__device__ __forceinline__ void ScanCounts(Group& g, EmitShared& es, int warp, int lane) {
  if (warp == 0) {
    const int32_t own_above = lane < kWarps ? es.warp_above[lane] : 0;
    const int32_t own_equal = lane < kWarps ? es.warp_equal[lane] : 0;
    int32_t x = own_above, y = own_equal;
#pragma unroll
    for (int d = 1; d < 32; d *= 2) {
      const int32_t xs = __shfl_up_sync(~0u, x, d), ys = __shfl_up_sync(~0u, y, d);
      if (lane >= d) {
        x += xs;
        y += ys;
      }
    }
    if (lane < kWarps) {
      es.warp_above[lane] = x - own_above;
      es.warp_equal[lane] = y - own_equal;
    }
    if (lane == 31) {
      es.cta_above = x;
      es.cta_equal = y;
    }
  }
  g.Sync();
  if (warp == 0) {
    int32_t x = 0, y = 0;
    if (lane < static_cast<int>(g.rank)) {
      x = *g.Peer(&es.cta_above, lane);
      y = *g.Peer(&es.cta_equal, lane);
    }
    x = __reduce_add_sync(~0u, x);
    y = __reduce_add_sync(~0u, y);
    if (lane == 0) {
      es.base_above = x;
      es.base_equal = y;
    }
  }
}

// Stage: the warp's slice again, each kept slot written to its place (a
// ballot per 32 keys): every key above the threshold, and those equal to it
// while the cut's ties last.
__device__ __forceinline__ void WriteKeptSlots(const EmitShared& es, const Share& share,
                                               const float* scores, int32_t* __restrict__ keep,
                                               const Cut& cut, int32_t begin, int32_t warp_lo,
                                               int32_t warp_hi, int warp, int lane) {
  const int64_t threshold = cut.threshold;
  int32_t ties_before = es.base_equal + es.warp_equal[warp];
  int32_t out = begin + es.base_above + es.warp_above[warp] + min(ties_before, cut.ties);
  const uint32_t lanes_below = (1u << lane) - 1;
  for (int32_t chunk = warp_lo; chunk < warp_hi; chunk += 32 * kUnroll) {
    uint32_t keys[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int32_t i = chunk + u * 32 + lane;
      keys[u] = i < warp_hi ? KeyAt(share, scores, i) : 0u;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int32_t i = chunk + u * 32 + lane;
      const bool valid = i < warp_hi;
      const bool is_above = valid && int64_t{keys[u]} > threshold;
      const bool is_equal = valid && int64_t{keys[u]} == threshold;
      const uint32_t equal_mask = __ballot_sync(~0u, is_equal);
      const bool kept =
          is_above || (is_equal && ties_before + __popc(equal_mask & lanes_below) < cut.ties);
      const uint32_t kept_mask = __ballot_sync(~0u, kept);
      if (kept) keep[out + __popc(kept_mask & lanes_below)] = begin + i;
      out += __popc(kept_mask);
      ties_before += __popc(equal_mask);
    }
  }
}

// Writes the candidates of the cut in this CTA's share of one stream to keep
// (the stream's), ascending. The share indexes the stream's candidates, which
// start at slot `begin`, after the sinks. Each warp counts its contiguous
// slice, prefix sums over the warps and the cluster's CTAs give it its first
// output index and the ties before it, and it writes its slice.
__device__ void EmitKeep(Group& g, EmitShared& es, const Share& share, int32_t* __restrict__ keep,
                         const Cut& cut, int32_t begin) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t len = share.hi - share.lo;
  const int32_t warp_lo = share.lo + static_cast<int32_t>(len * warp / kWarps);
  const int32_t warp_hi = share.lo + static_cast<int32_t>(len * (warp + 1) / kWarps);
  const float* scores = share.scores + share.segments[0].first;
  CountWarpSlice(es, share, scores, warp_lo, warp_hi, cut.threshold, warp, lane);
  __syncthreads();
  ScanCounts(g, es, warp, lane);
  __syncthreads();
  WriteKeptSlots(es, share, scores, keep, cut, begin, warp_lo, warp_hi, warp, lane);
}

enum class StreamPhase : int {
  kTopB,            // keep sets for the given kept counts
  kAda,             // keep sets for the counts AdaKernel wrote to kept_counts
  kProtectTopCut,   // kProtectTop: each stream's top floor(alpha B'_h), to the workspace
};

struct StreamShared {
  SelectShared select;
  EmitShared emit;
  Segment segment;
  StreamRange range;
  int32_t wanted;  // the stream's kept count as given (kTopB) or allocated (kAda)
};

// Stage: the stream's range (warp 0) and its wanted count (loaded beside the
// search, not after it), into shared memory for the whole CTA.
__device__ __forceinline__ void LoadStream(const SelectArgs& a, StreamPhase phase, int32_t s,
                                           StreamShared& sm) {
  if (threadIdx.x < 32) {
    const StreamRange range = LocateStream(a, s);
    if (threadIdx.x == 0) sm.range = range;
  } else if (threadIdx.x == 32 && phase != StreamPhase::kProtectTopCut) {
    sm.wanted = phase == StreamPhase::kTopB ? a.kept[s] : a.kept_counts[s];
  }
  __syncthreads();
}

// Stage: the slots kept without ranking, spread over the cluster: all of them
// when every candidate is kept, else the sinks, and the recent ones after the
// `take` candidates to come. Returns whether candidates remain to rank.
__device__ __forceinline__ bool KeepUnranked(const Group& g, int32_t* keep, const StreamRange& r,
                                             int32_t take) {
  const int32_t first = static_cast<int32_t>(g.rank) * kThreads + threadIdx.x;
  const int32_t stride = static_cast<int32_t>(g.size) * kThreads;
  if (take == r.num_candidates()) {
    for (int32_t j = first; j < r.n; j += stride) keep[j] = j;
    return false;
  }
  for (int32_t j = first; j < r.begin; j += stride) keep[j] = j;
  for (int32_t j = r.end + first; j < r.n; j += stride) keep[j - r.end + r.begin + take] = j;
  return take != 0;
}

// One cluster per stream.
__global__ void __launch_bounds__(kThreads, 1) StreamKernel(const SelectArgs a, StreamPhase phase) {
  __shared__ StreamShared sm;
  extern __shared__ uint4 cache_storage[];  // kCacheBytes
  Group g;
  const int32_t s = static_cast<int32_t>(blockIdx.x / g.size);
  LoadStream(a, phase, s, sm);
  const StreamRange r = sm.range;
  const int32_t num_candidates = r.num_candidates(), num_protected = r.num_protected();
  const bool leader = g.rank == 0 && threadIdx.x == 0;
  auto* rest = static_cast<RestCut*>(a.workspace);
  int32_t take;  // how many candidates are kept
  // Every CTA of the cluster reads the same values, so the early returns
  // below are taken by all of them (before any distributed shared memory).
  if (phase == StreamPhase::kProtectTopCut) {
    const int64_t budget = AdaBudget(a, num_protected);
    const int64_t safe = budget < num_candidates ? AdaFloorOf(a.alpha, budget) : 0;
    if (safe == 0) {
      if (leader) rest[s] = RestCut{kAllKeys, 0, 0};
      return;
    }
    take = static_cast<int32_t>(safe);
  } else {
    const int32_t kept = min(max(sm.wanted, num_protected), r.n);
    if (phase == StreamPhase::kTopB && leader) a.kept_counts[s] = kept;
    take = kept - num_protected;
    if (!KeepUnranked(g, a.keep + r.offset, r, take)) return;
  }

  if (threadIdx.x == 0) sm.segment = Segment{r.offset + r.begin, num_candidates, 0, 0, kAllKeys};
  __syncthreads();
  Share share{a.scores, &sm.segment, 1, g.ShareBegin(num_candidates),
              g.ShareEnd(num_candidates), nullptr};
  LoadShare(sm.select, share, reinterpret_cast<uint32_t*>(cache_storage));
  const Cut cut = GroupSelect(g, sm.select, share, take);
  if (phase == StreamPhase::kProtectTopCut) {
    if (leader) rest[s] = RestCut{cut.rest_limit, cut.rest_extra, 0};
  } else {
    EmitKeep(g, sm.emit, share, a.keep + r.offset, cut, r.begin);
  }
  g.Sync();  // peers may still read this CTA's shared memory
}

struct AdaShared {
  SelectShared select;
  StreamRange ranges[kSelectMaxAdaHeads];
  Segment segments[kSelectMaxAdaHeads];  // the competing streams' candidates
  int32_t segment_head[kSelectMaxAdaHeads];
  // Per segment, keys above the cut and at it: this CTA's, then (rank 0) the
  // cluster's, then the hits.
  int32_t above[kSelectMaxAdaHeads];
  int32_t equal[kSelectMaxAdaHeads];
  int32_t num_segments;
  int32_t total;  // candidates of the competing streams
  int64_t k;      // what the select takes
};

// Stage: the ranges of the sequence's streams (a warp each), then, by one
// thread in head order (a short serial walk), the competing streams: those
// whose budget does not cover their candidates, as the select's segments,
// and what the select takes.
__device__ __forceinline__ void CollectCompetingStreams(const SelectArgs& a, int32_t first_stream,
                                                        AdaShared& sm) {
  const int32_t num_heads = a.num_kv_heads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int h = warp; h < num_heads; h += kWarps) {
    const StreamRange range = LocateStream(a, first_stream + h);
    if (lane == 0) sm.ranges[h] = range;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const auto* rest = static_cast<const RestCut*>(a.workspace);
    int32_t count = 0, start = 0;
    int64_t k = 0;
    for (int h = 0; h < num_heads; ++h) {
      const StreamRange r = sm.ranges[h];
      const int64_t budget = AdaBudget(a, r.num_protected());
      if (budget >= r.num_candidates()) continue;
      Segment seg{r.offset + r.begin, r.num_candidates(), start, 0, kAllKeys};
      k += budget;
      if (a.floor == policy::AdaFloor::kProtectTop) {
        const int64_t safe = AdaFloorOf(a.alpha, budget);
        if (safe > 0) {
          seg.limit = rest[first_stream + h].limit;
          seg.extra = rest[first_stream + h].extra;
        }
        k -= safe;
      }
      sm.segments[count] = seg;
      sm.segment_head[count++] = h;
      start += r.num_candidates();
    }
    sm.num_segments = count;
    sm.total = start;
    sm.k = k;
  }
  __syncthreads();
}

// Stage: this CTA's keys above the cut and at it, per segment, into sm.above
// and sm.equal (rank 0 adds the segments' extra copies of their limit).
__device__ __forceinline__ void CountSegmentsAtCut(const Group& g, AdaShared& sm,
                                                   const Share& share, int num_segments,
                                                   int64_t threshold) {
  const int lane = threadIdx.x % 32;
  for (int i = threadIdx.x; i < num_segments; i += kThreads) {
    sm.above[i] = 0;
    sm.equal[i] = 0;
  }
  __syncthreads();
  for (int i = 0; i < num_segments; ++i) {
    const Segment seg = sm.segments[i];
    if (max(share.lo, seg.start) >= min(share.hi, seg.start + seg.size)) continue;  // CTA-uniform
    int32_t above = 0, equal = 0;
    ForEachSegmentKey(share, i, [&](uint32_t key) {
      const bool member = key < seg.limit;
      above += member && int64_t{key} > threshold;
      equal += member && int64_t{key} == threshold;
    });
    above = __reduce_add_sync(~0u, above);
    equal = __reduce_add_sync(~0u, equal);
    if (lane == 0) {
      atomicAdd(&sm.above[i], above);
      atomicAdd(&sm.equal[i], equal);
    }
  }
  if (g.rank == 0) {
    for (int i = threadIdx.x; i < num_segments; i += kThreads) {
      const Segment seg = sm.segments[i];
      if (seg.extra > 0 && seg.limit > threshold) atomicAdd(&sm.above[i], seg.extra);
      if (seg.extra > 0 && seg.limit == threshold) atomicAdd(&sm.equal[i], seg.extra);
    }
  }
}

// Stage (rank 0, after a cluster barrier): the cluster's counts per segment,
// then the ties at the threshold handed to the earliest streams, leaving each
// segment's hits in sm.above. Only rank 0 reads the peers' counts, and thread
// i only segment i's.
__device__ __forceinline__ void GatherHits(Group& g, AdaShared& sm, int num_segments,
                                           int32_t ties) {
  for (int i = threadIdx.x; i < num_segments; i += kThreads) {
    int32_t above = 0, equal = 0;
#pragma unroll
    for (int r = 0; r < kSelectMaxCtasPerGroup; ++r) {
      if (r < static_cast<int>(g.size)) {
        above += g.Peer(sm.above, r)[i];
        equal += g.Peer(sm.equal, r)[i];
      }
    }
    sm.above[i] = above;
    sm.equal[i] = equal;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t ties_left = ties;
    for (int i = 0; i < num_segments; ++i) {
      const int32_t taken = min(sm.equal[i], ties_left);
      ties_left -= taken;
      sm.above[i] += taken;
    }
  }
  __syncthreads();
}

// Stage (rank 0): each competing stream's kept count from its hits c_h.
__device__ __forceinline__ void WriteAdaKeptCounts(const SelectArgs& a, const AdaShared& sm,
                                                   int num_segments, int32_t first_stream) {
  for (int i = threadIdx.x; i < num_segments; i += kThreads) {
    const int h = sm.segment_head[i];
    const StreamRange r = sm.ranges[h];
    const int64_t budget = AdaBudget(a, r.num_protected());
    const int64_t hits = sm.above[i];
    int64_t b;
    if (a.floor == policy::AdaFloor::kScaled) {
      // round_half_even(c_h (1 - alpha) + floor(alpha B'_h)) in double,
      // unfused as on the CPU; rint rounds half to even.
      const double scaled =
          __dadd_rn(__dmul_rn(static_cast<double>(hits), 1.0 - a.alpha),
                    static_cast<double>(AdaFloorOf(a.alpha, budget)));
      b = static_cast<int64_t>(rint(scaled));
    } else {
      b = AdaFloorOf(a.alpha, budget) + hits;
    }
    a.kept_counts[first_stream + h] =
        static_cast<int32_t>(min(b + r.num_protected(), int64_t{r.n}));
  }
}

// One cluster per sequence: Ada-KV's kept counts for its streams.
__global__ void __launch_bounds__(kThreads, 1) AdaKernel(const SelectArgs a) {
  __shared__ AdaShared sm;
  extern __shared__ uint4 cache_storage[];  // kCacheBytes
  Group g;
  const int32_t num_heads = a.num_kv_heads;
  const int32_t first_stream = static_cast<int32_t>(blockIdx.x / g.size) * num_heads;
  CollectCompetingStreams(a, first_stream, sm);
  if (g.rank == 0) {
    for (int h = threadIdx.x; h < num_heads; h += kThreads) {
      const StreamRange r = sm.ranges[h];
      if (AdaBudget(a, r.num_protected()) >= r.num_candidates()) {
        a.kept_counts[first_stream + h] = r.n;  // covered: keeps everything
      }
    }
  }
  const int num_segments = sm.num_segments;
  if (num_segments == 0) return;  // the same in every CTA

  Share share{a.scores, sm.segments, num_segments, g.ShareBegin(sm.total), g.ShareEnd(sm.total),
              nullptr};
  LoadShare(sm.select, share, reinterpret_cast<uint32_t*>(cache_storage));
  const Cut cut = GroupSelect(g, sm.select, share, sm.k);
  CountSegmentsAtCut(g, sm, share, num_segments, cut.threshold);
  g.Sync();
  if (g.rank == 0) {
    GatherHits(g, sm, num_segments, cut.ties);
    WriteAdaKeptCounts(a, sm, num_segments, first_stream);
  }
  g.Sync();  // rank 0 reads the others' shared memory
}

// Per device, once: each kernel's dynamic shared memory limit raised to
// kCacheBytes, and how many clusters of 1, 2, 4 and 8 CTAs it runs at once.
struct KernelFit {
  bool ready = false;
  int max_clusters[4] = {0, 0, 0, 0};
};
constexpr int kMaxDevices = 64;

LaunchResult PrepareKernel(const void* kernel, int which, int device, KernelFit* fit) {
  static std::mutex mutex;
  static KernelFit table[kMaxDevices][2];
  std::lock_guard<std::mutex> lock(mutex);
  KernelFit& entry = table[device % kMaxDevices][which];
  if (!entry.ready) {
    cudaError_t error = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(kCacheBytes));
    for (int i = 0; i < 4 && error == cudaSuccess; ++i) {
      cudaLaunchConfig_t config = {};
      config.gridDim = dim3(1u << i);
      config.blockDim = dim3(kThreads);
      config.dynamicSmemBytes = kCacheBytes;
      cudaLaunchAttribute attribute;
      attribute.id = cudaLaunchAttributeClusterDimension;
      attribute.val.clusterDim.x = 1u << i;
      attribute.val.clusterDim.y = 1;
      attribute.val.clusterDim.z = 1;
      config.attrs = &attribute;
      config.numAttrs = 1;
      error = cudaOccupancyMaxActiveClusters(&entry.max_clusters[i], kernel, &config);
    }
    if (error != cudaSuccess) return CudaErrorResult(error);
    entry.ready = true;
  }
  *fit = entry;
  return LaunchResult{};
}

// CTAs per group: the forced value, or the largest cluster (up to 8) with
// which every group's cluster runs at once; one CTA when none does.
int CtasPerGroup(int32_t forced, int64_t groups, const KernelFit& fit) {
  int ctas = 1;
  if (forced > 0) {
    ctas = forced;
  } else {
    for (int i = 3; i >= 0; --i) {
      if (groups <= fit.max_clusters[i]) {
        ctas = 1 << i;
        break;
      }
    }
  }
  while (ctas > 1 && groups * ctas > 0x7FFFFFFF) --ctas;  // gridDim.x
  return ctas;
}

// Launches `kernel` with one cluster of `ctas` CTAs per group.
template <typename... Params, typename... Actual>
LaunchResult LaunchClusters(void (*kernel)(Params...), int which, int32_t forced_ctas,
                            int64_t groups, int device, GpuStream stream, Actual&&... args) {
  KernelFit fit;
  const LaunchResult prepared =
      PrepareKernel(reinterpret_cast<const void*>(kernel), which, device, &fit);
  if (!prepared.ok()) return prepared;
  const int ctas = CtasPerGroup(forced_ctas, groups, fit);
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(groups * ctas));
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = kCacheBytes;
  config.stream = stream;
  cudaLaunchAttribute attribute;
  attribute.id = cudaLaunchAttributeClusterDimension;
  attribute.val.clusterDim.x = static_cast<unsigned>(ctas);
  attribute.val.clusterDim.y = 1;
  attribute.val.clusterDim.z = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  const cudaError_t error = cudaLaunchKernelEx(&config, kernel, std::forward<Actual>(args)...);
  if (error != cudaSuccess) return CudaErrorResult(error);
  return CheckLaunch();
}

}  // namespace
}  // namespace selection

LaunchResult LaunchSelect(const SelectArgs& args, GpuStream stream) {
  using selection::AdaKernel;
  using selection::LaunchClusters;
  using selection::StreamKernel;
  using selection::StreamPhase;
  const int64_t num_streams = args.num_streams();
  if (num_streams == 0) return LaunchResult{};
  int device = 0;
  const cudaError_t error = cudaGetDevice(&device);
  if (error != cudaSuccess) return CudaErrorResult(error);
  constexpr int kStream = 0, kAda = 1;
  const int32_t forced = args.ctas_per_group;
  if (args.mode == SelectMode::kAda) {
    if (args.floor == policy::AdaFloor::kProtectTop) {
      const LaunchResult result = LaunchClusters(StreamKernel, kStream, forced, num_streams, device,
                                                 stream, args, StreamPhase::kProtectTopCut);
      if (!result.ok()) return result;
    }
    const LaunchResult result =
        LaunchClusters(AdaKernel, kAda, forced, args.num_seqs, device, stream, args);
    if (!result.ok()) return result;
  }
  return LaunchClusters(StreamKernel, kStream, forced, num_streams, device, stream, args,
                        args.mode == SelectMode::kAda ? StreamPhase::kAda : StreamPhase::kTopB);
}

}  // namespace headpage::gpu::internal
