// SPDX-License-Identifier: Apache-2.0
#include "kernels/validate_common.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/supported.h"

namespace headpage {

absl::Status ValidatePagedKV(const PagedKV& cache, const char* op) {
  if (cache.data == nullptr || cache.positions == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": cache data or positions is null"));
  }
  if (!IsKernelAligned(cache.data)) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": cache data is not ", kKernelAlignment, "-byte aligned"));
  }
  if (cache.num_pages <= 0 || cache.page_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": cache has ", cache.num_pages,
                                                   " pages of ", cache.page_size, " tokens"));
  }
  if (cache.num_slots() > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", cache.num_slots(),
                                                   " slots exceed the int32 slot id range"));
  }
  if (SizeOf(cache.dtype) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": unknown dtype value ", static_cast<int>(cache.dtype)));
  }
  if (!IsSupportedHeadDim(cache.head_dim)) {
    return absl::UnimplementedError(absl::StrCat(op, ": head_dim ", cache.head_dim,
                                                 " is not compiled in; supported: ",
                                                 absl::StrJoin(kSupportedHeadDims, ", ")));
  }
  return absl::OkStatus();
}

absl::Status CheckBlockTables(const PagedKV& cache, int32_t num_streams, const int32_t* indptr,
                              const int32_t* page_ids, const int32_t* lens, const char* op) {
  for (int32_t stream = 0; stream < num_streams; ++stream) {
    const int32_t begin = indptr[stream];
    const int32_t end = indptr[stream + 1];
    const int32_t len = lens[stream];
    if (begin < 0 || end < begin || len < 0 || PagesFor(len, cache.page_size) > end - begin) {
      return absl::OutOfRangeError(absl::StrCat(op, ": stream ", stream, " has ", len,
                                                " tokens in pages [", begin, ", ", end, ")"));
    }
    for (int64_t i = begin; i < begin + PagesFor(len, cache.page_size); ++i) {
      if (page_ids[i] < 0 || page_ids[i] >= cache.num_pages) {
        return absl::OutOfRangeError(absl::StrCat(op, ": stream ", stream, " names page ",
                                                  page_ids[i], " outside [0, ",
                                                  cache.num_pages, ")"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace headpage
