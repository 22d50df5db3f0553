// SPDX-License-Identifier: Apache-2.0
// BlockManager's prefix cache: hits and misses, users and the unused list,
// reclaim when the pool runs short, and evictions around cached pages.
#include <numeric>
#include <vector>

#include "blockmgr/block_manager.h"
#include "tests/blockmgr/blockmgr_test_util.h"

namespace headpage {
namespace {

using testing::Fixture;

constexpr int32_t kStreams = 4;  // TinyGeometry: 2 layers x 2 kv heads, page size 4

std::vector<int32_t> Ids(int32_t n, int32_t first = 100) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  std::iota(ids.begin(), ids.end(), first);
  return ids;
}

std::vector<PageId> Pages(BlockManager& m, SeqId seq, int32_t stream) {
  auto pages = m.StreamPages(seq, stream / 2, stream % 2);
  REQUIRE_OK(pages);
  return std::vector<PageId>(pages->begin(), pages->end());
}

// A sequence of n tokens (its K/V as good as written) that offered its blocks.
SeqId Cached(BlockManager& m, const std::vector<int32_t>& ids, uint64_t salt = 0) {
  const SeqId seq = m.AddSequence();
  REQUIRE_OK(m.Reserve(seq, static_cast<int64_t>(ids.size())));
  auto cached = m.CachePrefix(seq, ids, salt);
  REQUIRE_OK(cached);
  REQUIRE(*cached == static_cast<int64_t>(ids.size()) / 4 * 4);
  return seq;
}

TEST_CASE("Prefix cache: a request with a cached prefix starts on its pages", "[blockmgr][prefix]") {
  Fixture m(64);
  const std::vector<int32_t> ids = Ids(10);
  const SeqId a = Cached(*m, ids);
  REQUIRE(m->Stats().cached_blocks == 2);
  REQUIRE(m->Stats().pages_cached == 2 * kStreams);
  REQUIRE(m->CachedPrefixTokens(ids, 0) == 8);
  REQUIRE(m->CachedPrefixTokens(Ids(7), 0) == 4);      // one full block of it
  REQUIRE(m->CachedPrefixTokens(Ids(10, 101), 0) == 0);  // other tokens
  REQUIRE(m->CachedPrefixTokens(ids, 1) == 0);           // other salt

  const int64_t free_before = m->pool().free_pages();
  // The engine matches all but the last prompt token.
  const BlockManager::PrefixHit hit =
      m->AddSequenceWithPrefix(absl::MakeConstSpan(ids).first(9), 0);
  REQUIRE(hit.cached_tokens == 8);
  REQUIRE(m->pool().free_pages() == free_before);  // it took no page
  REQUIRE(*m->NumTokens(hit.seq) == 8);
  for (int32_t st = 0; st < kStreams; ++st) {
    const std::vector<PageId> mine = Pages(*m, hit.seq, st);
    const std::vector<PageId> theirs = Pages(*m, a, st);
    REQUIRE(mine == std::vector<PageId>(theirs.begin(), theirs.begin() + 2));
  }
  // Its own tokens go to pages of its own; the shared ones are full, so no copy.
  auto plan = m->Reserve(hit.seq, 2);
  REQUIRE_OK(plan);
  REQUIRE(plan->page_copies.size() == 0);
  REQUIRE(plan->first_position == 8);
  REQUIRE_OK(m->CheckInvariants());
  REQUIRE(m->Stats().used_slots == 10 * kStreams + 2 * kStreams);  // shared slots count once
  REQUIRE_FALSE(*m->HoldsPagesAlone(hit.seq));
}

TEST_CASE("Prefix cache: unused blocks stay until the pool needs their pages",
          "[blockmgr][prefix]") {
  Fixture m(32);
  const SeqId a = Cached(*m, Ids(8));
  REQUIRE(m->pool().free_pages() == 32 - 2 * kStreams);
  REQUIRE_OK(m->Free(a));
  BlockManagerStats stats = m->Stats();
  REQUIRE(stats.cached_blocks_unused == 2);
  REQUIRE(stats.pages_cached_only == 2 * kStreams);
  REQUIRE(stats.pages_in_use == 0);
  REQUIRE(m->pool().free_pages() == 32 - 2 * kStreams);
  REQUIRE(m->AvailablePages() == 32);

  // A hit takes the blocks out of the unused list.
  const BlockManager::PrefixHit hit = m->AddSequenceWithPrefix(Ids(8), 0);
  REQUIRE(hit.cached_tokens == 8);
  REQUIRE(m->Stats().cached_blocks_unused == 0);
  REQUIRE(m->Stats().pages_cached_only == 0);
  REQUIRE(m->AvailablePages() == m->pool().free_pages());
  REQUIRE_OK(m->Free(hit.seq));

  // A request that needs every page reclaims them, and the cache is empty.
  const SeqId big = m->AddSequence();
  REQUIRE_OK(m->Reserve(big, 32));
  REQUIRE(m->pool().free_pages() == 0);
  stats = m->Stats();
  REQUIRE(stats.cached_blocks == 0);
  REQUIRE(stats.pages_cached == 0);
  REQUIRE(m->CachedPrefixTokens(Ids(8), 0) == 0);
  REQUIRE_OK(m->CheckInvariants());
  // With nothing left to reclaim, the pool is short as before.
  REQUIRE(m->Reserve(big, 4).status().code() == absl::StatusCode::kResourceExhausted);
}

TEST_CASE("Prefix cache: reclaim takes the least recently used block, children first",
          "[blockmgr][prefix]") {
  Fixture m(64);
  const SeqId a = Cached(*m, Ids(8, 100));  // blocks A0 -> A1
  const SeqId b = Cached(*m, Ids(4, 500));  // block B0
  REQUIRE_OK(m->Free(a));                   // unused: A1, A0
  REQUIRE_OK(m->Free(b));                   // unused: A1, A0, B0
  // A hit on A0 alone moves it to the back: A1, B0, A0.
  const BlockManager::PrefixHit hit = m->AddSequenceWithPrefix(Ids(4, 100), 0);
  REQUIRE(hit.cached_tokens == 4);
  REQUIRE_OK(m->Free(hit.seq));
  const int64_t free0 = m->pool().free_pages();
  REQUIRE(m->ReclaimCachedPages(free0 + 1) == kStreams);  // one block's pages
  REQUIRE(m->CachedPrefixTokens(Ids(8, 100), 0) == 4);    // A1 went first
  REQUIRE(m->CachedPrefixTokens(Ids(4, 500), 0) == 4);
  REQUIRE(m->ReclaimCachedPages(free0 + kStreams + 1) == kStreams);
  REQUIRE(m->CachedPrefixTokens(Ids(4, 500), 0) == 0);  // then B0
  REQUIRE(m->CachedPrefixTokens(Ids(4, 100), 0) == 4);  // A0 is the most recent
  REQUIRE(m->ReclaimCachedPages(1 << 20) == kStreams);  // all that is left
  REQUIRE(m->Stats().cached_blocks == 0);
  REQUIRE_OK(m->CheckInvariants());
}

TEST_CASE("Prefix cache: blocks in use are never reclaimed", "[blockmgr][prefix]") {
  Fixture m(16);
  const SeqId a = Cached(*m, Ids(8));
  REQUIRE(m->ReclaimCachedPages(16) == 0);
  REQUIRE(m->Stats().cached_blocks == 2);
  // A fork uses them too.
  auto child = m->Fork(a);
  REQUIRE_OK(child);
  REQUIRE_OK(m->Free(a));
  REQUIRE(m->ReclaimCachedPages(16) == 0);
  REQUIRE_OK(m->Free(*child));
  REQUIRE(m->ReclaimCachedPages(16) == 2 * kStreams);
  REQUIRE(m->pool().free_pages() == 16);
}

TEST_CASE("Prefix cache: the salt and the whole chain name a block", "[blockmgr][prefix]") {
  Fixture m(64);
  Cached(*m, Ids(8), /*salt=*/7);
  REQUIRE(m->CachedPrefixTokens(Ids(8), 7) == 8);
  REQUIRE(m->CachedPrefixTokens(Ids(8), 0) == 0);
  // The same second block after another first block is another block.
  std::vector<int32_t> other = Ids(8);
  other[0] = 1;
  REQUIRE(m->CachedPrefixTokens(other, 7) == 0);
}

TEST_CASE("Prefix cache: a prefix computed twice at once is cached once", "[blockmgr][prefix]") {
  Fixture m(64);
  const std::vector<int32_t> ids = Ids(8);
  const SeqId a = m->AddSequence();
  const SeqId b = m->AddSequence();
  REQUIRE_OK(m->Reserve(a, 8));
  REQUIRE_OK(m->Reserve(b, 8));
  REQUIRE(*m->CachePrefix(a, ids, 0) == 8);
  REQUIRE(*m->CachePrefix(b, ids, 0) == 0);  // b keeps its own pages private
  REQUIRE(*m->HoldsPagesAlone(b));
  REQUIRE(m->Stats().cached_blocks == 2);
  // Offering again is a no-op; a fork shares what its parent cached.
  REQUIRE(*m->CachePrefix(a, ids, 0) == 8);
  auto child = m->Fork(a);
  REQUIRE_OK(child);
  REQUIRE(*m->CachePrefix(*child, ids, 0) == 8);
  REQUIRE_OK(m->CheckInvariants());
}

TEST_CASE("Prefix cache: eviction freezes the cached prefix or leaves it to the cache",
          "[blockmgr][prefix]") {
  Fixture m(64);
  const std::vector<int32_t> ids = Ids(8);
  Cached(*m, ids);
  const BlockManager::PrefixHit hit = m->AddSequenceWithPrefix(ids, 0);
  const SeqId seq = hit.seq;
  REQUIRE_OK(m->Reserve(seq, 6));  // 14 tokens: the 8 shared, 6 private
  const std::vector<PageId> before = Pages(*m, seq, 0);
  REQUIRE(before.size() == 4);

  SECTION("frozen: the shared pages stay, only the suffix compacts") {
    CompactionPlan plan;
    REQUIRE_OK(m->Evict(seq, 0, std::vector<int32_t>{10, 14}, /*frozen_tokens=*/8, &plan));
    REQUIRE(plan.num_rows() == 2);
    // Row 0 covers the suffix: 6 tokens in pages 2..3, of which it keeps 2.
    REQUIRE(plan.src_lens[0] == 6);
    REQUIRE(plan.kept[0] == 2);
    REQUIRE(std::vector<int32_t>(plan.src_page_ids.begin(), plan.src_page_ids.begin() + 2) ==
            std::vector<int32_t>{static_cast<int32_t>(before[2]), static_cast<int32_t>(before[3])});
    const std::vector<PageId> after = Pages(*m, seq, 0);
    REQUIRE(after.size() == 3);
    REQUIRE(after[0] == before[0]);
    REQUIRE(after[1] == before[1]);
    REQUIRE(plan.src_lens[1] == 6);  // head 1 keeps its all: a row that moves nothing
    REQUIRE(plan.kept[1] == 6);
    m->ReleaseRetiredPages();
    REQUIRE(m->Stats().cached_blocks_unused == 0);  // still in use
    REQUIRE(*m->CachePrefix(seq, ids, 0) == 8);
    REQUIRE_OK(m->CheckInvariants());
    // The frozen tokens are still intact; more than those are not.
    REQUIRE_OK(m->Evict(seq, 1, std::vector<int32_t>{8, 8}, 8, &plan));
    m->ReleaseRetiredPages();
    REQUIRE_ERROR(m->Evict(seq, 1, std::vector<int32_t>{10, 10}, 12, &plan),
                  absl::StatusCode::kInvalidArgument, "original slots");
  }
  SECTION("not frozen: the stream moves to fresh pages and the cache keeps the old ones") {
    CompactionPlan plan;
    REQUIRE_OK(m->Evict(seq, 0, std::vector<int32_t>{3, 14}, &plan));
    REQUIRE(plan.in_place[0] == 0);
    REQUIRE(Pages(*m, seq, 0).size() == 1);
    m->ReleaseRetiredPages();
    // Layer 0 no longer starts with the blocks, so the sequence stops using
    // them; the other sequence still does.
    REQUIRE(m->Stats().cached_blocks_unused == 0);
    REQUIRE(*m->CachePrefix(seq, ids, 0) == 0);
    REQUIRE_OK(m->CheckInvariants());
  }
  SECTION("a short pool never compacts a cached page in place") {
    // Take every free page, then evict: the suffix pages are the sequence's
    // own and may compact in place, the cached ones may not.
    const SeqId filler = m->AddSequence();
    REQUIRE_OK(m->Reserve(filler, m->pool().free_pages() / kStreams * 4));
    CompactionPlan plan;
    REQUIRE(m->Evict(seq, 0, std::vector<int32_t>{3, 14}, &plan).code() ==
            absl::StatusCode::kResourceExhausted);
    REQUIRE_OK(m->Evict(seq, 0, std::vector<int32_t>{9, 14}, 8, &plan));
    REQUIRE(plan.in_place[0] == 1);
    REQUIRE(Pages(*m, seq, 0)[0] == before[0]);
    m->ReleaseRetiredPages();
    REQUIRE_OK(m->CheckInvariants());
  }
}

TEST_CASE("Prefix cache: bad input is refused and changes nothing", "[blockmgr][prefix]") {
  Fixture m(64);
  const SeqId a = m->AddSequence();
  REQUIRE_OK(m->Reserve(a, 6));
  REQUIRE_ERROR(m->CachePrefix(a, Ids(7), 0), absl::StatusCode::kInvalidArgument, "7 token ids");
  REQUIRE_ERROR(m->CachePrefix(99, Ids(4), 0), absl::StatusCode::kNotFound, "not live");
  CompactionPlan plan;
  REQUIRE_ERROR(m->Evict(a, 0, std::vector<int32_t>{6, 6}, 3, &plan),
                absl::StatusCode::kInvalidArgument, "multiple of the page size");
  REQUIRE_ERROR(m->Evict(a, 0, std::vector<int32_t>{6, 6}, -4, &plan),
                absl::StatusCode::kInvalidArgument, "negative");
  REQUIRE_ERROR(m->Evict(a, 0, std::vector<int32_t>{3, 6}, 4, &plan),
                absl::StatusCode::kInvalidArgument, "4 frozen");
  REQUIRE_ERROR(m->Evict(a, 0, std::vector<int32_t>{6, 6}, 8, &plan),
                absl::StatusCode::kInvalidArgument, "original slots");
  REQUIRE(plan.num_rows() == 0);
  REQUIRE(m->Stats().cached_blocks == 0);
  // Nothing to match: an empty prompt, or one shorter than a page.
  REQUIRE(m->AddSequenceWithPrefix({}, 0).cached_tokens == 0);
  REQUIRE(m->AddSequenceWithPrefix(Ids(3), 0).cached_tokens == 0);
  REQUIRE_OK(m->CheckInvariants());
}

}  // namespace
}  // namespace headpage
