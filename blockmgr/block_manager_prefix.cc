// SPDX-License-Identifier: Apache-2.0
// BlockManager's prefix cache: looking up, adopting, offering and reclaiming
// cached blocks (blockmgr/prefix_cache.h).
#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "blockmgr/block_manager.h"
#include "core/check.h"
#include "core/status.h"

namespace headpage {
namespace {

// Walks the hash chain of `tokens`' full blocks through `cache` (a const or
// mutable BlockManager::cache_), calling on_block(block) for each cached one
// until the first that is not. Returns the tokens matched.
template <typename Cache, typename OnBlock>
int64_t WalkCachedChain(Cache& cache, absl::Span<const int32_t> tokens, uint64_t salt,
                        int64_t page_size, OnBlock on_block) {
  PrefixBlockKey key{0, salt, {}};
  int64_t matched = 0;
  for (; matched + page_size <= static_cast<int64_t>(tokens.size()); matched += page_size) {
    key.tokens.assign(tokens.begin() + matched, tokens.begin() + matched + page_size);
    const auto it = cache.find(key);
    if (it == cache.end()) break;
    on_block(it->second);
    key.parent = it->second.id;
  }
  return matched;
}

}  // namespace

int64_t BlockManager::CachedPrefixTokens(absl::Span<const int32_t> tokens, uint64_t salt) const {
  return WalkCachedChain(cache_, tokens, salt, page_size_, [](const CachedBlock&) {});
}

BlockManager::PrefixHit BlockManager::AddSequenceWithPrefix(absl::Span<const int32_t> tokens,
                                                            uint64_t salt) {
  PrefixHit hit;
  hit.seq = AddSequence();
  Sequence* s = seqs_.at(hit.seq).get();
  WalkCachedChain(cache_, tokens, salt, page_size_,
                  [s](CachedBlock& block) { s->blocks.push_back(&block); });
  if (s->blocks.empty()) return hit;

  // One pass over the pages before they gain this stream as a holder: a page
  // the cache alone held leaves that count and gets its first stream holder;
  // any other adds a full page to the slots counted twice.
  int64_t excess = 0;
  for (CachedBlock* block : s->blocks) {
    if (block->users++ == 0) lru_.erase(lru_.iterator_to(*block));
    for (const PageId page : block->pages) {
      const uint32_t refs = pool_->refcount(page);
      if (refs == 1) {
        --cache_only_pages_;
      } else if (refs - 1 > retired_refs_[page]) {
        excess += page_size_;
      }
    }
    HEADPAGE_CHECK(pool_->Share(block->pages).ok());
  }
  const auto num_blocks = s->blocks.size();
  hit.cached_tokens = static_cast<int64_t>(num_blocks) * page_size_;
  for (int32_t st = 0; st < num_streams_; ++st) {
    std::vector<PageId>& pages = s->pages[st];
    pages.reserve(num_blocks + num_blocks / 2);  // headroom for what the request adds
    for (const CachedBlock* block : s->blocks) pages.push_back(block->pages[st]);
    s->lens[st] = static_cast<uint32_t>(hit.cached_tokens);
    s->tails[st] = pages.back();
  }
  s->num_tokens = s->intact_tokens = hit.cached_tokens;
  s->ever_shared = true;
  stream_tokens_ += hit.cached_tokens * num_streams_;
  shared_excess_slots_ += excess;
  DebugCheck();
  return hit;
}

absl::StatusOr<int64_t> BlockManager::CachePrefix(SeqId seq, absl::Span<const int32_t> tokens,
                                                  uint64_t salt) {
  HEADPAGE_ASSIGN_OR_RETURN(Sequence* s, Find(seq));
  if (static_cast<int64_t>(tokens.size()) > s->num_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("CachePrefix: ", tokens.size(),
                                                   " token ids for a sequence of ", s->num_tokens,
                                                   " tokens"));
  }
  if (HasPendingPlan(*s)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CachePrefix: sequence ", seq, " has a compaction plan not yet released"));
  }
  const int64_t limit = std::min<int64_t>(static_cast<int64_t>(tokens.size()), s->intact_tokens);
  PrefixBlockKey key{s->blocks.empty() ? 0 : s->blocks.back()->id, salt, {}};
  const auto page_size = static_cast<size_t>(page_size_);
  for (size_t j = s->blocks.size(); static_cast<int64_t>((j + 1) * page_size) <= limit; ++j) {
    key.tokens.assign(tokens.begin() + j * page_size, tokens.begin() + (j + 1) * page_size);
    CachedBlock* block = nullptr;
    if (const auto it = cache_.find(key); it != cache_.end()) {
      // Cached already: by this sequence's own pages (a fork of it cached
      // them), or by another request's, which ends the chain here.
      block = &it->second;
      for (int32_t st = 0; st < num_streams_; ++st) {
        if (block->pages[st] != s->pages[st][j]) return CachedTokens(*s);
      }
      if (block->users++ == 0) lru_.erase(lru_.iterator_to(*block));
    } else {
      // A page is in one block at most: one cached under another salt (by a
      // fork's parent, after the fork) ends the chain.
      for (int32_t st = 0; st < num_streams_; ++st) {
        if (cached_[s->pages[st][j]]) return CachedTokens(*s);
      }
      const auto [inserted, unused] = cache_.try_emplace(key);
      block = &inserted->second;
      block->id = next_block_id_++;
      block->key = &inserted->first;
      block->users = 1;
      block->pages.resize(static_cast<size_t>(num_streams_));
      for (int32_t st = 0; st < num_streams_; ++st) {
        const PageId page = s->pages[st][j];
        block->pages[st] = page;
        cached_[page] = 1;
      }
      HEADPAGE_CHECK(pool_->Share(block->pages).ok());
      cached_pages_ += num_streams_;
    }
    key.parent = block->id;
    s->blocks.push_back(block);
    s->ever_shared = true;
  }
  return CachedTokens(*s);
}

int64_t BlockManager::CachedTokens(const Sequence& s) const {
  DebugCheck();
  return static_cast<int64_t>(s.blocks.size()) * page_size_;
}

void BlockManager::ReleaseBlocks(Sequence* s, size_t keep) {
  // Last block first: a block's descendants enter the list ahead of it and are
  // reclaimed before it.
  while (s->blocks.size() > keep) {
    CachedBlock* block = s->blocks.back();
    s->blocks.pop_back();
    HEADPAGE_CHECK(block->users > 0);
    if (--block->users == 0) lru_.push_back(*block);
  }
}

int64_t BlockManager::ReclaimCachedPages(int64_t free_pages) {
  const int64_t before = pool_->free_pages();
  while (pool_->free_pages() < free_pages && !lru_.empty()) {
    CachedBlock& block = lru_.front();
    lru_.pop_front();
    for (const PageId page : block.pages) {
      const uint32_t others = pool_->refcount(page) - 1;  // all but the cache's
      if (others == 0) {
        --cache_only_pages_;  // freed below
      } else if (others == retired_refs_[page]) {
        // Only plans still hold it (Evict moved its last stream off it and,
        // the cache holding it, counted that in retired_refs_).
        ++retired_only_pages_;
      }
      cached_[page] = 0;
    }
    cached_pages_ -= num_streams_;
    HEADPAGE_CHECK(pool_->Release(block.pages).ok());
    cache_.erase(cache_.find(*block.key));
  }
  DebugCheck();
  return pool_->free_pages() - before;
}

}  // namespace headpage
