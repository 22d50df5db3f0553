// SPDX-License-Identifier: Apache-2.0
#include "blockmgr/block_manager.h"

#include <vector>

#include "tests/blockmgr/blockmgr_test_util.h"

namespace headpage {
namespace {

using testing::Fixture;
using testing::TinyGeometry;

std::vector<PageId> Pages(BlockManager& m, SeqId seq, int32_t layer, int32_t head) {
  auto pages = m.StreamPages(seq, layer, head);
  REQUIRE_OK(pages);
  return std::vector<PageId>(pages->begin(), pages->end());
}

// Everything an operation must leave alone when it fails.
struct Snapshot {
  int64_t free_pages, used_slots, stream_tokens, sequences;
  bool operator==(const Snapshot& o) const {
    return free_pages == o.free_pages && used_slots == o.used_slots &&
           stream_tokens == o.stream_tokens && sequences == o.sequences;
  }
};
Snapshot Snap(BlockManager& m) {
  const BlockManagerStats s = m.Stats();
  return {s.pages_free, s.used_slots, s.stream_tokens, s.num_sequences};
}

TEST_CASE("BlockManager: Create rejects bad geometry, null pool, oversized pools", "[blockmgr]") {
  auto pool = PagePool::Create({16, 0.0});
  REQUIRE_OK(pool);
  CacheGeometry g = TinyGeometry();
  g.num_q_heads = 3;
  REQUIRE_ERROR(BlockManager::Create(g, &*pool), absl::StatusCode::kInvalidArgument, "multiple");
  g = TinyGeometry(0);
  REQUIRE_ERROR(BlockManager::Create(g, &*pool), absl::StatusCode::kInvalidArgument, "page_size");
  REQUIRE_ERROR(BlockManager::Create(TinyGeometry(), nullptr), absl::StatusCode::kInvalidArgument,
                "null");
  auto big = PagePool::Create({int64_t{1} << 28, 0.0});
  REQUIRE_OK(big);
  REQUIRE_ERROR(BlockManager::Create(TinyGeometry(16), &*big), absl::StatusCode::kInvalidArgument,
                "int32 slot id");
}

TEST_CASE("BlockManager: Reserve fills pages in order and maps every token", "[blockmgr]") {
  Fixture m(64);
  const SeqId seq = m->AddSequence();
  auto plan = m->Reserve(seq, 6);
  REQUIRE_OK(plan);
  REQUIRE(plan->first_position == 0);
  REQUIRE(plan->page_copies.size() == 0);
  REQUIRE(plan->slot_mapping.size() == 4 * 6);
  // Stream-major allocation: stream s gets pages 2s, 2s+1.
  for (int32_t layer = 0; layer < 2; ++layer) {
    for (int32_t h = 0; h < 2; ++h) {
      const int32_t st = layer * 2 + h;
      const std::vector<PageId> pages = Pages(*m, seq, layer, h);
      REQUIRE(pages == std::vector<PageId>{PageId(2 * st), PageId(2 * st + 1)});
      for (int32_t t = 0; t < 6; ++t) {
        // [token][layer][kv_head]: token t's record of 4 streams
        REQUIRE(plan->slot_mapping[t * 4 + st] == static_cast<int32_t>(pages[t / 4] * 4 + t % 4));
      }
    }
  }
  // Two more tokens fill the second pages; the third token opens new ones.
  auto more = m->Reserve(seq, 3);
  REQUIRE_OK(more);
  REQUIRE(more->first_position == 6);
  REQUIRE(more->slot_mapping[0] == 1 * 4 + 2);
  REQUIRE(more->slot_mapping[4] == 1 * 4 + 3);  // token 1 of stream 0
  REQUIRE(more->slot_mapping[8] == 8 * 4 + 0);
  REQUIRE(*m->NumTokens(seq) == 9);
  REQUIRE_OK(m->CheckInvariants());
}

TEST_CASE("BlockManager: Reserve writes into a shared batch slot mapping", "[blockmgr]") {
  Fixture m(64);
  const SeqId a = m->AddSequence(), b = m->AddSequence();
  std::vector<int32_t> slots(3 * 4, -7);  // [batch of 3 tokens][layer][kv_head]
  PageCopies copies;
  REQUIRE_OK(m->Reserve(a, 2, {slots.data(), 3, 0}, &copies));
  REQUIRE_OK(m->Reserve(b, 1, {slots.data(), 3, 2}, &copies));
  for (const int32_t slot : slots) REQUIRE(slot >= 0);
  // b's token sits at batch position 2 of every layer, beside a's two.
  REQUIRE(slots[2 * 4 + 3] ==
          static_cast<int32_t>(m->StreamPages(b, 1, 1).value()[0] * 4));
  REQUIRE_ERROR(m->Reserve(a, 2, {slots.data(), 3, 2}, &copies),
                absl::StatusCode::kInvalidArgument, "cannot hold");
  REQUIRE_ERROR(m->Reserve(a, 1, {slots.data(), 3, 0}, nullptr),
                absl::StatusCode::kInvalidArgument, "null");
}

TEST_CASE("BlockManager: running out of pages is ResourceExhausted and changes nothing",
          "[blockmgr]") {
  Fixture m(10);
  const SeqId seq = m->AddSequence();
  REQUIRE_OK(m->Reserve(seq, 8));  // 4 streams x 2 pages
  REQUIRE(*m->PagesNeeded(seq, 1) == 4);
  const Snapshot before = Snap(*m);
  const auto status = m->Reserve(seq, 1).status();
  REQUIRE(status.code() == absl::StatusCode::kResourceExhausted);
  REQUIRE(Snap(*m) == before);
  REQUIRE(*m->NumTokens(seq) == 8);
  REQUIRE_OK(m->CheckInvariants());
  // An absurd request is refused by counting, before anything is sized by it.
  REQUIRE(m->Reserve(seq, 2'000'000'000).status().code() == absl::StatusCode::kResourceExhausted);
  int32_t unused = 0;
  PageCopies copies;
  REQUIRE(m->Reserve(seq, 2'000'000'000, {&unused, 2'000'000'000, 0}, &copies).code() ==
          absl::StatusCode::kResourceExhausted);
  REQUIRE(Snap(*m) == before);
  // A fully exhausted pool refuses a brand-new sequence's first token too.
  Fixture tiny(3);
  const SeqId t = tiny->AddSequence();
  REQUIRE(tiny->Reserve(t, 1).status().code() == absl::StatusCode::kResourceExhausted);
  REQUIRE(tiny->Stats().pages_free == 3);
}

TEST_CASE("BlockManager: unknown, freed and double-freed sequences get NotFound", "[blockmgr]") {
  Fixture m(16);
  const SeqId seq = m->AddSequence();
  REQUIRE_OK(m->Reserve(seq, 3));
  REQUIRE_OK(m->Free(seq));
  REQUIRE(m->Stats().pages_free == 16);
  REQUIRE_ERROR(m->Free(seq), absl::StatusCode::kNotFound, "not live");
  REQUIRE_ERROR(m->Reserve(seq, 1), absl::StatusCode::kNotFound, "not live");
  REQUIRE_ERROR(m->Fork(seq), absl::StatusCode::kNotFound, "not live");
  CompactionPlan plan;
  const std::vector<int32_t> kept = {0, 0};
  REQUIRE_ERROR(m->Evict(seq, 0, kept, &plan), absl::StatusCode::kNotFound, "not live");
  REQUIRE_ERROR(m->NumTokens(12345), absl::StatusCode::kNotFound, "12345");
  REQUIRE_ERROR(m->Reserve(m->AddSequence(), -1), absl::StatusCode::kInvalidArgument, "negative");
  REQUIRE(plan.num_rows() == 0);
  REQUIRE_OK(m->CheckInvariants());
}

TEST_CASE("BlockManager: a pool serves one manager at a time", "[blockmgr]") {
  auto pool = PagePool::Create({64, 0.0});
  REQUIRE_OK(pool);
  CacheGeometry g;
  g.num_layers = 2;
  g.num_kv_heads = 2;
  g.num_q_heads = 2;
  g.head_dim = 64;
  g.page_size = 4;
  {
    auto first = BlockManager::Create(g, &*pool);
    REQUIRE_OK(first);
    REQUIRE(pool->claimed());
    REQUIRE_ERROR(BlockManager::Create(g, &*pool), absl::StatusCode::kFailedPrecondition,
                  "already serves");
    // Moving the manager moves the claim; the moved-from one gives nothing back.
    BlockManager moved = std::move(first).value();
    REQUIRE(pool->claimed());
    const SeqId seq = moved.AddSequence();
    REQUIRE_OK(moved.Reserve(seq, 5));
    REQUIRE_OK(moved.CheckInvariants());
  }
  REQUIRE_FALSE(pool->claimed());  // the manager went: the pool is free again
  REQUIRE_OK(BlockManager::Create(g, &*pool));
}

TEST_CASE("BlockManager: HoldsPagesAlone says whether a fork shares a sequence's pages",
          "[blockmgr]") {
  Fixture m(64);
  const SeqId parent = m->AddSequence();
  REQUIRE_OK(m->Reserve(parent, 6));
  const SeqId other = m->AddSequence();
  REQUIRE_OK(m->Reserve(other, 3));
  REQUIRE(*m->HoldsPagesAlone(parent));
  auto child = m->Fork(parent);
  REQUIRE_OK(child);
  REQUIRE_FALSE(*m->HoldsPagesAlone(parent));
  REQUIRE_FALSE(*m->HoldsPagesAlone(*child));
  REQUIRE(*m->HoldsPagesAlone(other));  // a fork elsewhere changes nothing for it
  REQUIRE_OK(m->Free(*child));
  REQUIRE(*m->HoldsPagesAlone(parent));  // forked once, but nothing shared now
  REQUIRE_ERROR(m->HoldsPagesAlone(*child), absl::StatusCode::kNotFound, "");
}

TEST_CASE("BlockManager: Fork shares pages, writing a shared partial tail copies it",
          "[blockmgr]") {
  Fixture m(64);
  const SeqId parent = m->AddSequence();
  REQUIRE_OK(m->Reserve(parent, 6));  // tails hold 2 of 4 slots
  auto child = m->Fork(parent);
  REQUIRE_OK(child);
  const std::vector<PageId> shared = Pages(*m, parent, 0, 0);
  REQUIRE(Pages(*m, *child, 0, 0) == shared);
  REQUIRE(m->pool().refcount(shared[0]) == 2);
  REQUIRE(m->Stats().used_slots == 4 * 6);  // shared slots count once
  REQUIRE(m->Stats().stream_tokens == 2 * 4 * 6);

  auto plan = m->Reserve(*child, 1);
  REQUIRE_OK(plan);
  REQUIRE(plan->page_copies.size() == 4);  // one copy per stream
  const std::vector<PageId> child_pages = Pages(*m, *child, 0, 0);
  REQUIRE(child_pages[0] == shared[0]);  // the full page stays shared
  REQUIRE(child_pages[1] != shared[1]);
  REQUIRE(plan->page_copies.src[0] == static_cast<int32_t>(shared[1]));
  REQUIRE(plan->page_copies.dst[0] == static_cast<int32_t>(child_pages[1]));
  REQUIRE(plan->slot_mapping[0] == static_cast<int32_t>(child_pages[1] * 4 + 2));
  REQUIRE(Pages(*m, parent, 0, 0) == shared);
  REQUIRE(m->pool().refcount(shared[1]) == 1);

  // The parent now owns its tail alone: no copy.
  auto parent_plan = m->Reserve(parent, 1);
  REQUIRE_OK(parent_plan);
  REQUIRE(parent_plan->page_copies.size() == 0);
  REQUIRE(parent_plan->slot_mapping[0] == static_cast<int32_t>(shared[1] * 4 + 2));
  REQUIRE_OK(m->CheckInvariants());
  REQUIRE_OK(m->Free(parent));
  REQUIRE_OK(m->Free(*child));
  REQUIRE(m->Stats().pages_free == 64);
  REQUIRE_OK(m->CheckInvariants());
}

TEST_CASE("BlockManager: a fork whose tails are full copies nothing", "[blockmgr]") {
  Fixture m(64);
  const SeqId parent = m->AddSequence();
  REQUIRE_OK(m->Reserve(parent, 8));
  auto child = m->Fork(parent);
  REQUIRE_OK(child);
  auto plan = m->Reserve(*child, 1);
  REQUIRE_OK(plan);
  REQUIRE(plan->page_copies.size() == 0);
  REQUIRE(Pages(*m, *child, 1, 1).size() == 3);
  REQUIRE(m->Stats().used_slots == 4 * 8 + 4 * 1);
  REQUIRE_OK(m->CheckInvariants());
}

TEST_CASE("BlockManager: Evict compacts into fresh pages and retires the old ones", "[blockmgr]") {
  Fixture m(64);
  const SeqId seq = m->AddSequence();
  REQUIRE_OK(m->Reserve(seq, 10));  // 3 pages a stream, 12 pages
  const std::vector<PageId> old0 = Pages(*m, seq, 1, 0), old1 = Pages(*m, seq, 1, 1);
  CompactionPlan plan;
  const std::vector<int32_t> kept = {5, 10};  // head 1 keeps everything
  REQUIRE_OK(m->Evict(seq, 1, kept, &plan));
  REQUIRE(plan.num_rows() == 2);
  REQUIRE(plan.rows[0].layer == 1);
  REQUIRE(plan.rows[1].kv_head == 1);
  REQUIRE(plan.kept == std::vector<int32_t>{5, 10});
  REQUIRE(plan.keep_indptr == std::vector<int32_t>{0, 5, 15});
  REQUIRE(plan.src_lens == std::vector<int32_t>{10, 10});
  REQUIRE(plan.in_place == std::vector<uint8_t>{0, 1});
  REQUIRE(plan.src_indptr == std::vector<int32_t>{0, 3, 6});
  REQUIRE(plan.dst_indptr == std::vector<int32_t>{0, 2, 5});
  const std::vector<PageId> new0 = Pages(*m, seq, 1, 0);
  REQUIRE(new0.size() == 2);
  REQUIRE(std::vector<int32_t>(plan.dst_page_ids.begin(), plan.dst_page_ids.begin() + 2) ==
          std::vector<int32_t>{int32_t(new0[0]), int32_t(new0[1])});
  REQUIRE(Pages(*m, seq, 1, 1) == old1);
  // The old pages are retired: still allocated until the plan is released.
  BlockManagerStats stats = m->Stats();
  REQUIRE(stats.pages_retired == 3);
  REQUIRE(stats.pages_in_use == 12 - 3 + 2);
  REQUIRE(stats.used_slots == 3 * 10 + 5);
  REQUIRE(stats.internal_fragmentation == 3 * 2 + 3);
  for (PageId p : old0) REQUIRE(m->pool().refcount(p) == 1);
  REQUIRE_OK(m->CheckInvariants());
  m->ReleaseRetiredPages();
  for (PageId p : old0) REQUIRE(m->pool().refcount(p) == 0);
  REQUIRE(m->Stats().pages_retired == 0);
  REQUIRE(m->Stats().pages_free == 64 - 11);
  REQUIRE_OK(m->CheckInvariants());
}

TEST_CASE("BlockManager: a short pool compacts exclusive streams in place", "[blockmgr]") {
  Fixture m(12);
  const SeqId seq = m->AddSequence();
  REQUIRE_OK(m->Reserve(seq, 12));  // every page taken
  const std::vector<PageId> before = Pages(*m, seq, 0, 0);
  CompactionPlan plan;
  const std::vector<int32_t> kept = {5, 0};
  REQUIRE_OK(m->Evict(seq, 0, kept, &plan));
  REQUIRE(plan.in_place[0] == 1);
  REQUIRE(Pages(*m, seq, 0, 0) == std::vector<PageId>(before.begin(), before.begin() + 2));
  REQUIRE(Pages(*m, seq, 0, 1).empty());
  REQUIRE(m->Stats().pages_retired == 1 + 3);
  m->ReleaseRetiredPages();
  REQUIRE(m->Stats().pages_free == 4);
  REQUIRE_OK(m->CheckInvariants());
}

TEST_CASE("BlockManager: shared streams cannot compact in place", "[blockmgr]") {
  Fixture m(12);
  const SeqId parent = m->AddSequence();
  REQUIRE_OK(m->Reserve(parent, 12));
  auto child = m->Fork(parent);
  REQUIRE_OK(child);
  CompactionPlan plan;
  const std::vector<int32_t> kept = {4, 12};
  const Snapshot before = Snap(*m);
  REQUIRE(m->Evict(*child, 0, kept, &plan).code() == absl::StatusCode::kResourceExhausted);
  REQUIRE(Snap(*m) == before);
  REQUIRE(plan.num_rows() == 0);
  // Dropping a shared stream entirely needs no page.
  const std::vector<int32_t> drop = {0, 12};
  REQUIRE_OK(m->Evict(*child, 0, drop, &plan));
  REQUIRE(m->Stats().pages_retired == 0);  // the parent still holds them
  REQUIRE(m->pool().refcount(Pages(*m, parent, 0, 0)[0]) == 2);  // parent + the retired list
  m->ReleaseRetiredPages();
  REQUIRE(m->pool().refcount(Pages(*m, parent, 0, 0)[0]) == 1);
  REQUIRE_OK(m->CheckInvariants());
}

TEST_CASE("BlockManager: Evict rejects bad input and changes nothing", "[blockmgr]") {
  Fixture m(64);
  const SeqId seq = m->AddSequence();
  REQUIRE_OK(m->Reserve(seq, 6));
  CompactionPlan plan;
  const Snapshot before = Snap(*m);
  const std::vector<int32_t> too_many = {7, 1}, negative = {-1, 1}, three = {1, 1, 1}, ok = {2, 3};
  REQUIRE_ERROR(m->Evict(seq, 0, too_many, &plan), absl::StatusCode::kInvalidArgument, "kept count 7");
  REQUIRE_ERROR(m->Evict(seq, 0, negative, &plan), absl::StatusCode::kInvalidArgument, "kept count -1");
  REQUIRE_ERROR(m->Evict(seq, 0, three, &plan), absl::StatusCode::kInvalidArgument, "3 kept counts");
  REQUIRE_ERROR(m->Evict(seq, 2, ok, &plan), absl::StatusCode::kInvalidArgument, "layer 2");
  REQUIRE_ERROR(m->Evict(seq, 0, ok, nullptr), absl::StatusCode::kInvalidArgument, "null");
  REQUIRE(Snap(*m) == before);
  REQUIRE(plan.num_rows() == 0);
  // One plan per layer until it is released; other calls wait for it too.
  REQUIRE_OK(m->Evict(seq, 0, ok, &plan));
  REQUIRE_ERROR(m->Evict(seq, 0, ok, &plan), absl::StatusCode::kFailedPrecondition, "not yet released");
  REQUIRE_ERROR(m->Reserve(seq, 1), absl::StatusCode::kFailedPrecondition, "not yet released");
  REQUIRE_ERROR(m->Fork(seq), absl::StatusCode::kFailedPrecondition, "not yet released");
  REQUIRE_ERROR(m->Free(seq), absl::StatusCode::kFailedPrecondition, "not yet released");
  REQUIRE_OK(m->Evict(seq, 1, ok, &plan));  // another layer may join the plan
  m->ReleaseRetiredPages();
  REQUIRE_OK(m->Reserve(seq, 1));
  REQUIRE_OK(m->CheckInvariants());
}

TEST_CASE("BlockManager: Stats counts tail waste as internal fragmentation", "[blockmgr]") {
  Fixture m(64);
  const SeqId a = m->AddSequence(), b = m->AddSequence();
  REQUIRE_OK(m->Reserve(a, 6));
  REQUIRE_OK(m->Reserve(b, 1));
  const BlockManagerStats s = m->Stats();
  REQUIRE(s.num_sequences == 2);
  REQUIRE(s.num_streams == 8);
  REQUIRE(s.pages_in_use == 4 * 2 + 4 * 1);
  REQUIRE(s.allocated_slots == 12 * 4);
  REQUIRE(s.used_slots == 4 * 6 + 4 * 1);
  REQUIRE(s.internal_fragmentation == 4 * 2 + 4 * 3);
  REQUIRE(s.min_stream_len == 1);
  REQUIRE(s.max_stream_len == 6);
  REQUIRE(s.mean_stream_len == Approx(3.5));
}

// Two managers driven through the same calls, one with slot mappings and one
// without, must hold the same pages, lengths and tails: ReserveWithoutSlots is
// Reserve minus the slot ids.
TEST_CASE("BlockManager: ReserveWithoutSlots leaves what Reserve leaves", "[blockmgr]") {
  for (const int32_t page_size : {4, 3}) {  // the power-of-two decode path, and the other
    CAPTURE(page_size);
    Fixture with(128, TinyGeometry(page_size)), without(128, TinyGeometry(page_size));
    PageCopies with_copies, without_copies;
    std::vector<int32_t> slots(4 * 16);
    auto both = [&](SeqId seq, int64_t tokens) {
      REQUIRE_OK(with->Reserve(seq, tokens, {slots.data(), tokens, 0}, &with_copies));
      REQUIRE_OK(without->ReserveWithoutSlots(seq, tokens, &without_copies));
    };
    const SeqId a = with->AddSequence();
    REQUIRE(without->AddSequence() == a);
    both(a, 6);  // prefill
    both(a, 1);  // decode steps, across a page boundary
    both(a, 1);
    auto forked = with->Fork(a);
    REQUIRE_OK(forked);
    REQUIRE(*without->Fork(a) == *forked);
    both(a, 1);        // copy-on-write of the shared, partly filled tails
    both(*forked, 5);  // the child writes in place, then takes fresh pages
    REQUIRE(without_copies.src == with_copies.src);
    REQUIRE(without_copies.dst == with_copies.dst);
    for (const SeqId seq : {a, *forked}) {
      REQUIRE(*without->NumTokens(seq) == *with->NumTokens(seq));
      for (int32_t layer = 0; layer < 2; ++layer) {
        for (int32_t h = 0; h < 2; ++h) REQUIRE(Pages(*without, seq, layer, h) == Pages(*with, seq, layer, h));
      }
    }
    REQUIRE(Snap(*without) == Snap(*with));
    REQUIRE_OK(without->CheckInvariants());
    // The next Reserve must see the tails ReserveWithoutSlots left: its slots
    // continue where the streams stand.
    auto plan = without->Reserve(a, 1);
    REQUIRE_OK(plan);
    REQUIRE(plan->slot_mapping[0] ==
            static_cast<int32_t>(Pages(*without, a, 0, 0).back() * page_size +
                                 (*without->NumTokens(a) - 1) % page_size));
  }
}

TEST_CASE("BlockManager: ReserveWithoutSlots errors change nothing", "[blockmgr]") {
  Fixture m(10);
  PageCopies copies;
  const SeqId seq = m->AddSequence();
  REQUIRE_ERROR(m->ReserveWithoutSlots(seq + 1, 1, &copies), absl::StatusCode::kNotFound, "not live");
  REQUIRE_ERROR(m->ReserveWithoutSlots(seq, -1, &copies), absl::StatusCode::kInvalidArgument, "negative");
  REQUIRE_ERROR(m->ReserveWithoutSlots(seq, 1, nullptr), absl::StatusCode::kInvalidArgument, "null");
  REQUIRE_OK(m->ReserveWithoutSlots(seq, 0, nullptr));  // nothing to do, as Reserve
  REQUIRE_OK(m->ReserveWithoutSlots(seq, 8, &copies));  // 4 streams x 2 pages
  const Snapshot before = Snap(*m);
  REQUIRE(m->ReserveWithoutSlots(seq, 1, &copies).code() == absl::StatusCode::kResourceExhausted);
  REQUIRE(Snap(*m) == before);
  REQUIRE_OK(m->CheckInvariants());
}

// Free skips its per-page accounting while no page is shared or retired; the
// statistics must come out the same as when it has to look (a fork, a plan
// still holding retired pages of another sequence).
TEST_CASE("BlockManager: Free keeps the statistics with and without sharing", "[blockmgr]") {
  Fixture m(64);
  const SeqId a = m->AddSequence(), b = m->AddSequence();
  REQUIRE_OK(m->Reserve(a, 6));
  REQUIRE_OK(m->Reserve(b, 5));
  REQUIRE_OK(m->Free(b));  // nothing shared: the fast path
  REQUIRE_OK(m->CheckInvariants());
  REQUIRE(m->Stats().pages_in_use == 4 * 2);
  REQUIRE(m->Stats().used_slots == 4 * 6);

  auto child = m->Fork(a);  // every page of a now has two holders
  REQUIRE_OK(child);
  REQUIRE_OK(m->Free(a));
  REQUIRE_OK(m->CheckInvariants());
  REQUIRE(m->Stats().pages_in_use == 4 * 2);  // the child still holds them
  REQUIRE(m->Stats().used_slots == 4 * 6);
  REQUIRE(m->Stats().internal_fragmentation == 4 * 2);

  // A plan retires pages of the child; freeing another sequence meanwhile.
  const SeqId c = m->AddSequence();
  REQUIRE_OK(m->Reserve(c, 3));
  CompactionPlan plan;
  const int32_t kept[] = {1, 1};
  REQUIRE_OK(m->Evict(*child, 0, kept, &plan));
  REQUIRE_OK(m->Free(c));
  REQUIRE_OK(m->CheckInvariants());
  REQUIRE(m->Stats().pages_retired == 2 * 2);
  m->ReleaseRetiredPages();
  REQUIRE_OK(m->Free(*child));
  REQUIRE_OK(m->CheckInvariants());
  REQUIRE(m->Stats().pages_in_use == 0);
  REQUIRE(m->pool().free_pages() == 64);
}

// Retiring a page that a fork still holds must leave the fork's view of it
// exact: the fork is then its only stream holder (no copy-on-write), and the
// page becomes retired-only when the fork lets go of it too.
TEST_CASE("BlockManager: pages a plan retires from under a fork stay counted for the fork",
          "[blockmgr]") {
  Fixture m(64);
  const SeqId a = m->AddSequence();
  REQUIRE_OK(m->Reserve(a, 6));  // 2 pages a stream, tails hold 2 of 4 slots
  auto b = m->Fork(a);
  REQUIRE_OK(b);
  CompactionPlan plan;
  const int32_t kept[] = {2, 2};
  REQUIRE_OK(m->Evict(a, 0, kept, &plan));
  REQUIRE_OK(m->Evict(a, 1, kept, &plan));
  // Every old page of a is retired and still held by b: none is retired-only,
  // and no page has two stream holders any more.
  BlockManagerStats stats = m->Stats();
  REQUIRE(stats.pages_retired == 0);
  REQUIRE(stats.pages_in_use == 8 + 4);
  REQUIRE(stats.used_slots == 4 * 6 + 4 * 2);
  REQUIRE_OK(m->CheckInvariants());
  int64_t in_use_after = 0;
  SECTION("the fork appends to its tails without copying them") {
    const std::vector<PageId> tail = Pages(*m, *b, 0, 0);
    auto step = m->Reserve(*b, 1);
    REQUIRE_OK(step);
    REQUIRE(step->page_copies.size() == 0);
    REQUIRE(step->slot_mapping[0] == static_cast<int32_t>(tail[1] * 4 + 2));
    REQUIRE(m->Stats().pages_retired == 0);
    in_use_after = 8 + 4;
  }
  SECTION("the fork evicts the same pages meanwhile") {
    CompactionPlan plan_b;
    REQUIRE_OK(m->Evict(*b, 0, kept, &plan_b));
    REQUIRE(m->Stats().pages_retired == 4);  // layer 0's pages: now only plans read them
    REQUIRE(m->Stats().pages_in_use == 4 + 4 + 2);
    in_use_after = 4 + 4 + 2;
  }
  SECTION("the fork is freed meanwhile") {
    REQUIRE_OK(m->Free(*b));
    REQUIRE(m->Stats().pages_retired == 8);
    REQUIRE(m->Stats().pages_in_use == 4);
    in_use_after = 4;
  }
  REQUIRE_OK(m->CheckInvariants());
  m->ReleaseRetiredPages();
  REQUIRE(m->Stats().pages_retired == 0);
  REQUIRE(m->Stats().pages_in_use == in_use_after);
  REQUIRE(m->pool().free_pages() == 64 - in_use_after);
  REQUIRE_OK(m->CheckInvariants());
}

}  // namespace
}  // namespace headpage
