// SPDX-License-Identifier: Apache-2.0
// File: kernels/select_emit.cuh
//
// What both Select kernels (select.cu, select_ada.cu) do once a stream's cut
// is known: the slots kept without ranking (sinks, the recent window), then
// the ranked ones, written in ascending order by the CTAs of a group (a
// cluster, or one CTA alone) with prefix sums over warps and CTAs; from a
// share cached in shared memory in one pass over its keys (EmitKeepStaged),
// from global memory in two (EmitKeepFromScores). CUDA and plain headers only.
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

// Lane l of a warp handles four consecutive keys at a time, read from the
// scores in global memory (a share too large for the cache).
struct FourKeys {
  uint32_t key[4];
  int valid;  // how many of them are in the share
};

__device__ __forceinline__ FourKeys LoadFour(const Share& share, const float* scores, int32_t i) {
  FourKeys f;
  f.valid = min(4, share.hi - i);
#pragma unroll
  for (int j = 0; j < 4; ++j) f.key[j] = j < f.valid ? OrderedKey(__ldg(scores + i + j)) : 0u;
  return f;
}

// Stage: the keys above the threshold and equal to it in this warp's slice,
// into es.warp_above/warp_equal[warp].
__device__ __forceinline__ void CountWarpSlice(EmitShared& es, const Share& share,
                                               const float* scores, const WarpSlice& slice,
                                               uint32_t threshold, int warp, int lane) {
  int32_t above = 0, equal = 0;
#pragma unroll 2
  for (int32_t q = slice.first + lane; q < slice.last; q += 32) {
    const FourKeys f = LoadFour(share, scores, share.lo + 4 * q);
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
    FourKeys f = LoadFour(share, scores, i);
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
// (the stream's), ascending, for a share read from global memory. The share
// indexes the stream's candidates, which start at slot `begin`, after the
// sinks. Each warp counts its contiguous slice, prefix sums over the warps and
// the group's CTAs give it its first output index and the ties before it, and
// it writes its slice.
template <typename G>
__device__ __forceinline__ void EmitKeepFromScores(G& g, EmitShared& es, const Share& share,
                                                   int32_t* __restrict__ keep, const Cut& cut,
                                                   int32_t begin) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const WarpSlice slice(share, warp);
  const float* scores = share.scores + share.segments[0].first;
  CountWarpSlice(es, share, scores, slice, static_cast<uint32_t>(cut.threshold), warp, lane);
  __syncthreads();
  ScanCounts(g, es, warp, lane);
  __syncthreads();
  WriteKeptSlots(es, share, scores, keep, cut, begin, slice, warp, lane);
}

// The same for a share cached in shared memory, in one pass over its keys:
// each warp stages the slots of its slice's keys at or above the threshold in
// place, over the keys it has read (ascending; an equal key's slot with bit
// 31 set, and only when the cut takes ties), and counts them; after the prefix
// sums over the warps and the group's CTAs, it copies them to keep, 128
// contiguous bytes a store. EmitKeepFromScores' count pass is saved, and a
// ballot per 32 consecutive keys places them, not a scan of the lanes' counts.
inline constexpr uint32_t kStagedEqual = 0x80000000u;

template <typename G>
__device__ __forceinline__ void EmitKeepStaged(G& g, EmitShared& es, const Share& share,
                                               int32_t* __restrict__ keep, const Cut& cut,
                                               int32_t begin) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const WarpSlice slice(share, warp);
  const uint32_t threshold = static_cast<uint32_t>(cut.threshold);
  const bool stage_equal = cut.ties > 0;  // group-uniform
  // The cache is this kernel's own shared memory; a share's keys are not read
  // again after its keep set.
  const int32_t first = 4 * slice.first;
  const int32_t end = min(4 * slice.last, share.hi - share.lo);
  uint32_t* staged = const_cast<uint32_t*>(share.cache) + first;
  const uint32_t lanes_below = (1u << lane) - 1;
  int32_t num_staged = 0, num_equal = 0;  // warp-uniform
  // 128 keys a step, lane l reading keys l, 32 + l, 64 + l and 96 + l: a
  // ballot per 32 consecutive keys gives each staged key its place.
  for (int32_t c = first; c < end; c += 128) {
    uint32_t key[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int32_t k = c + 32 * j + lane;
      key[j] = k < end ? share.cache[k] : 0u;
    }
    // No entry lands past this step's keys, which every lane has read before
    // the barrier: the staged never outrun the read.
    __syncwarp();
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int32_t k = c + 32 * j + lane;
      const bool valid = k < end;
      const bool is_equal = valid && key[j] == threshold;
      const bool stage = valid && (key[j] > threshold || (stage_equal && is_equal));
      const uint32_t staging = __ballot_sync(~0u, stage);
      if (stage) {
        staged[num_staged + __popc(staging & lanes_below)] =
            static_cast<uint32_t>(begin + share.lo + k) | (is_equal ? kStagedEqual : 0u);
      }
      num_staged += __popc(staging);
      if (stage_equal) num_equal += __popc(__ballot_sync(~0u, is_equal));
    }
  }
  // Without ties to hand out, keys at the threshold are not kept, and no
  // warp's count of them matters.
  const int32_t num_above = num_staged - num_equal;
  if (lane == 0) {
    es.warp_above[warp] = num_above;
    es.warp_equal[warp] = num_equal;
  }
  __syncthreads();
  ScanCounts(g, es, warp, lane);
  __syncthreads();
  const int32_t ties_before = es.base_equal + es.warp_equal[warp];
  int32_t out = begin + es.base_above + es.warp_above[warp] + min(ties_before, cut.ties);
  __syncwarp();  // the staged entries, written by other lanes
  // Warp-uniform; num_equal is 0 when the cut takes no ties: every staged slot is kept.
  if (num_equal == 0) {
    for (int32_t k = lane; k < num_staged; k += 32) keep[out + k] = static_cast<int32_t>(staged[k]);
    return;
  }
  // Keys equal to the threshold: kept while the cut's ties last, in order.
  int32_t rank = ties_before;
  for (int32_t k0 = 0; k0 < num_staged; k0 += 32) {
    const int32_t k = k0 + lane;
    const uint32_t e = k < num_staged ? staged[k] : 0u;
    const bool is_equal = k < num_staged && (e & kStagedEqual) != 0;
    const uint32_t equal_mask = __ballot_sync(~0u, is_equal);
    const bool kept =
        k < num_staged && (!is_equal || rank + __popc(equal_mask & lanes_below) < cut.ties);
    const uint32_t kept_mask = __ballot_sync(~0u, kept);
    if (kept) keep[out + __popc(kept_mask & lanes_below)] = static_cast<int32_t>(e & ~kStagedEqual);
    out += __popc(kept_mask);
    rank += __popc(equal_mask);
  }
}

template <typename G>
__device__ inline void EmitKeep(G& g, EmitShared& es, const Share& share,
                                int32_t* __restrict__ keep, const Cut& cut, int32_t begin) {
  if (cut.threshold < 0) {  // group-uniform: every key is above -1
    for (int32_t i = share.lo + static_cast<int32_t>(threadIdx.x); i < share.hi; i += kThreads) {
      keep[begin + i] = begin + i;
    }
  } else if (share.cache != nullptr) {  // CTA-uniform; ScanCounts' g.Sync() is every CTA's
    EmitKeepStaged(g, es, share, keep, cut, begin);
  } else {
    EmitKeepFromScores(g, es, share, keep, cut, begin);
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
