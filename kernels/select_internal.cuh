// SPDX-License-Identifier: Apache-2.0
// File: kernels/select_internal.cuh
//
// What the Select kernels (select.cu, select_ada.cu) share: the
// order-preserving keys of the float scores, a group's segments and the cut
// its select answers, the CTAs of a group (a cluster, or one CTA alone), a
// CTA's share of the group and the walks over its keys (from shared memory
// when they fit, else global memory); then a stream's candidate range and
// Ada-KV's budget arithmetic. The radix select itself is select_radix.cuh.
// CUDA, CCCL and plain headers only.
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
  // The sum of `local`'s counterparts in every CTA of the group. The loads
  // are all issued before the first add: a read of distributed shared memory
  // takes about 300 cycles, so eight in a row would cost eight of them.
  template <typename T>
  __device__ T SumOverPeers(T* local) {
    // Unconditional loads (a rank past the group reads this CTA's own), so
    // that none waits for a test of an earlier one.
    T value[kSelectMaxCtasPerGroup];
#pragma unroll
    for (int r = 0; r < kSelectMaxCtasPerGroup; ++r) {
      value[r] = *Peer(local, r < static_cast<int>(size) ? static_cast<uint32_t>(r) : rank);
    }
    T sum = value[0];
#pragma unroll
    for (int r = 1; r < kSelectMaxCtasPerGroup; ++r) {
      if (r < static_cast<int>(size)) sum += value[r];
    }
    return sum;
  }
  // This CTA's share [lo, hi) of `total` items. Every boundary but the last
  // is a multiple of four, so that a stream whose scores start on 16 bytes
  // has its keys stored 16 bytes at a time by LoadShare in every CTA, not in
  // the first alone (top-B 8x32K: 19.1 against 19.4 us, H200).
  __device__ int32_t ShareBegin(int32_t total) const { return Boundary(total, rank); }
  __device__ int32_t ShareEnd(int32_t total) const { return Boundary(total, rank + 1); }
  __device__ int32_t Boundary(int32_t total, uint32_t r) const {
    if (r >= size) return total;
    return static_cast<int32_t>((int64_t{total} * r / size) & ~int64_t{3});
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
  template <typename T>
  __device__ T SumOverPeers(T* local) {
    return *local;
  }
};

// Calls f(index, key) for the unaligned head and tail of [lo, hi) of p and
// f4(index, keys) for each aligned vector of four between (keys of index ..
// index + 3), spread over the CTA: 16-byte loads, kUnroll of them in flight
// per thread.
template <typename F, typename F4>
__device__ __forceinline__ void ForEachKeyVector(const float* __restrict__ p, int32_t lo,
                                                 int32_t hi, F&& f, F4&& f4) {
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
        f4(body + 4 * j, make_uint4(OrderedKey(x[u].x), OrderedKey(x[u].y), OrderedKey(x[u].z),
                                    OrderedKey(x[u].w)));
      }
    }
  }
  const int32_t tail = body + 4 * num_vectors;
  if (t < hi - tail) f(tail + t, OrderedKey(__ldg(p + tail + t)));
}

// Calls f(index, key) for every index in [lo, hi) of p, spread over the CTA.
template <typename F>
__device__ __forceinline__ void ForEachKey(const float* __restrict__ p, int32_t lo, int32_t hi,
                                           F&& f) {
  ForEachKeyVector(p, lo, hi, f, [&](int32_t at, const uint4& keys) {
    f(at, keys.x);
    f(at + 1, keys.y);
    f(at + 2, keys.z);
    f(at + 3, keys.w);
  });
}

// Calls f(key) for cache[lo, hi), spread over the CTA: 16-byte loads for the
// aligned body (cache itself is 16-byte aligned).
template <typename F>
__device__ __forceinline__ void ForEachCachedKey(const uint32_t* cache, int32_t lo, int32_t hi,
                                                 F&& f) {
  if (lo >= hi) return;
  const int t = threadIdx.x;
  const int32_t body = min(hi, (lo + 3) & ~3);
  if (t < body - lo) f(cache[lo + t]);
  const int32_t num_vectors = (hi - body) >> 2;
  const uint4* vectors = reinterpret_cast<const uint4*>(cache + body);
#pragma unroll 2
  for (int32_t i = t; i < num_vectors; i += kThreads) {
    const uint4 v = vectors[i];
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

// Calls f(key) for every key of segment s in the share that belongs to it
// (below its limit).
template <typename F>
__device__ __forceinline__ void ForEachMemberKey(const Share& share, int s, F&& f) {
  const Segment seg = share.segments[s];
  const int32_t begin = max(share.lo, seg.start), end = min(share.hi, seg.start + seg.size);
  if (begin >= end) return;
  const auto member = [&](uint32_t key) {
    if (int64_t{key} < seg.limit) f(key);
  };
  if (share.cache != nullptr) {
    ForEachCachedKey(share.cache, begin - share.lo, end - share.lo, member);
  } else {
    ForEachKey(share.scores + seg.first, begin - seg.start, end - seg.start,
               [&](int32_t, uint32_t key) { member(key); });
  }
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
