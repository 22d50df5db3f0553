// SPDX-License-Identifier: Apache-2.0
// GlobalKept: the pool-wide allocator that frees a target number of pages.
#include "policy/budget.h"

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "tests/policy/budget_test_util.h"
#include "tests/testing/status_matchers.h"

namespace headpage::policy::testing {
namespace {

using absl::StatusCode;

// Stream A scores 4 1 3 2 (sum 10: shares .4 .1 .3 .2), stream B 1 1 6 2
// (shares .1 .1 .6 .2); page size 2, so each holds 2 pages. Eviction order,
// lowest share first and equal shares the higher stream first:
//   B.1 B.1 | A.1 B.2 A.2 | A.3 A.4 | B.6
// with the pages freed after each: 0 1 | 1 1 2 | 2 3 | 4.
Streams GlobalExample(float scale_b = 1.0f) {
  Streams s;
  s.Add(Vec{4, 1, 3, 2});
  s.Add(Vec{1 * scale_b, 1 * scale_b, 6 * scale_b, 2 * scale_b});
  return s;
}

TEST_CASE("GlobalKept: hand example, fewest evictions that free the target", "[policy][budget]") {
  const Streams s = GlobalExample();
  const Ints floors = {0, 0};
  REQUIRE(Kept(GlobalKept(s.views(), floors, 2, 0)) == Ints{4, 4});
  REQUIRE(Kept(GlobalKept(s.views(), floors, 2, 1)) == Ints{4, 2});
  // B's 0.2 goes before A's 0.2 frees the second page: it frees nothing itself,
  // but it is below the threshold.
  REQUIRE(Kept(GlobalKept(s.views(), floors, 2, 2)) == Ints{2, 1});
  REQUIRE(Kept(GlobalKept(s.views(), floors, 2, 3)) == Ints{0, 1});
  REQUIRE(Kept(GlobalKept(s.views(), floors, 2, 4)) == Ints{0, 0});
  // More than can be freed: everything the floors allow.
  REQUIRE(Kept(GlobalKept(s.views(), floors, 2, 5)) == Ints{0, 0});
  // Normalization: scaling a stream's scores changes nothing.
  REQUIRE(Kept(GlobalKept(GlobalExample(100.0f).views(), floors, 2, 2)) == Ints{2, 1});
}

TEST_CASE("GlobalKept: floors and protection hold", "[policy][budget]") {
  const Streams s = GlobalExample();
  // A keeps at least 3: after B.1 B.1 (1 page), A.1 (A = 3), B.2 (B = 1), A is
  // at its floor, so the next page comes from B's 0.6: B = 0.
  REQUIRE(Kept(GlobalKept(s.views(), Ints{3, 0}, 2, 2)) == Ints{3, 0});
  // Floors above the length keep the whole stream.
  REQUIRE(Kept(GlobalKept(s.views(), Ints{9, 0}, 2, 2)) == Ints{4, 0});
  REQUIRE(Kept(GlobalKept(s.views(), Ints{9, 9}, 2, 1)) == Ints{4, 4});
  // Protection: A's sink (slot 0) and B's window (slot 3) are never evicted.
  Streams p;
  p.Add(Vec{4, 1, 3, 2}, {1, 0});
  p.Add(Vec{1, 1, 6, 2}, {0, 1});
  // Candidates: A 1 3 2 (sum 6: .167 .5 .333), B 1 1 6 (sum 8: .125 .125 .75).
  // Order: B.125 B.125 A.167 A.333 A.5 B.75; target 4 is beyond what they allow
  // (A >= 1, B >= 1: 1 + 1 pages), so both go to their protected token.
  REQUIRE(Kept(GlobalKept(p.views(), Ints{0, 0}, 2, 4)) == Ints{1, 1});
  REQUIRE(Kept(GlobalKept(p.views(), Ints{0, 0}, 2, 1)) == Ints{4, 2});
}

TEST_CASE("GlobalKept: a stream without mass is uniform", "[policy][budget]") {
  // Stream 0 all zeros: shares .25 each. Stream 1 shares .1 .2 .3 .4.
  // Order: 1.1 1.2 | 0.25 x4 (stream 0) | 1.3 1.4; page size 1.
  Streams s;
  s.Add(Vec{0, 0, 0, 0});
  s.Add(Vec{1, 2, 3, 4});
  REQUIRE(Kept(GlobalKept(s.views(), Ints{0, 0}, 1, 2)) == Ints{4, 2});
  REQUIRE(Kept(GlobalKept(s.views(), Ints{0, 0}, 1, 3)) == Ints{3, 2});
  REQUIRE(Kept(GlobalKept(s.views(), Ints{0, 0}, 1, 7)) == Ints{0, 1});
}

TEST_CASE("GlobalKept: matches a brute-force simulation", "[policy][budget]") {
  std::mt19937 rng(23);
  for (int iter = 0; iter < 300; ++iter) {
    const int num_streams = 1 + static_cast<int>(rng() % 10);
    const int distinct = iter % 2 == 0 ? 3 : 1000;
    const Streams s = RandomStreams(rng, num_streams, 80, false, distinct);
    const auto views = s.views();
    Ints floors(num_streams);
    for (auto& f : floors) f = static_cast<int32_t>(rng() % 30);
    const int32_t page_size = 1 + static_cast<int32_t>(rng() % 16);
    const int64_t target = static_cast<int64_t>(rng() % 30);
    INFO("iter " << iter << " page_size " << page_size << " target " << target);

    // Every candidate with its share; sort by (share, stream descending), then
    // evict in that order, skipping streams at their minimum.
    struct Item {
      double share;
      size_t stream;
    };
    std::vector<Item> items;
    Ints kept(num_streams), min_kept(num_streams);
    auto pages = [&](int64_t t) { return (t + page_size - 1) / page_size; };
    for (int h = 0; h < num_streams; ++h) {
      kept[h] = views[h].num_tokens();
      min_kept[h] = std::max(views[h].NumProtected(), std::min(floors[h], kept[h]));
      double sum = 0;
      int32_t n = 0;
      for (int32_t j = 0; j < views[h].num_tokens(); ++j) {
        if (!views[h].IsProtected(j)) sum += views[h].scores[j], ++n;
      }
      for (int32_t j = 0; j < views[h].num_tokens(); ++j) {
        if (views[h].IsProtected(j)) continue;
        items.push_back({sum > 0 ? views[h].scores[j] / sum : 1.0 / n, static_cast<size_t>(h)});
      }
    }
    std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
      return a.share < b.share || (a.share == b.share && a.stream > b.stream);
    });
    int64_t freed = 0;
    for (const Item& it : items) {
      if (freed >= target) break;
      if (kept[it.stream] == min_kept[it.stream]) continue;
      freed += pages(kept[it.stream]) - pages(kept[it.stream] - 1);
      --kept[it.stream];
    }
    const Ints got = Kept(GlobalKept(views, floors, page_size, target));
    REQUIRE(got == kept);
    int64_t got_freed = 0;
    for (int h = 0; h < num_streams; ++h) {
      REQUIRE(got[h] >= min_kept[h]);
      got_freed += pages(views[h].num_tokens()) - pages(got[h]);
    }
    // Either the target is met, or every stream is at its minimum.
    if (got_freed < target) REQUIRE(got == min_kept);
  }
}

