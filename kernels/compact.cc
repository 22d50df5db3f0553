// SPDX-License-Identifier: Apache-2.0
#include "kernels/compact.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "kernels/gpu_status.h"
#include "kernels/validate_common.h"

namespace headpage {

absl::Status Validate(const CompactArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(ValidatePagedKV(args.cache, "Compact"));
  if (args.num_rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat("Compact: num_rows ", args.num_rows));
  }
  // The arrays sized by num_rows must exist. page_ids and keep may be null when
  // they are empty (every row keeps nothing, say): ref checks that against indptr.
  if (args.num_rows > 0 &&
      (args.src_indptr == nullptr || args.src_lens == nullptr || args.dst_indptr == nullptr ||
       args.keep_indptr == nullptr || args.in_place == nullptr)) {
    return absl::InvalidArgumentError("Compact: a plan array is null");
  }
  return absl::OkStatus();
}

namespace ref {
namespace {

absl::Status CheckPages(const int32_t* pages, int32_t begin, int32_t end, int32_t num_pages,
                        int32_t row, const char* which) {
  for (int32_t i = begin; i < end; ++i) {
    if (pages[i] < 0 || pages[i] >= num_pages) {
      return absl::InvalidArgumentError(absl::StrCat("Compact: row ", row, " ", which,
                                                     " page id ", pages[i], " is out of range"));
    }
  }
  return absl::OkStatus();
}

int32_t KeepBegin(const CompactArgs& a, int32_t r) {
  return a.keep_offsets != nullptr ? a.keep_offsets[r] : a.keep_indptr[r];
}

absl::Status CheckRow(const CompactArgs& a, int32_t r) {
  const int32_t ps = a.cache.page_size;
  const int32_t src_begin = a.src_indptr[r], src_end = a.src_indptr[r + 1];
  const int32_t dst_begin = a.dst_indptr[r], dst_end = a.dst_indptr[r + 1];
  const int32_t keep_begin = KeepBegin(a, r);
  const int32_t keep_end = keep_begin + (a.keep_indptr[r + 1] - a.keep_indptr[r]);
  const int32_t len = a.src_lens[r];
  if (src_begin < 0 || dst_begin < 0 || keep_begin < 0 || src_end < src_begin ||
      dst_end < dst_begin || keep_end < keep_begin || len < 0) {
    return absl::InvalidArgumentError(absl::StrCat("Compact: row ", r, " has a negative extent"));
  }
  const int32_t kept = keep_end - keep_begin;
  if (kept > len) {
    return absl::InvalidArgumentError(
        absl::StrCat("Compact: row ", r, " keeps ", kept, " of ", len, " tokens"));
  }
  if (PagesFor(len, ps) > src_end - src_begin || PagesFor(kept, ps) > dst_end - dst_begin) {
    return absl::InvalidArgumentError(
        absl::StrCat("Compact: row ", r, " has too few pages for its tokens"));
  }
  HEADPAGE_RETURN_IF_ERROR(CheckPages(a.src_page_ids, src_begin, src_end, a.cache.num_pages, r, "source"));
  HEADPAGE_RETURN_IF_ERROR(CheckPages(a.dst_page_ids, dst_begin, dst_end, a.cache.num_pages, r, "destination"));
  for (int32_t i = keep_begin; i < keep_end; ++i) {
    const int32_t k = a.keep[i];
    if (k < 0 || k >= len || (i > keep_begin && k <= a.keep[i - 1])) {
      return absl::InvalidArgumentError(
          absl::StrCat("Compact: row ", r, " keep set is not strictly ascending inside [0, ", len,
                       ") at entry ", i - keep_begin, " (", k, ")"));
    }
  }
  if (a.in_place[r]) {
    for (int32_t i = 0; i < dst_end - dst_begin; ++i) {
      if (i >= src_end - src_begin || a.dst_page_ids[dst_begin + i] != a.src_page_ids[src_begin + i]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Compact: in-place row ", r, " destination is not a prefix of its source"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Compact(const CompactArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  if (args.num_rows > 0 &&
      ((args.src_indptr[args.num_rows] > 0 && args.src_page_ids == nullptr) ||
       (args.dst_indptr[args.num_rows] > 0 && args.dst_page_ids == nullptr) ||
       (args.keep_indptr[args.num_rows] > 0 && args.keep == nullptr))) {
    return absl::InvalidArgumentError("Compact: a non-empty plan array is null");
  }
  for (int32_t r = 0; r < args.num_rows; ++r) HEADPAGE_RETURN_IF_ERROR(CheckRow(args, r));

  const PagedKV& cache = args.cache;
  const size_t elem = SizeOf(cache.dtype);
  const size_t row_bytes = static_cast<size_t>(cache.head_dim) * elem;
  auto* base = static_cast<char*>(cache.data);
  for (int32_t r = 0; r < args.num_rows; ++r) {
    const int32_t* src_pages = args.src_page_ids + args.src_indptr[r];
    const int32_t* dst_pages = args.dst_page_ids + args.dst_indptr[r];
    const int32_t* keep = args.keep + KeepBegin(args, r);
    const int32_t kept = args.keep_indptr[r + 1] - args.keep_indptr[r];
    // One survivor at a time, in ascending order: also correct in place, since
    // slot i is written only after every keep[j] <= i was read.
    for (int32_t i = 0; i < kept; ++i) {
      const int64_t from = SlotOf(src_pages, keep[i], cache.page_size);
      const int64_t to = SlotOf(dst_pages, i, cache.page_size);
      if (from == to) continue;
      std::memcpy(base + cache.KeyOffset(to) * elem, base + cache.KeyOffset(from) * elem, row_bytes);
      std::memcpy(base + cache.ValueOffset(to) * elem, base + cache.ValueOffset(from) * elem,
                  row_bytes);
      cache.positions[to] = cache.positions[from];
      if (args.slot_scores != nullptr) args.slot_scores[to] = args.slot_scores[from];
    }
  }
  return absl::OkStatus();
}

}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace gpu {

absl::Status Compact(const CompactArgs& args, GpuStream stream) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  if (args.num_rows == 0) return absl::OkStatus();
  return LaunchStatus(internal::LaunchCompact(args, stream), "Compact", args.cache.dtype,
                      args.cache.head_dim);
}

}  // namespace gpu
#endif

}  // namespace headpage
