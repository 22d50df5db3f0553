// SPDX-License-Identifier: Apache-2.0
// File: kernels/select_emit.cuh
//
// What both Select kernels (select.cu, select_ada.cu) do once a stream's cut
// is known: the slots kept without ranking (sinks, the recent window), then
// the ranked ones, written in ascending order by the CTAs of a group (a
// cluster, or one CTA alone) with prefix sums over warps and CTAs. CUDA and
// plain headers only.
#ifndef HEADPAGE_KERNELS_SELECT_EMIT_CUH_
#define HEADPAGE_KERNELS_SELECT_EMIT_CUH_

#include <cstdint>

#include "kernels/select_internal.cuh"

namespace headpage::gpu::internal::selection {

struct EmitShared {
  int32_t warp_above[kWarps];  // per warp: keys above the threshold, then their prefix
  int32_t warp_equal[kWarps];  // keys equal to it
  int32_t cta_above;           // this CTA's totals (peers read them)
  int32_t cta_equal;
  int32_t base_above;  // what the lower ranks of the cluster hold
  int32_t base_equal;
};

// This warp's slice of the share: groups of four keys [first, last).
struct WarpSlice {
  int32_t first;
  int32_t last;
  __device__ WarpSlice(const Share& share, int warp) {
    const int32_t groups = (share.hi - share.lo + 3) / 4;
    first = static_cast<int32_t>(int64_t{groups} * warp / kWarps);
    last = static_cast<int32_t>(int64_t{groups} * (warp + 1) / kWarps);
  }
};

// Stage, after the warps' counts (and a barrier): their exclusive prefix sums
// over the warps, and this CTA's base, the counts of the cluster's lower ranks.
template <typename G>
__device__ __forceinline__ void ScanCounts(G& g, EmitShared& es, int warp, int lane) {
  if (warp == 0) {
    const int32_t own_above = lane < kWarps ? es.warp_above[lane] : 0;
    const int32_t own_equal = lane < kWarps ? es.warp_equal[lane] : 0;
    const int32_t x = LaneInclusiveSum(own_above, lane);
    const int32_t y = LaneInclusiveSum(own_equal, lane);
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

// Lane l of a warp handles four consecutive keys at a time: one 16-byte load
// from the cache (kCached; its index 0 is the share's lo, 16-byte aligned), or
// four from global memory.
struct FourKeys {
  uint32_t key[4];
  int valid;  // how many of them are in the share
};

template <bool kCached>
__device__ __forceinline__ FourKeys LoadFour(const Share& share, const float* scores, int32_t i) {
  FourKeys f;
  f.valid = min(4, share.hi - i);
  if (kCached && f.valid == 4) {
    const uint4 v = *reinterpret_cast<const uint4*>(share.cache + (i - share.lo));
    f.key[0] = v.x;
    f.key[1] = v.y;
    f.key[2] = v.z;
    f.key[3] = v.w;
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      f.key[j] = j >= f.valid ? 0u
                 : kCached    ? share.cache[i + j - share.lo]
                              : OrderedKey(__ldg(scores + i + j));
    }
  }
  return f;
}

// Stage: the keys above the threshold and equal to it in this warp's slice,
// into es.warp_above/warp_equal[warp].
template <bool kCached>
__device__ __forceinline__ void CountWarpSlice(EmitShared& es, const Share& share,
                                               const float* scores, const WarpSlice& slice,
                                               uint32_t threshold, int warp, int lane) {
  int32_t above = 0, equal = 0;
#pragma unroll 2
  for (int32_t q = slice.first + lane; q < slice.last; q += 32) {
    const FourKeys f = LoadFour<kCached>(share, scores, share.lo + 4 * q);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      above += j < f.valid && f.key[j] > threshold;
      equal += j < f.valid && f.key[j] == threshold;
    }
  }
  above = __reduce_add_sync(~0u, above);
  equal = __reduce_add_sync(~0u, equal);
  if (lane == 0) {
    es.warp_above[warp] = above;
    es.warp_equal[warp] = equal;
  }
}

// Stage: the warp's slice again, each kept slot written to its place: every
// key above the threshold, and those equal to it while the cut's ties last.
// Per 128 keys, a scan of the lanes' kept counts gives each lane its place,
// and its own earlier keys give each key's. Keys equal to the threshold are
// rare (one value): only a chunk that holds some ranks them.
template <bool kCached>
__device__ __forceinline__ void WriteKeptSlots(const EmitShared& es, const Share& share,
                                               const float* scores, int32_t* __restrict__ keep,
                                               const Cut& cut, int32_t begin,
                                               const WarpSlice& slice, int warp, int lane) {
  const uint32_t threshold = static_cast<uint32_t>(cut.threshold);
  const uint32_t lanes_below = (1u << lane) - 1;
  int32_t ties_before = es.base_equal + es.warp_equal[warp];
  int32_t out = begin + es.base_above + es.warp_above[warp] + min(ties_before, cut.ties);
  for (int32_t chunk = slice.first; chunk < slice.last; chunk += 32) {
    const int32_t q = chunk + lane;
    const int32_t i = share.lo + 4 * q;
    FourKeys f = LoadFour<kCached>(share, scores, i);
    if (q >= slice.last) f.valid = 0;
    bool kept[4], equal[4];
    bool any_equal = false;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      kept[j] = j < f.valid && f.key[j] > threshold;
      equal[j] = j < f.valid && f.key[j] == threshold;
      any_equal |= equal[j];
    }
    if (__any_sync(~0u, any_equal)) {  // warp-uniform
      uint32_t equal_masks[4];
      int32_t rank = ties_before, chunk_equal = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        equal_masks[j] = __ballot_sync(~0u, equal[j]);
        rank += __popc(equal_masks[j] & lanes_below);
        chunk_equal += __popc(equal_masks[j]);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (equal[j]) kept[j] = rank++ < cut.ties;
      }
      ties_before += chunk_equal;
    }
    // The lanes below keep through - mine slots of this chunk: one scan of
    // the lanes' counts by shuffles instead of a ballot and two population
    // counts per key position (eight POPCs; 2% off 128K streams read from
    // L2, within 1% on cached ones: docs/performance.md).
    const int32_t mine = kept[0] + kept[1] + kept[2] + kept[3];
    const int32_t through = LaneInclusiveSum(mine, lane);
    int32_t at = out + through - mine;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (kept[j]) keep[at++] = begin + i + j;
    }
    out += __shfl_sync(~0u, through, 31);
  }
}

