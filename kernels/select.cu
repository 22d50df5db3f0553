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
#include <cooperative_groups.h>

#include <mutex>

#include <cub/block/block_scan.cuh>

#include "kernels/cuda_common.cuh"
#include "kernels/select_args.h"

namespace headpage::gpu::internal {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxBins = 2048;           // the widest digit: 11 bits
constexpr int64_t kAllKeys = int64_t{1} << 32;  // a key limit above every key
constexpr int kUnroll = 4;               // independent loads in flight per thread
// A CTA keeps its share of the group's keys in dynamic shared memory when it
// fits (160 KiB: one CTA per SM), so that only the first pass reads global
// memory.
constexpr int32_t kCacheKeys = 40 * 1024;
constexpr size_t kCacheBytes = sizeof(uint32_t) * kCacheKeys;

// The unsigned order of the key is the float order: negative floats get every
// bit flipped, the others the sign bit set; -0 is folded into +0 first, so
// that keys are equal exactly when the floats compare equal (as
// policy::internal::OrderedKey). A NaN has no place in that order: one with
// the sign bit clear keys above +inf, one with it set below -inf.
__device__ __forceinline__ uint32_t OrderedKey(float x) {
  uint32_t bits = __float_as_uint(x);
  bits = bits == 0x80000000u ? 0u : bits;
  return bits ^ ((0u - (bits >> 31)) | 0x80000000u);
}

// A run of scores in a group's concatenation. The group's order (for ties) is
// segment order, then index order.
struct Segment {
  int32_t first;  // index of its first score in SelectArgs::scores
  int32_t size;
  int32_t start;  // where it starts in the group's concatenation
  int32_t extra;  // copies of key `limit` it holds beyond its own scores
  int64_t limit;  // only its scores whose keys are below limit belong to it
};

// The top k of a group: every key above `threshold` and the first `ties`
// keys equal to it. What is left out is every key below `rest_limit` plus
// `rest_extra` copies of it (how kProtectTop hands a stream's remainder to the
// sequence's select, as the CPU does, as a multiset).
struct Cut {
  int64_t threshold;
  int32_t ties;
  int32_t rest_extra;
  int64_t rest_limit;
};

// kProtectTop's per-stream remainder in the workspace (16 bytes a stream).
struct RestCut {
  int64_t limit;
  int32_t extra;
  int32_t unused;
};

// The CTAs that work on one group. Launches always carry a cluster dimension
// (1 included), so distributed shared memory works the same for every size.
struct Group {
  cg::cluster_group cluster;
  uint32_t rank;
  uint32_t size;

