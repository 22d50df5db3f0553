// SPDX-License-Identifier: Apache-2.0
// File: kernels/select_radix.cuh
//
// The exact top-k the Select kernels (select.cu, select_ada.cu) run over a
// group of scores: an MSD radix select on the order-preserving keys of
// select_internal.cuh, three digits (11, 11, 10 bits), by a thread-block
// cluster whose CTAs each hold a share of the group (in shared memory when it
// fits), or by one CTA alone (CtaGroup). Each pass builds this CTA's histogram
// of one digit of the keys still tied with the answer; a bucket is found from
// the CTAs' sums per 32 bins, read through distributed shared memory, then the
// 32 bins of one chunk; the answer is a Cut. Each pass has a histogram slot of
// its own, tagged with the keys and the digits above it that it counts, so
// that a later select of the same keys (a stream's own select after its
// sequence's) reuses every pass whose prefix it shares instead of reading the
// keys again. CUDA, CCCL and plain headers only.
#ifndef HEADPAGE_KERNELS_SELECT_RADIX_CUH_
#define HEADPAGE_KERNELS_SELECT_RADIX_CUH_

#include <cstdint>

#include "kernels/cuda_common.cuh"
#include "kernels/select_args.h"
#include "kernels/select_internal.cuh"

namespace headpage::gpu::internal::selection {

inline constexpr int kPasses = 3;
inline constexpr int kBinsPerChunk = 32;
inline constexpr int kMaxChunks = kMaxBins / kBinsPerChunk;

// Pass p's digit: bits [shift, shift + bits) of the key.
__device__ __forceinline__ int DigitShift(int pass) { return pass == 0 ? 21 : pass == 1 ? 10 : 0; }
__device__ __forceinline__ int DigitBins(int pass) { return pass == 2 ? 1024 : 2048; }

// Names of key sets, for reusing histograms: a select passes the tag of the
// keys it ranks, and a histogram built under the same tag and prefix is
// reused. A tag must name the same multiset of keys wherever the CTA passes
// it: >= 0 is the caller's (select_ada.cu: segment s alone, without a limit).
inline constexpr int32_t kUntagged = -1;   // reuse nothing, and leave nothing to reuse
inline constexpr int32_t kShareKeys = -2;  // the share as LoadShare read it (no limits)

struct SelectShared {
  // This CTA's histogram of each pass and its sums per chunk of 32 bins: a
  // slot per pass, so that peers read pass p's while this CTA fills pass
  // p + 1's, and a later select finds them.
  uint32_t bins[2 * kMaxBins + kMaxBins / 2];  // passes 0 and 1: 2048 bins, pass 2: 1024
  uint32_t chunks[kPasses][kMaxChunks];
  // What each slot counts: the keys of built_keys[p] whose digits above pass
  // p's equal built_prefix[p] (kUntagged: nothing reusable).
  int32_t built_keys[kPasses];
  uint32_t built_prefix[kPasses];
  int32_t bucket;  // FindBucket's answer
  int32_t need;
  int32_t count;
  int32_t total;
  // GroupSelect's count_own: this CTA's keys above the cut and at it.
  int32_t own_above;
  int32_t own_equal;

