// SPDX-License-Identifier: Apache-2.0
// File: kernels/select_internal.cuh
//
// What the Select kernels (select.cu, select_ada.cu) share. First the exact
// top-k they run over a group of scores: an MSD radix select on
// order-preserving keys of the floats, three digits (11, 11, 10 bits), by a
// thread-block cluster whose CTAs each hold a share of the group (in shared
// memory when it fits), or by one CTA alone (CtaGroup); a bucket is found from
// the CTAs' sums per 32 bins, read through distributed shared memory, then the
// 32 bins of one chunk; the answer is a Cut. Then a stream's candidate range
// and Ada-KV's budget arithmetic. CUDA, CCCL and plain headers only.
#ifndef HEADPAGE_KERNELS_SELECT_INTERNAL_CUH_
#define HEADPAGE_KERNELS_SELECT_INTERNAL_CUH_

#include <cooperative_groups.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda_common.cuh"
#include "kernels/select_args.h"

namespace headpage::gpu::internal::selection {

namespace cg = cooperative_groups;

inline constexpr int kThreads = 1024;
inline constexpr int kWarps = kThreads / 32;
inline constexpr int kMaxBins = 2048;                  // the widest digit: 11 bits
inline constexpr int64_t kAllKeys = int64_t{1} << 32;  // a key limit above every key
inline constexpr int kUnroll = 4;                      // independent loads in flight per thread
// A CTA keeps its share of the group's keys in dynamic shared memory when it
// fits (160 KiB: one CTA per SM), so that only the first pass reads global
// memory.
inline constexpr int32_t kCacheKeys = 40 * 1024;
inline constexpr size_t kCacheBytes = sizeof(uint32_t) * kCacheKeys;

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

// One CTA working alone (a select over keys only it holds), with Group's
// interface: rank 0 of 1, its barrier __syncthreads.
struct CtaGroup {
  static constexpr uint32_t rank = 0;
  static constexpr uint32_t size = 1;
  __device__ void Sync() { __syncthreads(); }
  template <typename T>
  __device__ T* Peer(T* local, uint32_t) {
    return local;
  }
};

inline constexpr int kBinsPerChunk = 32;
inline constexpr int kMaxChunks = kMaxBins / kBinsPerChunk;

struct SelectShared {
  // This CTA's histogram and its sums per chunk of 32 bins, double-buffered:
  // peers read pass p's while this CTA may already fill pass p + 1's.
  uint32_t hist[2][kMaxBins];
  uint32_t chunks[2][kMaxChunks];
  int32_t bucket;  // FindBucket's answer
  int32_t need;
  int32_t count;
  int32_t total;
  // GroupSelect's count_own: this CTA's keys above the cut and at it.
  int32_t own_above;
  int32_t own_equal;
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

// Every key: the default `wanted` of the key walks below.
struct AnyKey {
  __device__ bool operator()(uint32_t) const { return true; }
};

// Calls f(key) for cache[lo, hi), spread over the CTA: 16-byte loads for the
// aligned body (cache itself is 16-byte aligned), so that a pass costs a few
// instructions per key. `wanted` is a quick test: f sees a vector of four
// keys only when one of them passes it (a select's later passes want few).
template <typename F, typename W = AnyKey>
__device__ __forceinline__ void ForEachCachedKey(const uint32_t* cache, int32_t lo, int32_t hi,
                                                 F&& f, W wanted = W()) {
  if (lo >= hi) return;
  const int t = threadIdx.x;
  const int32_t body = min(hi, (lo + 3) & ~3);
  if (t < body - lo) f(cache[lo + t]);
  const int32_t num_vectors = (hi - body) >> 2;
  const uint4* vectors = reinterpret_cast<const uint4*>(cache + body);
#pragma unroll 2
  for (int32_t i = t; i < num_vectors; i += kThreads) {
    const uint4 v = vectors[i];
    if (!(wanted(v.x) || wanted(v.y) || wanted(v.z) || wanted(v.w))) continue;
    f(v.x);
    f(v.y);
    f(v.z);
    f(v.w);
  }
  const int32_t tail = body + 4 * num_vectors;
  if (t < hi - tail) f(cache[tail + t]);
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
// f's to apply); `wanted` as for ForEachCachedKey.
template <typename F, typename W = AnyKey>
__device__ __forceinline__ void ForEachSegmentKey(const Share& share, int s, F&& f,
                                                  W wanted = W()) {
  const Segment seg = share.segments[s];
  const int32_t begin = max(share.lo, seg.start), end = min(share.hi, seg.start + seg.size);
  if (begin >= end) return;
  if (share.cache != nullptr) {
    ForEachCachedKey(share.cache, begin - share.lo, end - share.lo, f, wanted);
  } else {
    ForEachKey(share.scores + seg.first, begin - seg.start, end - seg.start,
               [&](int32_t, uint32_t key) { f(key); });
  }
}

// Calls f(key) for every key of segment s in the share that belongs to it
// (below its limit); the limit's test is left out for the usual segment that
// has none.
template <typename F, typename W = AnyKey>
__device__ __forceinline__ void ForEachMemberKey(const Share& share, int s, F&& f, W wanted = W()) {
  const int64_t limit = share.segments[s].limit;
  if (limit >= kAllKeys) {
    ForEachSegmentKey(share, s, f, wanted);
  } else {
    const uint32_t below = static_cast<uint32_t>(limit);
    ForEachSegmentKey(
        share, s,
        [&](uint32_t key) {
          if (key < below) f(key);
        },
        wanted);
  }
}

// The key of index i of a one-segment share.
__device__ __forceinline__ uint32_t KeyAt(const Share& share, const float* segment_scores,
                                          int32_t i) {
  return share.cache != nullptr ? share.cache[i - share.lo] : OrderedKey(__ldg(segment_scores + i));
}

// Stage, once this CTA's histogram of the pass is complete (and a barrier):
// its sums per chunk of 32 bins, which peers read first.
__device__ __forceinline__ void SumChunks(SelectShared& sm, int slot, int num_bins) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int c = warp; c < num_bins / kBinsPerChunk; c += kWarps) {
    const uint32_t sum = __reduce_add_sync(~0u, sm.hist[slot][c * kBinsPerChunk + lane]);
    if (lane == 0) sm.chunks[slot][c] = sum;
  }
}

// In the group's histogram of `num_bins` digits (after a group barrier that
// follows every CTA's SumChunks), the bucket of the need-th largest key
// (need >= 1): sets sm.bucket, sm.need (how many of its keys the top takes)
// and sm.count (its size), when the histogram holds need keys. Returns how
// many keys it holds. One warp reads the peers' chunk sums, then only the 32
// bins of the chunk that holds the answer: 3 KiB of distributed shared memory
// per pass instead of every peer's whole histogram.
template <typename G>
__device__ inline int32_t FindBucket(G& g, SelectShared& sm, int slot, int num_bins, int32_t need) {
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    const int num_chunks = num_bins / kBinsPerChunk;
    const int per_lane = num_chunks / 32;  // 1 or 2; lane 0 holds the highest chunks
    uint32_t mine[2] = {0, 0};
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      if (j >= per_lane) break;
      const int c = num_chunks - 1 - (lane * per_lane + j);
#pragma unroll
      for (int r = 0; r < kSelectMaxCtasPerGroup; ++r) {
        if (r < static_cast<int>(g.size)) mine[j] += g.Peer(sm.chunks[slot], r)[c];
      }
    }
    const uint32_t lane_sum = mine[0] + mine[1];
    const uint32_t through = LaneInclusiveSum(lane_sum, lane);
    const uint32_t total = __shfl_sync(~0u, through, 31);
    const uint32_t wanted = static_cast<uint32_t>(need);
    if (wanted <= total) {
      const int holder = __ffs(__ballot_sync(~0u, through >= wanted)) - 1;
      uint32_t above = __shfl_sync(~0u, through - lane_sum, holder);
      const uint32_t first = __shfl_sync(~0u, mine[0], holder);
      int j = 0;
      if (above + first < wanted) {
        above += first;
        j = 1;
      }
      const int chunk = num_chunks - 1 - (holder * per_lane + j);
      const int bin = chunk * kBinsPerChunk + kBinsPerChunk - 1 - lane;  // highest first
      uint32_t h = 0;
#pragma unroll
      for (int r = 0; r < kSelectMaxCtasPerGroup; ++r) {
        if (r < static_cast<int>(g.size)) h += g.Peer(sm.hist[slot], r)[bin];
      }
      const uint32_t upto = above + LaneInclusiveSum(h, lane);
      const int at = __ffs(__ballot_sync(~0u, upto >= wanted)) - 1;
      if (lane == at) {
        sm.bucket = bin;
        sm.need = static_cast<int32_t>(wanted - (upto - h));
        sm.count = static_cast<int32_t>(h);
      }
    }
    if (lane == 0) sm.total = static_cast<int32_t>(total);
  }
  __syncthreads();
  return sm.total;
}

