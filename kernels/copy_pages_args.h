// SPDX-License-Identifier: Apache-2.0
// File: kernels/copy_pages_args.h
//
// CopyPages copies whole pages (K, V, positions and, on fp8 pages, the scales):
// the copy-on-write copies that BlockManager::Reserve plans when a shared,
// partly filled tail page is written.
// Plain C++: .cu files include it.
#ifndef HEADPAGE_KERNELS_COPY_PAGES_ARGS_H_
#define HEADPAGE_KERNELS_COPY_PAGES_ARGS_H_

#include <cstdint>

#include "core/paged_kv.h"
#include "kernels/gpu_launch.h"

namespace headpage {

struct CopyPagesArgs {
  PagedKV cache;
  int32_t num_copies = 0;
  const int32_t* src_pages = nullptr;  // [num_copies]
  const int32_t* dst_pages = nullptr;  // [num_copies]; distinct, and none is also a source
};

namespace gpu::internal {
// copy_pages.cu; gpu::CopyPages (copy_pages.h) validates, then calls it.
LaunchResult LaunchCopyPages(const CopyPagesArgs& args, GpuStream stream);
}  // namespace gpu::internal

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_COPY_PAGES_ARGS_H_
