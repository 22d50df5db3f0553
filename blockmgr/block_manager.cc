// SPDX-License-Identifier: Apache-2.0
#include "blockmgr/block_manager.h"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "core/status.h"

namespace headpage {
namespace {

constexpr int64_t kMaxInt32 = std::numeric_limits<int32_t>::max();

// Live tokens in page j of a stream of `len` tokens with `num_pages` pages:
// every page is full but the last.
int64_t PageFill(int64_t len, int64_t num_pages, int64_t j, int64_t page_size) {
  return j + 1 < num_pages ? page_size : len - j * page_size;
}

void AppendPages(const std::vector<PageId>& pages, std::vector<int32_t>* out) {
  out->insert(out->end(), pages.begin(), pages.end());
}

}  // namespace

absl::StatusOr<BlockManager> BlockManager::Create(const CacheGeometry& geometry, PagePool* pool) {
  HEADPAGE_RETURN_IF_ERROR(Validate(geometry));
  if (pool == nullptr) return absl::InvalidArgumentError("BlockManager: pool is null");
  if (pool->num_pages() * geometry.page_size > kMaxInt32) {
    return absl::InvalidArgumentError(absl::StrCat(
        "BlockManager: ", pool->num_pages(), " pages of ", geometry.page_size,
        " tokens exceed the int32 slot id range"));
  }
  return BlockManager(geometry, pool);
}

BlockManager::BlockManager(const CacheGeometry& geometry, PagePool* pool)
    : geometry_(geometry),
      pool_(pool),
      num_streams_(geometry.streams_per_sequence()),
      page_size_(geometry.page_size),
      page_mask_((geometry.page_size & (geometry.page_size - 1)) == 0 ? geometry.page_size - 1 : 0),
      page_size_is_pow2_((geometry.page_size & (geometry.page_size - 1)) == 0),
      retired_refs_(static_cast<size_t>(pool->num_pages()), 0) {}

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
// Reserve

int64_t BlockManager::CountReservePages(const Sequence& s, int64_t num_tokens) const {
  const uint32_t* lens = s.lens.data();
  const int32_t streams = num_streams_;
  int64_t need = 0;
  if (num_tokens == 1 && page_size_is_pow2_) {
    // The decode step: a page exactly where a stream sits on a page boundary.
    // Branch-free, so the compiler vectorizes it.
    const uint32_t mask = static_cast<uint32_t>(page_size_ - 1);
    for (int32_t st = 0; st < streams; ++st) need += (lens[st] & mask) == 0;
  } else {
    const int64_t page_size = page_size_;
    for (int32_t st = 0; st < streams; ++st) {
      const int64_t offset = ModPage(lens[st]);
      const int64_t room = offset == 0 ? 0 : page_size - offset;  // empty slots in the tail page
      if (num_tokens > room) need += (num_tokens - room + page_size - 1) / page_size;
    }
  }
  if (s.any_maybe_shared) {
    for (int32_t st = 0; st < streams; ++st) {
      if (s.tail_maybe_shared[st] && ModPage(lens[st]) != 0 && StreamHolders(s.tails[st]) > 1) {
        ++need;  // a copy-on-write
      }
    }
  }
  return need;
}

absl::Status BlockManager::CheckReservable(const Sequence& s, SeqId seq, int64_t num_tokens) const {
  if (num_tokens < 0 || num_tokens > kMaxInt32 - s.num_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("Reserve: num_tokens ", num_tokens,
                                                   " is negative or past the int32 positions"));
  }
  if (HasPendingPlan(s)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "Reserve: sequence ", seq, " has a compaction plan not yet released (ReleaseRetiredPages)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> BlockManager::PagesNeeded(SeqId seq, int64_t num_tokens) const {
  HEADPAGE_ASSIGN_OR_RETURN(const Sequence* s, Find(seq));
  HEADPAGE_RETURN_IF_ERROR(CheckReservable(*s, seq, num_tokens));
  return CountReservePages(*s, num_tokens);
}

absl::Status BlockManager::Reserve(SeqId seq, int64_t num_tokens, SlotMappingOut out,
                                   PageCopies* page_copies) {
  HEADPAGE_ASSIGN_OR_RETURN(Sequence* s, Find(seq));
  HEADPAGE_RETURN_IF_ERROR(CheckReservable(*s, seq, num_tokens));
  if (num_tokens == 0) return absl::OkStatus();
  if (out.data == nullptr || page_copies == nullptr || out.first_token < 0 ||
      out.batch_tokens < out.first_token + num_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Reserve: slot mapping output (batch_tokens ", out.batch_tokens, ", first_token ",
        out.first_token, ") cannot hold ", num_tokens, " tokens, or a pointer is null"));
  }
  return CommitReserve(s, num_tokens, out.data + out.first_token * num_streams_, page_copies);
}