// Reads the share from global memory once: into `buffer` (kCacheKeys keys of
// shared memory) when it fits, and into the first digit's histogram. The
// segments have no limits yet (kProtectTop sets them later).
__device__ inline void LoadShare(SelectShared& sm, Share& share, uint32_t* buffer) {
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
                 atomicAdd(&hist[key >> 21], 1u);
               });
  }
  share.cache = fits ? buffer : nullptr;
  __syncthreads();
}

// Stage (warp 0, after FindBucket): this CTA's keys of the pass's histogram in
// bins above `bucket` (all of them for -1) added to sm.own_above; returns
// those in the bucket itself.
__device__ __forceinline__ int32_t CountOwnAbove(SelectShared& sm, int slot, int num_bins,
                                                 int bucket) {
  const int lane = threadIdx.x % 32;
  const int num_chunks = num_bins / kBinsPerChunk;
  const int bucket_chunk = bucket < 0 ? -1 : bucket / kBinsPerChunk;
  uint32_t above = 0;
  for (int c = bucket_chunk + 1 + lane; c < num_chunks; c += 32) above += sm.chunks[slot][c];
  uint32_t in_bucket = 0;
  if (bucket >= 0) {
    const int bin = bucket_chunk * kBinsPerChunk + lane;
    const uint32_t h = sm.hist[slot][bin];
    if (bin > bucket) above += h;
    if (bin == bucket) in_bucket = h;
  }
  above = __reduce_add_sync(~0u, above);
  in_bucket = __reduce_add_sync(~0u, in_bucket);
  if (lane == 0) sm.own_above += static_cast<int32_t>(above);
  return static_cast<int32_t>(in_bucket);
}