  __device__ Group()
      : cluster(cg::this_cluster()), rank(cluster.block_rank()), size(cluster.num_blocks()) {}
  __device__ void Sync() { cluster.sync(); }
  template <typename T>
  __device__ T* Peer(T* local, uint32_t peer) {
    return cluster.map_shared_rank(local, peer);
  }
  // This CTA's share [lo, hi) of `total` items.
  __device__ int32_t ShareBegin(int32_t total) const {
    return static_cast<int32_t>(int64_t{total} * rank / size);
  }
  __device__ int32_t ShareEnd(int32_t total) const {
    return static_cast<int32_t>(int64_t{total} * (rank + 1) / size);
  }
};

using BlockScan = cub::BlockScan<int32_t, kThreads>;

struct SelectShared {
  // This CTA's histogram, double-buffered: peers read pass p's while this CTA
  // may already fill pass p + 1's.
  uint32_t hist[2][kMaxBins];
  uint32_t combined[kMaxBins];  // the cluster's
  typename BlockScan::TempStorage scan;
  int32_t bucket;  // FindBucket's answer
  int32_t need;
  int32_t count;
};

// Calls f(index, key) for every index in [lo, hi) of p, spread over the CTA:
// 16-byte loads for the aligned body, kUnroll of them in flight per thread.
template <typename F>
__device__ __forceinline__ void ForEachKey(const float* __restrict__ p, int32_t lo, int32_t hi,
                                           F&& f) {
  if (lo >= hi) return;
  const int t = threadIdx.x;
  const int32_t misalign = static_cast<int32_t>((reinterpret_cast<uintptr_t>(p + lo) >> 2) & 3);
  const int32_t body = min(hi, lo + ((4 - misalign) & 3));
  if (t < body - lo) f(lo + t, OrderedKey(__ldg(p + lo + t)));
  const int32_t num_vectors = (hi - body) >> 2;
  const float4* vectors = reinterpret_cast<const float4*>(p + body);
  for (int32_t i = t; i < num_vectors; i += kThreads * kUnroll) {
    float4 x[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int32_t j = i + u * kThreads;
      x[u] = j < num_vectors ? __ldg(vectors + j) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int32_t j = i + u * kThreads;
      if (j < num_vectors) {
        const int32_t at = body + 4 * j;
        f(at, OrderedKey(x[u].x));
        f(at + 1, OrderedKey(x[u].y));
        f(at + 2, OrderedKey(x[u].z));
        f(at + 3, OrderedKey(x[u].w));
      }
    }
  }
  const int32_t tail = body + 4 * num_vectors;
  if (t < hi - tail) f(tail + t, OrderedKey(__ldg(p + tail + t)));
}

// Calls f(key) for cache[lo, hi), spread over the CTA.
template <typename F>
__device__ __forceinline__ void ForEachCachedKey(const uint32_t* cache, int32_t lo, int32_t hi,
                                                 F&& f) {
  for (int32_t i = lo + static_cast<int32_t>(threadIdx.x); i < hi; i += kThreads * kUnroll) {
    uint32_t keys[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int32_t j = i + u * kThreads;
      keys[u] = j < hi ? cache[j] : 0u;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (i + u * kThreads < hi) f(keys[u]);
    }
  }
}

// A CTA's share of its group: indices [lo, hi) of the concatenation of the
// group's segments, and their keys in shared memory (cache[i - lo] for index
// i) once LoadShare found that they fit, else null.
struct Share {
  const float* scores;
  const Segment* segments;
  int num_segments;
  int32_t lo;
  int32_t hi;
  const uint32_t* cache;
};

// Calls f(key) for every key of segment s in the share (the limit filter is
// f's to apply).
template <typename F>
__device__ __forceinline__ void ForEachSegmentKey(const Share& share, int s, F&& f) {
  const Segment seg = share.segments[s];
  const int32_t begin = max(share.lo, seg.start), end = min(share.hi, seg.start + seg.size);
  if (begin >= end) return;
  if (share.cache != nullptr) {
    ForEachCachedKey(share.cache, begin - share.lo, end - share.lo, f);
  } else {
    ForEachKey(share.scores + seg.first, begin - seg.start, end - seg.start,
               [&](int32_t, uint32_t key) { f(key); });
  }
}

// The key of index i of a one-segment share.
__device__ __forceinline__ uint32_t KeyAt(const Share& share, const float* segment_scores,
                                          int32_t i) {
  return share.cache != nullptr ? share.cache[i - share.lo] : OrderedKey(__ldg(segment_scores + i));
}

// In the cluster's histogram of `num_bins` digits, the bucket of the need-th
// largest key (need >= 1): sets sm.bucket, sm.need (how many of its keys the
// top takes) and sm.count (its size), when the histogram holds need keys.
// Returns how many keys it holds.
__device__ int32_t FindBucket(SelectShared& sm, int num_bins, int32_t need) {
  const int per_thread = num_bins / kThreads;
  const int t = threadIdx.x;
  int32_t mine = 0;
  for (int i = 0; i < per_thread; ++i) mine += sm.combined[num_bins - 1 - (t * per_thread + i)];
  int32_t above, total;
  BlockScan(sm.scan).ExclusiveSum(mine, above, total);
  for (int i = 0; i < per_thread; ++i) {
    const int bin = num_bins - 1 - (t * per_thread + i);
    const int32_t h = static_cast<int32_t>(sm.combined[bin]);
    if (above < need && need <= above + h) {
      sm.bucket = bin;
      sm.need = need - above;
      sm.count = h;
    }
    above += h;
  }
  __syncthreads();
  return total;
}

// Reads the share from global memory once: into `buffer` (kCacheKeys keys of
// shared memory) when it fits, and into the first digit's histogram.
__device__ void LoadShare(SelectShared& sm, Share& share, uint32_t* buffer) {
  uint32_t* hist = sm.hist[0];
  for (int b = threadIdx.x; b < kMaxBins; b += kThreads) hist[b] = 0;
  __syncthreads();
  const bool fits = share.hi - share.lo <= kCacheKeys;
  for (int s = 0; s < share.num_segments; ++s) {
    const Segment seg = share.segments[s];
    const int32_t begin = max(share.lo, seg.start), end = min(share.hi, seg.start + seg.size);
    if (begin >= end) continue;
    const int32_t out = seg.start - share.lo;  // cache index of the segment's index 0
    ForEachKey(share.scores + seg.first, begin - seg.start, end - seg.start,
               [&](int32_t i, uint32_t key) {
                 if (fits) buffer[out + i] = key;
                 if (key < seg.limit) atomicAdd(&hist[key >> 21], 1u);
               });
  }
  share.cache = fits ? buffer : nullptr;
  __syncthreads();
}

// The top k of the group, ties in group order, after LoadShare. Every thread
// of every CTA of the cluster calls it and gets the same cut. Once per kernel:
// the histogram buffers are reused without a cluster barrier in front.
__device__ Cut GroupSelect(Group& g, SelectShared& sm, const Share& share, int64_t k) {
  if (k <= 0) return Cut{0xFFFFFFFFll, 0, 0, kAllKeys};
  uint32_t prefix = 0, mask = 0;  // the digits found so far
  int32_t need = static_cast<int32_t>(min(k, int64_t{0x7FFFFFFF}));
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = pass == 0 ? 21 : pass == 1 ? 10 : 0;
    const int num_bins = pass == 2 ? 1024 : 2048;
    uint32_t* hist = sm.hist[pass & 1];
    if (pass > 0) {  // LoadShare built the first
      for (int b = threadIdx.x; b < num_bins; b += kThreads) hist[b] = 0;
      __syncthreads();
      for (int s = 0; s < share.num_segments; ++s) {
        const int64_t limit = share.segments[s].limit;
        ForEachSegmentKey(share, s, [&](uint32_t key) {
          if (key < limit && (key & mask) == prefix) {
            atomicAdd(&hist[(key >> shift) & (num_bins - 1)], 1u);
          }
        });
      }
    }
    if (g.rank == 0) {
      for (int s = threadIdx.x; s < share.num_segments; s += kThreads) {
        const Segment& seg = share.segments[s];
        const uint32_t key = static_cast<uint32_t>(seg.limit);
        if (seg.extra > 0 && (key & mask) == prefix) {
          atomicAdd(&hist[(key >> shift) & (num_bins - 1)], static_cast<uint32_t>(seg.extra));
        }
      }
    }
    g.Sync();
    for (int b = threadIdx.x; b < num_bins; b += kThreads) {
      uint32_t sum = 0;
#pragma unroll
      for (int r = 0; r < kSelectMaxCtasPerGroup; ++r) {
        if (r < static_cast<int>(g.size)) sum += g.Peer(hist, r)[b];
      }
      sm.combined[b] = sum;
    }
    __syncthreads();
    const int32_t total = FindBucket(sm, num_bins, need);
    if (pass == 0 && need >= total) return Cut{-1, 0, 0, 0};  // all of it
    prefix |= static_cast<uint32_t>(sm.bucket) << shift;
    mask |= static_cast<uint32_t>(num_bins - 1) << shift;
    // The top takes the whole bucket: everything from its lowest key up.
    if (sm.count == sm.need) return Cut{int64_t{prefix} - 1, 0, 0, prefix};
    need = sm.need;
  }
  return Cut{prefix, need, sm.count - need, prefix};
}

