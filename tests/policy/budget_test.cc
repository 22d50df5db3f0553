// SPDX-License-Identifier: Apache-2.0
// UniformKept, PyramidCapacities and AdaKept. DBudgetKept and GlobalKept have
// test files of their own (budget_dbudget_test.cc, budget_global_test.cc).
#include "policy/budget.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "tests/policy/budget_test_util.h"
#include "tests/testing/status_matchers.h"

namespace headpage::policy::testing {
namespace {

using absl::StatusCode;

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

TEST_CASE("AdaKept kProtectTop: kvpress's safeguard counts the protected tokens",
          "[policy][budget]") {
  // 3 protected tokens a stream, capacity 6, alpha 0.8: B' = 3 a stream.
  // floor(0.8 x 3) = 2 safe each, then the global top 2 of the rest (stream
  // 0's 0.85 and 0.8): (3 + 2 + 2, 3 + 2) = (7, 5). Counting the protected:
  // int(0.8 x 6) - 3 = 1 safe each, then the top 4 of the rest, all stream
  // 0's (0.9, 0.85, 0.8, 0.75): (3 + 1 + 4, 3 + 1) = (8, 4).
  AdaOptions o;
  o.alpha = 0.8;
  o.floor = AdaFloor::kProtectTop;
  REQUIRE(Kept(AdaKept(AdaExample({1, 2}).views(), 6, o)) == Ints{7, 5});
  o.safe_counts_protected = true;
  REQUIRE(Kept(AdaKept(AdaExample({1, 2}).views(), 6, o)) == Ints{8, 4});
  // When alpha C does not reach the protected tokens, no candidate is safe.
  o.alpha = 0.2;
  REQUIRE(Kept(AdaKept(AdaExample({1, 2}).views(), 6, o)) == Ints{8, 4});
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

}  // namespace
}  // namespace headpage::policy::testing