// Whether this CTA's share holds segment `seg`'s first index: the CTA that
// adds the segment's extra copies of its limit to the counts.
__device__ __forceinline__ bool HoldsStart(const Share& share, const Segment& seg) {
  return share.lo <= seg.start && seg.start < share.hi;
}

// The top k of the group, ties in group order. Every thread of every CTA of
// the group calls it and gets the same cut. The first digit's histogram is
// the one LoadShare built when `first_built`, else built here. With
// `count_own`, also this CTA's keys above the cut and at it (sm.own_above,
// sm.own_equal), read off its histograms: a pass over the keys saved. A group
// that selects again must pass a barrier of the whole group (g.Sync()) first:
// peers may still read this CTA's last histogram.
template <typename G>
__device__ inline Cut GroupSelect(G& g, SelectShared& sm, const Share& share, int64_t k,
                                  bool first_built, bool count_own = false) {
  if (count_own && threadIdx.x == 0) {
    sm.own_above = 0;
    sm.own_equal = 0;
  }
  if (k <= 0) {
    __syncthreads();
    return Cut{0xFFFFFFFFll, 0, 0, kAllKeys};
  }
  uint32_t prefix = 0, mask = 0;  // the digits found so far
  int32_t need = static_cast<int32_t>(min(k, int64_t{0x7FFFFFFF}));
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = pass == 0 ? 21 : pass == 1 ? 10 : 0;
    const int num_bins = pass == 2 ? 1024 : 2048;
    uint32_t* hist = sm.hist[pass & 1];
    if (pass > 0 || !first_built) {
      for (int b = threadIdx.x; b < num_bins; b += kThreads) hist[b] = 0;
      __syncthreads();
      const auto matches = [mask, prefix](uint32_t key) { return (key & mask) == prefix; };
      for (int s = 0; s < share.num_segments; ++s) {
        ForEachMemberKey(
            share, s,
            [&](uint32_t key) {
              if (matches(key)) atomicAdd(&hist[(key >> shift) & (num_bins - 1)], 1u);
            },
            matches);
      }
    }
    for (int s = threadIdx.x; s < share.num_segments; s += kThreads) {
      const Segment& seg = share.segments[s];
      const uint32_t key = static_cast<uint32_t>(seg.limit);
      if (seg.extra > 0 && HoldsStart(share, seg) && (key & mask) == prefix) {
        atomicAdd(&hist[(key >> shift) & (num_bins - 1)], static_cast<uint32_t>(seg.extra));
      }
    }
    __syncthreads();
    SumChunks(sm, pass & 1, num_bins);
    g.Sync();
    const int32_t total = FindBucket(g, sm, pass & 1, num_bins, need);
    const bool everything = pass == 0 && need >= total;
    const bool whole_bucket = !everything && sm.count == sm.need;
    if (count_own && threadIdx.x < 32) {
      const int32_t in_bucket = CountOwnAbove(sm, pass & 1, num_bins, everything ? -1 : sm.bucket);
      if (threadIdx.x == 0) {
        if (whole_bucket) sm.own_above += in_bucket;
        if (pass == 2 && !whole_bucket) sm.own_equal = in_bucket;
      }
    }
    if (count_own) __syncthreads();
    if (everything) return Cut{-1, 0, 0, 0};  // all of it
    prefix |= static_cast<uint32_t>(sm.bucket) << shift;
    mask |= static_cast<uint32_t>(num_bins - 1) << shift;
    // The top takes the whole bucket: everything from its lowest key up.
    if (whole_bucket) return Cut{int64_t{prefix} - 1, 0, 0, prefix};
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
__device__ inline int32_t WarpLowerBound(const int32_t* p, int32_t n, int32_t value) {
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
__device__ inline StreamRange LocateStream(const SelectArgs& a, int32_t s) {
  const int32_t offset = a.score_offsets[s];
  const int32_t n = static_cast<int32_t>(max(int64_t{0}, int64_t{a.score_offsets[s + 1]} - offset));
  const int32_t begin = WarpLowerBound(a.positions + offset, n, a.sinks);
  const int32_t end =
      static_cast<int32_t>(min(max(int64_t{n} - a.recent, int64_t{begin}), int64_t{n}));
  return StreamRange{offset, n, begin, end};
}

// Ada-KV's B'_h (a capacity below the protected count, which the host cannot
// check, counts as 0) and kProtectTop's floor(alpha B'_h), in double exactly
// as the CPU computes them.
__device__ inline int64_t AdaBudget(const SelectArgs& a, int32_t num_protected) {
  return max(int64_t{0}, int64_t{a.capacity} - num_protected);
}
__device__ inline int64_t AdaFloorOf(double alpha, int64_t budget) {
  return static_cast<int64_t>(floor(__dmul_rn(alpha, static_cast<double>(budget))));
}

}  // namespace headpage::gpu::internal::selection

#endif  // HEADPAGE_KERNELS_SELECT_INTERNAL_CUH_
