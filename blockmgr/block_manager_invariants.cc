// SPDX-License-Identifier: Apache-2.0
// BlockManager::CheckInvariants: the bookkeeping recounted from scratch, which
// tests run after every step (HEADPAGE_DEBUG_LEVEL >= 2 runs it after every
// operation through DebugCheck).
#include "blockmgr/block_manager.h"

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "blockmgr/block_manager_internal.h"
#include "core/check.h"
#include "core/status.h"

namespace headpage {

using blockmgr_internal::PageFill;

absl::Status BlockManager::CheckInvariants() const {
  HEADPAGE_RETURN_IF_ERROR(pool_->CheckInvariants());
  const size_t num_pages = static_cast<size_t>(pool_->num_pages());
  std::vector<uint32_t> refs(num_pages, 0);
  std::vector<int64_t> fill(num_pages, -1);  // live tokens per page; all holders agree
  int64_t total_len = 0, used = 0;
  std::vector<PageId> exclusive_tails;
  std::vector<PageId> unforked_pages;  // pages of sequences nothing shared
  absl::flat_hash_map<const CachedBlock*, int32_t> block_users;
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
      if (!s->ever_shared) unforked_pages.insert(unforked_pages.end(), pages.begin(), pages.end());
      if (len < s->intact_tokens) {
        return absl::InternalError(absl::StrCat("sequence ", id, " stream ", st, ": ", len,
                                                " tokens, fewer than its ", s->intact_tokens,
                                                " intact ones"));
      }
      total_len += len;
    }
    HEADPAGE_RETURN_IF_ERROR(CheckSequenceBlocks(id, *s, &block_users));
  }
  HEADPAGE_RETURN_IF_ERROR(CheckCachedBlocks(block_users, &refs));
  std::vector<uint32_t> retired_count(num_pages, 0);
  for (const PageId p : retired_) {
    if (p >= num_pages) return absl::InternalError("a retired page is outside the pool");
    ++retired_count[p];
    ++refs[p];
  }
  std::vector<uint32_t> shared_count(num_pages, 0);
  for (const PageId p : retired_shared_) {
    if (p >= num_pages) return absl::InternalError("a retired shared page is outside the pool");
    ++shared_count[p];
  }
  int64_t retired_only = 0, cache_only = 0;
  for (size_t p = 0; p < num_pages; ++p) {
    if (refs[p] != pool_->refcount(static_cast<PageId>(p))) {
      return absl::InternalError(absl::StrCat("page ", p, " has refcount ",
                                              pool_->refcount(static_cast<PageId>(p)), " but ",
                                              refs[p], " references are held"));
    }
    // retired_refs_ (block_manager.h): what retired_shared_ lists, no more than
    // retired_ holds, and all of it for a page that a stream or the cache holds.
    const bool stream_held = refs[p] > retired_count[p];
    if (retired_refs_[p] != shared_count[p] || retired_refs_[p] > retired_count[p] ||
        (stream_held && retired_refs_[p] != retired_count[p])) {
      return absl::InternalError(absl::StrCat("page ", p, ": retired count out of step"));
    }
    if (retired_count[p] > 0 && refs[p] == retired_count[p]) ++retired_only;
    if (cached_[p] && refs[p] == 1) ++cache_only;
  }
  for (const PageId p : unforked_pages) {
    if (refs[p] != 1) {  // the stream's own reference, and no other
      return absl::InternalError(absl::StrCat("page ", p, " of a sequence never forked has ",
                                              refs[p], " references"));
    }
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
  if (cache_only != cache_only_pages_) {
    return absl::InternalError(absl::StrCat("cache_only_pages is ", cache_only_pages_,
                                            ", recount ", cache_only));
  }
  return absl::OkStatus();
}

