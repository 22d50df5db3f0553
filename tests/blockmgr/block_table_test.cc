// SPDX-License-Identifier: Apache-2.0
#include "blockmgr/block_table.h"

#include <random>
#include <vector>

#include "tests/blockmgr/blockmgr_test_util.h"

namespace headpage {
namespace {

using testing::Fixture;

// Every row of `table` shows exactly the manager's current block table and length.
void RequireMatches(BlockManager& m, const BlockTableCsr& table) {
  const int32_t heads = m.geometry().num_kv_heads;
  REQUIRE(table.indptr().size() == static_cast<size_t>(table.num_rows()) + 1);
  for (int32_t r = 0; r < table.num_rows(); ++r) {
    const SeqId seq = table.seqs()[r / heads];
    auto pages = m.StreamPages(seq, table.layer(), r % heads);
    REQUIRE_OK(pages);
    auto lens = m.StreamLengths(seq);
    REQUIRE_OK(lens);
    REQUIRE(table.lens()[r] == static_cast<int32_t>((*lens)[table.layer() * heads + r % heads]));
    const int32_t begin = table.indptr()[r], end = table.indptr()[r + 1];
    REQUIRE(end - begin >= static_cast<int32_t>(pages->size()));
    for (int32_t j = 0; j < end - begin; ++j) {
      const int32_t expect = j < static_cast<int32_t>(pages->size()) ? static_cast<int32_t>((*pages)[j]) : -1;
      REQUIRE(table.page_ids()[begin + j] == expect);
    }
  }
}

TEST_CASE("BlockTable: CSR rows are sequence-major with headroom", "[blockmgr]") {
  Fixture m(64);
  const SeqId a = m->AddSequence(), b = m->AddSequence();
  REQUIRE_OK(m->Reserve(a, 6));
  REQUIRE_OK(m->Reserve(b, 1));
  const std::vector<SeqId> batch = {a, b};
  auto table = m->BlockTable(1, batch, {2});
  REQUIRE_OK(table);
  REQUIRE(table->num_rows() == 4);
  REQUIRE(table->rebuilt());
  REQUIRE(std::vector<int32_t>(table->indptr().begin(), table->indptr().end()) ==
          std::vector<int32_t>{0, 4, 8, 11, 14});
  REQUIRE(std::vector<int32_t>(table->lens().begin(), table->lens().end()) ==
          std::vector<int32_t>{6, 6, 1, 1});
  RequireMatches(*m, *table);

  auto tight = m->BlockTable(1, batch, {0});
  REQUIRE_OK(tight);
  REQUIRE(std::vector<int32_t>(tight->indptr().begin(), tight->indptr().end()) ==
          std::vector<int32_t>{0, 2, 4, 5, 6});
  RequireMatches(*m, *tight);
}

TEST_CASE("BlockTable: a decode step only writes the appended pages", "[blockmgr]") {
  Fixture m(64);
  const SeqId a = m->AddSequence();
  REQUIRE_OK(m->Reserve(a, 4));
  const std::vector<SeqId> batch = {a};
  auto table = m->BlockTable(0, batch, {1});
  REQUIRE_OK(table);
  REQUIRE_OK(m->Reserve(a, 1));  // a new page in every stream
  REQUIRE_OK(m->RefreshBlockTable(&*table));
  REQUIRE_FALSE(table->rebuilt());
  REQUIRE(std::vector<int32_t>(table->changed_entries().begin(), table->changed_entries().end()) ==
          std::vector<int32_t>{1, 3});
  RequireMatches(*m, *table);
  REQUIRE_OK(m->Reserve(a, 1));  // same pages: nothing but lens changes
  REQUIRE_OK(m->RefreshBlockTable(&*table));
  REQUIRE(table->changed_entries().empty());
  REQUIRE(table->lens()[0] == 6);
  REQUIRE_OK(m->Reserve(a, 3));  // a third page: past the headroom of one
  REQUIRE_OK(m->RefreshBlockTable(&*table));
  REQUIRE(table->rebuilt());
  RequireMatches(*m, *table);
}

TEST_CASE("BlockTable: eviction and copy-on-write rewrite their rows", "[blockmgr]") {
  Fixture m(64);
  const SeqId a = m->AddSequence();
  REQUIRE_OK(m->Reserve(a, 10));
  const std::vector<SeqId> batch = {a};
  auto table = m->BlockTable(0, batch);
  REQUIRE_OK(table);
  CompactionPlan plan;
  const std::vector<int32_t> kept = {3, 10};
  REQUIRE_OK(m->Evict(a, 0, kept, &plan));
  m->ReleaseRetiredPages();
  REQUIRE_OK(m->RefreshBlockTable(&*table));
  REQUIRE_FALSE(table->rebuilt());
  REQUIRE(table->changed_entries().size() == 3);  // the new page, two stale entries cleared
  RequireMatches(*m, *table);

  auto child = m->Fork(a);
  REQUIRE_OK(child);
  const std::vector<SeqId> both = {a, *child};
  auto pair = m->BlockTable(0, both);
  REQUIRE_OK(pair);
  REQUIRE_OK(m->Reserve(*child, 1));  // copies the partial tails of the child
  REQUIRE_OK(m->RefreshBlockTable(&*pair));
  RequireMatches(*m, *pair);
}

TEST_CASE("BlockTable: bad requests and freed sequences get clear errors", "[blockmgr]") {
  Fixture m(64);
  const SeqId a = m->AddSequence(), b = m->AddSequence();
  REQUIRE_OK(m->Reserve(a, 2));
  const std::vector<SeqId> batch = {a, b};
  REQUIRE_ERROR(m->BlockTable(2, batch), absl::StatusCode::kInvalidArgument, "layer 2");
  REQUIRE_ERROR(m->BlockTable(0, {}), absl::StatusCode::kInvalidArgument, "no sequences");
  REQUIRE_ERROR(m->BlockTable(0, batch, {-1}), absl::StatusCode::kInvalidArgument, "headroom");
  const std::vector<SeqId> unknown = {a, 999};
  REQUIRE_ERROR(m->BlockTable(0, unknown), absl::StatusCode::kNotFound, "999");
  auto table = m->BlockTable(0, batch);
  REQUIRE_OK(table);
  const std::vector<int32_t> before(table->page_ids().begin(), table->page_ids().end());
  REQUIRE_OK(m->Free(b));
  REQUIRE_OK(m->Reserve(a, 4));
  REQUIRE_ERROR(m->RefreshBlockTable(&*table), absl::StatusCode::kNotFound, "not live");
  REQUIRE(std::vector<int32_t>(table->page_ids().begin(), table->page_ids().end()) == before);
}

TEST_CASE("BlockTable: random steps keep a refreshed table equal to the truth", "[blockmgr]") {
  const uint32_t seed = GENERATE(5u, 6u, 7u);
  CAPTURE(seed);
  std::mt19937 rng(seed);
  Fixture m(400);
  std::vector<SeqId> batch;
  for (int i = 0; i < 4; ++i) {
    batch.push_back(m->AddSequence());
    REQUIRE_OK(m->Reserve(batch.back(), 1 + rng() % 20));
  }
  auto table = m->BlockTable(1, batch, {static_cast<int32_t>(rng() % 3)});
  REQUIRE_OK(table);
  for (int step = 0; step < 300; ++step) {
    const SeqId seq = batch[rng() % batch.size()];
    if (rng() % 4 == 0) {
      auto lens = m->StreamLengths(seq);
      REQUIRE_OK(lens);
      const int32_t layer = static_cast<int32_t>(rng() % 2);
      std::vector<int32_t> kept(2);
      for (int32_t h = 0; h < 2; ++h) kept[h] = static_cast<int32_t>(rng() % ((*lens)[layer * 2 + h] + 1));
      CompactionPlan plan;
      REQUIRE_OK(m->Evict(seq, layer, kept, &plan));
      m->ReleaseRetiredPages();
    } else {
      const absl::Status s = m->Reserve(seq, 1 + rng() % 6).status();
      REQUIRE((s.ok() || s.code() == absl::StatusCode::kResourceExhausted));
    }
    REQUIRE_OK(m->RefreshBlockTable(&*table));
    RequireMatches(*m, *table);
  }
}

}  // namespace
}  // namespace headpage
