// SPDX-License-Identifier: Apache-2.0
// File: kernels/table_checks.h
//
// The checks an op's CSR arrays must pass before a kernel reads through them:
// block tables (indptr, page_ids, lens) and Compact's destination tables and
// keep sets. They read only inside the lengths the Args carry, so an indptr
// that ends past its page_ids, or a keep_indptr past its keep set, is caught
// without reading the bytes after either array.
//
// One implementation serves both sides: the CPU reference runs the checks in a
// loop (FirstTableFault, table_checks.cc) and the GPU runs the same functions in
// a check kernel (table_checks.cu) that gates the op. Both report the first
// fault in the same order (lowest row, then the order of TableCheck, then the
// lowest entry), so a bad input gives the same message on either side.
// Plain C++: .cu files include it.
#ifndef HEADPAGE_KERNELS_TABLE_CHECKS_H_
#define HEADPAGE_KERNELS_TABLE_CHECKS_H_

#include <cstdint>

#include "core/paged_kv.h"
#include "kernels/gpu_launch.h"

namespace headpage {

// What is wrong, in the order the checks run. Row checks (one per row, each
// assuming the ones before it passed) come before entry checks (one per entry
// of a row, assuming every row check of the row passed).
enum class TableCheck : uint8_t {
  kNone = 0,
  // Row checks of a block table (Compact: its source tables).
  kIndptrStart,      // indptr[0] != 0
  kIndptrOrder,      // indptr[row + 1] < indptr[row]
  kIndptrEnd,        // indptr[row + 1] past the end of page_ids
  kNegativeLength,   // lens[row] < 0
  kTooFewPages,      // lens[row] tokens need more pages than the row has
  // Row checks of Compact's destination tables and keep sets.
  kDstIndptrStart,
  kDstIndptrOrder,
  kDstIndptrEnd,
  kKeepIndptrStart,
  kKeepIndptrOrder,
  kKeepEnd,          // the row's keep set reaches past the end of keep
  kKeepsTooMany,     // more kept than the row's tokens
  kTooFewDstPages,
  // Entry checks.
  kPageOutsidePool,     // a page the row uses is outside [0, num_pages)
  kDstPageOutsidePool,
  kKeepEntry,           // outside [0, lens[row]) or not above the entry before it
  kInPlaceNotPrefix,    // an in-place row's destination page differs from its source page
};

// The first fault found: row, check and entry (the entry within the row, for
// entry checks; 0 for row checks). `check` kNone: none.
struct TableFault {
  int32_t row = 0;
  int32_t entry = 0;
  TableCheck check = TableCheck::kNone;

