// SPDX-License-Identifier: Apache-2.0
// DBudgetFrobeniusKept: the paper's reduced-attention-matrix cut, by hand and
// against its definition; QueryAttentionRows, its input, against dense softmax.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

#include "policy/budget.h"
#include "policy/scores.h"
#include "policy/select.h"
#include "tests/policy/budget_test_util.h"
#include "tests/testing/status_matchers.h"

namespace headpage::policy::testing {
namespace {

std::vector<absl::Span<const float>> Spans(const std::vector<Vec>& v) {
  return std::vector<absl::Span<const float>>(v.begin(), v.end());
}

TEST_CASE("DBudgetFrobeniusKept: hand example", "[policy][budget]") {
  // Four tokens at positions 0..3, the last one the window (recent 1): the
  // candidates are slots 0, 1, 2. Scores 0.1 0.3 0.2 order them least
  // important first: slot 0, slot 2, slot 1. The observed queries are at
  // positions 1, 2, 3; the one at 3 is the window's, so the rows are those of
  // slots 1 and 2, over the candidate columns 0..2:
  //   row 1: 0.5 0.5 0        row 2: 0.2 0.3 0.5     (||A||_F^2 = 0.88)
  // Removing slot 0 drops its column: 0.25 + 0.04 = 0.29; then slot 2 drops
  // its row over the columns still in (0.09 + 0.25) and its column over the
  // rows still in (0): 0.63. sqrt: 0.538516, 0.793725 against base 0.938083,
  // ratios 0.574 and 0.846. The search stops at n - 1 = 2: slot 1 stays.
  Streams s;
  s.Add(Vec{0.1f, 0.3f, 0.2f, 0.9f}, {0, 1});
  const Vec a = {0.5f, 0.5f, 0.0f, 0.0f,   // query at position 1
                 0.2f, 0.3f, 0.5f, 0.0f,   // position 2
                 0.1f, 0.1f, 0.1f, 0.7f};  // position 3: the window's row, outside A
  const std::vector<Vec> att = {a};
  const Ints rows = {1, 2, 3};
  const auto v = s.views();
  REQUIRE(Kept(DBudgetFrobeniusKept(v, Spans(att), rows, 1, 0.5)) == Ints{4});
  REQUIRE(Kept(DBudgetFrobeniusKept(v, Spans(att), rows, 1, 0.6)) == Ints{3});
  REQUIRE(Kept(DBudgetFrobeniusKept(v, Spans(att), rows, 1, 0.9)) == Ints{2});
  REQUIRE(Kept(DBudgetFrobeniusKept(v, Spans(att), rows, 1, 1.0)) == Ints{2});  // never below 1 candidate
  REQUIRE(Kept(DBudgetFrobeniusKept(v, Spans(att), rows, 1, 0.0)) == Ints{4});  // T = 0 keeps all
  // SelectKeepSet keeps the tokens the cut measured: at T = 0.9, slot 1 and the window.
  std::vector<int32_t> keep;
  REQUIRE_OK(SelectKeepSet(v[0], 2, &keep));
  REQUIRE(keep == Ints{1, 3});
  // Without the row of position 2 (a trace that did not store it), only row 1
  // counts: base 0.707107, removing slot 0 costs 0.5 (ratio 0.707), slot 2 adds 0.
  const Vec row1 = {0.5f, 0.5f, 0.0f, 0.0f};
  const std::vector<Vec> att1 = {row1};
  REQUIRE(Kept(DBudgetFrobeniusKept(v, Spans(att1), Ints{1}, 1, 0.7)) == Ints{4});
  REQUIRE(Kept(DBudgetFrobeniusKept(v, Spans(att1), Ints{1}, 1, 0.71)) == Ints{2});
}

// The cut straight from its definition, in double: for every k, the squares of
// the entries in a removed row or column, summed afresh.
int32_t BruteCut(const std::vector<StreamScores>& streams, const std::vector<Vec>& attention,
                 const Ints& rows, int32_t group, double threshold) {
  std::vector<Ints> order(streams.size());
  for (size_t h = 0; h < streams.size(); ++h) {
    for (int32_t j = 0; j < streams[h].num_tokens(); ++j) {
      if (!streams[h].IsProtected(j)) order[h].push_back(j);
    }
    const auto& sc = streams[h].scores;
    std::sort(order[h].begin(), order[h].end(), [&](int32_t a, int32_t b) {
      return sc[a] < sc[b] || (sc[a] == sc[b] && a > b);
    });
  }
  const auto n = static_cast<int32_t>(order[0].size());
  auto norm_sum = [&](int32_t k, bool whole) {
    double sum = 0;
    for (size_t h = 0; h < streams.size(); ++h) {
      const int32_t len = streams[h].num_tokens();
      const std::set<int32_t> candidates(order[h].begin(), order[h].end());
      const std::set<int32_t> gone(order[h].begin(), order[h].begin() + k);
      for (int32_t g = 0; g < group; ++g) {
        double sq = 0;
        for (size_t r = 0; r < rows.size(); ++r) {
          const auto it = std::find(streams[h].positions.begin(), streams[h].positions.end(), rows[r]);
          if (it == streams[h].positions.end()) continue;
          const auto i = static_cast<int32_t>(it - streams[h].positions.begin());
          if (!candidates.count(i)) continue;
          for (const int32_t j : candidates) {
            if (whole || gone.count(i) || gone.count(j)) {
              const double x = attention[h][(g * rows.size() + r) * len + j];
              sq += x * x;
            }
          }
        }
        sum += std::sqrt(sq);
      }
    }
    return sum;
  };
  const double base = norm_sum(0, true);
  if (threshold == 0 || n <= 1 || !(base > 0)) return 0;
  int32_t cut = 0;
  for (int32_t k = 1; k < n; ++k) {
    if (norm_sum(k, false) <= threshold * base) cut = k;
  }
  return cut;
}

TEST_CASE("DBudgetFrobeniusKept: equals its definition on random layers", "[policy][budget]") {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    CAPTURE(trial);
    const int32_t len = 2 + static_cast<int32_t>(rng() % 14);
    const int32_t group = 1 + static_cast<int32_t>(rng() % 3);
    const int num_streams = 1 + static_cast<int>(rng() % 3);
    const Protection protection{static_cast<int32_t>(rng() % 2), static_cast<int32_t>(rng() % 3)};
    Streams s;
    for (int h = 0; h < num_streams; ++h) {
      Vec scores(len);
      for (auto& x : scores) x = static_cast<float>(rng() % 5) / 5.0f;  // ties
      s.Add(std::move(scores), protection);
    }
    // Observed queries at a random subset of positions, ascending.
    Ints rows;
    for (int32_t p = 0; p < len; ++p) {
      if (rng() % 2) rows.push_back(p);
    }
    std::vector<Vec> attention(num_streams);
    for (auto& a : attention) {
      a.resize(static_cast<size_t>(group) * rows.size() * len);
      for (auto& x : a) x = static_cast<float>(rng() % 100) / 100.0f;
    }
    // Not 1.0: the whole candidate matrix removed equals base up to the order of
    // the sums, and the two computations may round it either way.
    const double threshold = std::vector<double>{0.0, 0.05, 0.2, 0.5, 0.9}[rng() % 5];
    const auto views = s.views();
    const auto kept = DBudgetFrobeniusKept(views, Spans(attention), rows, group, threshold);
    REQUIRE_OK(kept);
    const int32_t cut = BruteCut(views, attention, rows, group, threshold);
    for (int h = 0; h < num_streams; ++h) REQUIRE((*kept)[h] == len - cut);
  }
}

TEST_CASE("DBudgetFrobeniusKept: bad inputs are refused", "[policy][budget]") {
  Streams s;
  s.Add(Vec{0.1f, 0.2f, 0.3f});
  const Vec a(3, 0.1f);
  const std::vector<Vec> att = {a};
  const auto v = s.views();
  REQUIRE_ERROR(DBudgetFrobeniusKept(v, Spans(att), Ints{2}, 0, 0.01),
                absl::StatusCode::kInvalidArgument, "group_size must be >= 1");
  REQUIRE_ERROR(DBudgetFrobeniusKept(v, Spans(att), Ints{2}, 1, -1.0),
                absl::StatusCode::kInvalidArgument, "threshold must be >= 0");
  REQUIRE_ERROR(DBudgetFrobeniusKept(v, Spans(att), Ints{1, 2}, 1, 0.01),
                absl::StatusCode::kInvalidArgument, "expected group_size 1 x 2 rows x num_tokens 3");
  const Vec two_rows(6, 0.1f);
  REQUIRE_ERROR(DBudgetFrobeniusKept(v, Spans({two_rows}), Ints{1, 1}, 1, 0.01),
                absl::StatusCode::kInvalidArgument, "row positions must strictly ascend");
  const Vec nan_row = {0.1f, kNaN, 0.2f};
  REQUIRE_ERROR(DBudgetFrobeniusKept(v, Spans({nan_row}), Ints{2}, 1, 0.01),
                absl::StatusCode::kInvalidArgument, "non-finite");
}

TEST_CASE("DBudgetFrobenius: stream by stream, a bad stream adds nothing", "[policy][budget]") {
  // The hand example's stream, added once; then a stream with one candidate
  // fewer is refused and the cut stays the one stream's.
  Streams s;
  s.Add(Vec{0.1f, 0.3f, 0.2f, 0.9f}, {0, 1});
  s.Add(Vec{0.1f, 0.3f, 0.2f, 0.9f}, {0, 2});
  const Vec a = {0.5f, 0.5f, 0.0f, 0.0f, 0.2f, 0.3f, 0.5f, 0.0f, 0.1f, 0.1f, 0.1f, 0.7f};
  const Ints rows = {1, 2, 3};
  auto sums = DBudgetFrobenius::Create(rows, 1, 0.9);
  REQUIRE_OK(sums);
  REQUIRE(sums->Cut() == 0);  // nothing added: nothing cut
  REQUIRE_OK(sums->Add(s.views()[0], a));
  REQUIRE(sums->Cut() == 2);
  REQUIRE_ERROR(sums->Add(s.views()[1], a), absl::StatusCode::kInvalidArgument,
                "equally many candidates; stream 0 has 3, stream 1 has 2");
  REQUIRE(sums->Cut() == 2);
  REQUIRE_ERROR(sums->Add(s.views()[0], Vec(5, 0.1f)), absl::StatusCode::kInvalidArgument,
                "expected group_size 1 x 3 rows x num_tokens 4");
  REQUIRE_ERROR(DBudgetFrobenius::Create(Ints{2, 1}, 1, 0.01).status(),
                absl::StatusCode::kInvalidArgument, "strictly ascend");
}

TEST_CASE("QueryAttentionRows: causal softmax rows, zero where a query cannot see", "[policy]") {
  // Two keys at positions 0 and 1, d = 2; queries at positions 0 and 1, group 2.
  const Vec keys = {1.0f, 0.0f, 0.0f, 1.0f};
  const Ints key_positions = {0, 1};
  const Vec queries = {2.0f, 0.0f, 0.0f, 2.0f,   // q head 0: rows at positions 0, 1
                       1.0f, 1.0f, 0.0f, 0.0f};  // q head 1
  const Ints query_positions = {0, 1};
  StreamKeys k{keys.data(), key_positions.data(), 2, 2, DType::kF32};
  GroupQueries q{queries.data(), query_positions.data(), 2, 2, 2, DType::kF32};
  Vec rows(2 * 2 * 2, -1.0f);
  REQUIRE_OK(QueryAttentionRows(k, q, absl::MakeSpan(rows)));
  const double e = std::exp(2.0 / std::sqrt(2.0));
  // Position 0 sees key 0 only; position 1 sees both: logits (0, 2/sqrt 2) for
  // head 0, (0, 0) for head 1's zero query.
  const std::vector<double> want = {1, 0, 1 / (1 + e), e / (1 + e), 1, 0, 0.5, 0.5};
  for (size_t i = 0; i < rows.size(); ++i) REQUIRE(rows[i] == Approx(want[i]).margin(1e-6));
  REQUIRE_ERROR(QueryAttentionRows(k, q, absl::MakeSpan(rows).subspan(1)),
                absl::StatusCode::kInvalidArgument, "rows");
}

}  // namespace
}  // namespace headpage::policy::testing
