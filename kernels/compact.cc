// SPDX-License-Identifier: Apache-2.0
#include "kernels/compact.h"

#include "absl/strings/str_cat.h"
#include "core/kv_rows.h"
#include "core/status.h"
#include "kernels/gpu_status.h"
#include "kernels/table_checks_host.h"
#include "kernels/validate_common.h"

namespace headpage {

absl::Status Validate(const CompactArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(ValidatePagedKV(args.cache, "Compact"));
  if (args.num_rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat("Compact: num_rows ", args.num_rows));
  }
  // The arrays sized by num_rows must exist; page_ids and keep may be null
  // when their lengths are 0 (every row keeps nothing, say).
  if (args.num_rows > 0 &&
      (args.src_indptr == nullptr || args.src_lens == nullptr || args.dst_indptr == nullptr ||
       args.keep_indptr == nullptr || args.in_place == nullptr)) {
    return absl::InvalidArgumentError("Compact: a plan array is null");
  }
  if (args.keep_base < 0) {
    return absl::InvalidArgumentError(absl::StrCat("Compact: keep_base ", args.keep_base,
                                                   " is negative"));
  }
  if (args.num_src_page_ids < 0 || args.num_dst_page_ids < 0 || args.num_keep < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Compact: negative array length (src_page_ids ", args.num_src_page_ids,
        ", dst_page_ids ", args.num_dst_page_ids, ", keep ", args.num_keep, ")"));
  }
  if ((args.num_src_page_ids > 0 && args.src_page_ids == nullptr) ||
      (args.num_dst_page_ids > 0 && args.dst_page_ids == nullptr) ||
      (args.num_keep > 0 && args.keep == nullptr)) {
    return absl::InvalidArgumentError("Compact: a non-empty plan array is null");
  }
  return absl::OkStatus();
}

namespace {

CompactPlanArrays PlanOf(const CompactArgs& args) {
  CompactPlanArrays plan;
  plan.src.indptr = args.src_indptr;
  plan.src.page_ids = args.src_page_ids;
  plan.src.lens = args.src_lens;
  plan.src.num_page_ids = args.num_src_page_ids;
  plan.dst_indptr = args.dst_indptr;
  plan.dst_page_ids = args.dst_page_ids;
  plan.num_dst_page_ids = args.num_dst_page_ids;
  plan.keep_indptr = args.keep_indptr;
  plan.keep = args.keep;
  plan.num_keep = args.num_keep;
  plan.keep_offsets = args.keep_offsets;
  plan.keep_base = args.keep_base;
  plan.in_place = args.in_place;
  return plan;
}

}  // namespace

absl::Status TableFaultStatus(const CompactArgs& args, const TableFault& fault) {
  TableFaultContext context;
  context.op = "Compact";
  context.row_noun = "row";
  context.num_page_ids = args.num_src_page_ids;
  context.num_dst_page_ids = args.num_dst_page_ids;
  context.num_keep = args.num_keep;
  context.num_pages = args.cache.num_pages;
  return TableFaultStatus(fault, context);
}

namespace ref {

absl::Status Compact(const CompactArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  HEADPAGE_RETURN_IF_ERROR(TableFaultStatus(
      args, FirstCompactFault(PlanOf(args), args.num_rows, args.cache.page_size,
                              args.cache.num_pages)));

  const PagedKV& cache = args.cache;
  for (int32_t r = 0; r < args.num_rows; ++r) {
    const int32_t* src_pages = args.src_page_ids + args.src_indptr[r];
    const int32_t* dst_pages = args.dst_page_ids + args.dst_indptr[r];
    const int32_t* keep = args.keep + KeepBeginOf(PlanOf(args), r);
    const int32_t kept = args.keep_indptr[r + 1] - args.keep_indptr[r];
    // One survivor at a time, in ascending order: also correct in place, since
    // slot i is written only after every keep[j] <= i was read.
    for (int32_t i = 0; i < kept; ++i) {
      const int64_t from = SlotOf(src_pages, keep[i] - args.keep_base, cache.page_size);
      const int64_t to = SlotOf(dst_pages, i, cache.page_size);
      if (from == to) continue;
      CopyKvSlot(cache, from, to);  // K, V, their fp8 scales, the position
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
  HEADPAGE_RETURN_IF_ERROR(ValidateGpuHeadDim(args.cache, "Compact"));
  // Before the early return: a checked call with no rows still resets its word.
  if (args.fault != nullptr) {
    HEADPAGE_RETURN_IF_ERROR(CheckCompactOnDevice(PlanOf(args), args.num_rows,
                                                  args.cache.page_size, args.cache.num_pages,
                                                  args.fault, stream));
  }
  if (args.num_rows == 0) return absl::OkStatus();
  return LaunchStatus(internal::LaunchCompact(args, stream), "Compact", args.cache.dtype,
                      args.cache.head_dim);
}

}  // namespace gpu
#endif

}  // namespace headpage
