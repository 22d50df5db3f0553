// SPDX-License-Identifier: Apache-2.0
#include "policy/select.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "tests/testing/status_matchers.h"

namespace headpage::policy {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<int32_t> Iota(int32_t n, int32_t first = 0) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

std::vector<int32_t> Keep(const StreamScores& s, int32_t kept) {
  std::vector<int32_t> keep;
  REQUIRE_OK(SelectKeepSet(s, kept, &keep));
  return keep;
}

// The definition, written the slow way: protected slots, then the unprotected
// ones ranked by (score descending, slot ascending), the first `take` of them.
std::vector<int32_t> BruteKeep(const StreamScores& s, int32_t kept) {
  std::vector<int32_t> keep, candidates;
  for (int32_t j = 0; j < s.num_tokens(); ++j) {
    if (s.IsProtected(j)) {
      keep.push_back(j);
    } else {
      candidates.push_back(j);
    }
  }
  std::sort(candidates.begin(), candidates.end(), [&](int32_t a, int32_t b) {
    return s.scores[a] > s.scores[b] || (s.scores[a] == s.scores[b] && a < b);
  });
  const size_t take = static_cast<size_t>(kept) - keep.size();
  keep.insert(keep.end(), candidates.begin(), candidates.begin() + take);
  std::sort(keep.begin(), keep.end());
  return keep;
}

// The top k of concatenated segments, by (value descending, segment, index).
std::vector<int64_t> BruteTopCounts(const std::vector<std::vector<float>>& segments, int64_t k) {
  struct Item {
    float v;
    size_t seg, idx;
  };
  std::vector<Item> all;
  for (size_t s = 0; s < segments.size(); ++s) {
    for (size_t i = 0; i < segments[s].size(); ++i) all.push_back({segments[s][i], s, i});
  }
  std::stable_sort(all.begin(), all.end(), [](const Item& a, const Item& b) { return a.v > b.v; });
  std::vector<int64_t> counts(segments.size(), 0);
  for (int64_t i = 0; i < std::min<int64_t>(k, all.size()); ++i) ++counts[all[i].seg];
  return counts;
}

TEST_CASE("SelectKeepSet: hand example keeps protected slots and the top scores", "[policy][budget]") {
  // slot:      0    1    2    3    4    5
  // score:   0.5  0.9  0.1  0.9  0.3  0.7
  // Slot 0 is a sink (position 0 < sinks 1), slot 5 the recent window (recent 1):
  // candidates are slots 1..4 with scores 0.9, 0.1, 0.9, 0.3.
  const std::vector<float> scores = {0.5f, 0.9f, 0.1f, 0.9f, 0.3f, 0.7f};
  const std::vector<int32_t> positions = Iota(6);
  const StreamScores s{scores, positions, {1, 1}};
  REQUIRE(s.NumProtected() == 2);
  // kept 2: only the protected slots.
  REQUIRE(Keep(s, 2) == std::vector<int32_t>{0, 5});
  // kept 3: one candidate; slots 1 and 3 tie at 0.9, the lower slot wins.
  REQUIRE(Keep(s, 3) == std::vector<int32_t>{0, 1, 5});
  // kept 4: both 0.9s.
  REQUIRE(Keep(s, 4) == std::vector<int32_t>{0, 1, 3, 5});
  // kept 5: then 0.3 (slot 4) before 0.1 (slot 2).
  REQUIRE(Keep(s, 5) == std::vector<int32_t>{0, 1, 3, 4, 5});
  REQUIRE(Keep(s, 6) == Iota(6));
}

TEST_CASE("SelectKeepSet: sinks are positions, not slots", "[policy][budget]") {
  // After compaction positions have gaps: sinks 4 protects positions 0..3,
  // here the slots holding positions 0 and 2.
  const std::vector<float> scores = {0.0f, 0.0f, 5.0f, 1.0f, 2.0f};
  const std::vector<int32_t> positions = {0, 2, 7, 9, 12};
  const StreamScores s{scores, positions, {4, 0}};
  REQUIRE(s.NumProtected() == 2);
  REQUIRE(Keep(s, 3) == std::vector<int32_t>{0, 1, 2});
  REQUIRE(Keep(s, 4) == std::vector<int32_t>{0, 1, 2, 4});
}

TEST_CASE("SelectKeepSet: replaces the output, handles empty and all-protected streams",
          "[policy][budget]") {
  std::vector<int32_t> keep = {42, 43};
  const StreamScores empty{};
  REQUIRE_OK(SelectKeepSet(empty, 0, &keep));
  REQUIRE(keep.empty());

  // recent longer than the stream: everything is protected.
  const std::vector<float> scores = {1.0f, 2.0f, 3.0f};
  const std::vector<int32_t> positions = Iota(3);
  const StreamScores short_stream{scores, positions, {4, 32}};
  REQUIRE(short_stream.NumProtected() == 3);
  keep = {7};
  REQUIRE_OK(SelectKeepSet(short_stream, 3, &keep));
  REQUIRE(keep == Iota(3));
  REQUIRE_ERROR(SelectKeepSet(short_stream, 2, &keep), absl::StatusCode::kInvalidArgument,
                "outside");
}

TEST_CASE("SelectKeepSet: -0 and +0 tie, infinities rank at the ends", "[policy][budget]") {
  const std::vector<float> scores = {0.0f, -kInf, -0.0f, kInf, 0.0f, -1.0f};
  const std::vector<int32_t> positions = Iota(6);
  const StreamScores s{scores, positions, {}};
  REQUIRE(Keep(s, 1) == std::vector<int32_t>{3});
  // The three zeros tie: slots 0, 2, 4 in that order.
  REQUIRE(Keep(s, 2) == std::vector<int32_t>{0, 3});
  REQUIRE(Keep(s, 3) == std::vector<int32_t>{0, 2, 3});
  REQUIRE(Keep(s, 4) == std::vector<int32_t>{0, 2, 3, 4});
  REQUIRE(Keep(s, 5) == std::vector<int32_t>{0, 2, 3, 4, 5});
}

TEST_CASE("SelectKeepSet: bad input is an error and leaves the output alone", "[policy][budget]") {
  const std::vector<float> scores = {1.0f, 2.0f, 3.0f, 4.0f};
  const std::vector<int32_t> positions = Iota(4);
  std::vector<int32_t> keep = {9};
  const StreamScores s{scores, positions, {1, 1}};
  REQUIRE_ERROR(SelectKeepSet(s, 1, &keep), absl::StatusCode::kInvalidArgument, "protected 2");
  REQUIRE_ERROR(SelectKeepSet(s, 5, &keep), absl::StatusCode::kInvalidArgument, "num_tokens 4");
  REQUIRE_ERROR(SelectKeepSet(s, 2, nullptr), absl::StatusCode::kInvalidArgument, "null");

  const std::vector<int32_t> three = Iota(3);
  REQUIRE_ERROR(SelectKeepSet({scores, three, {}}, 2, &keep), absl::StatusCode::kInvalidArgument,
                "4 scores but 3 positions");
  const std::vector<int32_t> unsorted = {0, 1, 1, 2};
  REQUIRE_ERROR(SelectKeepSet({scores, unsorted, {}}, 2, &keep),
                absl::StatusCode::kInvalidArgument, "not strictly ascending at slot 2");
  const std::vector<float> nan = {1.0f, std::nanf(""), 3.0f, 4.0f};
  REQUIRE_ERROR(SelectKeepSet({nan, positions, {}}, 2, &keep), absl::StatusCode::kInvalidArgument,
                "NaN score at slot 1");
  REQUIRE(keep == std::vector<int32_t>{9});
}

TEST_CASE("SelectKeepSet: matches the definition on random streams with many ties",
          "[policy][budget]") {
  std::mt19937 rng(20240611);
  for (int iter = 0; iter < 400; ++iter) {
    INFO("iter " << iter);
    // Lengths from tiny to past the sampled-select threshold (64 * 512).
    const int32_t n = iter % 20 == 0 ? 40000 + static_cast<int32_t>(rng() % 2000)
                                     : static_cast<int32_t>(rng() % 300);
    std::vector<float> scores(n);
    std::vector<int32_t> positions(n);
    const int distinct = 1 + static_cast<int>(rng() % (iter % 3 == 0 ? 4 : 100000));
    int32_t pos = static_cast<int32_t>(rng() % 3);
    for (int32_t j = 0; j < n; ++j) {
      scores[j] = static_cast<float>(rng() % distinct) / 7.0f - 3.0f;
      positions[j] = pos;
      pos += 1 + static_cast<int32_t>(rng() % 3);
    }
    const Protection protection{static_cast<int32_t>(rng() % 6), static_cast<int32_t>(rng() % 40)};
    const StreamScores s{scores, positions, protection};
    const int32_t p = s.NumProtected();
    for (int rep = 0; rep < 4; ++rep) {
      const int32_t kept = p + static_cast<int32_t>(rng() % (n - p + 1));
      INFO("n " << n << " kept " << kept << " protected " << p);
      REQUIRE(Keep(s, kept) == BruteKeep(s, kept));
    }
  }
}

TEST_CASE("SelectTopK: per-segment counts follow (value, segment, index) order", "[policy][budget]") {
  // Segments {3, 1, 3} and {3, 2}: the top 2 are the 3s of segment 0 (earlier
  // segment first), the top 3 add segment 1's 3.
  const std::vector<float> a = {3.0f, 1.0f, 3.0f}, b = {3.0f, 2.0f};
  const std::vector<absl::Span<const float>> segs = {a, b};
  internal::TopK top = internal::SelectTopK(segs, 2);
  REQUIRE(top.counts == std::vector<int64_t>{2, 0});
  REQUIRE(top.threshold == 3.0f);
  REQUIRE(top.ties_taken == 2);
  top = internal::SelectTopK(segs, 3);
  REQUIRE(top.counts == std::vector<int64_t>{2, 1});
  top = internal::SelectTopK(segs, 4);
  REQUIRE(top.counts == std::vector<int64_t>{2, 2});
  REQUIRE(top.threshold == 2.0f);
  REQUIRE(top.ties_taken == 1);
  top = internal::SelectTopK(segs, 0);
  REQUIRE(top.counts == std::vector<int64_t>{0, 0});
  top = internal::SelectTopK(segs, 99);
  REQUIRE(top.counts == std::vector<int64_t>{3, 2});
}

TEST_CASE("SelectTopK: exact on random, tied, and sample-defeating inputs", "[policy][budget]") {
  std::mt19937 rng(7);
  for (int iter = 0; iter < 60; ++iter) {
    INFO("iter " << iter);
    const int num_segments = 1 + static_cast<int>(rng() % 9);
    std::vector<std::vector<float>> segments(num_segments);
    const int kind = iter % 5;
    for (auto& seg : segments) {
      seg.resize(rng() % (kind >= 3 ? 12000 : 9000));
      for (size_t j = 0; j < seg.size(); ++j) {
        switch (kind) {
          case 0:  // continuous
            seg[j] = std::ldexp(static_cast<float>(rng() % 1000000), -20);
            break;
          case 1:  // few distinct values: huge tie groups
            seg[j] = static_cast<float>(rng() % 3);
            break;
          case 2:  // spanning many octaves, both signs
            seg[j] = std::ldexp(static_cast<float>(rng() % 1000) - 500.0f,
                                static_cast<int>(rng() % 60) - 30);
            break;
          case 3:  // every 64th value large, the rest small: a strided sample
                   // can see only the large ones, and the radix path must answer
            seg[j] = j % 64 == 32 ? 1000.0f + static_cast<float>(rng() % 5)
                                  : static_cast<float>(rng() % 1000) / 1000.0f;
            break;
          default: {  // the sample sees zeros, the rest holds the extremes: the
                      // radix path's outermost buckets
            constexpr float kExtremes[] = {kInf, -kInf, 3e38f, -3e38f, 1e-44f, -1e-44f, 1.0f};
            seg[j] = j % 64 == 32 ? 0.0f : kExtremes[rng() % 7];
            break;
          }
        }
      }
    }
    std::vector<absl::Span<const float>> spans(segments.begin(), segments.end());
    int64_t total = 0;
    for (const auto& seg : segments) total += seg.size();
    for (int rep = 0; rep < 5; ++rep) {
      const int64_t k = total == 0 ? 0 : static_cast<int64_t>(rng() % (total + 1));
      INFO("total " << total << " k " << k);
      const internal::TopK top = internal::SelectTopK(spans, k);
      REQUIRE(top.counts == BruteTopCounts(segments, k));
      // The threshold description agrees with the counts.
      int64_t above = 0;
      for (const auto& seg : segments) {
        for (const float v : seg) above += v > top.threshold;
      }
      REQUIRE(above + top.ties_taken == k);
    }
  }
}

TEST_CASE("SelectTopK: exact when a strided sample sees only a periodic subset",
          "[policy][budget]") {
  // 40000 values sample every 64th (from index 32): these inputs put one kind
  // of value exactly there, so the sample's bracket misses and the radix path
  // answers, including its outermost buckets (infinities, extremes, denormals).
  std::mt19937 rng(29);
  for (int variant = 0; variant < 2; ++variant) {
    std::vector<float> values(40000);
    for (size_t j = 0; j < values.size(); ++j) {
      if (variant == 0) {
        values[j] = j % 64 == 32 ? 1000.0f : static_cast<float>(rng() % 1000) / 1000.0f;
      } else {
        constexpr float kExtremes[] = {kInf, -kInf, 3e38f, -3e38f, 1e-44f, -1e-44f, 1.0f};
        values[j] = j % 64 == 32 ? 0.0f : kExtremes[rng() % 7];
      }
    }
    const std::vector<std::vector<float>> segments = {values};
    const std::vector<absl::Span<const float>> spans = {values};
    for (const int64_t k : {1, 100, 624, 625, 626, 5000, 20000, 39999}) {
      INFO("variant " << variant << " k " << k);
      REQUIRE(internal::SelectTopK(spans, k).counts == BruteTopCounts(segments, k));
    }
  }
}

}  // namespace
}  // namespace headpage::policy