// Writes the candidates of the cut in this CTA's share of one stream to keep
// (the stream's), ascending. The share indexes the stream's candidates, which
// start at slot `begin`, after the sinks. Each warp counts its contiguous
// slice, prefix sums over the warps and the group's CTAs give it its first
// output index and the ties before it, and it writes its slice. A cut that
// takes everything writes the slots in order.
template <bool kCached, typename G>
__device__ __forceinline__ void EmitKeepFrom(G& g, EmitShared& es, const Share& share,
                                             int32_t* __restrict__ keep, const Cut& cut,
                                             int32_t begin) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const WarpSlice slice(share, warp);
  const float* scores = share.scores + share.segments[0].first;
  CountWarpSlice<kCached>(es, share, scores, slice, static_cast<uint32_t>(cut.threshold), warp,
                          lane);
  __syncthreads();
  ScanCounts(g, es, warp, lane);
  __syncthreads();
  WriteKeptSlots<kCached>(es, share, scores, keep, cut, begin, slice, warp, lane);
}

template <typename G>
__device__ inline void EmitKeep(G& g, EmitShared& es, const Share& share,
                                int32_t* __restrict__ keep, const Cut& cut, int32_t begin) {
  if (cut.threshold < 0) {  // group-uniform: every key is above -1
    for (int32_t i = share.lo + static_cast<int32_t>(threadIdx.x); i < share.hi; i += kThreads) {
      keep[begin + i] = begin + i;
    }
  } else if (share.cache != nullptr) {  // CTA-uniform; ScanCounts' g.Sync() is every CTA's
    EmitKeepFrom<true>(g, es, share, keep, cut, begin);
  } else {
    EmitKeepFrom<false>(g, es, share, keep, cut, begin);
  }
}

// Stage: the slots kept without ranking, spread over the group: all of them
// when every candidate is kept, else the sinks, and the recent ones after the
// `take` candidates to come. Returns whether candidates remain to rank.
template <typename G>
__device__ __forceinline__ bool KeepUnranked(const G& g, int32_t* keep, const StreamRange& r,
                                             int32_t take) {
  // 64-bit indexes: a stream may be nearly 2^31 slots long.
  const int64_t first = int64_t{g.rank} * kThreads + threadIdx.x;
  const int64_t stride = int64_t{g.size} * kThreads;
  if (take == r.num_candidates()) {
    for (int64_t j = first; j < r.n; j += stride) keep[j] = static_cast<int32_t>(j);
    return false;
  }
  for (int64_t j = first; j < r.begin; j += stride) keep[j] = static_cast<int32_t>(j);
  for (int64_t j = r.end + first; j < r.n; j += stride) {
    keep[j - r.end + r.begin + take] = static_cast<int32_t>(j);
  }
  return take != 0;
}

}  // namespace headpage::gpu::internal::selection

#endif  // HEADPAGE_KERNELS_SELECT_EMIT_CUH_
