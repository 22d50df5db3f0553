// SPDX-License-Identifier: Apache-2.0
// DBudgetKept: the attention-norm cut, by hand and against its definition.
#include "policy/budget.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "policy/select.h"
#include "tests/policy/budget_test_util.h"
#include "tests/testing/status_matchers.h"

namespace headpage::policy::testing {
namespace {

using absl::StatusCode;

// kept(k) and the cut, straight from the definition, in double: the least
// important candidates are ordered by (score ascending, slot descending) --
// the reverse of SelectKeepSet's ranking -- or by slot with by_position.
struct BruteCut {
  std::vector<double> ratio;  // ratio[k], k = 0..n
  int32_t cut;
};
BruteCut BruteDBudget(const std::vector<StreamScores>& streams,
                      const std::vector<Vec>& attention, int32_t group_size, double threshold,
                      bool by_position) {
  std::vector<Ints> order(streams.size());
  for (size_t h = 0; h < streams.size(); ++h) {
    for (int32_t j = 0; j < streams[h].num_tokens(); ++j) {
      if (!streams[h].IsProtected(j)) order[h].push_back(j);
    }
    if (!by_position) {
      const auto& sc = streams[h].scores;
      std::sort(order[h].begin(), order[h].end(), [&](int32_t a, int32_t b) {
        return sc[a] < sc[b] || (sc[a] == sc[b] && a > b);
      });
    }
  }
  const int32_t n = static_cast<int32_t>(order[0].size());
  auto kept_norm = [&](int32_t k) {
    double sum = 0;
    for (size_t h = 0; h < streams.size(); ++h) {
      for (int32_t g = 0; g < group_size; ++g) {
        double sq = 0;
        for (int32_t i = k; i < n; ++i) {
          const double a = attention[h][g * streams[h].num_tokens() + order[h][i]];
          sq += a * a;
        }
        sum += std::sqrt(sq);
      }
    }
    return sum / (streams.size() * group_size);
  };
  BruteCut r;
  const double base = kept_norm(0);
  r.cut = 0;
  for (int32_t k = 0; k <= n; ++k) {
    r.ratio.push_back((base - kept_norm(k)) / base);
    if (threshold > 0 && r.ratio.back() <= threshold) r.cut = k;
  }
  return r;
}

TEST_CASE("DBudgetKept: hand example by score", "[policy][budget]") {
  // One stream, one q head, four candidates. Scores 0.4 0.1 0.3 0.2 order the
  // candidates least important first: slots 1, 3, 2, 0. Attention
  // a = (0.6, 0.1, 0.2, 0.1): squares in that order .01 .01 .04 .36, so
  //   kept(k)^2 = .42 .41 .40 .36 0   (k = 0..4)
  //   kept(k)   = .648074 .640312 .632456 .6 0
  //   ratio(k)  = 0 .011977 .024100 .074180 1
  Streams s;
  s.Add(Vec{0.4f, 0.1f, 0.3f, 0.2f});
  const Vec a = {0.6f, 0.1f, 0.2f, 0.1f};
  const std::vector<absl::Span<const float>> att = {a};
  const auto v = s.views();
  REQUIRE(Kept(DBudgetKept(v, att, 1, 0.01)) == Ints{4});   // k* = 0
  REQUIRE(Kept(DBudgetKept(v, att, 1, 0.012)) == Ints{3});  // k* = 1
  REQUIRE(Kept(DBudgetKept(v, att, 1, 0.05)) == Ints{2});   // k* = 2
  REQUIRE(Kept(DBudgetKept(v, att, 1, 0.08)) == Ints{1});   // k* = 3
  REQUIRE(Kept(DBudgetKept(v, att, 1, 1.0)) == Ints{0});    // ratio(4) = 1 <= 1
  REQUIRE(Kept(DBudgetKept(v, att, 1, 0.0)) == Ints{4});    // T = 0 keeps all
  // The tokens SelectKeepSet then keeps are the ones measured: at T = 0.05 the
  // two highest scores, slots 0 (0.4) and 2 (0.3).
  std::vector<int32_t> keep;
  REQUIRE_OK(SelectKeepSet(v[0], 2, &keep));
  REQUIRE(keep == Ints{0, 2});
}

TEST_CASE("DBudgetKept: hand example by position, sinks and window protected",
          "[policy][budget]") {
  // Six tokens: slot 0 a sink (sinks 1), slot 5 the window (recent 1); the
  // candidates 1..4 are cut oldest first. Their attention 0.05 0.05 0.3 0.6:
  //   kept(k)^2 = .455 .4525 .45 .36 0
  //   kept(k)   = .674537 .672681 .670820 .6 0
  //   ratio(k)  = 0 .002751 .005510 .110500 1
  // T = 0.05: k* = 2, kept = 6 - 2 = 4 (sink, slots 3 and 4, window). The sink's
  // and window's attention (0.5, 0.9 here) is outside the metric.
  Streams s;
  s.Add(Vec{0, 1, 2, 3, 4, 5}, {1, 1});  // StreamingLLM scores: the position
  const Vec a = {0.5f, 0.05f, 0.05f, 0.3f, 0.6f, 0.9f};
  const std::vector<absl::Span<const float>> att = {a};
  const auto v = s.views();
  REQUIRE(Kept(DBudgetKept(v, att, 1, 0.05, true)) == Ints{4});
  REQUIRE(Kept(DBudgetKept(v, att, 1, 0.005, true)) == Ints{5});
  REQUIRE(Kept(DBudgetKept(v, att, 1, 0.2, true)) == Ints{3});
  std::vector<int32_t> keep;
  REQUIRE_OK(SelectKeepSet(v[0], 4, &keep));
  REQUIRE(keep == Ints{0, 3, 4, 5});
}

TEST_CASE("DBudgetKept: one cut for the layer, averaged over every q head", "[policy][budget]") {
  // Two streams, group 2 (four q heads), two candidates each (slot 0 less
  // important than slot 1 in both). Dropping slot 0 keeps, per q head:
  //   stream 0: heads (0.6, 0.8) -> sqrt(.64)/1 = .8 of norm 1; (1, 0) -> 0 of 1
  //   stream 1: (0, 1) -> 1 of 1;                               (0, 1) -> 1 of 1
  // base = mean(1, 1, 1, 1) = 1, kept(1) = mean(.8, 0, 1, 1) = .7: ratio .3;
  // kept(2) = 0: ratio 1.
  Streams s;
  s.Add(Vec{0.0f, 1.0f});
  s.Add(Vec{0.0f, 1.0f});
  const Vec a0 = {0.6f, 0.8f, 1.0f, 0.0f};  // [g][token]
  const Vec a1 = {0.0f, 1.0f, 0.0f, 1.0f};
  const std::vector<absl::Span<const float>> att = {a0, a1};
  REQUIRE(Kept(DBudgetKept(s.views(), att, 2, 0.29)) == Ints{2, 2});
  REQUIRE(Kept(DBudgetKept(s.views(), att, 2, 0.31)) == Ints{1, 1});
  REQUIRE(Kept(DBudgetKept(s.views(), att, 2, 1.0)) == Ints{0, 0});
}

TEST_CASE("DBudgetKept: T = 0 and zero attention keep everything", "[policy][budget]") {
  Streams s;
  s.Add(Vec{3, 2, 1, 0});
  // The two least important candidates carry exactly zero attention: dropping
  // them changes nothing, yet T = 0 still keeps all.
  const Vec a = {0.5f, 0.5f, 0.0f, 0.0f};
  std::vector<absl::Span<const float>> att = {a};
  REQUIRE(Kept(DBudgetKept(s.views(), att, 1, 0.0)) == Ints{4});
  REQUIRE(Kept(DBudgetKept(s.views(), att, 1, 1e-9)) == Ints{2});
  // No attention on any candidate: the rule is 0 / 0, everything is kept.
  const Vec zero(4, 0.0f);
  att = {zero};
  REQUIRE(Kept(DBudgetKept(s.views(), att, 1, 0.5)) == Ints{4});
  // No candidates at all.
  Streams p;
  p.Add(Vec{1, 2}, {0, 5});
  const Vec two = {0.5f, 0.5f};
  att = {two};
  REQUIRE(Kept(DBudgetKept(p.views(), att, 1, 0.5)) == Ints{2});
  REQUIRE(Kept(DBudgetKept({}, {}, 1, 0.5)).empty());
}

TEST_CASE("DBudgetKept: the cut is the largest k satisfying the rule (brute force)",
          "[policy][budget]") {
  std::mt19937 rng(17);
  int exact = 0;
  for (int iter = 0; iter < 400; ++iter) {
    const int num_streams = 1 + static_cast<int>(rng() % 4);
    const int32_t group = 1 + static_cast<int32_t>(rng() % 4);
    const int32_t candidates = static_cast<int32_t>(rng() % 60);
    const bool by_position = iter % 3 == 0;
    const int distinct = iter % 2 == 0 ? 4 : 1000;
    Streams s;
    std::vector<Vec> attention;
    for (int h = 0; h < num_streams; ++h) {
      // Different protection per stream, equally many candidates.
      const int32_t sinks = static_cast<int32_t>(rng() % 4);
      const int32_t recent = static_cast<int32_t>(rng() % 6);
      const int32_t n = sinks + candidates + recent;
      Vec scores(n);
      for (auto& v : scores) v = static_cast<float>(rng() % distinct);
      s.Add(std::move(scores), {sinks, recent});
      Vec a(static_cast<size_t>(group) * n);
      // Softmax-like rows, some heads peaked.
      for (int32_t g = 0; g < group; ++g) {
        double sum = 0;
        const double temp = 0.2 + (rng() % 50) / 10.0;
        for (int32_t j = 0; j < n; ++j) {
          a[g * n + j] = static_cast<float>(std::exp(temp * (rng() % 1000) / 1000.0 * 5));
          sum += a[g * n + j];
        }
        for (int32_t j = 0; j < n; ++j) a[g * n + j] = static_cast<float>(a[g * n + j] / sum);
      }
      attention.push_back(std::move(a));
    }
    const double threshold = static_cast<double>(rng() % 1000) / 2000.0;
    const auto views = s.views();
    const std::vector<absl::Span<const float>> att(attention.begin(), attention.end());
    INFO("iter " << iter << " T " << threshold << " n " << candidates << " G " << group);
    const Ints kept = Kept(DBudgetKept(views, att, group, threshold, by_position));
    if (candidates == 0 || threshold == 0) {
      for (size_t h = 0; h < views.size(); ++h) REQUIRE(kept[h] == views[h].num_tokens());
      continue;
    }
    const BruteCut brute = BruteDBudget(views, attention, group, threshold, by_position);
    const int32_t cut = views[0].num_tokens() - kept[0];
    for (size_t h = 0; h < views.size(); ++h) REQUIRE(views[h].num_tokens() - kept[h] == cut);
    // The ratio is monotone, so "largest k with ratio <= T" is a boundary: the
    // cut satisfies the rule and the next k does not. Sums taken in another
    // order differ in the last bits, so a ratio within 1e-12 of T may fall
    // either way; everywhere else the two must agree exactly.
    constexpr double kEps = 1e-12;
    REQUIRE(brute.ratio[cut] <= threshold + kEps);
    if (cut < candidates) REQUIRE(brute.ratio[cut + 1] > threshold - kEps);
    if (std::abs(brute.ratio[brute.cut] - threshold) > kEps &&
        (brute.cut == candidates || std::abs(brute.ratio[brute.cut + 1] - threshold) > kEps)) {
      REQUIRE(cut == brute.cut);
      ++exact;
    }
  }
  REQUIRE(exact > 300);
}

TEST_CASE("DBudgetKept: errors", "[policy][budget]") {
  Streams s;
  s.Add(Vec{1, 2, 3});
  s.Add(Vec{1, 2, 3});
  const Vec a(3, 0.3f), a2(6, 0.3f);
  const std::vector<absl::Span<const float>> att = {a, a};
  const auto v = s.views();
  REQUIRE_OK(DBudgetKept(v, att, 1, 0.05));
  REQUIRE_ERROR(DBudgetKept(v, att, 1, -0.01), StatusCode::kInvalidArgument,
                "threshold must be >= 0");
  REQUIRE_ERROR(DBudgetKept(v, att, 1, std::nan("")), StatusCode::kInvalidArgument, "threshold");
  REQUIRE_ERROR(DBudgetKept(v, att, 0, 0.05), StatusCode::kInvalidArgument, "group_size");
  REQUIRE_ERROR(DBudgetKept(v, {a}, 1, 0.05), StatusCode::kInvalidArgument,
                "2 streams but 1 attention spans");
  REQUIRE_ERROR(DBudgetKept(v, {a, a2}, 1, 0.05), StatusCode::kInvalidArgument,
                "attention[1] has 6 values, expected group_size 1 x num_tokens 3");
  const Vec inf = {0.1f, kInf, 0.1f};
  REQUIRE_ERROR(DBudgetKept(v, {a, inf}, 1, 0.05), StatusCode::kInvalidArgument, "non-finite");
  Streams u;
  u.Add(Vec{1, 2, 3});
  u.Add(Vec{1, 2, 3}, {0, 1});
  REQUIRE_ERROR(DBudgetKept(u.views(), att, 1, 0.05), StatusCode::kInvalidArgument,
                "equally many candidates; stream 0 has 3, stream 1 has 2");
}

}  // namespace
}  // namespace headpage::policy::testing
