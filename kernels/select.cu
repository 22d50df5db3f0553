// SPDX-License-Identifier: Apache-2.0
// File: kernels/select.cu
//
// Select on the GPU: an exact MSD radix select on order-preserving keys of the
// float scores (the CPU's policy::internal::OrderedKey), run by one
// thread-block cluster per group, then a stable compaction.
//
//  - A group is one stream (kTopB's keep sets: StreamKernel), one kAda
//    sequence's competing streams (the allocation), or one stream inside its
//    CTA (AdaSelectKernel's own selects). A cluster's CTAs split the group's
//    candidates; each pass builds a histogram of one digit (11, 11, 10 bits) of
//    the keys still tied with the answer, in shared memory, and every CTA reads
//    the cluster's through distributed shared memory and finds the same
//    bucket. A bucket the top k takes whole ends the select early. The
//    result is a cut: every key above a threshold, plus the first `ties` keys
//    equal to it in (stream, slot) order.
//  - Keep sets: each warp takes a contiguous slice of the stream. From shared
//    memory it stages its slice's kept slots in place, over keys it has read,
//    a ballot per 32 consecutive keys placing them, and counts them; from
//    global memory it counts first. Prefix sums over the warps and the
//    group's CTAs give each warp its first output index and the ties before
//    it; it then copies its staged slots (or writes its slice's kept slots)
//    to the keep set, ascending.
//  - kAda, one launch (AdaSelectKernel, select_ada.cu): a cluster per
//    sequence whose CTAs each own whole streams. kProtectTop first finds, in
//    each CTA, its streams' own top floor(alpha B'_h). One cut over the
//    competing candidates (for kProtectTop, what those tops leave) gives the
//    hits c_h per stream, ties handed out in stream order, hence the kept
//    counts; then each CTA selects its streams' keep sets alone. When it owns
//    one stream, its hits are read off the cluster select's histograms, and
//    its own select reuses each of them whose bucket it shares (each pass has
//    a histogram slot of its own: select_radix.cuh), so that a stream whose
//    cut lies near the sequence's reads its keys once or not at all after
//    loading them. The price: a sequence gets at most num_kv_heads
//    CTAs, so one sequence of very long streams (more than 40K candidates
//    each) runs on few multiprocessors from L2 (docs/performance.md).
//
// Every CTA reads its share of the scores from global memory once, building
// the first histogram as it goes, and keeps the keys in shared memory (160 KiB,
// one 1024-thread CTA per SM) for the later passes, the counts and the keep
// sets; a share too large for that (more than 40K candidates per CTA) is read
// from global memory (L2) on every pass instead. A pass reads 16 bytes per
// thread at a time and skips the vectors of four with no key in the running
// bucket; a bucket is found from the peers' sums per 32 bins, then the 32 bins
// of the chunk that holds it, the peers' loads in flight together. The
// cluster size is the largest power of two (up to 8, and for kAda up to the
// kv heads) with which every group's cluster runs at once
// (cudaOccupancyMaxActiveClusters), so that a launch is one wave; a forced
// size (SelectArgs::ctas_per_group) may be any, kAda's capped at the kv heads.
#include <algorithm>
#include <mutex>

#include "kernels/cuda_common.cuh"
#include "kernels/select_args.h"
#include "kernels/select_emit.cuh"
#include "kernels/select_internal.cuh"
#include "kernels/select_radix.cuh"