absl::Status BlockManager::ReserveWithoutSlots(SeqId seq, int64_t num_tokens,
                                               PageCopies* page_copies) {
  HEADPAGE_ASSIGN_OR_RETURN(Sequence* s, Find(seq));
  HEADPAGE_RETURN_IF_ERROR(CheckReservable(*s, seq, num_tokens));
  if (num_tokens == 0) return absl::OkStatus();
  if (page_copies == nullptr) {
    return absl::InvalidArgumentError("ReserveWithoutSlots: page_copies is null");
  }
  return CommitReserve(s, num_tokens, nullptr, page_copies);
}

absl::Status BlockManager::CommitReserve(Sequence* s, int64_t num_tokens, int32_t* record,
                                         PageCopies* page_copies) {
  // Compare with the pool before sizing anything by the request, so that an
  // absurd num_tokens is a cheap ResourceExhausted, not a huge allocation.
  const int64_t need = CountReservePages(*s, num_tokens);
  if (need > pool_->free_pages()) return absl::Status(absl::StatusCode::kResourceExhausted, "");
  scratch_pages_.resize(static_cast<size_t>(need));
  HEADPAGE_RETURN_IF_ERROR(pool_->Allocate(absl::MakeSpan(scratch_pages_)));

  // Commit; nothing below can fail. What the loops read lives in locals: the
  // int32 stores into `out` could alias the members' uint32 arrays and would
  // make the compiler reload them at every store.
  const PageId* next_page = scratch_pages_.data();
  const int64_t page_size = page_size_;
  const int32_t streams = num_streams_;
  uint32_t* lens = s->lens.data();
  PageId* tails = s->tails.data();
  uint8_t* maybe_shared = s->tail_maybe_shared.data();
  // Copy-on-write: a partly filled page that another sequence still holds must
  // not see our tokens. Only sequences touched by a fork have flags to look at.
  if (s->any_maybe_shared) {
    for (int32_t st = 0; st < streams; ++st) {
      if (!maybe_shared[st] || ModPage(lens[st]) == 0) continue;
      if (StreamHolders(tails[st]) > 1) {
        const PageId copy = *next_page++;
        page_copies->src.push_back(static_cast<int32_t>(tails[st]));
        page_copies->dst.push_back(static_cast<int32_t>(copy));
        ReleaseFromStream(tails[st], ModPage(lens[st]));
        s->pages[st].back() = copy;
        tails[st] = copy;
        ++s->versions[st];
      }
      maybe_shared[st] = 0;
    }
    // Flags on full tails stay until those streams take a fresh page; recount.
    s->any_maybe_shared = std::find(maybe_shared, maybe_shared + streams, 1) != maybe_shared + streams;
  }
  if (num_tokens == 1 && page_size_is_pow2_) {
    // The decode step, in two passes. The first writes every stream's slot as
    // if its tail page had room and is branch-free, so it vectorizes; the second
    // fixes up the streams that sat on a page boundary (none on most steps,
    // since a stream crosses one every page_size tokens).
    const auto mask = static_cast<uint32_t>(page_size - 1);
    const auto ps = static_cast<uint32_t>(page_size);
    if (record != nullptr) {
      for (int32_t st = 0; st < streams; ++st) {
        // Unsigned: a stream with no page yet (kNoPage) wraps harmlessly here and
        // is fixed up below.
        record[st] = static_cast<int32_t>(tails[st] * ps + (lens[st] & mask));
        lens[st] += 1;
      }
    } else {
      for (int32_t st = 0; st < streams; ++st) lens[st] += 1;
    }
    if (next_page != scratch_pages_.data() + scratch_pages_.size()) {
      for (int32_t st = 0; st < streams; ++st) {
        if (((lens[st] - 1) & mask) != 0) continue;
        const PageId page = *next_page++;
        s->pages[st].push_back(page);
        tails[st] = page;
        maybe_shared[st] = 0;  // a fresh page is ours alone
        if (record != nullptr) record[st] = static_cast<int32_t>(page * ps);
      }
    }
  } else {
    // Many tokens (prefill), or a page size that is no power of two: hand each stream its new pages (stream-major, so a
    // stream's pages are consecutive ids), then write the records token by token.
    stream_offset_.resize(static_cast<size_t>(streams));
    stream_cursor_.resize(static_cast<size_t>(streams));
    int64_t* offset = stream_offset_.data();
    const PageId** cursor = stream_cursor_.data();
    for (int32_t st = 0; st < streams; ++st) {
      offset[st] = ModPage(lens[st]);
      const int64_t room = offset[st] == 0 ? 0 : page_size - offset[st];
      const int64_t fresh = num_tokens > room ? (num_tokens - room + page_size - 1) / page_size : 0;
      cursor[st] = next_page;
      if (fresh > 0) {
        // Headroom for the decode steps that follow: a vector filled exactly
        // would be reallocated by the first one, for all 256 streams at once.
        std::vector<PageId>& pages = s->pages[st];
        const size_t size = pages.size() + static_cast<size_t>(fresh);
        if (pages.capacity() < size) pages.reserve(size + size / 2);
        pages.insert(pages.end(), next_page, next_page + fresh);
        maybe_shared[st] = 0;
        next_page += fresh;
        if (record == nullptr) tails[st] = pages.back();
      }
    }
    for (int64_t t = 0; record != nullptr && t < num_tokens; ++t, record += streams) {
      for (int32_t st = 0; st < streams; ++st) {
        if (offset[st] == 0) tails[st] = *cursor[st]++;
        record[st] = static_cast<int32_t>(static_cast<int64_t>(tails[st]) * page_size + offset[st]);
        if (++offset[st] == page_size) offset[st] = 0;
      }
    }
    for (int32_t st = 0; st < streams; ++st) lens[st] += static_cast<uint32_t>(num_tokens);
  }
  HEADPAGE_DCHECK(next_page == scratch_pages_.data() + scratch_pages_.size());
  stream_tokens_ += num_tokens * num_streams_;
  s->num_tokens += num_tokens;
  DebugCheck();
  return absl::OkStatus();
}