// One stream: its tokens are [offset, offset + n) of the arrays, its
// candidates slots [begin, end).
struct StreamRange {
  int32_t offset;
  int32_t n;
  int32_t begin;
  int32_t end;

  __device__ int32_t num_candidates() const { return end - begin; }
  __device__ int32_t num_protected() const { return n - num_candidates(); }
};

// The first j in [0, n) with p[j] >= value (n if none), p ascending; called by
// a whole warp. The first 32 are probed at once (sinks are few), then a
// 32-way search narrows the range 32-fold per step. Memory-safe for any p.
__device__ int32_t WarpLowerBound(const int32_t* p, int32_t n, int32_t value) {
  const int lane = threadIdx.x & 31;
  const bool first_below = lane < n && p[lane] < value;
  const int32_t in_first = __popc(__ballot_sync(~0u, first_below));
  if (in_first < min(n, 32)) return in_first;
  int32_t lo = 32, hi = n;  // the answer is in [lo, hi]
  while (lo < hi) {
    const int32_t stride = (hi - lo + 31) / 32;
    const int64_t probe = lo + int64_t{lane} * stride;
    const bool below = probe < hi && p[probe] < value;
    const int32_t c = __popc(__ballot_sync(~0u, below));
    if (c == 0) break;
    hi = static_cast<int32_t>(min(int64_t{hi}, lo + int64_t{c} * stride));
    lo = lo + (c - 1) * stride + 1;
  }
  return lo;
}