namespace headpage::gpu::internal {
namespace selection {

// select_ada.cu: kAda, one cluster per sequence.
__global__ void __launch_bounds__(kThreads, 1) AdaSelectKernel(const SelectArgs a);

namespace {
struct StreamShared {
  SelectShared select;
  EmitShared emit;
  Segment segment;
  StreamRange range;
  int32_t wanted;  // the stream's kept count as given
};

// Stage: the stream's range (warp 0) and its wanted count (loaded beside the
// search, not after it), into shared memory for the whole CTA.
__device__ __forceinline__ void LoadStream(const SelectArgs& a, int32_t s, StreamShared& sm) {
  if (threadIdx.x < 32) {
    const StreamRange range = LocateStream(a, s);
    if (threadIdx.x == 0) sm.range = range;
  } else if (threadIdx.x == 32) {
    sm.wanted = a.kept[s];
  }
  __syncthreads();
}

// kTopB: one cluster per stream.
__global__ void __launch_bounds__(kThreads, 1) StreamKernel(const SelectArgs a) {
  __shared__ StreamShared sm;
  extern __shared__ uint4 cache_storage[];  // kCacheBytes
  Group g;
  const int32_t s = static_cast<int32_t>(blockIdx.x / g.size);
  LoadStream(a, s, sm);
  const StreamRange r = sm.range;
  const int32_t num_candidates = r.num_candidates(), num_protected = r.num_protected();
  // Every CTA of the cluster reads the same values, so the early return below
  // is taken by all of them (before any distributed shared memory).
  const int32_t kept = min(max(sm.wanted, num_protected), r.n);
  if (g.rank == 0 && threadIdx.x == 0) a.kept_counts[s] = kept;
  const int32_t take = kept - num_protected;
  if (!KeepUnranked(g, a.keep + r.offset, r, take)) return;

  if (threadIdx.x == 0) sm.segment = Segment{r.offset + r.begin, num_candidates, 0, 0, kAllKeys};
  __syncthreads();
  Share share{a.scores, &sm.segment, 1, g.ShareBegin(num_candidates), g.ShareEnd(num_candidates),
              nullptr};
  LoadShare(sm.select, share, reinterpret_cast<uint32_t*>(cache_storage), /*keys=*/0);
  const Cut cut = GroupSelect(g, sm.select, share, take, /*keys=*/0);
  EmitKeep(g, sm.emit, share, a.keep + r.offset, cut, r.begin);
  g.Sync();  // peers may still read this CTA's shared memory
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

// CTAs per group, at most `useful`: the forced value, or the largest cluster
// (a power of two up to 8) with which every group's cluster runs at once; one
// CTA when none does.
int CtasPerGroup(int32_t forced, int64_t useful, int64_t groups, const KernelFit& fit) {
  int ctas = 1;
  if (forced > 0) {
    ctas = static_cast<int>(std::min<int64_t>(forced, useful));
  } else {
    for (int i = 3; i >= 0; --i) {
      if ((int64_t{1} << i) <= useful && groups <= fit.max_clusters[i]) {
        ctas = 1 << i;
        break;
      }
    }
  }
  ctas = std::max(ctas, 1);
  while (ctas > 1 && groups * ctas > 0x7FFFFFFF) --ctas;  // gridDim.x
  return ctas;
}

// Launches `kernel` with one cluster of `ctas` CTAs per group.
template <typename... Params, typename... Actual>
LaunchResult LaunchClusters(void (*kernel)(Params...), int which, int32_t forced_ctas,
                            int64_t useful_ctas, int64_t groups, int device, GpuStream stream,
                            Actual&&... args) {
  KernelFit fit;
  const LaunchResult prepared =
      PrepareKernel(reinterpret_cast<const void*>(kernel), which, device, &fit);
  if (!prepared.ok()) return prepared;
  const int ctas = CtasPerGroup(forced_ctas, useful_ctas, groups, fit);
  cudaLaunchAttribute cluster[1];
  cluster[0].id = cudaLaunchAttributeClusterDimension;
  cluster[0].val.clusterDim.x = static_cast<unsigned>(ctas);
  cluster[0].val.clusterDim.y = 1;
  cluster[0].val.clusterDim.z = 1;
  return LaunchWithAttributes(kernel, static_cast<unsigned>(groups * ctas), kThreads, kCacheBytes,
                              stream, cluster, 1, std::forward<Actual>(args)...);
}

}  // namespace
}  // namespace selection

LaunchResult LaunchSelect(const SelectArgs& args, GpuStream stream) {
  using selection::AdaSelectKernel;
  using selection::LaunchClusters;
  using selection::StreamKernel;
  const int64_t num_streams = args.num_streams();
  if (num_streams == 0) return LaunchResult{};
  int device = 0;
  const cudaError_t error = cudaGetDevice(&device);
  if (error != cudaSuccess) return CudaErrorResult(error);
  constexpr int kStream = 0, kAda = 1;
  const int32_t forced = args.ctas_per_group;
  if (args.mode == SelectMode::kAda) {
    // A CTA owns whole streams: more CTAs than kv heads would idle.
    return LaunchClusters(AdaSelectKernel, kAda, forced, args.num_kv_heads, args.num_seqs, device,
                          stream, args);
  }
  return LaunchClusters(StreamKernel, kStream, forced, kSelectMaxCtasPerGroup, num_streams, device,
                        stream, args);
}

}  // namespace headpage::gpu::internal