absl::StatusOr<ReservePlan> BlockManager::Reserve(SeqId seq, int64_t num_tokens) {
  HEADPAGE_ASSIGN_OR_RETURN(const Sequence* s, Find(seq));
  HEADPAGE_RETURN_IF_ERROR(CheckReservable(*s, seq, num_tokens));
  // As above: refuse before allocating a slot mapping sized by the request.
  if (CountReservePages(*s, num_tokens) > pool_->free_pages()) {
    return absl::Status(absl::StatusCode::kResourceExhausted, "");
  }
  ReservePlan plan;
  plan.first_position = s->num_tokens;
  plan.slot_mapping.resize(static_cast<size_t>(num_streams_ * num_tokens));
  HEADPAGE_RETURN_IF_ERROR(
      Reserve(seq, num_tokens, SlotMappingOut{plan.slot_mapping.data(), num_tokens, 0},
              &plan.page_copies));
  return plan;
}

// ---------------------------------------------------------------------------
// Page references

void BlockManager::ReleaseFromStream(PageId page, int64_t fill) {
  const uint32_t holders = StreamHolders(page);
  HEADPAGE_CHECK(holders >= 1);
  if (holders > 1) {
    shared_excess_slots_ -= fill;
  } else if (retired_refs_[page] > 0) {
    ++retired_only_pages_;  // a plan still reads it; no stream holds it any more
  }
  HEADPAGE_CHECK(pool_->Release(absl::MakeConstSpan(&page, 1)).ok());
}

void BlockManager::RetireFromStream(PageId page, int64_t fill) {
  const uint32_t holders = StreamHolders(page);
  HEADPAGE_CHECK(holders >= 1);
  if (holders > 1) {
    shared_excess_slots_ -= fill;
  } else {
    ++retired_only_pages_;
  }
  retired_.push_back(page);
  ++retired_refs_[page];
}

