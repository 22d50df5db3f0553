// SPDX-License-Identifier: Apache-2.0
// BlockManager::Evict: shrinks a layer's streams of one sequence to their kept
// counts and plans the compaction (fresh pages, or in place when the pool is
// short).
#include "blockmgr/block_manager.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "core/status.h"

namespace headpage {
namespace {

void AppendPages(const std::vector<PageId>& pages, int64_t from, std::vector<int32_t>* out) {
  out->insert(out->end(), pages.begin() + from, pages.end());
}

}  // namespace

absl::Status BlockManager::Evict(SeqId seq, int32_t layer, absl::Span<const int32_t> kept_counts,
                                 CompactionPlan* plan) {
  return Evict(seq, layer, kept_counts, 0, plan);
}

absl::Status BlockManager::Evict(SeqId seq, int32_t layer, absl::Span<const int32_t> kept_counts,
                                 int64_t frozen_tokens, CompactionPlan* plan) {
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
  if (frozen_tokens < 0 || ModPage(frozen_tokens) != 0 || frozen_tokens > s->intact_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Evict: frozen_tokens ", frozen_tokens, " is negative, not a multiple of the page size ",
        page_size_, ", or past the ", s->intact_tokens, " tokens still at their original slots"));
  }
  const int32_t first = layer * num_heads;
  for (int32_t h = 0; h < num_heads; ++h) {
    if (kept_counts[h] < frozen_tokens ||
        static_cast<uint32_t>(kept_counts[h]) > s->lens[first + h]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Evict: kept count ", kept_counts[h], " for kv head ", h, " is outside [",
          frozen_tokens, " frozen, ", s->lens[first + h], "]"));
    }
  }
  const int64_t frozen_pages = frozen_tokens / page_size_;

  // Fresh pages for every stream that shrinks, if the pool has them; otherwise
  // streams whose pages nobody else references compact in place.
  enum class Mode : uint8_t { kKeepAll, kFresh, kInPlace };
  Mode modes[1 << 12];  // num_kv_heads <= 4096 (core/geometry.cc)
  int64_t fresh_pages = 0;
  for (int32_t h = 0; h < num_heads; ++h) {
    const bool shrinks = static_cast<uint32_t>(kept_counts[h]) != s->lens[first + h];
    modes[h] = shrinks ? Mode::kFresh : Mode::kKeepAll;
    if (shrinks) fresh_pages += PagesFor(kept_counts[h] - frozen_tokens, page_size_);
  }
  if (!MakeRoom(fresh_pages)) {
    fresh_pages = 0;
    for (int32_t h = 0; h < num_heads; ++h) {
      if (modes[h] == Mode::kKeepAll) continue;
      const auto& pages = s->pages[first + h];
      // A sequence nothing shared holds every page alone (refcount 1): no
      // pass over its pages, which are scattered through the pool's refcounts.
      // Pages the cache holds have a second reference, so they never compact
      // in place.
      const bool exclusive =
          !s->ever_shared || std::all_of(pages.begin() + frozen_pages, pages.end(),
                                         [&](PageId p) { return pool_->refcount(p) == 1; });
      if (exclusive) {
        modes[h] = Mode::kInPlace;
      } else {
        fresh_pages += PagesFor(kept_counts[h] - frozen_tokens, page_size_);
      }
    }
  }
  scratch_pages_.resize(static_cast<size_t>(fresh_pages));
  HEADPAGE_RETURN_IF_ERROR(pool_->Allocate(absl::MakeSpan(scratch_pages_)));

  // Commit; nothing below can fail.
  const PageId* next_page = scratch_pages_.data();
  // Retiring only lowers shared_excess_slots_, so this holds for every stream below.
  const bool sole_holder = SoleHolder(*s);
  for (int32_t h = 0; h < num_heads; ++h) {
    const int32_t st = first + h;
    std::vector<PageId>& pages = s->pages[st];
    const int64_t len = s->lens[st];
    const int64_t kept = kept_counts[h];
    // The row covers the suffix after the frozen pages.
    const int64_t new_pages = frozen_pages + PagesFor(kept - frozen_tokens, page_size_);

    plan->rows.push_back({seq, layer, h});
    AppendPages(pages, frozen_pages, &plan->src_page_ids);
    plan->src_indptr.push_back(static_cast<int32_t>(plan->src_page_ids.size()));
    plan->src_lens.push_back(static_cast<int32_t>(len - frozen_tokens));
    plan->kept.push_back(static_cast<int32_t>(kept - frozen_tokens));
    plan->keep_indptr.push_back(plan->keep_indptr.back() +
                                static_cast<int32_t>(kept - frozen_tokens));
    plan->in_place.push_back(modes[h] != Mode::kFresh);

    switch (modes[h]) {
      case Mode::kKeepAll:
        AppendPages(pages, frozen_pages, &plan->dst_page_ids);
        break;
      case Mode::kInPlace:
        plan->dst_page_ids.insert(plan->dst_page_ids.end(), pages.begin() + frozen_pages,
                                  pages.begin() + new_pages);
        RetireFromStream(pages, len, new_pages, sole_holder);
        pages.resize(static_cast<size_t>(new_pages));
        break;
      case Mode::kFresh:
        RetireFromStream(pages, len, frozen_pages, sole_holder);
        pages.resize(static_cast<size_t>(frozen_pages));
        pages.insert(pages.end(), next_page, next_page + (new_pages - frozen_pages));
        next_page += new_pages - frozen_pages;
        AppendPages(pages, frozen_pages, &plan->dst_page_ids);
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
  bool any_shrinks = false;
  for (int32_t h = 0; h < num_heads; ++h) any_shrinks |= modes[h] != Mode::kKeepAll;
  if (any_shrinks) {
    // Slots past the frozen tokens now hold other tokens, and the streams hold
    // other pages there: blocks from that page on are no longer this sequence's.
    s->intact_tokens = std::min(s->intact_tokens, frozen_tokens);
    ReleaseBlocks(s, static_cast<size_t>(frozen_pages));
  }
  if (!HasPendingPlan(*s)) pending_seqs_.push_back(seq);
  s->pending_layers[layer] = 1;
  ++s->num_pending_layers;
  DebugCheck();
  return absl::OkStatus();
}

}  // namespace headpage
