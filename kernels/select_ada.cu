// SPDX-License-Identifier: Apache-2.0
// File: kernels/select_ada.cu
//
// kAda's Select in one launch (select.cu has the overview): a cluster per
// sequence whose CTAs each own whole streams. Each CTA reads its streams'
// candidates once (into shared memory when they fit); kProtectTop first finds
// its streams' own tops; the cluster ranks the competing candidates together;
// each CTA reads its streams' hits, hence their kept counts, and selects and
// writes their keep sets alone.
#include "kernels/cuda_common.cuh"
#include "kernels/select_args.h"
#include "kernels/select_emit.cuh"
#include "kernels/select_internal.cuh"
#include "kernels/select_radix.cuh"

namespace headpage::gpu::internal::selection {
namespace {

// kAda: one cluster per sequence, each CTA owning whole streams (heads
// [rank H / size, (rank + 1) H / size)), so that only the sequence's
// competition needs the cluster and each stream's own selects stay in its CTA.
struct AdaShared {
  SelectShared select;
  EmitShared emit;
  StreamRange ranges[kSelectMaxAdaHeads];
  Segment segments[kSelectMaxAdaHeads];      // the competing streams' candidates, in head order
  int32_t segment_of[kSelectMaxAdaHeads];    // per head: its segment, or -1 (covered)
  int32_t segment_head[kSelectMaxAdaHeads];  // per segment: its head
  // Per segment, this CTA's keys above the cut and at it (its own segments'
  // only); then the cluster's, which every CTA adds into every peer's
  // (GatherHits): `hits` above the cut, then with the ties handed out.
  int32_t above[kSelectMaxAdaHeads];
  int32_t equal[kSelectMaxAdaHeads];
  int32_t hits[kSelectMaxAdaHeads];
  int32_t cluster_equal[kSelectMaxAdaHeads];
  int32_t num_segments;
  int32_t share_lo;  // this CTA's streams' part of their concatenation
  int32_t share_hi;
  int64_t k;                  // what the sequence's select takes
  int32_t own_segments;       // how many of the segments are this CTA's
  int32_t first_own_segment;  // the first of them (-1: none)
  Segment stream_segment;     // the one segment of a per-stream select
  // With one own segment, LoadShare's first-digit histogram is that stream's
  // too, and its own selects skip their first pass over the keys. kProtectTop's
  // sequence select builds slot 0 again from what the tops leave, so a copy
  // waits here for the keep sets' selects.
  uint32_t first_digits[kMaxBins];
};

// Stage: the ranges of the sequence's streams (a warp each), then, by one
// thread in head order (a short serial walk), the competing streams: those
// whose budget does not cover their candidates, as the select's segments, this
// CTA's part of them [own_begin, own_end) heads, and what the select takes
// (kProtectTop's floors taken off). The concatenation's indexes are int32:
// only overlapping streams (offsets that go back, bad input) can pass 2^31
// candidates, and a stream that would is treated as covered (keeps
// everything), so that every index stays in range.
__device__ __forceinline__ void CollectCompetingStreams(const SelectArgs& a, int32_t first_stream,
                                                        int32_t own_begin, int32_t own_end,
                                                        AdaShared& sm) {
  const int32_t num_heads = a.num_kv_heads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // Zeroed a cluster barrier before any peer adds to them (GatherHits).
  for (int i = threadIdx.x; i < kSelectMaxAdaHeads; i += kThreads) {
    sm.hits[i] = 0;
    sm.cluster_equal[i] = 0;
  }
  for (int h = warp; h < num_heads; h += kWarps) {
    const StreamRange range = LocateStream(a, first_stream + h);
    if (lane == 0) sm.ranges[h] = range;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t count = 0, start = 0, lo = 0, hi = 0, own = 0, first_own = -1;
    int64_t k = 0;
    for (int h = 0; h < num_heads; ++h) {
      const StreamRange r = sm.ranges[h];
      const int64_t budget = AdaBudget(a, r.num_protected());
      // Each segment starts on a multiple of four in the concatenation, and so
      // in the cache: StreamShare's per-stream shares, which the per-stream
      // selects and EmitKeep read 16 bytes at a time, start aligned.
      const int64_t aligned = (int64_t{start} + 3) & ~int64_t{3};
      if (budget >= r.num_candidates() || aligned + r.num_candidates() > INT32_MAX) {
        sm.segment_of[h] = -1;
        continue;
      }
      k += budget;
      if (a.floor == policy::AdaFloor::kProtectTop) k -= AdaFloorOf(a.alpha, budget);
      start = static_cast<int32_t>(aligned);
      if (own_begin <= h && h < own_end) {
        if (own++ == 0) {
          lo = start;
          first_own = count;
        }
        hi = start + r.num_candidates();
      }
      sm.segments[count] = Segment{r.offset + r.begin, r.num_candidates(), start, 0, kAllKeys};
      sm.segment_of[h] = count;
      sm.segment_head[count++] = h;
      start += r.num_candidates();
    }
    sm.num_segments = count;
    sm.share_lo = lo;
    sm.share_hi = hi;
    sm.k = k;
    sm.own_segments = own;
    sm.first_own_segment = first_own;
  }
  __syncthreads();
}

// Segment `seg` (this CTA's) alone, as a share of its own: its candidates
// 0..size, their keys where the CTA's share keeps them; its keys' tag for the
// select is `seg`. With one own segment, the first digit's histogram is put
// back in slot 0 where kProtectTop's sequence select replaced it. Ends with a
// barrier; the caller's next one must come before the next call.
__device__ __forceinline__ Share StreamShare(AdaShared& sm, const Share& share, int seg) {
  // CTA-uniform: the tag changed last before a barrier.
  if (sm.own_segments == 1 && sm.select.built_keys[0] != seg) {
    for (int b = threadIdx.x; b < kMaxBins; b += kThreads) {
      sm.select.hist(0)[b] = sm.first_digits[b];
    }
    __syncthreads();
    SumChunks(sm.select, 0, kMaxBins);
    if (threadIdx.x == 0) {
      sm.select.built_keys[0] = seg;
      sm.select.built_prefix[0] = 0;
    }
  }
  const Segment whole = sm.segments[seg];
  if (threadIdx.x == 0) sm.stream_segment = Segment{whole.first, whole.size, 0, 0, kAllKeys};
  __syncthreads();
  const uint32_t* cache = share.cache != nullptr ? share.cache + (whole.start - share.lo) : nullptr;
  return Share{share.scores, &sm.stream_segment, 1, 0, whole.size, cache};
}

// Stage (kProtectTop): each of this CTA's competing streams' own top
// floor(alpha B'_h), found in the CTA; what is left of the stream (every key
// below the cut's rest limit, plus its extra copies of it) is what competes.
__device__ __forceinline__ void ProtectOwnTops(const SelectArgs& a, AdaShared& sm,
                                               const Share& share, int32_t own_begin,
                                               int32_t own_end) {
  CtaGroup cta;
  for (int h = own_begin; h < own_end; ++h) {
    const int seg = sm.segment_of[h];
    if (seg < 0) continue;
    const int64_t safe = AdaFloorOf(a.alpha, AdaBudget(a, sm.ranges[h].num_protected()));
    if (safe == 0) continue;
    const Share one = StreamShare(sm, share, seg);
    const Cut cut = GroupSelect(cta, sm.select, one, safe, /*keys=*/seg);
    if (threadIdx.x == 0) {
      sm.segments[seg].limit = cut.rest_limit;
      sm.segments[seg].extra = cut.rest_extra;
    }
    __syncthreads();
  }
}

// A cut's threshold as 32-bit tests: every key is above -1.
struct Threshold {
  bool everything;
  uint32_t key;
  __device__ explicit Threshold(int64_t threshold)
      : everything(threshold < 0), key(static_cast<uint32_t>(max(threshold, int64_t{0}))) {}
  __device__ bool Above(uint32_t k) const { return everything || k > key; }
  __device__ bool Equal(uint32_t k) const { return !everything && k == key; }
};

// Stage: this CTA's keys above the cut and at it, per segment it holds, into
// sm.above and sm.equal (zero for the others), its extra copies of the limit
// included.
__device__ __forceinline__ void CountSegmentsAtCut(AdaShared& sm, const Share& share,
                                                   int num_segments, int64_t threshold) {
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
    const Threshold cut(threshold);
    ForEachMemberKey(share, i, [&](uint32_t key) {
      above += cut.Above(key);
      equal += cut.Equal(key);
    });
    above = __reduce_add_sync(~0u, above);
    equal = __reduce_add_sync(~0u, equal);
    if (lane == 0) {
      atomicAdd(&sm.above[i], above);
      atomicAdd(&sm.equal[i], equal);
    }
  }
  for (int i = threadIdx.x; i < num_segments; i += kThreads) {
    const Segment seg = sm.segments[i];
    if (seg.extra > 0 && HoldsStart(share, seg) && seg.limit > threshold) {
      atomicAdd(&sm.above[i], seg.extra);
    }
    if (seg.extra > 0 && HoldsStart(share, seg) && seg.limit == threshold) {
      atomicAdd(&sm.equal[i], seg.extra);
    }
  }
}

// Stage, instead of CountSegmentsAtCut when this CTA holds one segment: the
// select's own counts are that segment's.
__device__ __forceinline__ void StoreOwnCounts(AdaShared& sm, int32_t own_begin, int32_t own_end,
                                               int num_segments) {
  for (int i = threadIdx.x; i < num_segments; i += kThreads) {
    const int h = sm.segment_head[i];
    const bool own = own_begin <= h && h < own_end;
    sm.above[i] = own ? sm.select.own_above : 0;
    sm.equal[i] = own ? sm.select.own_equal : 0;
  }
}

// Stage (every CTA, this CTA's counts in sm.above and sm.equal): the
// cluster's hits per segment into sm.hits, the ties at the threshold handed to
// the earliest streams. Each CTA adds its nonzero counts into every peer's
// sums, then one cluster barrier: a CTA's own segments are its only nonzero
// ones when it holds one, so that is a few remote atomics, where reading every
// peer's counts took a barrier before the reads and one after them. That last
// barrier also ends every peer's reads of this CTA's histograms, which the
// keep sets' selects then rewrite; no CTA touches another's memory after it.
__device__ __forceinline__ void GatherHits(Group& g, AdaShared& sm, int num_segments,
                                           int32_t ties) {
  __syncthreads();  // this CTA's counts are complete
  static_assert(kSelectMaxAdaHeads <= kThreads, "a thread per segment");
  const int i = threadIdx.x;
  if (i < num_segments && (sm.above[i] != 0 || sm.equal[i] != 0)) {
    const int32_t above = sm.above[i], equal = sm.equal[i];
#pragma unroll 1
    for (uint32_t peer = 0; peer < g.size; ++peer) {
      atomicAdd(g.Peer(&sm.hits[i], peer), above);
      atomicAdd(g.Peer(&sm.cluster_equal[i], peer), equal);
    }
  }
  g.Sync();
  if (threadIdx.x == 0) {
    int32_t ties_left = ties;
    for (int s = 0; s < num_segments; ++s) {
      const int32_t taken = min(sm.cluster_equal[s], ties_left);
      ties_left -= taken;
      sm.hits[s] += taken;
    }
  }
  __syncthreads();
}

// Stream h's kept count: everything when it does not compete, else Ada-KV's
// allocation from its hits c_h.
__device__ __forceinline__ int32_t AdaKeptCount(const SelectArgs& a, const AdaShared& sm, int h) {
  const StreamRange r = sm.ranges[h];
  const int seg = sm.segment_of[h];
  if (seg < 0) return r.n;  // covered: keeps everything
  const int64_t budget = AdaBudget(a, r.num_protected());
  const int64_t hits = sm.hits[seg];
  int64_t b;
  if (a.floor == policy::AdaFloor::kScaled) {
    // round_half_even(c_h (1 - alpha) + floor(alpha B'_h)) in double,
    // unfused as on the CPU; rint rounds half to even.
    const double scaled = __dadd_rn(__dmul_rn(static_cast<double>(hits), 1.0 - a.alpha),
                                    static_cast<double>(AdaFloorOf(a.alpha, budget)));
    b = static_cast<int64_t>(rint(scaled));
  } else {
    b = AdaFloorOf(a.alpha, budget) + hits;
  }
  return static_cast<int32_t>(min(b + r.num_protected(), int64_t{r.n}));
}

// Stage: this CTA's streams' kept counts and keep sets, each its top
// (kept - protected) candidates by a select of the CTA alone.
__device__ __forceinline__ void EmitOwnKeepSets(const SelectArgs& a, AdaShared& sm,
                                                const Share& share, int32_t first_stream,
                                                int32_t own_begin, int32_t own_end) {
  CtaGroup cta;
  for (int h = own_begin; h < own_end; ++h) {
    const StreamRange r = sm.ranges[h];
    const int32_t kept = AdaKeptCount(a, sm, h);
    if (threadIdx.x == 0) a.kept_counts[first_stream + h] = kept;
    const int32_t take = kept - r.num_protected();
    if (!KeepUnranked(cta, a.keep + r.offset, r, take)) continue;  // CTA-uniform
    const int seg = sm.segment_of[h];
    const Share one = StreamShare(sm, share, seg);
    // After the sequence's select, a stream's own cut usually lies in the
    // same buckets: those passes are its histograms already.
    const Cut cut = GroupSelect(cta, sm.select, one, take, /*keys=*/seg);
    EmitKeep(cta, sm.emit, one, a.keep + r.offset, cut, r.begin);
    __syncthreads();
  }
}

}  // namespace

