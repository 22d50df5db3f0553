// SPDX-License-Identifier: Apache-2.0
#include "policy/budget.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "policy/select.h"
#include "tests/testing/status_matchers.h"

namespace headpage::policy {
namespace {

using absl::StatusCode;
using Vec = std::vector<float>;
using Ints = std::vector<int32_t>;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// Owns the arrays behind a set of StreamScores (positions 0..n-1 unless given).
class Streams {
 public:
  void Add(Vec scores, Protection protection = {}) {
    Ints positions(scores.size());
    std::iota(positions.begin(), positions.end(), 0);
    Add(std::move(scores), std::move(positions), protection);
  }
  void Add(Vec scores, Ints positions, Protection protection) {
    scores_.push_back(std::move(scores));
    positions_.push_back(std::move(positions));
    protections_.push_back(protection);
  }
  std::vector<StreamScores> views() const {
    std::vector<StreamScores> v;
    for (size_t i = 0; i < scores_.size(); ++i) v.push_back({scores_[i], positions_[i], protections_[i]});
    return v;
  }
  const Vec& scores(size_t i) const { return scores_[i]; }

 private:
  std::vector<Vec> scores_;
  std::vector<Ints> positions_;
  std::vector<Protection> protections_;
};

Ints Kept(const absl::StatusOr<Ints>& r) {
  REQUIRE_OK(r);
  return *r;
}

int64_t Sum(const Ints& v) { return std::accumulate(v.begin(), v.end(), int64_t{0}); }

// ---------------------------------------------------------------- brute force

// A candidate of the layer-wide ranking.
struct Cand {
  float score;
  size_t stream;
  int32_t slot;
};
// (score descending, stream, slot) -- the tie order the header specifies.
bool Before(const Cand& a, const Cand& b) {
  if (a.score != b.score) return a.score > b.score;
  if (a.stream != b.stream) return a.stream < b.stream;
  return a.slot < b.slot;
}

// Ada-KV written straight from the papers' description, for comparison.
Ints BruteAda(const std::vector<StreamScores>& streams, int32_t capacity, const AdaOptions& o) {
  const size_t h_count = streams.size();
  Ints kept(h_count), protected_count(h_count), budget(h_count), candidates(h_count);
  std::vector<bool> competes(h_count);
  for (size_t h = 0; h < h_count; ++h) {
    protected_count[h] = streams[h].NumProtected();
    candidates[h] = streams[h].num_tokens() - protected_count[h];
    budget[h] = capacity - protected_count[h];
    competes[h] = budget[h] < candidates[h];
    kept[h] = streams[h].num_tokens();
  }
  std::vector<Cand> pool;
  std::vector<std::vector<Cand>> per_stream(h_count);
  int64_t total = 0, safe_total = 0;
  Ints safe(h_count, 0);
  for (size_t h = 0; h < h_count; ++h) {
    if (!competes[h]) continue;
    total += budget[h];
    for (int32_t j = 0; j < streams[h].num_tokens(); ++j) {
      if (!streams[h].IsProtected(j)) per_stream[h].push_back({streams[h].scores[j], h, j});
    }
    std::sort(per_stream[h].begin(), per_stream[h].end(), Before);
    if (o.floor == AdaFloor::kProtectTop) {
      safe[h] = static_cast<int32_t>(std::floor(o.alpha * budget[h]));
      safe_total += safe[h];
    }
    pool.insert(pool.end(), per_stream[h].begin() + safe[h], per_stream[h].end());
  }
  std::sort(pool.begin(), pool.end(), Before);
  Ints hits(h_count, 0);
  for (int64_t i = 0; i < total - safe_total; ++i) ++hits[pool[i].stream];
  for (size_t h = 0; h < h_count; ++h) {
    if (!competes[h]) continue;
    int64_t b;
    if (o.floor == AdaFloor::kScaled) {
      const double x = hits[h] * (1.0 - o.alpha) + std::floor(o.alpha * budget[h]);
      b = static_cast<int64_t>(std::nearbyint(x));
    } else {
      b = safe[h] + hits[h];
    }
    kept[h] = static_cast<int32_t>(std::min<int64_t>(b + protected_count[h], streams[h].num_tokens()));
  }
  return kept;
}

// Random streams: lengths, protection and (tie-heavy when asked) scores.
Streams RandomStreams(std::mt19937& rng, int num_streams, int32_t max_len, bool equal_lengths,
                      int distinct) {
  Streams s;
  const int32_t common = 1 + static_cast<int32_t>(rng() % max_len);
  const Protection protection{static_cast<int32_t>(rng() % 5), static_cast<int32_t>(rng() % 9)};
  for (int h = 0; h < num_streams; ++h) {
    const int32_t n = equal_lengths ? common : static_cast<int32_t>(rng() % (max_len + 1));
    Vec scores(n);
    for (auto& v : scores) v = static_cast<float>(rng() % distinct) / static_cast<float>(distinct);
    s.Add(std::move(scores), protection);
  }
  return s;
}

// ---------------------------------------------------------------- UniformKept

TEST_CASE("UniformKept: min(capacity, length), protected tokens counted", "[policy][budget]") {
  Streams s;
  s.Add(Vec(10, 1.0f), {1, 2});  // 10 tokens, 3 protected
  s.Add(Vec(3, 1.0f), {1, 2});   // shorter than the capacity: kept whole
  s.Add(Vec{}, {1, 2});          // empty
  REQUIRE(Kept(UniformKept(s.views(), 4)) == Ints{4, 3, 0});
  REQUIRE(Kept(UniformKept(s.views(), 100)) == Ints{10, 3, 0});
  REQUIRE(Kept(UniformKept({}, 4)).empty());
}

TEST_CASE("UniformKept: errors", "[policy][budget]") {
  Streams s;
  s.Add(Vec(10, 1.0f), {1, 2});
  REQUIRE_ERROR(UniformKept(s.views(), 0), StatusCode::kInvalidArgument, "capacity must be positive");
  REQUIRE_ERROR(UniformKept(s.views(), 2), StatusCode::kInvalidArgument,
                "smaller than stream 0's 3 protected");
  const Vec scores(4, 1.0f);
  const Ints positions = {0, 1, 2};
  REQUIRE_ERROR(UniformKept({StreamScores{scores, positions, {}}}, 2),
                StatusCode::kInvalidArgument, "4 scores but 3 positions");
}

// ---------------------------------------------------------- PyramidCapacities

TEST_CASE("PyramidCapacities: hand-computed schedules", "[policy][budget]") {
  // B' = 72 - 8 = 64; min = 64 // 20 = 3; max = 128 - 3 = 125 (< 1000 - 8, no
  // clamp); step = (125 - 3) // 3 = 40 (remainder 2); B'_l = 125, 85, 45, 5.
  REQUIRE(Kept(PyramidCapacities(4, 72, 8, 1000)) == Ints{133, 93, 53, 13});
  // Clamped: max = 125 >= 100 - 8 = 92, so max = 92, min = 128 - 92 = 36;
  // step = (92 - 36) // 2 = 28; B'_l = 92, 64, 36: averages B' exactly.
  REQUIRE(Kept(PyramidCapacities(3, 72, 8, 100)) == Ints{100, 72, 44});
  // Non-integer beta: B' = 10, min = floor(10 / 2.5) = 4, max = 16,
  // step = 12 // 2 = 6.
  REQUIRE(Kept(PyramidCapacities(3, 18, 8, 1000, 2.5)) == Ints{24, 18, 12});
  // min = floor(10 / 3) = 3 (not 3.33), max = 17, step = 14.
  REQUIRE(Kept(PyramidCapacities(2, 18, 8, 1000, 3.0)) == Ints{25, 11});
  // One layer: step 0, the layer gets max (the formula, not B').
  REQUIRE(Kept(PyramidCapacities(1, 72, 8, 1000)) == Ints{133});
  // Capacity beyond the prompt: max = 92, min = 2 * 192 - 92 = 292, step =
  // floor(-200 / 3) = -67 (Python's //; C++'s / would give -66): every layer's
  // capacity is >= prompt_len, so every layer keeps everything.
  REQUIRE(Kept(PyramidCapacities(4, 200, 8, 100)) == Ints{100, 167, 234, 301});
}

TEST_CASE("PyramidCapacities: the average is the requested capacity up to the step's floor",
          "[policy][budget]") {
  std::mt19937 rng(3);
  for (int iter = 0; iter < 2000; ++iter) {
    const int32_t layers = 2 + static_cast<int32_t>(rng() % 40);
    const int32_t window = static_cast<int32_t>(rng() % 64);
    const int32_t capacity = window + 1 + static_cast<int32_t>(rng() % 4000);
    const int32_t prompt = window + 1 + static_cast<int32_t>(rng() % 20000);
    const double beta = 1.0 + static_cast<double>(rng() % 400) / 10.0;
    INFO("layers " << layers << " capacity " << capacity << " window " << window << " prompt "
                   << prompt << " beta " << beta);
    const Ints caps = Kept(PyramidCapacities(layers, capacity, window, prompt, beta));
    REQUIRE(caps.size() == static_cast<size_t>(layers));
    // Recompute min and max to know the remainder the integer step drops.
    const int64_t b = capacity - window;
    int64_t min_b = static_cast<int64_t>(std::floor(b / beta));
    int64_t max_b = 2 * b - min_b;
    const bool clamped = max_b >= prompt - window;
    if (clamped) {
      max_b = prompt - window;
      min_b = 2 * b - max_b;
    }
    REQUIRE(caps[0] == max_b + window);
    if (capacity > prompt) {
      // Capacity beyond the prompt: every layer is a no-op.
      for (const int32_t c : caps) REQUIRE(c >= prompt);
      continue;
    }
    // sum_l (max - l step) = L max - step L (L-1)/2, and (max + min) / 2 = B',
    // so the sum exceeds L C by exactly L r / 2 with r = (max - min) mod (L-1).
    const int64_t r = (max_b - min_b) % (layers - 1);
    REQUIRE(2 * Sum(caps) == 2 * int64_t{layers} * capacity + layers * r);
    for (int32_t l = 0; l + 1 < layers; ++l) REQUIRE(caps[l] >= caps[l + 1]);  // a pyramid
    REQUIRE(caps.back() >= min_b + window);
    if (clamped) REQUIRE(caps[0] == prompt);  // the bottom layer keeps the whole prompt
  }
}

TEST_CASE("PyramidCapacities: errors", "[policy][budget]") {
  REQUIRE_ERROR(PyramidCapacities(0, 72, 8, 1000), StatusCode::kInvalidArgument, "num_layers");
  REQUIRE_ERROR(PyramidCapacities(4, 0, 0, 1000), StatusCode::kInvalidArgument,
                "capacity must be positive");
  REQUIRE_ERROR(PyramidCapacities(4, 72, 8, 1000, 0.0), StatusCode::kInvalidArgument, "beta");
  REQUIRE_ERROR(PyramidCapacities(4, 72, 8, 1000, -2.0), StatusCode::kInvalidArgument, "beta");
  REQUIRE_ERROR(PyramidCapacities(4, 72, 8, 1000, std::nan("")), StatusCode::kInvalidArgument,
                "beta");
  // beta < 1/2: min = floor(64 / 0.25) = 256 > 2 B' = 128, a negative bottom layer.
  REQUIRE_ERROR(PyramidCapacities(4, 72, 8, 1000, 0.25), StatusCode::kInvalidArgument,
                "negative bottom-layer budget");
  REQUIRE_ERROR(PyramidCapacities(4, 72, 72, 1000), StatusCode::kInvalidArgument,
                "window 72 must be in [0, capacity 72)");
  REQUIRE_ERROR(PyramidCapacities(4, 72, -1, 1000), StatusCode::kInvalidArgument, "window -1");
  REQUIRE_ERROR(PyramidCapacities(4, 72, 8, 8), StatusCode::kInvalidArgument,
                "prompt_len 8 must exceed window 8");
}

// -------------------------------------------------------------------- AdaKept

// Two streams of 10 candidates. The global top 8 (K = 2 x B' = 8) takes the
// five values >= 0.75 of stream 0 and the three >= 0.6 of stream 1: c = (5, 3).
Streams AdaExample(Protection protection = {}) {
  Streams s;
  Vec a = {0.95f, 0.9f, 0.85f, 0.8f, 0.75f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f};
  Vec b = {0.7f, 0.65f, 0.6f, 0.05f, 0.05f, 0.05f, 0.05f, 0.05f, 0.05f, 0.05f};
  if (protection.sinks > 0 || protection.recent > 0) {
    // One sink in front and two recent tokens behind, scored so that they would
    // win if they competed: protected tokens are never candidates.
    a.insert(a.begin(), 99.0f);
    b.insert(b.begin(), 99.0f);
    a.insert(a.end(), {99.0f, 99.0f});
    b.insert(b.end(), {99.0f, 99.0f});
  }
  s.Add(a, protection);
  s.Add(b, protection);
  return s;
}

TEST_CASE("AdaKept kScaled: hand example with round-half-even", "[policy][budget]") {
  AdaOptions o;
  o.alpha = 0.5;
  // capacity 4, no protection: B' = 4, floor(0.5 * 4) = 2, c = (5, 3):
  //   B_0 = round(5 * 0.5 + 2) = round(4.5) = 4 (half to even)
  //   B_1 = round(3 * 0.5 + 2) = round(3.5) = 4
  REQUIRE(Kept(AdaKept(AdaExample().views(), 4, o)) == Ints{4, 4});
  // The same with a sink and a 2-token window: capacity 4 + 3, kept = B_h + 3.
  REQUIRE(Kept(AdaKept(AdaExample({1, 2}).views(), 7, o)) == Ints{7, 7});
  // alpha 0: B_h = c_h exactly.
  o.alpha = 0.0;
  REQUIRE(Kept(AdaKept(AdaExample().views(), 4, o)) == Ints{5, 3});
  // alpha 1: B_h = floor(B') = uniform.
  o.alpha = 1.0;
  REQUIRE(Kept(AdaKept(AdaExample().views(), 4, o)) == Ints{4, 4});
  // alpha 0.2 (default), capacity 5: B' = 5, floor(1.0) = 1, K = 10: the top 10
  // are stream 0's five >= 0.75, stream 1's three >= 0.6, then two of stream 0's
  // 0.1s (0.1 > 0.05): c = (7, 3).
  //   B_0 = round(7 * 0.8 + 1) = round(6.6) = 7, B_1 = round(3 * 0.8 + 1) = round(3.4) = 3.
  REQUIRE(Kept(AdaKept(AdaExample().views(), 5)) == Ints{7, 3});
}

TEST_CASE("AdaKept kScaled: half-even rounds both ways", "[policy][budget]") {
  // All scores of stream 0 above all of stream 1, 10 candidates each,
  // capacity 4, alpha 0.5 (floor 2), K = 8: c = (8, 0).
  //   B_0 = round(8 * 0.5 + 2) = 6,  B_1 = round(0 + 2) = 2.
  Streams s;
  s.Add(Vec(10, 2.0f));
  s.Add(Vec(10, 1.0f));
  AdaOptions o;
  o.alpha = 0.5;
  REQUIRE(Kept(AdaKept(s.views(), 4, o)) == Ints{6, 2});
  // capacity 3, alpha 0.5: floor(1.5) = 1, K = 6, c = (6, 0):
  //   B_0 = round(3 + 1) = 4, B_1 = round(0 + 1) = 1: the sum (5) is K minus
  //   both streams' dropped 0.5 of the floor.
  REQUIRE(Kept(AdaKept(s.views(), 3, o)) == Ints{4, 1});
  // Three streams of 10 equal scores (3 > 2 > 1), capacity 5, alpha 0.5
  // (floor 2), K = 15: c = (10, 5, 0), B = round(5 + 2) = 7,
  // round(2.5 + 2) = 4 (4.5 -> 4), round(0 + 2) = 2.
  Streams t;
  t.Add(Vec(10, 3.0f));
  t.Add(Vec(10, 2.0f));
  t.Add(Vec(10, 1.0f));
  REQUIRE(Kept(AdaKept(t.views(), 5, o)) == Ints{7, 4, 2});
  // Capacity 4 (floor 2, K = 12): c = (10, 2, 0), B = round(5 + 2) = 7,
  // round(1 + 2) = 3, round(0 + 2) = 2.
  REQUIRE(Kept(AdaKept(t.views(), 4, o)) == Ints{7, 3, 2});
  // alpha 0.3, capacity 5: floor(1.5) = 1, K = 15, c = (10, 5, 0):
  // 10 * 0.7 + 1 = 8, 5 * 0.7 + 1 = 4.5 -> 4, 0 + 1 = 1.
  o.alpha = 0.3;
  REQUIRE(Kept(AdaKept(t.views(), 5, o)) == Ints{8, 4, 1});
}

TEST_CASE("AdaKept: ties break by (stream, slot)", "[policy][budget]") {
  // Every score equal: the global top 8 is stream 0's first 8 candidates.
  Streams s;
  s.Add(Vec(10, 1.0f));
  s.Add(Vec(10, 1.0f));
  AdaOptions o;
  o.alpha = 0.0;
  REQUIRE(Kept(AdaKept(s.views(), 4, o)) == Ints{8, 0});
  o.floor = AdaFloor::kProtectTop;
  REQUIRE(Kept(AdaKept(s.views(), 4, o)) == Ints{8, 0});
  // With a floor of 2 each (alpha 0.5), the remaining 4 go to stream 0.
  o.alpha = 0.5;
  REQUIRE(Kept(AdaKept(s.views(), 4, o)) == Ints{6, 2});
}

TEST_CASE("AdaKept kProtectTop: hand example, exact sum", "[policy][budget]") {
  AdaOptions o;
  o.alpha = 0.5;
  o.floor = AdaFloor::kProtectTop;
  // B' = 4, each stream's top floor(2) is in; the other K - 4 = 4 are the
  // global top among the rest: stream 0's 0.85, 0.8, 0.75 and stream 1's 0.6.
  // kept = (2 + 3, 2 + 1) = (5, 3).
  REQUIRE(Kept(AdaKept(AdaExample().views(), 4, o)) == Ints{5, 3});
  REQUIRE(Kept(AdaKept(AdaExample({1, 2}).views(), 7, o)) == Ints{8, 6});
  // alpha 1: everything is floor, uniform.
  o.alpha = 1.0;
  REQUIRE(Kept(AdaKept(AdaExample().views(), 4, o)) == Ints{4, 4});
}

TEST_CASE("AdaKept: no compression when every B'_h covers its candidates", "[policy][budget]") {
  const Streams s = AdaExample({1, 2});  // 13 tokens, 3 protected, 10 candidates
  for (const AdaFloor floor : {AdaFloor::kScaled, AdaFloor::kProtectTop}) {
    for (const double alpha : {0.0, 0.2, 0.35, 1.0}) {
      const AdaOptions o{alpha, floor};
      // B' = 10 == candidates: nothing evicted (the reference compresses here
      // and can round a token away; the contract says a covering budget is a no-op).
      REQUIRE(Kept(AdaKept(s.views(), 13, o)) == Ints{13, 13});
      REQUIRE(Kept(AdaKept(s.views(), 1000, o)) == Ints{13, 13});
    }
  }
}

TEST_CASE("AdaKept: a short stream keeps everything, the others compete", "[policy][budget]") {
  // Stream 2 (3 tokens) is covered by capacity 4 and keeps all of it even though
  // its scores are the lowest; streams 0 and 1 run the hand example (K = 8).
  Streams s = AdaExample();
  s.Add(Vec{0.0f, 0.0f, 0.0f});
  AdaOptions o;
  o.alpha = 0.5;
  REQUIRE(Kept(AdaKept(s.views(), 4, o)) == Ints{4, 4, 3});
  s.Add(Vec{});  // and an empty one
  REQUIRE(Kept(AdaKept(s.views(), 4, o)) == Ints{4, 4, 3, 0});
  REQUIRE(Kept(AdaKept({}, 4, o)).empty());
}

TEST_CASE("AdaKept: matches the papers' algorithm on random layers", "[policy][budget]") {
  std::mt19937 rng(11);
  for (int iter = 0; iter < 600; ++iter) {
    const int num_streams = 1 + static_cast<int>(rng() % 8);
    const bool equal = iter % 2 == 0;
    const int distinct = iter % 3 == 0 ? 3 : 1000;
    const Streams s = RandomStreams(rng, num_streams, 300, equal, distinct);
    const auto views = s.views();
    int32_t max_protected = 0;
    for (const auto& v : views) max_protected = std::max(max_protected, v.NumProtected());
    const int32_t capacity = std::max(1, max_protected) + static_cast<int32_t>(rng() % 200);
    const double alpha = iter % 5 == 0 ? 0.0 : static_cast<double>(rng() % 101) / 100.0;
    for (const AdaFloor floor : {AdaFloor::kScaled, AdaFloor::kProtectTop}) {
      const AdaOptions o{alpha, floor};
      INFO("iter " << iter << " capacity " << capacity << " alpha " << alpha << " floor "
                   << static_cast<int>(floor));
      const Ints kept = Kept(AdaKept(views, capacity, o));
      REQUIRE(kept == BruteAda(views, capacity, o));

      // The contract's invariants.
      int64_t k_total = 0, floor_sum = 0, kept_budget = 0;
      for (size_t h = 0; h < views.size(); ++h) {
        const int32_t p = views[h].NumProtected();
        const int32_t n = views[h].num_tokens();
        REQUIRE(kept[h] >= p);
        REQUIRE(kept[h] <= n);
        const int32_t b = capacity - p;
        if (b >= n - p) {
          REQUIRE(kept[h] == n);  // covered: no-op
          continue;
        }
        const int64_t f = static_cast<int64_t>(std::floor(alpha * b));
        REQUIRE(kept[h] - p >= f);  // the floor holds
        k_total += b;
        floor_sum += f;
        kept_budget += kept[h] - p;
      }
      // Sum of budgets over the competing streams. kProtectTop: exactly K.
      // kScaled: (1 - alpha) K + sum floor(alpha B'_h), each term then rounded
      // half-even, so within H/2 of that; and K minus the floors' dropped
      // fractions, so never more than K + H/2 and never less than K - 3H/2.
      if (floor == AdaFloor::kProtectTop) {
        REQUIRE(kept_budget == k_total);
      } else {
        const double exact = (1.0 - alpha) * k_total + floor_sum;
        REQUIRE(std::abs(kept_budget - exact) <= num_streams / 2.0 + 1e-9);
        REQUIRE(kept_budget <= k_total + num_streams / 2.0);
        REQUIRE(kept_budget >= k_total - 1.5 * num_streams);
      }
    }
  }
}

TEST_CASE("AdaKept: integral alpha B' keeps the kScaled sum within H/2", "[policy][budget]") {
  // With alpha B' an integer (alpha 0.2, B' = 25) the floor drops nothing and
  // only the rounding moves the total: |sum B_h - H B'| <= H / 2.
  std::mt19937 rng(5);
  for (int iter = 0; iter < 200; ++iter) {
    Streams s;
    const int num_streams = 1 + static_cast<int>(rng() % 16);
    for (int h = 0; h < num_streams; ++h) {
      Vec scores(200);
      for (auto& v : scores) v = static_cast<float>(rng() % 100000);
      s.Add(std::move(scores));
    }
    const Ints kept = Kept(AdaKept(s.views(), 25));
    REQUIRE(std::abs(Sum(kept) - 25 * num_streams) <= num_streams / 2.0);
  }
}

TEST_CASE("AdaKept: Ada-Pyramid composes the layer schedule with per-layer Ada",
          "[policy][budget]") {
  // Section 2.5: capacity_l from the pyramid, then Ada within the layer, whose
  // floor is int(alpha B'_l) with B'_l = capacity_l - window.
  // B' = 6 - 2 = 4, beta 2: min = 2, max = 6 (< 12 - 2), step = 4.
  const Ints caps = Kept(PyramidCapacities(2, 6, 2, 12, 2.0));
  REQUIRE(caps == Ints{8, 4});
  // Two streams of 12 tokens, the last 2 the window (scored 9, protected).
  Streams layer;
  layer.Add(Vec{5, 4, 3, 2, 1, 0, 0, 0, 0, 0, 9, 9}, {0, 2});
  layer.Add(Vec{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9}, {0, 2});
  // Layer 0, capacity 8: B' = 6, floor(0.2 * 6) = 1, K = 12: stream 0's five
  // positive scores, then zeros in stream order (stream 0's five, stream 1's
  // first two): c = (10, 2); B = round(8 + 1) = 9, round(1.6 + 1) = 3; plus the
  // window: 11 and 5.
  REQUIRE(Kept(AdaKept(layer.views(), caps[0])) == Ints{11, 5});
  // Layer 1, capacity 4: B' = 2, floor(0.4) = 0, K = 4: c = (4, 0);
  // B = round(3.2) = 3, 0; plus the window: 5 and 2.
  REQUIRE(Kept(AdaKept(layer.views(), caps[1])) == Ints{5, 2});
}

TEST_CASE("AdaKept: errors", "[policy][budget]") {
  const Streams s = AdaExample({1, 2});
  const auto views = s.views();
  REQUIRE_ERROR(AdaKept(views, 0), StatusCode::kInvalidArgument, "capacity must be positive");
  REQUIRE_ERROR(AdaKept(views, 2), StatusCode::kInvalidArgument,
                "smaller than stream 0's 3 protected");
  for (const double alpha : {-0.1, 1.1, std::nan("")}) {
    REQUIRE_ERROR(AdaKept(views, 5, {alpha, AdaFloor::kScaled}), StatusCode::kInvalidArgument,
                  "alpha must be in [0, 1]");
  }
  REQUIRE_ERROR(AdaKept(views, 5, {0.2, static_cast<AdaFloor>(7)}),
                StatusCode::kInvalidArgument, "unknown AdaFloor");
  Streams bad;
  bad.Add(Vec{1, 2, 3}, Ints{0, 2, 1}, {});
  REQUIRE_ERROR(AdaKept(bad.views(), 2), StatusCode::kInvalidArgument,
                "stream 0: positions are not strictly ascending at slot 2");
  Streams nan;
  nan.Add(Vec{1, kNaN, 3});
  REQUIRE_ERROR(AdaKept(nan.views(), 2), StatusCode::kInvalidArgument, "NaN score at slot 1");
  const Vec scores(3, 1.0f);
  const Ints two = {0, 1};
  REQUIRE_ERROR(AdaKept({StreamScores{scores, two, {}}}, 2), StatusCode::kInvalidArgument,
                "3 scores but 2 positions");
}

// ---------------------------------------------------------------- DBudgetKept

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

// ----------------------------------------------------------------- GlobalKept

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
}  // namespace headpage::policy
