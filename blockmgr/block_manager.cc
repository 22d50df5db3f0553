// SPDX-License-Identifier: Apache-2.0
// BlockManager: creation, sequences, page references, fork and free, queries.
// Reserve, Evict, the block tables and CheckInvariants have files of their own
// (block_manager_{reserve,evict,table,invariants}.cc).
#include "blockmgr/block_manager.h"

#include <algorithm>
#include <limits>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "blockmgr/block_manager_internal.h"
#include "core/check.h"
#include "core/status.h"

namespace headpage {

using blockmgr_internal::kMaxInt32;
using blockmgr_internal::PageFill;

absl::StatusOr<BlockManager> BlockManager::Create(const CacheGeometry& geometry, PagePool* pool) {
  HEADPAGE_RETURN_IF_ERROR(Validate(geometry));
  if (pool == nullptr) return absl::InvalidArgumentError("BlockManager: pool is null");
  if (pool->num_pages() * geometry.page_size > kMaxInt32) {
    return absl::InvalidArgumentError(absl::StrCat(
        "BlockManager: ", pool->num_pages(), " pages of ", geometry.page_size,
        " tokens exceed the int32 slot id range"));
  }
  if (!pool->Claim()) {
    return absl::FailedPreconditionError(
        "BlockManager: the pool already serves a block manager; a pool's reference counts "
        "belong to one manager");
  }
  BlockManager manager(geometry, pool);
  manager.claim_ = PoolClaim(pool);
  return manager;
}

BlockManager::BlockManager(const CacheGeometry& geometry, PagePool* pool)
    : geometry_(geometry),
      pool_(pool),
      num_streams_(geometry.streams_per_sequence()),
      page_size_(geometry.page_size),
      page_mask_((geometry.page_size & (geometry.page_size - 1)) == 0 ? geometry.page_size - 1 : 0),
      page_size_is_pow2_((geometry.page_size & (geometry.page_size - 1)) == 0),
      retired_refs_(static_cast<size_t>(pool->num_pages()), 0),
      cached_(static_cast<size_t>(pool->num_pages()), 0) {}

SeqId BlockManager::AddSequence() {
  auto seq = std::make_unique<Sequence>();
  seq->lens.assign(num_streams_, 0);
  seq->tails.assign(num_streams_, kNoPage);
  seq->tail_maybe_shared.assign(num_streams_, 0);
  seq->versions.assign(num_streams_, 0);
  seq->pages.resize(num_streams_);
  seq->pending_layers.assign(geometry_.num_layers, 0);
  const SeqId id = next_seq_id_++;
  seqs_.emplace(id, std::move(seq));
  DebugCheck();
  return id;
}

absl::StatusOr<BlockManager::Sequence*> BlockManager::Find(SeqId seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) {
    return absl::NotFoundError(
        absl::StrCat("sequence ", seq, " is not live (never added, or already freed)"));
  }
  return it->second.get();
}

absl::StatusOr<const BlockManager::Sequence*> BlockManager::Find(SeqId seq) const {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) {
    return absl::NotFoundError(
        absl::StrCat("sequence ", seq, " is not live (never added, or already freed)"));
  }
  return it->second.get();
}

bool BlockManager::HasPendingPlan(const Sequence& s) { return s.num_pending_layers > 0; }

// ---------------------------------------------------------------------------
// Page references

void BlockManager::ReleaseFromStream(PageId page, int64_t fill) {
  const uint32_t holders = StreamHolders(page);
  HEADPAGE_CHECK(holders >= 1);
  if (holders > 1) {
    shared_excess_slots_ -= fill;
  } else if (retired_refs_[page] > 0 && !cached_[page]) {
    ++retired_only_pages_;  // a plan still reads it; no stream holds it any more
  }
  HEADPAGE_CHECK(pool_->Release(absl::MakeConstSpan(&page, 1)).ok());
  NoteCacheOnly(page);
}