  HEADPAGE_HOST_DEVICE bool ok() const { return check == TableCheck::kNone; }
};

// A fault packed into one 64-bit word, ordered as faults are reported (row,
// then check, then entry), so that the GPU keeps the first with one atomicMin.
// Entries beyond 2^26 (67M tokens in one stream) are recorded as 2^26 - 1.
inline constexpr uint64_t kNoTableFault = ~uint64_t{0};

HEADPAGE_HOST_DEVICE uint64_t PackTableFault(const TableFault& f) {
  constexpr int64_t kMaxEntry = (int64_t{1} << 26) - 1;
  const int64_t entry = f.entry < kMaxEntry ? f.entry : kMaxEntry;
  return (static_cast<uint64_t>(static_cast<uint32_t>(f.row)) << 32) |
         (static_cast<uint64_t>(f.check) << 26) | static_cast<uint64_t>(entry);
}

HEADPAGE_HOST_DEVICE TableFault UnpackTableFault(uint64_t word) {
  TableFault f;
  if (word == kNoTableFault) return f;
  f.row = static_cast<int32_t>(word >> 32);
  f.check = static_cast<TableCheck>((word >> 26) & 0x3f);
  f.entry = static_cast<int32_t>(word & ((uint64_t{1} << 26) - 1));
  return f;
}

// One CSR block table: row r holds lens[r] tokens in pages
// page_ids[indptr[r] ...]; indptr has num_rows + 1 entries, page_ids
// num_page_ids.
struct BlockTableArrays {
  const int32_t* indptr = nullptr;
  const int32_t* page_ids = nullptr;
  const int32_t* lens = nullptr;
  int32_t num_page_ids = 0;
};

// The block table of an op's Args (indptr, page_ids, lens, num_page_ids).
template <typename Args>
HEADPAGE_HOST_DEVICE BlockTableArrays BlockTableOf(const Args& args) {
  BlockTableArrays table;
  table.indptr = args.indptr;
  table.page_ids = args.page_ids;
  table.lens = args.lens;
  table.num_page_ids = args.num_page_ids;
  return table;
}

// The row checks of block-table row `row`: whether it may be read (its pages
// lie inside page_ids and hold its tokens). kNone when it may.
HEADPAGE_HOST_DEVICE TableCheck CheckTableRow(const BlockTableArrays& t, int32_t row,
                                              int32_t page_size) {
  if (row == 0 && t.indptr[0] != 0) return TableCheck::kIndptrStart;
  const int32_t begin = t.indptr[row], end = t.indptr[row + 1];
  // begin < 0: only on the device, which checks a row whatever the rows
  // before it hold (the host stops at the first fault, so for it begin is the
  // end of a row that passed).
  if (begin < 0 || end < begin) return TableCheck::kIndptrOrder;
  if (end > t.num_page_ids) return TableCheck::kIndptrEnd;
  if (t.lens[row] < 0) return TableCheck::kNegativeLength;
  if (PagesFor(t.lens[row], page_size) > end - begin) return TableCheck::kTooFewPages;
  return TableCheck::kNone;
}

// Entry check of page `i` of a row that passed CheckTableRow, for i < the
// pages its tokens use.
HEADPAGE_HOST_DEVICE bool PageInsidePool(const BlockTableArrays& t, int32_t row, int32_t i,
                                         int32_t num_pages) {
  const int32_t page = t.page_ids[t.indptr[row] + i];
  return page >= 0 && page < num_pages;
}

// Compact's arrays beyond its source block table (kernels/compact_args.h).
struct CompactPlanArrays {
  BlockTableArrays src;
  const int32_t* dst_indptr = nullptr;
  const int32_t* dst_page_ids = nullptr;
  int32_t num_dst_page_ids = 0;
  const int32_t* keep_indptr = nullptr;
  const int32_t* keep = nullptr;
  int32_t num_keep = 0;
  const int32_t* keep_offsets = nullptr;  // null: row r's keep set starts at keep_indptr[r]
  int32_t keep_base = 0;                   // entry e names slot e - keep_base
  const uint8_t* in_place = nullptr;
};

// Where row r's keep set starts in `keep`, and how many it keeps (valid once
// the keep_indptr row checks passed).
HEADPAGE_HOST_DEVICE int32_t KeepBeginOf(const CompactPlanArrays& p, int32_t row) {
  return p.keep_offsets != nullptr ? p.keep_offsets[row] : p.keep_indptr[row];
}
HEADPAGE_HOST_DEVICE int32_t KeptOf(const CompactPlanArrays& p, int32_t row) {
  return p.keep_indptr[row + 1] - p.keep_indptr[row];
}

// The row checks of Compact row `row`, source table first.
HEADPAGE_HOST_DEVICE TableCheck CheckCompactRow(const CompactPlanArrays& p, int32_t row,
                                                int32_t page_size) {
  const TableCheck src = CheckTableRow(p.src, row, page_size);
  if (src != TableCheck::kNone) return src;
  if (row == 0 && p.dst_indptr[0] != 0) return TableCheck::kDstIndptrStart;
  const int32_t dst_begin = p.dst_indptr[row], dst_end = p.dst_indptr[row + 1];
  if (dst_begin < 0 || dst_end < dst_begin) return TableCheck::kDstIndptrOrder;
  if (dst_end > p.num_dst_page_ids) return TableCheck::kDstIndptrEnd;
  // With keep_offsets, keep_indptr gives only the counts and may start anywhere.
  if (row == 0 && p.keep_offsets == nullptr && p.keep_indptr[0] != 0) {
    return TableCheck::kKeepIndptrStart;
  }
  // In 64 bits: with keep_offsets, keep_indptr may hold anything.
  const int64_t kept = static_cast<int64_t>(p.keep_indptr[row + 1]) - p.keep_indptr[row];
  if (kept < 0) return TableCheck::kKeepIndptrOrder;
  const int32_t keep_begin = KeepBeginOf(p, row);
  if (keep_begin < 0 || keep_begin > p.num_keep - kept) return TableCheck::kKeepEnd;
  if (kept > p.src.lens[row]) return TableCheck::kKeepsTooMany;
  if (PagesFor(kept, page_size) > dst_end - dst_begin) return TableCheck::kTooFewDstPages;
  return TableCheck::kNone;
}

// The entry checks of a Compact row that passed CheckCompactRow, one entry of
// each kind at a time: source page i (i < PagesFor(lens)), destination page i
// (i < PagesFor(kept)), keep entry i (i < kept), and the in-place prefix at
// page i (i < PagesFor(kept)).
HEADPAGE_HOST_DEVICE bool DstPageInsidePool(const CompactPlanArrays& p, int32_t row, int32_t i,
                                            int32_t num_pages) {
  const int32_t page = p.dst_page_ids[p.dst_indptr[row] + i];
  return page >= 0 && page < num_pages;
}
HEADPAGE_HOST_DEVICE bool KeepEntryValid(const CompactPlanArrays& p, int32_t row, int32_t i) {
  const int32_t* keep = p.keep + KeepBeginOf(p, row);
  const int64_t slot = static_cast<int64_t>(keep[i]) - p.keep_base;
  return slot >= 0 && slot < p.src.lens[row] && (i == 0 || keep[i] > keep[i - 1]);
}
HEADPAGE_HOST_DEVICE bool InPlacePageMatches(const CompactPlanArrays& p, int32_t row, int32_t i) {
  return p.in_place[row] == 0 ||
         p.dst_page_ids[p.dst_indptr[row] + i] == p.src.page_ids[p.src.indptr[row] + i];
}

namespace gpu::internal {
// table_checks.cu; gpu::CheckTablesOnDevice and the rest (table_checks_host.h)
// call them.
LaunchResult LaunchCheckTables(const BlockTableArrays& table, int32_t num_rows, int32_t page_size,
                               int32_t num_pages, uint64_t* fault, GpuStream stream);
LaunchResult LaunchCheckCompact(const CompactPlanArrays& plan, int32_t num_rows, int32_t page_size,
                                int32_t num_pages, uint64_t* fault, GpuStream stream);
// Copies the fault word to *word once `stream` has run (synchronizes it).
LaunchResult CopyTableFault(const uint64_t* fault, uint64_t* word, GpuStream stream);
}  // namespace gpu::internal

#if defined(__CUDACC__)
// Whether the checks that ran before an op on its stream found a fault, in
// which case the op does nothing. Null `fault`: the op's arrays are trusted.
__device__ __forceinline__ bool TablesFaulted(const uint64_t* fault) {
  return fault != nullptr && *fault != kNoTableFault;
}
#endif

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_TABLE_CHECKS_H_