TEST_CASE("GlobalKept: errors", "[policy][budget]") {
  const Streams s = GlobalExample();
  const auto v = s.views();
  REQUIRE_ERROR(GlobalKept(v, Ints{0}, 2, 1), StatusCode::kInvalidArgument,
                "2 streams but 1 floors");
  REQUIRE_ERROR(GlobalKept(v, Ints{0, 0}, 0, 1), StatusCode::kInvalidArgument,
                "page_size must be positive");
  REQUIRE_ERROR(GlobalKept(v, Ints{0, 0}, 2, -1), StatusCode::kInvalidArgument,
                "pages_to_free must be >= 0");
  REQUIRE_ERROR(GlobalKept(v, Ints{0, -1}, 2, 1), StatusCode::kInvalidArgument,
                "floors[1] is negative");
  for (const float bad : {-1.0f, kInf}) {
    Streams b;
    b.Add(Vec{1, bad, 2});
    REQUIRE_ERROR(GlobalKept(b.views(), Ints{0}, 2, 1), StatusCode::kInvalidArgument,
                  "finite and >= 0 (attention mass), slot 1");
  }
  Streams n;
  n.Add(Vec{1, kNaN, 2});
  REQUIRE_ERROR(GlobalKept(n.views(), Ints{0}, 2, 1), StatusCode::kInvalidArgument, "NaN");
}

}  // namespace
}  // namespace headpage::policy::testing