void BlockManager::RetireFromStream(absl::Span<const PageId> pages, int64_t len, int64_t from,
                                    bool sole_holder) {
  const auto n = static_cast<int64_t>(pages.size());
  HEADPAGE_DCHECK(0 <= from && from <= n);
  retired_.insert(retired_.end(), pages.begin() + from, pages.end());
  if (sole_holder) {
    // Every page here loses its only stream holder and is held by retired_
    // alone, uncounted in retired_refs_: no per-page work beyond the copy above.
    // The per-page loop below (a random read of the pool's refcount and of
    // retired_refs_, and a write, per page) was most of Evict's time.
#if HEADPAGE_DEBUG_LEVEL >= 1
    for (int64_t j = from; j < n; ++j) HEADPAGE_CHECK(StreamHolders(pages[j]) == 1);
#endif
    retired_only_pages_ += n - from;
    return;
  }
  for (int64_t j = from; j < n; ++j) {
    const PageId page = pages[j];
    const uint32_t holders = StreamHolders(page);
    HEADPAGE_CHECK(holders >= 1);
    if (holders > 1 || cached_[page]) {
      // Other streams still hold it, or the cache does and may hand it to a
      // new stream before the plan is released: count it for them.
      if (holders > 1) shared_excess_slots_ -= PageFill(len, n, j, page_size_);
      ++retired_refs_[page];
      retired_shared_.push_back(page);
    } else {
      ++retired_only_pages_;
    }
  }
}

void BlockManager::ReleaseRetiredPages() {
  HEADPAGE_CHECK(pool_->Release(retired_).ok());
  for (const PageId page : retired_shared_) {
    if (retired_refs_[page] == 0) continue;  // listed once per count
    retired_refs_[page] = 0;
    NoteCacheOnly(page);
  }
  retired_shared_.clear();
  retired_.clear();
  retired_only_pages_ = 0;
  for (const SeqId id : pending_seqs_) {
    auto it = seqs_.find(id);
    if (it != seqs_.end()) {
      std::fill(it->second->pending_layers.begin(), it->second->pending_layers.end(), 0);
      it->second->num_pending_layers = 0;
    }
  }
  pending_seqs_.clear();
  DebugCheck();
}

// ---------------------------------------------------------------------------
// Fork, Free

absl::StatusOr<SeqId> BlockManager::Fork(SeqId parent_id) {
  HEADPAGE_ASSIGN_OR_RETURN(Sequence* parent, Find(parent_id));
  if (HasPendingPlan(*parent)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "Fork: sequence ", parent_id, " has a compaction plan not yet released"));
  }
  auto child = std::make_unique<Sequence>(*parent);
  child->versions.assign(num_streams_, 0);
  for (CachedBlock* block : child->blocks) ++block->users;  // in use by parent: not in lru_
  int64_t tokens = 0;
  for (int32_t st = 0; st < num_streams_; ++st) {
    HEADPAGE_CHECK(pool_->Share(parent->pages[st]).ok());
    tokens += parent->lens[st];
  }
  // Every page of the parent gains a holder with the same fill, and the fills
  // of a stream's pages add up to its length.
  stream_tokens_ += tokens;
  shared_excess_slots_ += tokens;
  std::fill(parent->tail_maybe_shared.begin(), parent->tail_maybe_shared.end(), 1);
  std::fill(child->tail_maybe_shared.begin(), child->tail_maybe_shared.end(), 1);
  parent->any_maybe_shared = child->any_maybe_shared = true;
  parent->ever_shared = child->ever_shared = true;
  const SeqId id = next_seq_id_++;
  seqs_.emplace(id, std::move(child));
  DebugCheck();
  return id;
}

