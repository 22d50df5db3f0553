// SPDX-License-Identifier: Apache-2.0
// BlockManager's block-table export: the CSR tables of a layer (block_table.h),
// built whole or refreshed incrementally.
#include "blockmgr/block_manager.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "blockmgr/block_manager_internal.h"
#include "core/check.h"
#include "core/status.h"

namespace headpage {

using blockmgr_internal::kMaxInt32;

void BlockManager::RebuildTable(BlockTableCsr* table,
                                absl::Span<const Sequence* const> seqs) const {
  const int32_t num_heads = geometry_.num_kv_heads;
  const int32_t first = table->layer_ * num_heads;
  const size_t rows = seqs.size() * num_heads;
  table->indptr_.resize(rows + 1);
  table->lens_.resize(rows);
  table->row_versions_.resize(rows);
  table->row_pages_.resize(rows);
  int64_t total = 0;
  for (size_t i = 0, r = 0; i < seqs.size(); ++i) {
    for (int32_t h = 0; h < num_heads; ++h, ++r) {
      table->indptr_[r] = static_cast<int32_t>(total);
      total += static_cast<int64_t>(seqs[i]->pages[first + h].size()) + table->options_.headroom_pages;
    }
  }
  table->indptr_[rows] = static_cast<int32_t>(total);
  table->page_ids_.assign(static_cast<size_t>(total), -1);
  for (size_t i = 0, r = 0; i < seqs.size(); ++i) {
    for (int32_t h = 0; h < num_heads; ++h, ++r) {
      const auto& pages = seqs[i]->pages[first + h];
      std::copy(pages.begin(), pages.end(), table->page_ids_.begin() + table->indptr_[r]);
      table->lens_[r] = static_cast<int32_t>(seqs[i]->lens[first + h]);
      table->row_versions_[r] = seqs[i]->versions[first + h];
      table->row_pages_[r] = static_cast<int32_t>(pages.size());
    }
  }
  table->rebuilt_ = true;
  table->changed_entries_.clear();
}

absl::StatusOr<BlockTableCsr> BlockManager::BlockTable(int32_t layer,
                                                       absl::Span<const SeqId> seqs,
                                                       const BlockTableOptions& options) const {
  if (layer < 0 || layer >= geometry_.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("BlockTable: layer ", layer, " is outside [0, ", geometry_.num_layers, ")"));
  }
  if (seqs.empty()) return absl::InvalidArgumentError("BlockTable: no sequences");
  if (options.headroom_pages < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("BlockTable: headroom_pages ", options.headroom_pages, " is negative"));
  }
  std::vector<const Sequence*> found(seqs.size());
  int64_t total = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    HEADPAGE_ASSIGN_OR_RETURN(found[i], Find(seqs[i]));
    for (int32_t h = 0; h < geometry_.num_kv_heads; ++h) {
      total += static_cast<int64_t>(found[i]->pages[layer * geometry_.num_kv_heads + h].size()) +
               options.headroom_pages;
    }
  }
  if (total > kMaxInt32) {
    return absl::InvalidArgumentError(
        absl::StrCat("BlockTable: ", total, " page entries exceed the int32 range"));
  }
  BlockTableCsr table;
  table.layer_ = layer;
  table.options_ = options;
  table.seqs_.assign(seqs.begin(), seqs.end());
  RebuildTable(&table, found);
  return table;
}

absl::Status BlockManager::RefreshBlockTable(BlockTableCsr* table) const {
  if (table == nullptr) return absl::InvalidArgumentError("RefreshBlockTable: table is null");
  const int32_t num_heads = geometry_.num_kv_heads;
  const int32_t first = table->layer_ * num_heads;
  std::vector<const Sequence*> found(table->seqs_.size());
  bool fits = true;
  int64_t total = 0;
  for (size_t i = 0; i < found.size(); ++i) {
    HEADPAGE_ASSIGN_OR_RETURN(found[i], Find(table->seqs_[i]));
    for (int32_t h = 0; h < num_heads; ++h) {
      const size_t r = i * num_heads + h;
      const auto n = static_cast<int64_t>(found[i]->pages[first + h].size());
      fits = fits && n <= table->indptr_[r + 1] - table->indptr_[r];
      total += n + table->options_.headroom_pages;
    }
  }
  if (!fits) {
    if (total > kMaxInt32) {
      return absl::InvalidArgumentError(
          absl::StrCat("RefreshBlockTable: ", total, " page entries exceed the int32 range"));
    }
    RebuildTable(table, found);
    return absl::OkStatus();
  }
  table->rebuilt_ = false;
  table->changed_entries_.clear();
  for (size_t i = 0, r = 0; i < found.size(); ++i) {
    for (int32_t h = 0; h < num_heads; ++h, ++r) {
      const int32_t st = first + h;
      const auto& pages = found[i]->pages[st];
      const auto n = static_cast<int32_t>(pages.size());
      const int32_t base = table->indptr_[r];
      int32_t from = table->row_pages_[r];  // entries before `from` are current
      if (found[i]->versions[st] != table->row_versions_[r]) {
        from = 0;  // page ids were replaced: rewrite the row
        for (int32_t j = n; j < table->row_pages_[r]; ++j) {
          table->page_ids_[base + j] = -1;
          table->changed_entries_.push_back(base + j);
        }
        table->row_versions_[r] = found[i]->versions[st];
      }
      HEADPAGE_DCHECK(n >= from);
      for (int32_t j = from; j < n; ++j) {
        table->page_ids_[base + j] = static_cast<int32_t>(pages[j]);
        table->changed_entries_.push_back(base + j);
      }
      table->row_pages_[r] = n;
      table->lens_[r] = static_cast<int32_t>(found[i]->lens[st]);
    }
  }
  return absl::OkStatus();
}

}  // namespace headpage