void BlockManager::ReleaseRetiredPages() {
  for (const PageId page : retired_) retired_refs_[page] = 0;
  HEADPAGE_CHECK(pool_->Release(retired_).ok());
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
  // No page held by two streams (each extra holder adds its page's fill, at
  // least one token, to shared_excess_slots_) and none retired: every page of
  // the sequence has exactly one holder and the accounting below would change
  // nothing, so its pass over the pages (two random reads a page) is skipped.
  const bool all_exclusive = shared_excess_slots_ == 0 && retired_.empty();
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
      } else if (retired_refs_[pages[j]] > 0) {
        ++retired_only_pages_;
      }
    }
    HEADPAGE_CHECK(pool_->Release(pages).ok());
    stream_tokens_ -= s->lens[st];
  }
  seqs_.erase(seq);
  DebugCheck();
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Evict

absl::Status BlockManager::Evict(SeqId seq, int32_t layer, absl::Span<const int32_t> kept_counts,
                                 CompactionPlan* plan) {
  HEADPAGE_ASSIGN_OR_RETURN(Sequence* s, Find(seq));
  const int32_t num_heads = geometry_.num_kv_heads;
  if (layer < 0 || layer >= geometry_.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("Evict: layer ", layer, " is outside [0, ", geometry_.num_layers, ")"));
  }
  if (static_cast<int64_t>(kept_counts.size()) != num_heads) {
    return absl::InvalidArgumentError(absl::StrCat("Evict: ", kept_counts.size(),
                                                   " kept counts for ", num_heads, " kv heads"));
  }
  if (plan == nullptr) return absl::InvalidArgumentError("Evict: plan is null");
  if (s->pending_layers[layer]) {
    return absl::FailedPreconditionError(
        absl::StrCat("Evict: layer ", layer, " of sequence ", seq,
                     " is already in a compaction plan not yet released"));
  }
  const int32_t first = layer * num_heads;
  for (int32_t h = 0; h < num_heads; ++h) {
    if (kept_counts[h] < 0 || static_cast<uint32_t>(kept_counts[h]) > s->lens[first + h]) {
      return absl::InvalidArgumentError(absl::StrCat("Evict: kept count ", kept_counts[h],
                                                     " for kv head ", h, " is outside [0, ",
                                                     s->lens[first + h], "]"));
    }
  }

  // Fresh pages for every stream that shrinks, if the pool has them; otherwise
  // streams whose pages nobody else references compact in place.
  enum class Mode : uint8_t { kKeepAll, kFresh, kInPlace };
  Mode modes[1 << 12];  // num_kv_heads <= 4096 (core/geometry.cc)
  int64_t fresh_pages = 0;
  for (int32_t h = 0; h < num_heads; ++h) {
    const bool shrinks = static_cast<uint32_t>(kept_counts[h]) != s->lens[first + h];
    modes[h] = shrinks ? Mode::kFresh : Mode::kKeepAll;
    if (shrinks) fresh_pages += PagesFor(kept_counts[h], page_size_);
  }
  if (fresh_pages > pool_->free_pages()) {
    fresh_pages = 0;
    for (int32_t h = 0; h < num_heads; ++h) {
      if (modes[h] == Mode::kKeepAll) continue;
      const auto& pages = s->pages[first + h];
      const bool exclusive = std::all_of(pages.begin(), pages.end(),
                                         [&](PageId p) { return pool_->refcount(p) == 1; });
      if (exclusive) {
        modes[h] = Mode::kInPlace;
      } else {
        fresh_pages += PagesFor(kept_counts[h], page_size_);
      }
    }
  }
  scratch_pages_.resize(static_cast<size_t>(fresh_pages));
  HEADPAGE_RETURN_IF_ERROR(pool_->Allocate(absl::MakeSpan(scratch_pages_)));

  // Commit; nothing below can fail.
  const PageId* next_page = scratch_pages_.data();
  for (int32_t h = 0; h < num_heads; ++h) {
    const int32_t st = first + h;
    std::vector<PageId>& pages = s->pages[st];
    const int64_t len = s->lens[st];
    const int64_t kept = kept_counts[h];
    const int64_t old_pages = static_cast<int64_t>(pages.size());
    const int64_t new_pages = PagesFor(kept, page_size_);

    plan->rows.push_back({seq, layer, h});
    AppendPages(pages, &plan->src_page_ids);
    plan->src_indptr.push_back(static_cast<int32_t>(plan->src_page_ids.size()));
    plan->src_lens.push_back(static_cast<int32_t>(len));
    plan->kept.push_back(static_cast<int32_t>(kept));
    plan->keep_indptr.push_back(plan->keep_indptr.back() + static_cast<int32_t>(kept));
    plan->in_place.push_back(modes[h] != Mode::kFresh);

    switch (modes[h]) {
      case Mode::kKeepAll:
        AppendPages(pages, &plan->dst_page_ids);
        break;
      case Mode::kInPlace:
        plan->dst_page_ids.insert(plan->dst_page_ids.end(), pages.begin(),
                                  pages.begin() + new_pages);
        for (int64_t j = new_pages; j < old_pages; ++j) {
          RetireFromStream(pages[j], PageFill(len, old_pages, j, page_size_));
        }
        pages.resize(static_cast<size_t>(new_pages));
        break;
      case Mode::kFresh:
        for (int64_t j = 0; j < old_pages; ++j) {
          RetireFromStream(pages[j], PageFill(len, old_pages, j, page_size_));
        }
        pages.assign(next_page, next_page + new_pages);
        next_page += new_pages;
        AppendPages(pages, &plan->dst_page_ids);
        s->tail_maybe_shared[st] = 0;
        break;
    }
    plan->dst_indptr.push_back(static_cast<int32_t>(plan->dst_page_ids.size()));
    if (modes[h] != Mode::kKeepAll) {
      s->lens[st] = static_cast<uint32_t>(kept);
      s->tails[st] = pages.empty() ? kNoPage : pages.back();
      ++s->versions[st];
      stream_tokens_ -= len - kept;
    }
  }
  HEADPAGE_DCHECK(next_page == scratch_pages_.data() + scratch_pages_.size());
  if (!HasPendingPlan(*s)) pending_seqs_.push_back(seq);
  s->pending_layers[layer] = 1;
  ++s->num_pending_layers;
  DebugCheck();
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Block tables

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

