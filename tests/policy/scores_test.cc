// SPDX-License-Identifier: Apache-2.0
// The scorers on hand-computed examples. Random inputs against a dense oracle
// are in scores_dense_test.cc, input errors in scores_errors_test.cc.
#include "policy/scores.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tests/policy/scores_test_util.h"
#include "tests/testing/status_matchers.h"

namespace headpage::policy::testing {
namespace {

using absl::StatusCode;

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

TEST_CASE("RandomScores: deterministic per seed, uniform from 0 up to 1", "[policy][scores]") {
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

}  // namespace
}  // namespace headpage::policy::testing