  __device__ uint32_t* hist(int pass) { return bins + pass * kMaxBins; }
};

// Stage, once this CTA's histogram of the pass is complete (and a barrier):
// its sums per chunk of 32 bins, which peers read first.
__device__ __forceinline__ void SumChunks(SelectShared& sm, int slot, int num_bins) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int c = warp; c < num_bins / kBinsPerChunk; c += kWarps) {
    const uint32_t sum = __reduce_add_sync(~0u, sm.hist(slot)[c * kBinsPerChunk + lane]);
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
      if (j < per_lane) {
        mine[j] = g.SumOverPeers(&sm.chunks[slot][num_chunks - 1 - (lane * per_lane + j)]);
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
      const uint32_t h = g.SumOverPeers(&sm.hist(slot)[bin]);
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
    const uint32_t h = sm.hist(slot)[bin];
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

// Reads the share from global memory once: into `buffer` (kCacheKeys keys of
// shared memory) when it fits, and into the first digit's histogram (slot 0,
// its chunk sums included), tagged `keys`; the other slots are forgotten. The
// segments have no limits yet (kProtectTop sets them later). Ends with a
// barrier.
__device__ inline void LoadShare(SelectShared& sm, Share& share, uint32_t* buffer, int32_t keys) {
  uint32_t* hist = sm.hist(0);
  for (int b = threadIdx.x; b < kMaxBins; b += kThreads) hist[b] = 0;
  __syncthreads();
  const bool fits = share.hi - share.lo <= kCacheKeys;
  for (int s = 0; s < share.num_segments; ++s) {
    const Segment seg = share.segments[s];
    const int32_t begin = max(share.lo, seg.start), end = min(share.hi, seg.start + seg.size);
    if (begin >= end) continue;
    const int32_t out = seg.start - share.lo;  // cache index of the segment's index 0
    const auto one = [&](int32_t i, uint32_t key) {
      if (fits) buffer[out + i] = key;
      atomicAdd(&hist[key >> 21], 1u);
    };
    // A vector lands on 16 aligned bytes of the cache when the segment's
    // scores and its cache index agree modulo four (so for every vector of
    // the segment or none): one 16-byte store instead of four 4-byte ones,
    // which consecutive lanes would put four to a bank.
    ForEachKeyVector(share.scores + seg.first, begin - seg.start, end - seg.start, one,
                     [&](int32_t i, const uint4& keys) {
                       if (fits && ((out + i) & 3) == 0) {
                         *reinterpret_cast<uint4*>(buffer + out + i) = keys;
                         atomicAdd(&hist[keys.x >> 21], 1u);
                         atomicAdd(&hist[keys.y >> 21], 1u);
                         atomicAdd(&hist[keys.z >> 21], 1u);
                         atomicAdd(&hist[keys.w >> 21], 1u);
                       } else {
                         one(i, keys.x);
                         one(i + 1, keys.y);
                         one(i + 2, keys.z);
                         one(i + 3, keys.w);
                       }
                     });
  }
  share.cache = fits ? buffer : nullptr;
  __syncthreads();
  SumChunks(sm, 0, kMaxBins);
  if (threadIdx.x == 0) {
    sm.built_keys[0] = keys;
    sm.built_prefix[0] = 0;
    for (int p = 1; p < kPasses; ++p) sm.built_keys[p] = kUntagged;
  }
  __syncthreads();
}

// hist[digit] += 1 for every cached key of cache[lo, hi) whose digits above
// the pass's equal `prefix` (under `mask`) and, kLimited, that lies below
// `below`. A lane tests four keys at once (one 16-byte load); a vector with
// none of them skips the adds, as most do in a select's later passes.
template <bool kLimited>
__device__ __forceinline__ void CountCachedDigits(const uint32_t* cache, int32_t lo, int32_t hi,
                                                  uint32_t mask, uint32_t prefix, uint32_t below,
                                                  int shift, uint32_t bin_mask, uint32_t* hist) {
  const auto counted = [&](uint32_t key) {
    return (key & mask) == prefix && (!kLimited || key < below);
  };
  const auto add = [&](uint32_t key) { atomicAdd(&hist[(key >> shift) & bin_mask], 1u); };
  const int t = threadIdx.x;
  const int32_t body = min(hi, (lo + 3) & ~3);
  if (t < body - lo && counted(cache[lo + t])) add(cache[lo + t]);
  const int32_t num_vectors = (hi - body) >> 2;
  const uint4* vectors = reinterpret_cast<const uint4*>(cache + body);
#pragma unroll 4
  for (int32_t i = t; i < num_vectors; i += kThreads) {
    const uint4 v = vectors[i];
    const bool x = counted(v.x), y = counted(v.y), z = counted(v.z), w = counted(v.w);
    if (!(x || y || z || w)) continue;
    if (x) add(v.x);
    if (y) add(v.y);
    if (z) add(v.z);
    if (w) add(v.w);
  }
  const int32_t tail = body + 4 * num_vectors;
  if (t < hi - tail && counted(cache[tail + t])) add(cache[tail + t]);
}

// Stage: pass `pass`'s histogram of this CTA's keys whose digits above it
// equal `prefix` under `mask` (each segment's below its limit, plus its extra
// copies of the limit), into its slot with the chunk sums, tagged `keys`.
// Begins and ends with the barriers it needs; the caller's group barrier must
// follow before peers read it.
__device__ inline void BuildHistogram(SelectShared& sm, const Share& share, int pass, uint32_t mask,
                                      uint32_t prefix, int32_t keys) {
  const int shift = DigitShift(pass), num_bins = DigitBins(pass);
  const uint32_t bin_mask = static_cast<uint32_t>(num_bins - 1);
  uint32_t* hist = sm.hist(pass);
  for (int b = threadIdx.x; b < num_bins; b += kThreads) hist[b] = 0;
  __syncthreads();
  for (int s = 0; s < share.num_segments; ++s) {
    const Segment seg = share.segments[s];
    const int32_t begin = max(share.lo, seg.start), end = min(share.hi, seg.start + seg.size);
    if (begin >= end) continue;  // CTA-uniform
    if (share.cache != nullptr) {
      const int32_t lo = begin - share.lo, hi = end - share.lo;
      if (seg.limit >= kAllKeys) {
        CountCachedDigits<false>(share.cache, lo, hi, mask, prefix, 0, shift, bin_mask, hist);
      } else {
        CountCachedDigits<true>(share.cache, lo, hi, mask, prefix, static_cast<uint32_t>(seg.limit),
                                shift, bin_mask, hist);
      }
    } else {
      // From L2, a few instructions per key matter less: the generic walk.
      ForEachMemberKey(share, s, [&](uint32_t key) {
        if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & bin_mask], 1u);
      });
    }
  }
  for (int s = threadIdx.x; s < share.num_segments; s += kThreads) {
    const Segment& seg = share.segments[s];
    const uint32_t key = static_cast<uint32_t>(seg.limit);
    if (seg.extra > 0 && HoldsStart(share, seg) && (key & mask) == prefix) {
      atomicAdd(&hist[(key >> shift) & bin_mask], static_cast<uint32_t>(seg.extra));
    }
  }
  __syncthreads();
  SumChunks(sm, pass, num_bins);
  if (threadIdx.x == 0) {  // every thread read the old tag before the barrier above
    sm.built_keys[pass] = keys;
    sm.built_prefix[pass] = prefix;
  }
}