// Called by a whole warp.
__device__ StreamRange LocateStream(const SelectArgs& a, int32_t s) {
  const int32_t offset = a.score_offsets[s];
  const int32_t n =
      static_cast<int32_t>(max(int64_t{0}, int64_t{a.score_offsets[s + 1]} - offset));
  const int32_t begin = WarpLowerBound(a.positions + offset, n, a.sinks);
  const int32_t end = static_cast<int32_t>(
      min(max(int64_t{n} - a.recent, int64_t{begin}), int64_t{n}));
  return StreamRange{offset, n, begin, end};
}

// Ada-KV's B'_h (a capacity below the protected count, which the host cannot
// check, counts as 0) and kProtectTop's floor(alpha B'_h), in double exactly
// as the CPU computes them.
__device__ int64_t AdaBudget(const SelectArgs& a, int32_t num_protected) {
  return max(int64_t{0}, int64_t{a.capacity} - num_protected);
}
__device__ int64_t AdaFloorOf(double alpha, int64_t budget) {
  return static_cast<int64_t>(floor(__dmul_rn(alpha, static_cast<double>(budget))));
}

struct EmitShared {
  int32_t warp_above[kWarps];  // per warp: keys above the threshold, then their prefix
  int32_t warp_equal[kWarps];  // keys equal to it
  int32_t cta_above;           // this CTA's totals (peers read them)
  int32_t cta_equal;
  int32_t base_above;  // what the lower ranks of the cluster hold
  int32_t base_equal;
};

// Writes the candidates of the cut in this CTA's share of one stream to keep
// (the stream's), ascending. The share indexes the stream's candidates, which
// start at slot `begin`, after the sinks.
__device__ void EmitKeep(Group& g, EmitShared& es, const Share& share, int32_t* __restrict__ keep,
                         const Cut& cut, int32_t begin) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t len = share.hi - share.lo;
  const int32_t warp_lo = share.lo + static_cast<int32_t>(len * warp / kWarps);
  const int32_t warp_hi = share.lo + static_cast<int32_t>(len * (warp + 1) / kWarps);
  const int64_t threshold = cut.threshold;
  const float* scores = share.scores + share.segments[0].first;

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
  __syncthreads();
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
  __syncthreads();

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

// One cluster per stream.
__global__ void __launch_bounds__(kThreads, 1) StreamKernel(const SelectArgs a, StreamPhase phase) {
  __shared__ StreamShared sm;
  extern __shared__ uint4 cache_storage[];  // kCacheBytes
  Group g;
  const int32_t s = static_cast<int32_t>(blockIdx.x / g.size);
  if (threadIdx.x < 32) {
    const StreamRange range = LocateStream(a, s);
    if (threadIdx.x == 0) sm.range = range;
  } else if (threadIdx.x == 32 && phase != StreamPhase::kProtectTopCut) {
    // Loaded beside the search, not after it.
    sm.wanted = phase == StreamPhase::kTopB ? a.kept[s] : a.kept_counts[s];
  }
  __syncthreads();
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
    int32_t* keep = a.keep + r.offset;
    const int32_t first = static_cast<int32_t>(g.rank) * kThreads + threadIdx.x;
    const int32_t stride = static_cast<int32_t>(g.size) * kThreads;
    if (take == num_candidates) {
      for (int32_t j = first; j < r.n; j += stride) keep[j] = j;
      return;
    }
    for (int32_t j = first; j < r.begin; j += stride) keep[j] = j;
    for (int32_t j = r.end + first; j < r.n; j += stride) keep[j - r.end + r.begin + take] = j;
    if (take == 0) return;
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

// One cluster per sequence: Ada-KV's kept counts for its streams.
__global__ void __launch_bounds__(kThreads, 1) AdaKernel(const SelectArgs a) {
  __shared__ AdaShared sm;
  extern __shared__ uint4 cache_storage[];  // kCacheBytes
  Group g;
  const int32_t num_heads = a.num_kv_heads;
  const int32_t first_stream = static_cast<int32_t>(blockIdx.x / g.size) * num_heads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int h = warp; h < num_heads; h += kWarps) {
    const StreamRange range = LocateStream(a, first_stream + h);
    if (lane == 0) sm.ranges[h] = range;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    // The competing streams in head order: a short serial walk.
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
  const int64_t threshold = cut.threshold;
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
  g.Sync();
  if (g.rank == 0) {
    // Only rank 0 reads the peers' counts, and thread i only segment i's.
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
      // The ties at the threshold go to the earliest streams.
      int32_t ties_left = cut.ties;
      for (int i = 0; i < num_segments; ++i) {
        const int32_t taken = min(sm.equal[i], ties_left);
        ties_left -= taken;
        sm.above[i] += taken;
      }
    }
    __syncthreads();
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

LaunchResult LaunchSelect(const SelectArgs& args, GpuStream stream) {
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
