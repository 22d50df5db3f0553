// SPDX-License-Identifier: Apache-2.0
// ref::SlotScores: the per-slot score store against hand-computed layouts.
#include <vector>

#include "kernels/slot_scores.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

// Two streams over a pool of 6 pages of 2 slots: stream 0 holds 3 tokens in
// pages 4, 1; stream 1 holds 2 tokens in page 0. Dense: stream 0 at 0..2,
// stream 1 at 4..5 (a gap at 3).
struct TwoStreams {
  std::vector<int32_t> indptr{0, 2, 3}, page_ids{4, 1, 0}, lens{3, 2}, offsets{0, 4, 6};
  std::vector<float> store = std::vector<float>(12, -1.0f);
  std::vector<float> dense{10, 11, 12, 99, 20, 21};

  SlotScoresArgs Args(SlotScoresOp op) {
    SlotScoresArgs a;
    a.cache.page_size = 2;
    a.cache.num_pages = 6;
    a.num_streams = 2;
    a.indptr = indptr.data();
    a.page_ids = page_ids.data();
    a.num_page_ids = static_cast<int32_t>(page_ids.size());
    a.lens = lens.data();
    a.offsets = offsets.data();
    a.max_len = 3;
    a.num_dense = 6;
    a.op = op;
    a.slot_scores = store.data();
    a.dense = dense.data();
    return a;
  }
};

TEST_CASE("SlotScores: store, load and add through the block tables", "[kernels]") {
  TwoStreams t;
  REQUIRE_OK(ref::SlotScores(t.Args(SlotScoresOp::kStore)));
  // Stream 0's tokens 0, 1 in page 4 (slots 8, 9), token 2 in page 1 (slot 2);
  // stream 1's in page 0 (slots 0, 1).
  REQUIRE(t.store == std::vector<float>{20, 21, 12, -1, -1, -1, -1, -1, 10, 11, -1, -1});

  // Load with stream 0 scored up to token 2 and stream 1 not at all.
  const std::vector<int32_t> scored{2, 0};
  SlotScoresArgs load = t.Args(SlotScoresOp::kLoad);
  load.scored = scored.data();
  load.unscored = 7.0f;
  t.dense.assign(6, -5.0f);
  REQUIRE_OK(ref::SlotScores(load));
  REQUIRE(t.dense == std::vector<float>{10, 11, 7, -5, 7, 7});

  // Add: scored tokens add to their stored score, the others start from 0.
  t.dense = {1, 2, 3, 99, 4, 5};
  SlotScoresArgs add = t.Args(SlotScoresOp::kAdd);
  add.scored = scored.data();
  REQUIRE_OK(ref::SlotScores(add));
  REQUIRE(t.dense == std::vector<float>{11, 13, 3, 99, 4, 5});
  REQUIRE(t.store == std::vector<float>{4, 5, 3, -1, -1, -1, -1, -1, 11, 13, -1, -1});
}

TEST_CASE("SlotScores: load shifts a stream with negative scores to start at zero", "[kernels]") {
  TwoStreams t;
  t.dense = {-3, -1, 2, 0, 5, 6};
  REQUIRE_OK(ref::SlotScores(t.Args(SlotScoresOp::kStore)));
  SlotScoresArgs load = t.Args(SlotScoresOp::kLoad);
  load.shift_to_zero = true;
  t.dense.assign(6, 0.0f);
  REQUIRE_OK(ref::SlotScores(load));
  // Stream 0 shifted by 3; stream 1 has no negative score and stays.
  REQUIRE(t.dense == std::vector<float>{0, 2, 5, 0, 5, 6});
}

TEST_CASE("SlotScores: bad arguments are refused before anything is written", "[kernels]") {
  TwoStreams t;
  const std::vector<float> before = t.store;
  SlotScoresArgs a = t.Args(SlotScoresOp::kStore);
  a.dense = nullptr;
  REQUIRE_ERROR(ref::SlotScores(a), absl::StatusCode::kInvalidArgument, "null");
  a = t.Args(SlotScoresOp::kStore);
  a.cache.page_size = 0;
  REQUIRE_ERROR(Validate(a), absl::StatusCode::kInvalidArgument, "page_size");
  a = t.Args(static_cast<SlotScoresOp>(9));
  REQUIRE_ERROR(Validate(a), absl::StatusCode::kInvalidArgument, "unknown op");
  t.page_ids[2] = 6;  // outside the pool
  REQUIRE_ERROR(ref::SlotScores(t.Args(SlotScoresOp::kStore)), absl::StatusCode::kOutOfRange,
                "outside");
  t.page_ids[2] = 0;
  t.offsets[1] = 2;  // stream 0's 3 tokens overlap stream 1's
  REQUIRE_ERROR(ref::SlotScores(t.Args(SlotScoresOp::kStore)), absl::StatusCode::kOutOfRange,
                "offset");
  t.offsets[1] = 4;
  const std::vector<int32_t> too_many{4, 0};
  a = t.Args(SlotScoresOp::kAdd);
  a.scored = too_many.data();
  REQUIRE_ERROR(ref::SlotScores(a), absl::StatusCode::kOutOfRange, "scored");
  REQUIRE(t.store == before);
}

}  // namespace
}  // namespace headpage