// The top k of the group, ties in group order. Every thread of every CTA of
// the group calls it and gets the same cut. `keys` tags the keys this CTA
// holds (see kUntagged): a pass whose slot holds them under the same prefix
// is not built again. With `count_own`, also this CTA's keys above the cut and
// at it (sm.own_above, sm.own_equal), read off its histograms: a pass over
// the keys saved. A group that selects again must pass a barrier of the whole
// group (g.Sync()) first: peers may still read this CTA's last histograms.
template <typename G>
__device__ inline Cut GroupSelect(G& g, SelectShared& sm, const Share& share, int64_t k,
                                  int32_t keys, bool count_own = false) {
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
  for (int pass = 0; pass < kPasses; ++pass) {
    const int shift = DigitShift(pass), num_bins = DigitBins(pass);
    // CTA-uniform: the tags changed last before a barrier.
    const bool built =
        keys != kUntagged && sm.built_keys[pass] == keys && sm.built_prefix[pass] == prefix;
    if (!built) BuildHistogram(sm, share, pass, mask, prefix, keys);
    g.Sync();
    const int32_t total = FindBucket(g, sm, pass, num_bins, need);
    const bool everything = pass == 0 && need >= total;
    const bool whole_bucket = !everything && sm.count == sm.need;
    if (count_own && threadIdx.x < 32) {
      const int32_t in_bucket = CountOwnAbove(sm, pass, num_bins, everything ? -1 : sm.bucket);
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

}  // namespace headpage::gpu::internal::selection

#endif  // HEADPAGE_KERNELS_SELECT_RADIX_CUH_
