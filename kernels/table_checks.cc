// SPDX-License-Identifier: Apache-2.0
#include "kernels/table_checks_host.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "kernels/gpu_status.h"

namespace headpage {

TableFault FirstTableFault(const BlockTableArrays& table, int32_t num_rows, int32_t page_size,
                           int32_t num_pages) {
  for (int32_t row = 0; row < num_rows; ++row) {
    const TableCheck check = CheckTableRow(table, row, page_size);
    if (check != TableCheck::kNone) return {row, 0, check};
    const int64_t pages = PagesFor(table.lens[row], page_size);
    for (int32_t i = 0; i < pages; ++i) {
      if (!PageInsidePool(table, row, i, num_pages)) return {row, i, TableCheck::kPageOutsidePool};
    }
  }
  return {};
}

TableFault FirstCompactFault(const CompactPlanArrays& plan, int32_t num_rows, int32_t page_size,
                             int32_t num_pages) {
  for (int32_t row = 0; row < num_rows; ++row) {
    const TableCheck check = CheckCompactRow(plan, row, page_size);
    if (check != TableCheck::kNone) return {row, 0, check};
    const int32_t kept = KeptOf(plan, row);
    const int64_t src_pages = PagesFor(plan.src.lens[row], page_size);
    const int64_t dst_pages = PagesFor(kept, page_size);
    // Entry checks in TableCheck's order, each over its entries in order.
    for (int32_t i = 0; i < src_pages; ++i) {
      if (!PageInsidePool(plan.src, row, i, num_pages)) {
        return {row, i, TableCheck::kPageOutsidePool};
      }
    }
    for (int32_t i = 0; i < dst_pages; ++i) {
      if (!DstPageInsidePool(plan, row, i, num_pages)) {
        return {row, i, TableCheck::kDstPageOutsidePool};
      }
    }
    for (int32_t i = 0; i < kept; ++i) {
      if (!KeepEntryValid(plan, row, i)) return {row, i, TableCheck::kKeepEntry};
    }
    for (int32_t i = 0; i < dst_pages; ++i) {
      if (!InPlacePageMatches(plan, row, i)) return {row, i, TableCheck::kInPlaceNotPrefix};
    }
  }
  return {};
}

absl::Status TableFaultStatus(const TableFault& exact, const TableFaultContext& c) {
  // The entry as the device records it (clamped to 26 bits), so that the host
  // and the device say the same.
  const TableFault fault = UnpackTableFault(PackTableFault(exact));
  const std::string where = absl::StrCat(c.op, ": ", c.row_noun, " ", fault.row, ": ");
  const int32_t r = fault.row;
  std::string what;
  switch (fault.check) {
    case TableCheck::kNone:
      return absl::OkStatus();
    case TableCheck::kIndptrStart:
      what = "indptr[0] is not 0";
      break;
    case TableCheck::kIndptrOrder:
      what = absl::StrCat("indptr[", r + 1, "] is below indptr[", r, "]");
      break;
    case TableCheck::kIndptrEnd:
      what = absl::StrCat("indptr[", r + 1, "] is past the end of page_ids (", c.num_page_ids,
                          " entries)");
      break;
    case TableCheck::kNegativeLength:
      what = absl::StrCat("lens[", r, "] is negative");
      break;
    case TableCheck::kTooFewPages:
      what = absl::StrCat("lens[", r, "] tokens need more pages than indptr[", r, "]..indptr[",
                          r + 1, "] gives");
      break;
    case TableCheck::kDstIndptrStart:
      what = "dst_indptr[0] is not 0";
      break;
    case TableCheck::kDstIndptrOrder:
      what = absl::StrCat("dst_indptr[", r + 1, "] is below dst_indptr[", r, "]");
      break;
    case TableCheck::kDstIndptrEnd:
      what = absl::StrCat("dst_indptr[", r + 1, "] is past the end of dst_page_ids (",
                          c.num_dst_page_ids, " entries)");
      break;
    case TableCheck::kKeepIndptrStart:
      what = "keep_indptr[0] is not 0";
      break;
    case TableCheck::kKeepIndptrOrder:
      what = absl::StrCat("keep_indptr[", r + 1, "] is below keep_indptr[", r, "]");
      break;
    case TableCheck::kKeepEnd:
      what = absl::StrCat("the keep set reaches past the end of keep (", c.num_keep, " entries)");
      break;
    case TableCheck::kKeepsTooMany:
      what = "keeps more tokens than the row holds";
      break;
    case TableCheck::kTooFewDstPages:
      what = "its kept tokens need more destination pages than dst_indptr gives";
      break;
    case TableCheck::kPageOutsidePool:
      what = absl::StrCat("page ", fault.entry, " of its table is outside the pool's ",
                          c.num_pages, " pages");
      break;
    case TableCheck::kDstPageOutsidePool:
      what = absl::StrCat("destination page ", fault.entry, " is outside the pool's ",
                          c.num_pages, " pages");
      break;
    case TableCheck::kKeepEntry:
      what = absl::StrCat("keep entry ", fault.entry,
                          " is outside the row's tokens or not above the entry before it");
      break;
    case TableCheck::kInPlaceNotPrefix:
      what = absl::StrCat("in place, but destination page ", fault.entry,
                          " is not the source's page ", fault.entry);
      break;
  }
  if (what.empty()) what = absl::StrCat("unknown fault ", static_cast<int>(fault.check));
  return absl::OutOfRangeError(where + what);
}

#if HEADPAGE_HAVE_CUDA
namespace gpu {
namespace {

absl::Status CheckLaunched(const LaunchResult& result) {
  return LaunchStatus(result, "table checks", DType::kF32, 0);
}

}  // namespace

absl::Status CheckTablesOnDevice(const BlockTableArrays& table, int32_t num_rows,
                                 int32_t page_size, int32_t num_pages, uint64_t* fault,
                                 GpuStream stream) {
  return CheckLaunched(
      internal::LaunchCheckTables(table, num_rows, page_size, num_pages, fault, stream));
}

absl::Status CheckCompactOnDevice(const CompactPlanArrays& plan, int32_t num_rows,
                                  int32_t page_size, int32_t num_pages, uint64_t* fault,
                                  GpuStream stream) {
  return CheckLaunched(
      internal::LaunchCheckCompact(plan, num_rows, page_size, num_pages, fault, stream));
}

absl::StatusOr<TableFault> ReadTableFault(const uint64_t* fault, GpuStream stream) {
  uint64_t word = kNoTableFault;
  HEADPAGE_RETURN_IF_ERROR(CheckLaunched(internal::CopyTableFault(fault, &word, stream)));
  return UnpackTableFault(word);
}

}  // namespace gpu
#endif

}  // namespace headpage
