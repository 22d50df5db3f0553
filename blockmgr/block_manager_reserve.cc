// SPDX-License-Identifier: Apache-2.0
// BlockManager::Reserve and its variants: room for new tokens, slot mappings,
// copy-on-write of shared tail pages. The decode step (one token) is the hot
// path of a serving engine's scheduler.
#include "blockmgr/block_manager.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "blockmgr/block_manager_internal.h"
#include "core/check.h"
#include "core/status.h"

namespace headpage {

using blockmgr_internal::kMaxInt32;

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
  if (!MakeRoom(need)) return absl::Status(absl::StatusCode::kResourceExhausted, "");
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
  if (s->intact_tokens == s->num_tokens) s->intact_tokens += num_tokens;
  s->num_tokens += num_tokens;
  DebugCheck();
  return absl::OkStatus();
}

absl::StatusOr<ReservePlan> BlockManager::Reserve(SeqId seq, int64_t num_tokens) {
  HEADPAGE_ASSIGN_OR_RETURN(const Sequence* s, Find(seq));
  HEADPAGE_RETURN_IF_ERROR(CheckReservable(*s, seq, num_tokens));
  // As above: refuse before allocating a slot mapping sized by the request.
  if (!MakeRoom(CountReservePages(*s, num_tokens))) {
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

}  // namespace headpage