// kAda, one launch: the sequence's competition in the cluster, then each
// CTA's own streams' keep sets. Every CTA reads its streams' candidates from
// global memory once (into shared memory when they fit).
__global__ void __launch_bounds__(kThreads, 1) AdaSelectKernel(const SelectArgs a) {
  __shared__ AdaShared sm;
  extern __shared__ uint4 cache_storage[];  // kCacheBytes
  Group g;
  const int32_t num_heads = a.num_kv_heads;
  const int32_t first_stream = static_cast<int32_t>(blockIdx.x / g.size) * num_heads;
  const int32_t own_begin = static_cast<int32_t>(int64_t{num_heads} * g.rank / g.size);
  const int32_t own_end = static_cast<int32_t>(int64_t{num_heads} * (g.rank + 1) / g.size);
  CollectCompetingStreams(a, first_stream, own_begin, own_end, sm);
  const int num_segments = sm.num_segments;
  // Every CTA sees the same segments, so all take this branch or none.
  if (num_segments > 0) {
    Share share{a.scores, sm.segments, num_segments, sm.share_lo, sm.share_hi, nullptr};
    // With one own segment, this CTA's keys are that segment's alone.
    const bool one = sm.own_segments == 1;
    const int32_t share_keys = one ? sm.first_own_segment : kShareKeys;
    LoadShare(sm.select, share, reinterpret_cast<uint32_t*>(cache_storage), share_keys);
    const bool protect = a.floor == policy::AdaFloor::kProtectTop;
    // kProtectTop's sequence select replaces slot 0 (see first_digits); with
    // kScaled it keeps LoadShare's, the stream's own.
    if (one && protect) {  // CTA-uniform
      for (int b = threadIdx.x; b < kMaxBins; b += kThreads) {
        sm.first_digits[b] = sm.select.hist(0)[b];
      }
      __syncthreads();  // before the next select may zero slot 0
    }
    if (protect) ProtectOwnTops(a, sm, share, own_begin, own_end);
    // kProtectTop's sequence select ranks what the tops leave: other keys than
    // LoadShare's. With one own segment, the select counts its hits on the way.
    const Cut cut = GroupSelect(g, sm.select, share, sm.k, protect ? kUntagged : share_keys, one);
    if (one) {
      StoreOwnCounts(sm, own_begin, own_end, num_segments);
    } else {
      CountSegmentsAtCut(sm, share, num_segments, cut.threshold);
    }
    // A select of nothing (k <= 0) passed no cluster barrier: one before the
    // remote adds (a NaN's key can still count as at its cut), so that every
    // peer has started and zeroed its sums. Skipping GatherHits there instead
    // would be right too, but costs the kernel a spill (ptxas, 64 registers).
    if (sm.k <= 0) g.Sync();
    GatherHits(g, sm, num_segments, cut.ties);
    EmitOwnKeepSets(a, sm, share, first_stream, own_begin, own_end);
  } else {
    Share none{a.scores, sm.segments, 0, 0, 0, nullptr};
    EmitOwnKeepSets(a, sm, none, first_stream, own_begin, own_end);
  }
}

}  // namespace headpage::gpu::internal::selection
