// SPDX-License-Identifier: Apache-2.0
// File: kernels/copy_pages.cu
//
// CopyPages on the GPU: every 16-byte vector of every copied page is one
// thread's work, in a grid-stride loop; the copies are independent (Validate's
// contract: destinations distinct, none also a source), so there is no order.
// The first threads of a page also copy its positions and, on fp8 pages, its
// 2 * page_size scales (a page is at least 8 * page_size vectors).
#include "kernels/copy_pages_args.h"
#include "kernels/cuda_common.cuh"

namespace headpage::gpu::internal {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    CopyPagesKernel(CopyPagesArgs a, int64_t page_vectors, int64_t num_vectors) {
  auto* base = static_cast<Vector*>(a.cache.data);
  const int32_t page_size = a.cache.page_size;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < num_vectors;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t copy = i / page_vectors;
    const int64_t v = i - copy * page_vectors;
    const int64_t src = a.src_pages[copy], dst = a.dst_pages[copy];
    if (src < 0 || src >= a.cache.num_pages || dst < 0 || dst >= a.cache.num_pages) continue;
    base[dst * page_vectors + v] = base[src * page_vectors + v];
    if (v < page_size) a.cache.positions[dst * page_size + v] = a.cache.positions[src * page_size + v];
    if (a.cache.fp8() && v < 2 * page_size) {
      a.cache.scales[2 * (dst * page_size) + v] = a.cache.scales[2 * (src * page_size) + v];
    }
  }
}

}  // namespace

LaunchResult LaunchCopyPages(const CopyPagesArgs& args, GpuStream stream) {
  return DispatchKvElementAndHeadDim(args.cache.dtype, args.cache.kv_dtype, args.cache.head_dim,
                                     [&](auto element_tag, auto head_dim_tag) {
    using T = typename decltype(element_tag)::type;
    constexpr int64_t kRowVectors = decltype(head_dim_tag)::value * sizeof(T) / kVectorBytes;
    const int64_t page_vectors = 2 * kRowVectors * args.cache.page_size;
    const int64_t num_vectors = page_vectors * args.num_copies;
    const int64_t blocks = CeilDiv(num_vectors, kThreads);
    CopyPagesKernel<<<static_cast<unsigned>(blocks < 65536 ? blocks : 65536), kThreads, 0,
                      stream>>>(args, page_vectors, num_vectors);
    return CheckLaunch();
  });
}

}  // namespace headpage::gpu::internal