absl::Status BlockManager::CheckSequenceBlocks(
    SeqId id, const Sequence& s,
    absl::flat_hash_map<const CachedBlock*, int32_t>* block_users) const {
  if (s.intact_tokens > s.num_tokens ||
      static_cast<int64_t>(s.blocks.size()) * page_size_ > s.intact_tokens) {
    return absl::InternalError(absl::StrCat("sequence ", id, ": ", s.blocks.size(),
                                            " cached blocks, ", s.intact_tokens, " intact and ",
                                            s.num_tokens, " tokens"));
  }
  if (!s.blocks.empty() && !s.ever_shared) {
    return absl::InternalError(absl::StrCat("sequence ", id, " uses cached blocks unmarked"));
  }
  for (size_t j = 0; j < s.blocks.size(); ++j) {
    const CachedBlock* block = s.blocks[j];
    const uint64_t parent = j == 0 ? 0 : s.blocks[j - 1]->id;
    const auto it = cache_.find(*block->key);
    if (it == cache_.end() || &it->second != block || block->key->parent != parent) {
      return absl::InternalError(absl::StrCat("sequence ", id, ": block ", j,
                                              " is not a cached block of its chain"));
    }
    for (int32_t st = 0; st < num_streams_; ++st) {
      if (s.pages[st][j] != block->pages[st]) {
        return absl::InternalError(absl::StrCat("sequence ", id, " stream ", st, ": page ", j,
                                                " is not its cached block's"));
      }
    }
    ++(*block_users)[block];
  }
  return absl::OkStatus();
}

absl::Status BlockManager::CheckCachedBlocks(
    const absl::flat_hash_map<const CachedBlock*, int32_t>& block_users,
    std::vector<uint32_t>* refs) const {
  const size_t num_pages = refs->size();
  std::vector<uint8_t> seen(num_pages, 0);
  absl::flat_hash_map<uint64_t, const CachedBlock*> by_id;
  for (const auto& [key, block] : cache_) by_id[block.id] = &block;
  absl::flat_hash_map<const CachedBlock*, int32_t> in_lru;
  for (const CachedBlock& block : lru_) ++in_lru[&block];
  int64_t unused = 0;
  for (const auto& [key, block] : cache_) {
    if (block.key != &key || key.tokens.size() != static_cast<size_t>(page_size_) ||
        block.pages.size() != static_cast<size_t>(num_streams_)) {
      return absl::InternalError(absl::StrCat("cached block ", block.id, " is malformed"));
    }
    if (key.parent != 0 && !by_id.contains(key.parent)) {
      return absl::InternalError(absl::StrCat("cached block ", block.id, " outlived its parent"));
    }
    const auto users = block_users.find(&block);
    if (block.users != (users == block_users.end() ? 0 : users->second)) {
      return absl::InternalError(absl::StrCat("cached block ", block.id, " counts ", block.users,
                                              " users"));
    }
    unused += block.users == 0;
    const auto listed = in_lru.find(&block);
    if ((block.users == 0) != (listed != in_lru.end() && listed->second == 1)) {
      return absl::InternalError(absl::StrCat("cached block ", block.id,
                                              " is in the unused list iff it has no users: not so"));
    }
    for (const PageId p : block.pages) {
      if (p >= num_pages || !cached_[p] || seen[p]) {
        return absl::InternalError(absl::StrCat("cached block ", block.id, ": page ", p,
                                                " is outside the pool, unmarked or in two blocks"));
      }
      seen[p] = 1;
      ++(*refs)[p];
    }
  }
  if (unused != static_cast<int64_t>(lru_.size()) || in_lru.size() != lru_.size()) {
    return absl::InternalError(absl::StrCat(lru_.size(), " blocks in the unused list, ", unused,
                                            " without users"));
  }
  const int64_t marked = std::count(cached_.begin(), cached_.end(), uint8_t{1});
  if (marked != cached_pages_ || marked != static_cast<int64_t>(cache_.size()) * num_streams_) {
    return absl::InternalError(absl::StrCat("cached_pages is ", cached_pages_, "; ", marked,
                                            " pages marked for ", cache_.size(), " blocks"));
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
