// SPDX-License-Identifier: Apache-2.0
#include "kernels/copy_pages.h"

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/kv_rows.h"
#include "core/status.h"
#include "kernels/gpu_status.h"
#include "kernels/validate_common.h"

namespace headpage {

absl::Status Validate(const CopyPagesArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(ValidatePagedKV(args.cache, "CopyPages"));
  if (args.num_copies < 0) {
    return absl::InvalidArgumentError(absl::StrCat("CopyPages: num_copies ", args.num_copies));
  }
  if (args.num_copies > 0 && (args.src_pages == nullptr || args.dst_pages == nullptr)) {
    return absl::InvalidArgumentError("CopyPages: src_pages or dst_pages is null");
  }
  return absl::OkStatus();
}

namespace ref {

absl::Status CopyPages(const CopyPagesArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  const PagedKV& cache = args.cache;
  // 1: destination, 2: source. A page that is both, or a destination twice,
  // would make the copies' order matter (and race on the GPU).
  std::vector<uint8_t> role(static_cast<size_t>(cache.num_pages), 0);
  for (int32_t i = 0; i < args.num_copies; ++i) {
    const int32_t src = args.src_pages[i], dst = args.dst_pages[i];
    if (src < 0 || src >= cache.num_pages || dst < 0 || dst >= cache.num_pages) {
      return absl::InvalidArgumentError(absl::StrCat("CopyPages: copy ", i, " (", src, " -> ", dst,
                                                     ") names a page outside the cache"));
    }
    if (role[dst] != 0 || (role[src] & 1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "CopyPages: copy ", i, " (", src, " -> ", dst,
          ") reuses a destination or reads a page that is also written"));
    }
    role[dst] = 1;
    role[src] |= 2;
  }
  const size_t page_bytes = static_cast<size_t>(cache.page_elements()) * KvElementBytes(cache);
  const size_t page_scales = cache.fp8() ? 2 * static_cast<size_t>(cache.page_size) : 0;
  auto* base = static_cast<char*>(cache.data);
  for (int32_t i = 0; i < args.num_copies; ++i) {
    const int64_t src = args.src_pages[i], dst = args.dst_pages[i];
    std::memcpy(base + dst * static_cast<int64_t>(page_bytes), base + src * static_cast<int64_t>(page_bytes),
                page_bytes);
    std::memcpy(cache.positions + dst * cache.page_size, cache.positions + src * cache.page_size,
                static_cast<size_t>(cache.page_size) * sizeof(int32_t));
    if (page_scales > 0) {
      std::memcpy(cache.scales + dst * page_scales, cache.scales + src * page_scales,
                  page_scales * sizeof(float));
    }
  }
  return absl::OkStatus();
}

}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace gpu {

absl::Status CopyPages(const CopyPagesArgs& args, GpuStream stream) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  HEADPAGE_RETURN_IF_ERROR(ValidateGpuHeadDim(args.cache, "CopyPages"));
  if (args.num_copies == 0) return absl::OkStatus();
  return LaunchStatus(internal::LaunchCopyPages(args, stream), "CopyPages", args.cache.dtype,
                      args.cache.head_dim);
}

}  // namespace gpu
#endif

}  // namespace headpage