absl::Status BlockManager::Free(SeqId seq) {
  HEADPAGE_ASSIGN_OR_RETURN(Sequence* s, Find(seq));
  if (HasPendingPlan(*s)) {
    return absl::FailedPreconditionError(
        absl::StrCat("Free: sequence ", seq, " has a compaction plan not yet released"));
  }
  // Every page of the sequence held by its stream alone, by no retired list
  // (retired_refs_ counts each retired reference to a page a stream holds) and
  // not by the cache: the accounting below would change nothing, so its pass
  // over the pages (two random reads a page) is skipped.
  const bool all_exclusive = !s->ever_shared || (shared_excess_slots_ == 0 &&
                                                 retired_shared_.empty() && cached_pages_ == 0);
  ReleaseBlocks(s, 0);
  for (int32_t st = 0; st < num_streams_; ++st) {
    const auto& pages = s->pages[st];
    const int64_t n = all_exclusive ? 0 : static_cast<int64_t>(pages.size());
    // The accounting of ReleaseFromStream page by page, then one pool call for
    // the stream: a pool call per page cost half of Free's time.
    for (int64_t j = 0; j < n; ++j) {
      const uint32_t holders = StreamHolders(pages[j]);
      HEADPAGE_CHECK(holders >= 1);
      if (holders > 1) {
        shared_excess_slots_ -= PageFill(s->lens[st], n, j, page_size_);
      } else if (retired_refs_[pages[j]] > 0 && !cached_[pages[j]]) {
        ++retired_only_pages_;
      }
    }
    HEADPAGE_CHECK(pool_->Release(pages).ok());
    for (int64_t j = 0; j < n; ++j) NoteCacheOnly(pages[j]);
    stream_tokens_ -= s->lens[st];
  }
  seqs_.erase(seq);
  DebugCheck();
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Queries

absl::StatusOr<int64_t> BlockManager::NumTokens(SeqId seq) const {
  HEADPAGE_ASSIGN_OR_RETURN(const Sequence* s, Find(seq));
  return s->num_tokens;
}

absl::StatusOr<int64_t> BlockManager::IntactTokens(SeqId seq) const {
  HEADPAGE_ASSIGN_OR_RETURN(const Sequence* s, Find(seq));
  return s->intact_tokens;
}

absl::StatusOr<absl::Span<const uint32_t>> BlockManager::StreamLengths(SeqId seq) const {
  HEADPAGE_ASSIGN_OR_RETURN(const Sequence* s, Find(seq));
  return absl::MakeConstSpan(s->lens);
}

absl::StatusOr<absl::Span<const PageId>> BlockManager::StreamPages(SeqId seq, int32_t layer,
                                                                   int32_t kv_head) const {
  HEADPAGE_ASSIGN_OR_RETURN(const Sequence* s, Find(seq));
  if (layer < 0 || layer >= geometry_.num_layers || kv_head < 0 ||
      kv_head >= geometry_.num_kv_heads) {
    return absl::InvalidArgumentError(
        absl::StrCat("StreamPages: (layer ", layer, ", kv_head ", kv_head, ") is out of range"));
  }
  return absl::MakeConstSpan(s->pages[layer * geometry_.num_kv_heads + kv_head]);
}

absl::StatusOr<bool> BlockManager::HoldsPagesAlone(SeqId seq) const {
  HEADPAGE_ASSIGN_OR_RETURN(const Sequence* s, Find(seq));
  if (SoleHolder(*s)) return true;
  for (const std::vector<PageId>& pages : s->pages) {
    for (const PageId page : pages) {
      if (StreamHolders(page) > 1) return false;
    }
  }
  return true;
}

BlockManagerStats BlockManager::Stats() const {
  BlockManagerStats stats;
  stats.num_sequences = num_sequences();
  stats.num_streams = stats.num_sequences * num_streams_;
  stats.pages_total = pool_->num_pages();
  stats.pages_free = pool_->free_pages();
  stats.pages_retired = retired_only_pages_;
  stats.pages_cached = cached_pages_;
  stats.pages_cached_only = cache_only_pages_;
  stats.cached_blocks = static_cast<int64_t>(cache_.size());
  stats.cached_blocks_unused = static_cast<int64_t>(lru_.size());
  stats.pages_in_use = pool_->used_pages() - retired_only_pages_ - cache_only_pages_;
  stats.peak_pages_used = pool_->Stats().peak_used_pages;
  stats.allocated_slots = stats.pages_in_use * page_size_;
  stats.used_slots = stream_tokens_ - shared_excess_slots_;
  stats.internal_fragmentation = stats.allocated_slots - stats.used_slots;
  stats.stream_tokens = stream_tokens_;
  if (stats.num_streams > 0) {
    uint32_t lo = std::numeric_limits<uint32_t>::max(), hi = 0;
    for (const auto& [id, s] : seqs_) {
      const auto [mn, mx] = std::minmax_element(s->lens.begin(), s->lens.end());
      lo = std::min(lo, *mn);
      hi = std::max(hi, *mx);
    }
    stats.min_stream_len = lo;
    stats.max_stream_len = hi;
    stats.mean_stream_len = static_cast<double>(stream_tokens_) / static_cast<double>(stats.num_streams);
  }
  return stats;
}

}  // namespace headpage
