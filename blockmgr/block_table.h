// SPDX-License-Identifier: Apache-2.0
// File: blockmgr/block_table.h
//
// BlockTableCsr is one layer's block tables for a batch of sequences, in the CSR
// form the kernels take: rows are streams, sequence-major and kv_head-minor
// (row = i * num_kv_heads + h for the i-th sequence of the batch).
//
//   lens[r]                  tokens in row r
//   page_ids[indptr[r] + j]  the j-th page of row r, for j < ceil(lens[r] / page_size)
//
// Each row may own more entries than it uses (indptr[r + 1] - indptr[r] pages of
// capacity), so that the table can be kept on the device and updated in place:
// BlockManager::RefreshBlockTable() writes the pages a decode step appended into
// that headroom and lists the entries it wrote, and only rebuilds (a new indptr)
// when a row outgrows its capacity. Unused entries hold -1.
//
// With BlockTableOptions::headroom_pages = 0 the table is tight (indptr[r+1] -
// indptr[r] == ceil(lens[r] / page_size)), the form FlashInfer's paged_kv_t expects.
#ifndef HEADPAGE_BLOCKMGR_BLOCK_TABLE_H_
#define HEADPAGE_BLOCKMGR_BLOCK_TABLE_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "blockmgr/plans.h"

namespace headpage {

struct BlockTableOptions {
  // Spare page entries per row at each (re)build; 0 gives a tight table. A row
  // with h spare pages absorbs h * page_size decode steps before a rebuild.
  int32_t headroom_pages = 8;
};

class BlockTableCsr {
 public:
  int32_t layer() const { return layer_; }
  absl::Span<const SeqId> seqs() const { return seqs_; }
  int32_t num_rows() const { return static_cast<int32_t>(lens_.size()); }

  absl::Span<const int32_t> indptr() const { return indptr_; }
  absl::Span<const int32_t> page_ids() const { return page_ids_; }
  absl::Span<const int32_t> lens() const { return lens_; }

  // What the last build or refresh changed, for keeping a device copy in step:
  // when rebuilt(), copy indptr and page_ids whole; otherwise scatter the listed
  // page_ids entries. Copy lens (4 bytes a row) every time.
  bool rebuilt() const { return rebuilt_; }
  absl::Span<const int32_t> changed_entries() const { return changed_entries_; }

 private:
  friend class BlockManager;

  int32_t layer_ = 0;
  BlockTableOptions options_;
  std::vector<SeqId> seqs_;
  std::vector<int32_t> indptr_;
  std::vector<int32_t> page_ids_;
  std::vector<int32_t> lens_;
  // Per row: the stream's version when its entries were last written, and how
  // many entries are valid. A version change means existing page ids changed
  // (eviction, copy-on-write), not just an append.
  std::vector<uint32_t> row_versions_;
  std::vector<int32_t> row_pages_;
  bool rebuilt_ = false;
  std::vector<int32_t> changed_entries_;
};

}  // namespace headpage

#endif  // HEADPAGE_BLOCKMGR_BLOCK_TABLE_H_
