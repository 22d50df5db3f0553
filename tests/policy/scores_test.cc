// SPDX-License-Identifier: Apache-2.0
#include "policy/scores.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "tests/testing/status_matchers.h"

namespace headpage::policy {
namespace {

using absl::StatusCode;
using Vec = std::vector<float>;

// The hand-computed examples use head_dim d = 4 (sqrt(d) = 2, exact) and
// queries scaled by 2 so that a logit q.k / 2 is exactly a chosen log:
//   QA = (2 ln2, 2 ln3, 0, 0):  Z -> 0, E1 -> ln2, E2 -> ln3, E12 -> ln6,
// i.e. exp(logit) weights Z:1, E1:2, E2:3, E12:6 (QB swaps E1's and E2's).
// A softmax over visible keys is then weight / (sum of visible weights).
constexpr float kLn2 = 0.693147180559945309f;
constexpr float kLn3 = 1.098612288668109691f;
const Vec kZ = {0, 0, 0, 0};
const Vec kE1 = {1, 0, 0, 0};
const Vec kE2 = {0, 1, 0, 0};
const Vec kE12 = {1, 1, 0, 0};
const Vec kQA = {2 * kLn2, 2 * kLn3, 0, 0};  // weights Z:1 E1:2 E2:3 E12:6
const Vec kQB = {2 * kLn3, 2 * kLn2, 0, 0};  // weights Z:1 E1:3 E2:2 E12:6

Vec Concat(std::initializer_list<Vec> parts) {
  Vec out;
  for (const Vec& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// Views over vectors the test owns (they must outlive the view).
StreamKeys Keys(const Vec& data, const std::vector<int32_t>& positions, int32_t head_dim = 4) {
  StreamKeys k;
  k.data = data.data();
  k.positions = positions.data();
  k.num_tokens = static_cast<int32_t>(positions.size());
  k.head_dim = head_dim;
  k.dtype = DType::kF32;
  return k;
}

// `data` is [group_size][positions.size()][head_dim].
GroupQueries Queries(const Vec& data, const std::vector<int32_t>& positions, int32_t group_size,
                     int32_t head_dim = 4) {
  GroupQueries q;
  q.data = data.data();
  q.positions = positions.data();
  q.group_size = group_size;
  q.num_queries = static_cast<int32_t>(positions.size());
  q.head_dim = head_dim;
  q.dtype = DType::kF32;
  return q;
}

SnapKVOptions Snap(int32_t kernel_size, Pooling pooling, GroupReduce reduce = GroupReduce::kMean) {
  SnapKVOptions o;
  o.kernel_size = kernel_size;
  o.pooling = pooling;
  o.reduce = reduce;
  return o;
}

// Element-wise comparison within 1e-6 relative (float softmax of exact logs).
void RequireNear(const Vec& actual, const Vec& expected, double rel = 1e-6) {
  REQUIRE(actual.size() == expected.size());
  for (size_t j = 0; j < actual.size(); ++j) {
    INFO("j = " << j << ": " << actual[j] << " vs " << expected[j]);
    REQUIRE(actual[j] == Approx(expected[j]).epsilon(rel).margin(1e-9));
  }
}

// Every value of `v` divided by `denom` (the examples' common denominators).
Vec Over(Vec v, double denom) {
  for (float& x : v) x = static_cast<float>(x / denom);
  return v;
}

// ---------------------------------------------------------------------------
// SnapKV

// Keys 0..4 = Z E1 E2 Z E1, window = two QA queries at positions 3 and 4.
//   query @3 sees keys 0..3: weights 1 2 3 1 (sum 7) -> 1/7 2/7 3/7 1/7 0
//   query @4 sees keys 0..4: weights 1 2 3 1 2 (sum 9) -> 1/9 2/9 3/9 1/9 2/9
//   column sums (x 63): 16 32 48 16 14.
// Key 4 gets 14/63 = 2/9 only: the first window query must not see it (a
// missing causal mask would give 2/8 + 2/9). The prefix is keys 0..2
// (positions < 3); keys 3 and 4 are the window's and are never pooled.
TEST_CASE("SnapKV: window sum with causal mask inside the window", "[policy][scores]") {
  const Vec kd = Concat({kZ, kE1, kE2, kZ, kE1});
  const std::vector<int32_t> kpos = {0, 1, 2, 3, 4};
  const Vec qd = Concat({kQA, kQA});
  std::vector<int32_t> qpos = {3, 4};
  Vec scores(5, -1.0f);

  SECTION("no pooling: the raw sum over window rows (a sum, not a mean)") {
    REQUIRE_OK(SnapKVScores(Keys(kd, kpos), Queries(qd, qpos, 1), Snap(7, Pooling::kNone),
                            absl::MakeSpan(scores)));
    RequireNear(scores, Over({16, 32, 48, 16, 14}, 63));
  }
  SECTION("kernel 1 leaves the scores unpooled for avg and max") {
    for (Pooling p : {Pooling::kAvg, Pooling::kMax}) {
      REQUIRE_OK(
          SnapKVScores(Keys(kd, kpos), Queries(qd, qpos, 1), Snap(1, p), absl::MakeSpan(scores)));
      RequireNear(scores, Over({16, 32, 48, 16, 14}, 63));
    }
  }
  SECTION("avg pool k=3 pads zeros at both prefix ends, not the window's values") {
    // prefix sums (x 1/63): 16 32 48 -> (0+16+32)/3, (16+32+48)/3, (32+48+0)/3;
    // reading window key 3 (16) instead of padding would give 96/3 for slot 2.
    REQUIRE_OK(SnapKVScores(Keys(kd, kpos), Queries(qd, qpos, 1), Snap(3, Pooling::kAvg),
                            absl::MakeSpan(scores)));
    RequireNear(scores, Over({48, 96, 80, 48, 42}, 189));  // window: 16/63, 14/63
  }
  SECTION("max pool k=3") {
    REQUIRE_OK(SnapKVScores(Keys(kd, kpos), Queries(qd, qpos, 1), Snap(3, Pooling::kMax),
                            absl::MakeSpan(scores)));
    RequireNear(scores, Over({32, 48, 48, 16, 14}, 63));
  }
  SECTION("the window starts at its lowest query position, whatever the row order") {
    const Vec qd_rev = Concat({kQA, kQA});
    qpos = {4, 3};
    REQUIRE_OK(SnapKVScores(Keys(kd, kpos), Queries(qd_rev, qpos, 1), Snap(3, Pooling::kMax),
                            absl::MakeSpan(scores)));
    RequireNear(scores, Over({32, 48, 48, 16, 14}, 63));
  }
}

// One QA query at position 5 over keys E1 Z E12 E2 Z | Z (key 5 is the window's):
// weights 2 1 6 3 1 | 1, sum 14, so the prefix attention is (2 1 6 3 1) / 14
// and key 5 gets 1/14 whatever the pooling.
TEST_CASE("SnapKV: pooling over the prefix follows PyTorch at the edges", "[policy][scores]") {
  const Vec kd = Concat({kE1, kZ, kE12, kE2, kZ, kZ});
  const std::vector<int32_t> kpos = {0, 1, 2, 3, 4, 5};
  const std::vector<int32_t> qpos = {5};
  Vec scores(6, -1.0f);
  auto run = [&](int32_t k, Pooling p) {
    REQUIRE_OK(
        SnapKVScores(Keys(kd, kpos), Queries(kQA, qpos, 1), Snap(k, p), absl::MakeSpan(scores)));
  };
  SECTION("avg k=3 (count_include_pad: always / 3)") {
    // (0+2+1)/3, (2+1+6)/3, (1+6+3)/3, (6+3+1)/3, (3+1+0)/3  -> x3: 3 9 10 10 4
    run(3, Pooling::kAvg);
    RequireNear(scores, Over({3, 9, 10, 10, 4, 3}, 42));
  }
  SECTION("avg k=5 damps two slots at each edge") {
    // (2+1+6)/5, (2+1+6+3)/5, (2+1+6+3+1)/5, (1+6+3+1)/5, (6+3+1)/5 -> x5: 9 12 13 11 10
    run(5, Pooling::kAvg);
    RequireNear(scores, Over({9, 12, 13, 11, 10, 5}, 70));
  }
  SECTION("avg k=7 (the default width) on a prefix shorter than the kernel") {
    // half = 3: (2+1+6+3)/7, then 13/7 for slots 1..3 (all five), (1+6+3+1)/7.
    run(7, Pooling::kAvg);
    RequireNear(scores, Over({12, 13, 13, 13, 11, 7}, 98));  // window: 1/14 = 7/98
  }
  SECTION("avg with a kernel much wider than the prefix divides by k") {
    run(11, Pooling::kAvg);  // every slot sums all five: 13 / 11
    RequireNear(scores, Vec{13.0f / 154, 13.0f / 154, 13.0f / 154, 13.0f / 154, 13.0f / 154,
                            1.0f / 14});
  }
  SECTION("max k=3 pads -inf: the edges keep their in-range maximum") {
    // max(2,1), max(2,1,6), max(1,6,3), max(6,3,1), max(3,1) -> 2 6 6 6 3
    run(3, Pooling::kMax);
    RequireNear(scores, Over({2, 6, 6, 6, 3, 1}, 14));
  }
  SECTION("max k=5 and k=7") {
    run(5, Pooling::kMax);
    RequireNear(scores, Over({6, 6, 6, 6, 6, 1}, 14));
    run(7, Pooling::kMax);
    RequireNear(scores, Over({6, 6, 6, 6, 6, 1}, 14));
  }
  SECTION("default options: max pool k=7, mean over the group") {
    REQUIRE_OK(SnapKVScores(Keys(kd, kpos), Queries(kQA, qpos, 1), SnapKVOptions(),
                            absl::MakeSpan(scores)));
    RequireNear(scores, Over({6, 6, 6, 6, 6, 1}, 14));
  }
}

// With a single prefix slot every other slot of the kernel is padding: max
// (-inf padding) returns the slot itself, avg divides it by k.
TEST_CASE("SnapKV: a one-slot prefix pools to itself (max) or is damped (avg)",
          "[policy][scores]") {
  // Keys E1 | E2, query QA at position 1: weights 2 | 3 -> 2/5 | 3/5.
  const Vec kd = Concat({kE1, kE2});
  const std::vector<int32_t> kpos = {0, 1};
  const std::vector<int32_t> qpos = {1};
  Vec scores(2);
  REQUIRE_OK(SnapKVScores(Keys(kd, kpos), Queries(kQA, qpos, 1), Snap(5, Pooling::kMax),
                          absl::MakeSpan(scores)));
  RequireNear(scores, {0.4f, 0.6f});
  REQUIRE_OK(SnapKVScores(Keys(kd, kpos), Queries(kQA, qpos, 1), Snap(5, Pooling::kAvg),
                          absl::MakeSpan(scores)));
  RequireNear(scores, {0.4f / 5, 0.6f});
}

// G = 2 over keys E1 E2 | Z, one query per head at position 2:
//   head 0 (QA): weights 2 3 1 -> 2/6 3/6 1/6
//   head 1 (QB): weights 3 2 1 -> 3/6 2/6 1/6
//   mean: 5/12 5/12 1/6        max: 1/2 1/2 1/6
// Reduction comes before pooling: max-pooling each head first and then taking
// the mean would give 1/2 for both prefix slots instead of 5/12.
TEST_CASE("SnapKV: GQA reduces the group (mean or max) before pooling", "[policy][scores]") {
  const Vec kd = Concat({kE1, kE2, kZ});
  const std::vector<int32_t> kpos = {0, 1, 2};
  const Vec qd = Concat({kQA, kQB});  // [g][r][d] with one row per head
  const std::vector<int32_t> qpos = {2};
  Vec scores(3);
  REQUIRE_OK(SnapKVScores(Keys(kd, kpos), Queries(qd, qpos, 2),
                          Snap(1, Pooling::kNone, GroupReduce::kMean), absl::MakeSpan(scores)));
  RequireNear(scores, {5.0f / 12, 5.0f / 12, 1.0f / 6});
  REQUIRE_OK(SnapKVScores(Keys(kd, kpos), Queries(qd, qpos, 2),
                          Snap(1, Pooling::kNone, GroupReduce::kMax), absl::MakeSpan(scores)));
  RequireNear(scores, {0.5f, 0.5f, 1.0f / 6});
  REQUIRE_OK(SnapKVScores(Keys(kd, kpos), Queries(qd, qpos, 2),
                          Snap(3, Pooling::kMax, GroupReduce::kMean), absl::MakeSpan(scores)));
  RequireNear(scores, {5.0f / 12, 5.0f / 12, 1.0f / 6});
}

// Keys at positions 5 and 6; window queries at 3 (sees nothing) and 6.
// The query at 3 contributes nothing; the window starts at 3, so both keys are
// the window's (unpooled): QA over E1 E2 -> 2/5 3/5.
TEST_CASE("SnapKV: a query that sees no key contributes nothing", "[policy][scores]") {
  const Vec kd = Concat({kE1, kE2});
  const std::vector<int32_t> kpos = {5, 6};
  const Vec qd = Concat({kQB, kQA});
  const std::vector<int32_t> qpos = {3, 6};
  Vec scores(2);
  REQUIRE_OK(SnapKVScores(Keys(kd, kpos), Queries(qd, qpos, 1), Snap(3, Pooling::kAvg),
                          absl::MakeSpan(scores)));
  RequireNear(scores, {0.4f, 0.6f});
}

TEST_CASE("SnapKV: empty stream, empty window", "[policy][scores]") {
  SECTION("an empty stream with null arrays is valid and writes nothing") {
    StreamKeys keys;
    keys.head_dim = 4;
    const std::vector<int32_t> qpos = {3};
    REQUIRE_OK(SnapKVScores(keys, Queries(kQA, qpos, 1), SnapKVOptions(), absl::Span<float>()));
  }
  SECTION("no window queries: every key scores 0") {
    const Vec kd = Concat({kE1, kE2, kZ});
    const std::vector<int32_t> kpos = {0, 1, 2};
    GroupQueries window;
    window.group_size = 2;
    window.head_dim = 4;
    Vec scores(3, -1.0f);
    for (Pooling p : {Pooling::kNone, Pooling::kAvg, Pooling::kMax}) {
      REQUIRE_OK(SnapKVScores(Keys(kd, kpos), window, Snap(3, p), absl::MakeSpan(scores)));
      REQUIRE(scores == Vec{0, 0, 0});
    }
  }
}

// Positions with gaps (a stream after eviction): visibility goes by position,
// not by slot. Keys E1 E2 Z at positions 10 20 30, window query QA at 25:
// sees the first two (2/5 3/5) and is itself the window start, so key 30 is a
// window key nobody sees (0) and the prefix is slots 0, 1.
TEST_CASE("SnapKV: visibility and the window follow positions, not slots", "[policy][scores]") {
  const Vec kd = Concat({kE1, kE2, kZ});
  const std::vector<int32_t> kpos = {10, 20, 30};
  const std::vector<int32_t> qpos = {25};
  Vec scores(3);
  REQUIRE_OK(SnapKVScores(Keys(kd, kpos), Queries(kQA, qpos, 1), Snap(3, Pooling::kAvg),
                          absl::MakeSpan(scores)));
  // avg k=3 over (2/5, 3/5): (0+2+3)/15, (2+3+0)/15
  RequireNear(scores, {1.0f / 3, 1.0f / 3, 0.0f});
}

// ---------------------------------------------------------------------------
// H2O: AccumulateAttention

// G = 2 over keys E1 E2 Z at positions 0 1 2, two queries per head at 1 and 2:
//   head 0: row@1 QB -> 3/5 2/5 0      row@2 QA -> 1/3 1/2 1/6   sum 14/15 9/10 1/6
//   head 1: row@1 QA -> 2/5 3/5 0      row@2 QB -> 1/2 1/3 1/6   sum 9/10 14/15 1/6
//   mean: 11/12 11/12 1/6              max of sums: 14/15 14/15 1/6
// Folding the rows in one call at a time with max sums the per-row maxima:
//   row@1: 3/5 3/5 0, row@2: 1/2 1/2 1/6  ->  11/10 11/10 1/6.
TEST_CASE("AccumulateAttention: H2O sums rows, reduces the group, adds in", "[policy][scores]") {
  const Vec kd = Concat({kE1, kE2, kZ});
  const std::vector<int32_t> kpos = {0, 1, 2};
  const Vec qd = Concat({kQB, kQA, kQA, kQB});  // [g=0: r0 r1][g=1: r0 r1]
  const std::vector<int32_t> qpos = {1, 2};

  SECTION("mean, added into existing scores") {
    Vec scores = {10, 20, 30};
    REQUIRE_OK(AccumulateAttention(Keys(kd, kpos), Queries(qd, qpos, 2), GroupReduce::kMean,
                                   absl::MakeSpan(scores)));
    RequireNear(scores, {10 + 11.0f / 12, 20 + 11.0f / 12, 30 + 1.0f / 6});
  }
  SECTION("max over the group of the summed rows") {
    Vec scores(3, 0.0f);
    REQUIRE_OK(AccumulateAttention(Keys(kd, kpos), Queries(qd, qpos, 2), GroupReduce::kMax,
                                   absl::MakeSpan(scores)));
    RequireNear(scores, {14.0f / 15, 14.0f / 15, 1.0f / 6});
  }
  SECTION("one row per call: mean agrees with one call, max sums per-row maxima") {
    const Vec row1 = Concat({kQB, kQA});  // r0 of each head
    const Vec row2 = Concat({kQA, kQB});  // r1 of each head
    const std::vector<int32_t> p1 = {1}, p2 = {2};
    Vec mean(3, 0.0f), max(3, 0.0f);
    for (GroupReduce reduce : {GroupReduce::kMean, GroupReduce::kMax}) {
      Vec& s = reduce == GroupReduce::kMean ? mean : max;
      REQUIRE_OK(AccumulateAttention(Keys(kd, kpos), Queries(row1, p1, 2), reduce,
                                     absl::MakeSpan(s)));
      REQUIRE_OK(AccumulateAttention(Keys(kd, kpos), Queries(row2, p2, 2), reduce,
                                     absl::MakeSpan(s)));
    }
    RequireNear(mean, {11.0f / 12, 11.0f / 12, 1.0f / 6});
    RequireNear(max, {1.1f, 1.1f, 1.0f / 6});
  }
  SECTION("a query that sees no key adds nothing; no queries add nothing") {
    const std::vector<int32_t> early = {-1};
    Vec scores = {1, 2, 3};
    REQUIRE_OK(AccumulateAttention(Keys(kd, kpos), Queries(Concat({kQA, kQB}), early, 2),
                                   GroupReduce::kMax, absl::MakeSpan(scores)));
    REQUIRE(scores == Vec{1, 2, 3});
    GroupQueries none;
    none.group_size = 1;
    none.head_dim = 4;
    REQUIRE_OK(AccumulateAttention(Keys(kd, kpos), none, GroupReduce::kMean,
                                   absl::MakeSpan(scores)));
    REQUIRE(scores == Vec{1, 2, 3});
  }
}

// ---------------------------------------------------------------------------
// StreamingLLM, Knorm, random

TEST_CASE("RecencyScores: the score is the position", "[policy][scores]") {
  const std::vector<int32_t> kpos = {0, 3, 4, 100, 4096};
  StreamKeys keys;  // positions only: data, head_dim and dtype are not read
  keys.positions = kpos.data();
  keys.num_tokens = 5;
  Vec scores(5);
  REQUIRE_OK(RecencyScores(keys, absl::MakeSpan(scores)));
  REQUIRE(scores == Vec{0, 3, 4, 100, 4096});
}

TEST_CASE("KeyNormScores: minus the L2 norm of each key", "[policy][scores]") {
  SECTION("d = 4") {
    const Vec kd = Concat({{3, 4, 0, 0}, {0, 0, 0, 0}, {1, -2, 2, 0}, {-1, -1, -1, -1}});
    const std::vector<int32_t> kpos = {0, 1, 2, 3};
    Vec scores(4);
    REQUIRE_OK(KeyNormScores(Keys(kd, kpos), absl::MakeSpan(scores)));
    REQUIRE(scores == Vec{-5, 0, -3, -2});
  }
  SECTION("d = 2 and d = 1 (head_dim is free)") {
    const Vec kd2 = {6, 8, -5, 12};
    const std::vector<int32_t> kpos = {7, 9};
    Vec scores(2);
    REQUIRE_OK(KeyNormScores(Keys(kd2, kpos, 2), absl::MakeSpan(scores)));
    REQUIRE(scores == Vec{-10, -13});
    const Vec kd1 = {-3, 2};
    REQUIRE_OK(KeyNormScores(Keys(kd1, kpos, 1), absl::MakeSpan(scores)));
    REQUIRE(scores == Vec{-3, -2});
  }
}

TEST_CASE("RandomScores: deterministic per seed, uniform in [0, 1)", "[policy][scores]") {
  Vec a(10000), b(10000), c(10000), prefix(100);
  RandomScores(42, absl::MakeSpan(a));
  RandomScores(42, absl::MakeSpan(b));
  RandomScores(43, absl::MakeSpan(c));
  RandomScores(42, absl::MakeSpan(prefix));
  REQUIRE(a == b);
  REQUIRE(a != c);
  REQUIRE(std::equal(prefix.begin(), prefix.end(), a.begin()));  // a stream, not per-size
  double sum = 0;
  for (float x : a) {
    REQUIRE(x >= 0.0f);
    REQUIRE(x < 1.0f);
    sum += x;
  }
  REQUIRE(sum / a.size() == Approx(0.5).margin(0.02));
  // Not constant and not a handful of values.
  std::sort(a.begin(), a.end());
  REQUIRE(std::unique(a.begin(), a.end()) - a.begin() > 9900);
  RandomScores(7, absl::Span<float>());  // empty: nothing to do
}

// ---------------------------------------------------------------------------
// TOVA

// Two KV heads of G = 2 (4 q heads), keys at positions 0 1 2 3 in both:
//   head 0 keys E1 E2 Z E12, head 1 keys Z Z E12 E1.
// The last query is at position 2 (key 3 is unseen by it): head 0 passes its
// rows in position order (1, 2), head 1 in reverse (2, 1), so the row must be
// chosen by position. The rows at position 1 carry a query that would change
// every score if it were used (QB on head 0, QA on head 1 => swapped roles).
//   head 0, QA @2 over E1 E2 Z: 2 3 1 /6    QB @2: 3 2 1 /6
//   head 1, QA @2 over Z Z E12: 1 1 6 /8    QB @2: 1 1 6 /8
//   mean over 4 q heads: key0 (5/6 + 1/4)/4 = 13/48, key1 13/48,
//                        key2 (1/3 + 3/2)/4 = 22/48, key3 0.
TEST_CASE("TovaScores: last query's attention averaged over every q head", "[policy][scores]") {
  const std::vector<int32_t> kpos = {0, 1, 2, 3};
  const Vec k0 = Concat({kE1, kE2, kZ, kE12});
  const Vec k1 = Concat({kZ, kZ, kE12, kE1});
  const Vec junk = {5, -5, 1, 2};
  const Vec q0 = Concat({junk, kQA, junk, kQB});  // head 0: [g0: @1 @2][g1: @1 @2]
  const Vec q1 = Concat({kQA, junk, kQB, junk});  // head 1: [g0: @2 @1][g1: @2 @1]
  const std::vector<int32_t> p0 = {1, 2}, p1 = {2, 1};
  const StreamKeys keys[] = {Keys(k0, kpos), Keys(k1, kpos)};
  const GroupQueries queries[] = {Queries(q0, p0, 2), Queries(q1, p1, 2)};
  Vec scores(4, -1.0f);
  REQUIRE_OK(TovaScores(keys, queries, absl::MakeSpan(scores)));
  RequireNear(scores, Over({13, 13, 22, 0}, 48));

  SECTION("heads holding different positions: FailedPrecondition, nothing written") {
    const std::vector<int32_t> other = {0, 1, 2, 4};
    const StreamKeys mixed[] = {Keys(k0, kpos), Keys(k1, other)};
    Vec untouched(4, -1.0f);
    REQUIRE_ERROR(TovaScores(mixed, queries, absl::MakeSpan(untouched)),
                  StatusCode::kFailedPrecondition, "different positions");
    const std::vector<int32_t> shorter = {0, 1, 2};
    const StreamKeys short_head[] = {Keys(k0, kpos), Keys(k1, shorter)};
    REQUIRE_ERROR(TovaScores(short_head, queries, absl::MakeSpan(untouched)),
                  StatusCode::kFailedPrecondition, "different positions");
    REQUIRE(untouched == Vec(4, -1.0f));
  }
}

TEST_CASE("TovaScores: one KV head equals LastQueryAttention averaged over its group",
          "[policy][scores]") {
  // Keys E1 E2 Z, heads QA QB at position 2: (2 3 1 + 3 2 1) / 12 = 5/12 5/12 2/12.
  const Vec kd = Concat({kE1, kE2, kZ});
  const std::vector<int32_t> kpos = {0, 1, 2}, qpos = {2};
  const Vec qd = Concat({kQA, kQB});
  const StreamKeys keys[] = {Keys(kd, kpos)};
  const GroupQueries queries[] = {Queries(qd, qpos, 2)};
  Vec scores(3);
  REQUIRE_OK(TovaScores(keys, queries, absl::MakeSpan(scores)));
  RequireNear(scores, Over({5, 5, 2}, 12));
}

// ---------------------------------------------------------------------------
// DBudgetKV input: LastQueryAttention

TEST_CASE("LastQueryAttention: one softmax row per q head, zero past the query",
          "[policy][scores]") {
  // Keys E1 E2 Z E12 at 0..3, query at position 2: key 3 is not visible.
  const Vec kd = Concat({kE1, kE2, kZ, kE12});
  const std::vector<int32_t> kpos = {0, 1, 2, 3}, qpos = {2};
  const Vec qd = Concat({kQA, kQB});
  Vec rows(8, 7.0f);  // overwritten, not accumulated
  REQUIRE_OK(LastQueryAttention(Keys(kd, kpos), Queries(qd, qpos, 2), absl::MakeSpan(rows)));
  RequireNear(rows, Concat({Over({2, 3, 1, 0}, 6), Over({3, 2, 1, 0}, 6)}));

  SECTION("a query that sees no key gives zero rows") {
    const std::vector<int32_t> early = {-5};
    REQUIRE_OK(LastQueryAttention(Keys(kd, kpos), Queries(qd, early, 2), absl::MakeSpan(rows)));
    REQUIRE(rows == Vec(8, 0.0f));
  }
}

// ---------------------------------------------------------------------------
// Random inputs: a dense oracle, row sums, dtypes

struct RandomCase {
  int32_t n, d, group, w;
  Vec keys, queries;
  std::vector<int32_t> kpos, qpos;
};

// Random strictly ascending positions with gaps; the window is the last w key
// positions (SnapKV's layout), or, with arbitrary_window, w sorted random
// positions in the same range (not necessarily key positions).
RandomCase MakeCase(std::mt19937& rng, bool arbitrary_window) {
  RandomCase c;
  c.n = std::uniform_int_distribution<int32_t>(1, 60)(rng);
  c.d = std::vector<int32_t>{1, 3, 4, 8, 16}[rng() % 5];
  c.group = std::vector<int32_t>{1, 2, 4}[rng() % 3];
  c.w = std::uniform_int_distribution<int32_t>(1, std::min(c.n, 8))(rng);
  std::uniform_real_distribution<float> value(-1.5f, 1.5f);
  c.keys.resize(static_cast<size_t>(c.n) * c.d);
  for (float& x : c.keys) x = value(rng);
  c.queries.resize(static_cast<size_t>(c.group) * c.w * c.d);
  for (float& x : c.queries) x = value(rng);
  int32_t p = std::uniform_int_distribution<int32_t>(0, 3)(rng);
  for (int32_t j = 0; j < c.n; ++j) {
    c.kpos.push_back(p);
    p += std::uniform_int_distribution<int32_t>(1, 3)(rng);
  }
  if (arbitrary_window) {
    std::uniform_int_distribution<int32_t> pos(-2, c.kpos.back() + 2);
    for (int32_t r = 0; r < c.w; ++r) c.qpos.push_back(pos(rng));
    std::sort(c.qpos.begin(), c.qpos.end());
  } else {
    c.qpos.assign(c.kpos.end() - c.w, c.kpos.end());
  }
  return c;
}

// The whole attention tensor att[g][r][j] (0 where masked), built the dense
// way: every logit first, -inf for masked keys, then a softmax over the full
// row. Logits in float as specified; exp and sums in double.
std::vector<double> DenseAttention(const RandomCase& c) {
  std::vector<double> att(static_cast<size_t>(c.group) * c.w * c.n, 0.0);
  for (int32_t g = 0; g < c.group; ++g) {
    for (int32_t r = 0; r < c.w; ++r) {
      std::vector<double> logit(c.n);
      double m = -std::numeric_limits<double>::infinity();
      for (int32_t j = 0; j < c.n; ++j) {
        float dot = 0.0f;
        for (int32_t t = 0; t < c.d; ++t) {
          dot += c.queries[(static_cast<size_t>(g) * c.w + r) * c.d + t] *
                 c.keys[static_cast<size_t>(j) * c.d + t];
        }
        logit[j] = c.kpos[j] <= c.qpos[r] ? dot / std::sqrt(static_cast<float>(c.d))
                                          : -std::numeric_limits<double>::infinity();
        m = std::max(m, logit[j]);
      }
      if (m == -std::numeric_limits<double>::infinity()) continue;  // sees no key
      double z = 0;
      for (int32_t j = 0; j < c.n; ++j) z += std::exp(logit[j] - m);
      for (int32_t j = 0; j < c.n; ++j) {
        att[(static_cast<size_t>(g) * c.w + r) * c.n + j] = std::exp(logit[j] - m) / z;
      }
    }
  }
  return att;
}

// SnapKV from the dense tensor: per-head column sums over the window rows,
// group reduce, then PyTorch-style pooling on an explicitly padded copy of the
// prefix (zeros for avg, -inf for max).
std::vector<double> DenseSnapKV(const RandomCase& c, const SnapKVOptions& o) {
  const std::vector<double> att = DenseAttention(c);
  std::vector<std::vector<double>> col(c.group, std::vector<double>(c.n, 0.0));
  for (int32_t g = 0; g < c.group; ++g) {
    for (int32_t r = 0; r < c.w; ++r) {
      for (int32_t j = 0; j < c.n; ++j) {
        col[g][j] += att[(static_cast<size_t>(g) * c.w + r) * c.n + j];
      }
    }
  }
  std::vector<double> red(c.n);
  for (int32_t j = 0; j < c.n; ++j) {
    double acc = o.reduce == GroupReduce::kMax ? -1.0 : 0.0;
    for (int32_t g = 0; g < c.group; ++g) {
      acc = o.reduce == GroupReduce::kMax ? std::max(acc, col[g][j]) : acc + col[g][j];
    }
    red[j] = o.reduce == GroupReduce::kMax ? acc : acc / c.group;
  }
  const int32_t start = *std::min_element(c.qpos.begin(), c.qpos.end());
  int32_t prefix = 0;
  while (prefix < c.n && c.kpos[prefix] < start) ++prefix;
  if (o.pooling == Pooling::kNone) return red;
  const int32_t half = o.kernel_size / 2;
  const double pad = o.pooling == Pooling::kMax ? -std::numeric_limits<double>::infinity() : 0.0;
  std::vector<double> padded(prefix + 2 * half, pad);
  std::copy(red.begin(), red.begin() + prefix, padded.begin() + half);
  std::vector<double> out = red;
  for (int32_t j = 0; j < prefix; ++j) {
    double acc = o.pooling == Pooling::kMax ? pad : 0.0;
    for (int32_t t = 0; t < o.kernel_size; ++t) {
      acc = o.pooling == Pooling::kMax ? std::max(acc, padded[j + t]) : acc + padded[j + t];
    }
    out[j] = o.pooling == Pooling::kMax ? acc : acc / o.kernel_size;
  }
  return out;
}

TEST_CASE("SnapKV and H2O agree with a dense re-implementation on random inputs",
          "[policy][scores]") {
  std::mt19937 rng(20240901);
  for (int iter = 0; iter < 400; ++iter) {
    const RandomCase c = MakeCase(rng, /*arbitrary_window=*/iter % 3 == 2);
    SnapKVOptions o;
    o.kernel_size = std::vector<int32_t>{1, 3, 5, 7, 9, 63}[rng() % 6];
    o.pooling = std::vector<Pooling>{Pooling::kNone, Pooling::kAvg, Pooling::kMax}[rng() % 3];
    o.reduce = rng() % 2 ? GroupReduce::kMax : GroupReduce::kMean;
    INFO("iter " << iter << " n=" << c.n << " d=" << c.d << " G=" << c.group << " w=" << c.w
                 << " k=" << o.kernel_size << " pooling=" << static_cast<int>(o.pooling)
                 << " reduce=" << static_cast<int>(o.reduce));
    const StreamKeys keys = Keys(c.keys, c.kpos, c.d);
    const GroupQueries window = Queries(c.queries, c.qpos, c.group, c.d);

    Vec scores(c.n);
    REQUIRE_OK(SnapKVScores(keys, window, o, absl::MakeSpan(scores)));
    const std::vector<double> expected = DenseSnapKV(c, o);
    for (int32_t j = 0; j < c.n; ++j) {
      INFO("j = " << j);
      REQUIRE(scores[j] == Approx(expected[j]).epsilon(1e-6).margin(1e-30));
    }

    // H2O without pooling is SnapKV's unpooled sum over every row given.
    SnapKVOptions unpooled = o;
    unpooled.pooling = Pooling::kNone;
    const std::vector<double> raw = DenseSnapKV(c, unpooled);
    Vec acc(c.n, 1.0f);
    REQUIRE_OK(AccumulateAttention(keys, window, o.reduce, absl::MakeSpan(acc)));
    for (int32_t j = 0; j < c.n; ++j) REQUIRE(acc[j] == Approx(1.0 + raw[j]).epsilon(1e-6));
  }
}

TEST_CASE("LastQueryAttention and TOVA agree with the dense tensor; rows sum to 1",
          "[policy][scores]") {
  std::mt19937 rng(7);
  for (int iter = 0; iter < 200; ++iter) {
    RandomCase c = MakeCase(rng, /*arbitrary_window=*/iter % 2 == 1);
    INFO("iter " << iter << " n=" << c.n << " d=" << c.d << " G=" << c.group);
    // Keep only the last window query of each head: [g][1][d]. Random window
    // positions may repeat; TOVA takes the first row at the highest position.
    const int32_t r_last = static_cast<int32_t>(
        std::lower_bound(c.qpos.begin(), c.qpos.end(), c.qpos.back()) - c.qpos.begin());
    RandomCase last = c;
    last.w = 1;
    last.qpos = {c.qpos.back()};
    last.queries.clear();
    for (int32_t g = 0; g < c.group; ++g) {
      const auto row = c.queries.begin() + (static_cast<size_t>(g) * c.w + r_last) * c.d;
      last.queries.insert(last.queries.end(), row, row + c.d);
    }
    const std::vector<double> att = DenseAttention(last);
    const StreamKeys keys = Keys(c.keys, c.kpos, c.d);

    Vec rows(static_cast<size_t>(c.group) * c.n);
    REQUIRE_OK(LastQueryAttention(keys, Queries(last.queries, last.qpos, c.group, c.d),
                                  absl::MakeSpan(rows)));
    const bool sees_any = c.kpos.front() <= last.qpos[0];
    for (int32_t g = 0; g < c.group; ++g) {
      double sum = 0;
      for (int32_t j = 0; j < c.n; ++j) {
        const float a = rows[static_cast<size_t>(g) * c.n + j];
        REQUIRE(a == Approx(att[static_cast<size_t>(g) * c.n + j]).epsilon(1e-6).margin(1e-30));
        if (c.kpos[j] > last.qpos[0]) REQUIRE(a == 0.0f);
        sum += a;
      }
      REQUIRE(sum == Approx(sees_any ? 1.0 : 0.0).margin(1e-6));
    }

    // TOVA over the whole window (it must pick the last row itself) of one
    // KV head is the group mean of those rows.
    const StreamKeys layer_keys[] = {keys};
    const GroupQueries layer_queries[] = {Queries(c.queries, c.qpos, c.group, c.d)};
    Vec tova(c.n);
    REQUIRE_OK(TovaScores(layer_keys, layer_queries, absl::MakeSpan(tova)));
    for (int32_t j = 0; j < c.n; ++j) {
      double mean = 0;
      for (int32_t g = 0; g < c.group; ++g) mean += att[static_cast<size_t>(g) * c.n + j];
      REQUIRE(tova[j] == Approx(mean / c.group).epsilon(1e-6).margin(1e-30));
    }
  }
}

// Inputs stored as f16 or bf16 give bit-identical scores to f32 arrays holding
// the same (rounded) values: widening is exact and the math is in float.
TEST_CASE("f16 and bf16 inputs score exactly like f32 holding the rounded values",
          "[policy][scores]") {
  std::mt19937 rng(99);
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    for (int iter = 0; iter < 30; ++iter) {
      RandomCase c = MakeCase(rng, false);
      INFO(DTypeName(dtype) << " iter " << iter);
      // 16-bit copies, and f32 copies of their exact values.
      std::vector<uint16_t> k16(c.keys.size()), q16(c.queries.size());
      for (size_t i = 0; i < c.keys.size(); ++i) {
        StoreFromFloat(k16.data(), i, dtype, c.keys[i]);
        c.keys[i] = LoadAsFloat(k16.data(), i, dtype);
      }
      for (size_t i = 0; i < c.queries.size(); ++i) {
        StoreFromFloat(q16.data(), i, dtype, c.queries[i]);
        c.queries[i] = LoadAsFloat(q16.data(), i, dtype);
      }
      const StreamKeys k32 = Keys(c.keys, c.kpos, c.d);
      const GroupQueries q32 = Queries(c.queries, c.qpos, c.group, c.d);
      StreamKeys k_half = k32;
      k_half.data = k16.data();
      k_half.dtype = dtype;
      GroupQueries q_half = q32;
      q_half.data = q16.data();
      q_half.dtype = dtype;

      Vec a(c.n), b(c.n);
      const SnapKVOptions o = Snap(5, Pooling::kAvg, GroupReduce::kMax);
      REQUIRE_OK(SnapKVScores(k32, q32, o, absl::MakeSpan(a)));
      REQUIRE_OK(SnapKVScores(k_half, q_half, o, absl::MakeSpan(b)));
      REQUIRE(a == b);
      // Mixed: 16-bit keys with f32 queries.
      REQUIRE_OK(SnapKVScores(k_half, q32, o, absl::MakeSpan(b)));
      REQUIRE(a == b);

      std::fill(a.begin(), a.end(), 0.0f);
      std::fill(b.begin(), b.end(), 0.0f);
      REQUIRE_OK(AccumulateAttention(k32, q32, GroupReduce::kMean, absl::MakeSpan(a)));
      REQUIRE_OK(AccumulateAttention(k_half, q_half, GroupReduce::kMean, absl::MakeSpan(b)));
      REQUIRE(a == b);

      REQUIRE_OK(KeyNormScores(k32, absl::MakeSpan(a)));
      REQUIRE_OK(KeyNormScores(k_half, absl::MakeSpan(b)));
      REQUIRE(a == b);

      const StreamKeys lk32[] = {k32}, lk16[] = {k_half};
      const GroupQueries lq32[] = {q32}, lq16[] = {q_half};
      REQUIRE_OK(TovaScores(lk32, lq32, absl::MakeSpan(a)));
      REQUIRE_OK(TovaScores(lk16, lq16, absl::MakeSpan(b)));
      REQUIRE(a == b);

      GroupQueries one32 = q32, one16 = q_half;
      one32.num_queries = one16.num_queries = 1;  // the data's first rows, read as [g][1][d]
      Vec ra(static_cast<size_t>(c.group) * c.n), rb(ra.size());
      REQUIRE_OK(LastQueryAttention(k32, one32, absl::MakeSpan(ra)));
      REQUIRE_OK(LastQueryAttention(k_half, one16, absl::MakeSpan(rb)));
      REQUIRE(ra == rb);
    }
  }
}

// ---------------------------------------------------------------------------
// Errors: InvalidArgument naming the problem, nothing written.

TEST_CASE("every scorer rejects bad inputs and writes nothing", "[policy][scores]") {
  const Vec kd = Concat({kE1, kE2, kZ});
  const std::vector<int32_t> kpos = {0, 1, 2};
  const Vec qd = Concat({kQA, kQB});
  const std::vector<int32_t> qpos = {2};
  const StreamKeys good_keys = Keys(kd, kpos);
  const GroupQueries good_q = Queries(qd, qpos, 2);  // two heads, one query each
  const std::vector<int32_t> bad_order = {0, 2, 2};
  const std::vector<int32_t> descending = {2, 1, 0};
  constexpr float kSentinel = -123.0f;

  // Each scorer in turn, on (keys, queries): every error must leave the output
  // (sized for the good inputs) untouched.
  auto all = [&](const StreamKeys& keys, const GroupQueries& q, StatusCode code,
                 const std::string& what, bool keys_only_error) {
    Vec out(3, kSentinel), rows(6, kSentinel);
    REQUIRE_ERROR(SnapKVScores(keys, q, SnapKVOptions(), absl::MakeSpan(out)), code, what);
    REQUIRE_ERROR(AccumulateAttention(keys, q, GroupReduce::kMean, absl::MakeSpan(out)), code,
                  what);
    REQUIRE_ERROR(LastQueryAttention(keys, q, absl::MakeSpan(rows)), code, what);
    const StreamKeys lk[] = {keys};
    const GroupQueries lq[] = {q};
    REQUIRE_ERROR(TovaScores(lk, lq, absl::MakeSpan(out)), code, what);
    if (keys_only_error) REQUIRE_ERROR(KeyNormScores(keys, absl::MakeSpan(out)), code, what);
    REQUIRE(out == Vec(3, kSentinel));
    REQUIRE(rows == Vec(6, kSentinel));
  };
  const StatusCode kInvalid = StatusCode::kInvalidArgument;

  SECTION("keys") {
    StreamKeys k = good_keys;
    k.data = nullptr;
    all(k, good_q, kInvalid, "keys: data is null", true);
    k = good_keys;
    k.positions = nullptr;
    all(k, good_q, kInvalid, "keys: positions is null", true);
    k = good_keys;
    k.num_tokens = -1;
    all(k, good_q, kInvalid, "num_tokens must be >= 0", true);
    k = good_keys;
    k.head_dim = 0;
    all(k, good_q, kInvalid, "keys: head_dim must be >= 1", true);
    k = good_keys;
    k.dtype = static_cast<DType>(9);
    all(k, good_q, kInvalid, "keys: unknown dtype", true);
    k = Keys(kd, bad_order);
    all(k, good_q, kInvalid, "strictly ascending", true);
    k = Keys(kd, descending);
    all(k, good_q, kInvalid, "strictly ascending", true);
  }
  SECTION("queries") {
    GroupQueries q = good_q;
    q.data = nullptr;
    all(good_keys, q, kInvalid, "queries: data is null", false);
    q = good_q;
    q.positions = nullptr;
    all(good_keys, q, kInvalid, "queries: positions is null", false);
    q = good_q;
    q.group_size = 0;
    all(good_keys, q, kInvalid, "group_size must be >= 1", false);
    q.group_size = -2;
    all(good_keys, q, kInvalid, "group_size must be >= 1", false);
    q = good_q;
    q.num_queries = -1;
    all(good_keys, q, kInvalid, "num_queries must be >= 0", false);
    q = good_q;
    q.head_dim = 0;
    all(good_keys, q, kInvalid, "queries: head_dim must be >= 1", false);
    q = good_q;
    q.dtype = static_cast<DType>(3);
    all(good_keys, q, kInvalid, "queries: unknown dtype", false);
    q = good_q;
    q.head_dim = 2;
    all(good_keys, q, kInvalid, "head_dim mismatch", false);
  }
  SECTION("output sizes") {
    for (size_t size : {0, 2, 4}) {
      Vec out(size, kSentinel);
      REQUIRE_ERROR(SnapKVScores(good_keys, good_q, SnapKVOptions(), absl::MakeSpan(out)), kInvalid,
                    "scores: size");
      REQUIRE_ERROR(AccumulateAttention(good_keys, good_q, GroupReduce::kMax, absl::MakeSpan(out)),
                    kInvalid, "scores: size");
      REQUIRE_ERROR(RecencyScores(good_keys, absl::MakeSpan(out)), kInvalid, "scores: size");
      REQUIRE_ERROR(KeyNormScores(good_keys, absl::MakeSpan(out)), kInvalid, "scores: size");
      const StreamKeys lk[] = {good_keys};
      const GroupQueries lq[] = {good_q};
      REQUIRE_ERROR(TovaScores(lk, lq, absl::MakeSpan(out)), kInvalid, "scores: size");
      REQUIRE(out == Vec(size, kSentinel));
    }
    for (size_t size : {3, 5, 7}) {  // rows need group_size * num_tokens = 6
      Vec rows(size, kSentinel);
      REQUIRE_ERROR(LastQueryAttention(good_keys, good_q, absl::MakeSpan(rows)), kInvalid,
                    "rows: size");
      REQUIRE(rows == Vec(size, kSentinel));
    }
  }
  SECTION("SnapKV options") {
    Vec out(3, kSentinel);
    for (int32_t k : {0, -1, -3, 2, 4, 8}) {
      for (Pooling p : {Pooling::kNone, Pooling::kAvg, Pooling::kMax}) {
        REQUIRE_ERROR(SnapKVScores(good_keys, good_q, Snap(k, p), absl::MakeSpan(out)), kInvalid,
                      "kernel_size must be odd and positive");
      }
    }
    REQUIRE_ERROR(SnapKVScores(good_keys, good_q, Snap(3, static_cast<Pooling>(7)),
                               absl::MakeSpan(out)),
                  kInvalid, "unknown Pooling");
    REQUIRE_ERROR(SnapKVScores(good_keys, good_q,
                               Snap(3, Pooling::kMax, static_cast<GroupReduce>(5)),
                               absl::MakeSpan(out)),
                  kInvalid, "unknown GroupReduce");
    REQUIRE_ERROR(AccumulateAttention(good_keys, good_q, static_cast<GroupReduce>(2),
                                      absl::MakeSpan(out)),
                  kInvalid, "unknown GroupReduce");
    REQUIRE(out == Vec(3, kSentinel));
  }
  SECTION("RecencyScores checks only positions") {
    Vec out(3, kSentinel);
    StreamKeys k = good_keys;
    k.positions = nullptr;
    REQUIRE_ERROR(RecencyScores(k, absl::MakeSpan(out)), kInvalid, "positions is null");
    REQUIRE_ERROR(RecencyScores(Keys(kd, bad_order), absl::MakeSpan(out)), kInvalid,
                  "strictly ascending");
    k = good_keys;
    k.num_tokens = -3;
    REQUIRE_ERROR(RecencyScores(k, absl::MakeSpan(out)), kInvalid, "num_tokens");
    REQUIRE(out == Vec(3, kSentinel));
  }
  SECTION("LastQueryAttention needs exactly one query") {
    Vec rows(6, kSentinel), empty_rows;
    const std::vector<int32_t> two = {1, 2};
    const Vec qd2 = Concat({kQA, kQA, kQB, kQB});
    REQUIRE_ERROR(LastQueryAttention(good_keys, Queries(qd2, two, 2), absl::MakeSpan(rows)),
                  kInvalid, "exactly one query");
    GroupQueries none = good_q;
    none.num_queries = 0;
    REQUIRE_ERROR(LastQueryAttention(good_keys, none, absl::MakeSpan(rows)), kInvalid,
                  "exactly one query");
    REQUIRE(rows == Vec(6, kSentinel));
  }
  SECTION("TOVA layer shape") {
    Vec out(3, kSentinel);
    REQUIRE_ERROR(TovaScores({}, {}, absl::MakeSpan(out)), kInvalid, "layer_keys is empty");
    const StreamKeys lk2[] = {good_keys, good_keys};
    const GroupQueries lq1[] = {good_q};
    REQUIRE_ERROR(TovaScores(lk2, lq1, absl::MakeSpan(out)), kInvalid, "2 KV heads");
    GroupQueries none = good_q;
    none.num_queries = 0;
    const GroupQueries lq_none[] = {good_q, none};
    REQUIRE_ERROR(TovaScores(lk2, lq_none, absl::MakeSpan(out)), kInvalid, "has no query");
    const std::vector<int32_t> at1 = {1};
    const GroupQueries lq_mixed[] = {good_q, Queries(qd, at1, 2)};
    REQUIRE_ERROR(TovaScores(lk2, lq_mixed, absl::MakeSpan(out)), kInvalid,
                  "last query is at position 1");
    // A bad second head is reported even though the first is fine.
    StreamKeys bad = good_keys;
    bad.data = nullptr;
    const StreamKeys lk_bad[] = {good_keys, bad};
    const GroupQueries lq2[] = {good_q, good_q};
    REQUIRE_ERROR(TovaScores(lk_bad, lq2, absl::MakeSpan(out)), kInvalid, "keys: data is null");
    REQUIRE(out == Vec(3, kSentinel));
  }
  SECTION("null arrays are fine for empty inputs") {
    StreamKeys empty;
    empty.head_dim = 4;
    GroupQueries q = good_q;
    REQUIRE_OK(SnapKVScores(empty, q, SnapKVOptions(), absl::Span<float>()));
    REQUIRE_OK(AccumulateAttention(empty, q, GroupReduce::kMax, absl::Span<float>()));
    REQUIRE_OK(RecencyScores(empty, absl::Span<float>()));
    REQUIRE_OK(KeyNormScores(empty, absl::Span<float>()));
    REQUIRE_OK(LastQueryAttention(empty, q, absl::Span<float>()));
    const StreamKeys lk[] = {empty};
    const GroupQueries lq[] = {q};
    REQUIRE_OK(TovaScores(lk, lq, absl::Span<float>()));
    GroupQueries no_queries;
    no_queries.group_size = 1;
    no_queries.head_dim = 4;
    Vec out(3, 0.0f);
    REQUIRE_OK(AccumulateAttention(good_keys, no_queries, GroupReduce::kMean, absl::MakeSpan(out)));
  }
}

}  // namespace
}  // namespace headpage::policy