// ---------------------------------------------------------------------------
// Queries

absl::StatusOr<int64_t> BlockManager::NumTokens(SeqId seq) const {
  HEADPAGE_ASSIGN_OR_RETURN(const Sequence* s, Find(seq));
  return s->num_tokens;
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

BlockManagerStats BlockManager::Stats() const {
  BlockManagerStats stats;
  stats.num_sequences = num_sequences();
  stats.num_streams = stats.num_sequences * num_streams_;
  stats.pages_total = pool_->num_pages();
  stats.pages_free = pool_->free_pages();
  stats.pages_retired = retired_only_pages_;
  stats.pages_in_use = pool_->used_pages() - retired_only_pages_;
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

// ---------------------------------------------------------------------------
// Invariants

absl::Status BlockManager::CheckInvariants() const {
  HEADPAGE_RETURN_IF_ERROR(pool_->CheckInvariants());
  const size_t num_pages = static_cast<size_t>(pool_->num_pages());
  std::vector<uint32_t> refs(num_pages, 0);
  std::vector<int64_t> fill(num_pages, -1);  // live tokens per page; all holders agree
  int64_t total_len = 0, used = 0;
  std::vector<PageId> exclusive_tails;
  for (const auto& [id, s] : seqs_) {
    if (s->lens.size() != static_cast<size_t>(num_streams_) || s->pages.size() != s->lens.size() ||
        s->tails.size() != s->lens.size() || s->versions.size() != s->lens.size() ||
        s->tail_maybe_shared.size() != s->lens.size() ||
        s->pending_layers.size() != static_cast<size_t>(geometry_.num_layers)) {
      return absl::InternalError(absl::StrCat("sequence ", id, ": stream arrays have wrong sizes"));
    }
    if (s->num_pending_layers !=
        std::count(s->pending_layers.begin(), s->pending_layers.end(), uint8_t{1})) {
      return absl::InternalError(absl::StrCat("sequence ", id, ": pending layer count out of step"));
    }
    if (!s->any_maybe_shared && std::find(s->tail_maybe_shared.begin(), s->tail_maybe_shared.end(),
                                          uint8_t{1}) != s->tail_maybe_shared.end()) {
      return absl::InternalError(absl::StrCat("sequence ", id, ": a shared tail flag is hidden"));
    }
    if (HasPendingPlan(*s) &&
        std::find(pending_seqs_.begin(), pending_seqs_.end(), id) == pending_seqs_.end()) {
      return absl::InternalError(absl::StrCat("sequence ", id, " is pending but not listed"));
    }
    for (int32_t st = 0; st < num_streams_; ++st) {
      const int64_t len = s->lens[st];
      const auto& pages = s->pages[st];
      const auto n = static_cast<int64_t>(pages.size());
      if (len > s->num_tokens) {
        return absl::InternalError(absl::StrCat("sequence ", id, " stream ", st, ": length ", len,
                                                " exceeds the sequence's ", s->num_tokens, " tokens"));
      }
      if (n != PagesFor(len, page_size_)) {
        return absl::InternalError(absl::StrCat("sequence ", id, " stream ", st, ": ", n,
                                                " pages for ", len, " tokens"));
      }
      if (s->tails[st] != (n > 0 ? pages.back() : kNoPage)) {
        return absl::InternalError(absl::StrCat("sequence ", id, " stream ", st, ": stale tail"));
      }
      for (int64_t j = 0; j < n; ++j) {
        const PageId p = pages[j];
        if (p >= num_pages) {
          return absl::InternalError(absl::StrCat("sequence ", id, " holds page ", p,
                                                  " outside the pool"));
        }
        ++refs[p];
        const int64_t f = PageFill(len, n, j, page_size_);
        if (fill[p] < 0) {
          fill[p] = f;
          used += f;
        } else if (fill[p] != f) {
          return absl::InternalError(absl::StrCat("page ", p, " is shared by streams that see ",
                                                  fill[p], " and ", f, " tokens in it"));
        }
      }
      if (!s->tail_maybe_shared[st] && ModPage(len) != 0) exclusive_tails.push_back(s->tails[st]);
      total_len += len;
    }
  }
  std::vector<uint32_t> retired_count(num_pages, 0);
  for (const PageId p : retired_) {
    if (p >= num_pages) return absl::InternalError("a retired page is outside the pool");
    ++retired_count[p];
    ++refs[p];
  }
  int64_t retired_only = 0;
  for (size_t p = 0; p < num_pages; ++p) {
    if (refs[p] != pool_->refcount(static_cast<PageId>(p))) {
      return absl::InternalError(absl::StrCat("page ", p, " has refcount ",
                                              pool_->refcount(static_cast<PageId>(p)), " but ",
                                              refs[p], " references are held"));
    }
    if (retired_count[p] != retired_refs_[p]) {
      return absl::InternalError(absl::StrCat("page ", p, ": retired count out of step"));
    }
    if (retired_count[p] > 0 && refs[p] == retired_count[p]) ++retired_only;
  }
  for (const PageId p : exclusive_tails) {
    if (StreamHolders(p) != 1) {
      return absl::InternalError(
          absl::StrCat("tail page ", p, " is marked exclusive but has ", StreamHolders(p), " holders"));
    }
  }
  if (total_len != stream_tokens_) {
    return absl::InternalError(absl::StrCat("stream_tokens is ", stream_tokens_, ", recount ", total_len));
  }
  if (total_len - used != shared_excess_slots_) {
    return absl::InternalError(absl::StrCat("shared_excess_slots is ", shared_excess_slots_,
                                            ", recount ", total_len - used));
  }
  if (retired_only != retired_only_pages_) {
    return absl::InternalError(absl::StrCat("retired_only_pages is ", retired_only_pages_,
                                            ", recount ", retired_only));
  }
  return absl::OkStatus();
}

void BlockManager::DebugCheck() const {
#if HEADPAGE_DEBUG_LEVEL >= 2
  const absl::Status status = CheckInvariants();
  if (!status.ok()) {
    std::fprintf(stderr, "BlockManager invariant broken: %s\n", std::string(status.message()).c_str());
    CheckFailed("CheckInvariants().ok()", __FILE__, __LINE__);
  }
#endif
}

}  // namespace headpage
