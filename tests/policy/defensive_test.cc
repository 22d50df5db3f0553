// SPDX-License-Identifier: Apache-2.0
// DefensiveKV's worst-case scores and its layer step, by hand.
#include "policy/defensive.h"

#include <cstdint>
#include <vector>

#include "tests/policy/scores_test_util.h"
#include "tests/testing/status_matchers.h"

namespace headpage::policy::testing {
namespace {

using absl::StatusCode;

// Zero keys: every query attends uniformly. Keys 0..4, window queries at
// positions 3 and 4 (w = 2), so the prefix is keys 0..2.
//   row @3 sees 4 keys: prefix 1/4 1/4 1/4 (mass 3/4)
//   row @4 sees 5 keys: prefix 1/5 1/5 1/5 (mass 3/5)
// avg pool k = 3 with zero padding: (1/6, 1/4, 1/6) and (2/15, 1/5, 2/15);
// rescaled to each row's mass, both become (9/42, 9/28, 9/42) resp.
// (6/35, 9/35, 6/35). Worst case m = (9/42, 9/28, 9/42), whose mean is 1/4,
// which floors slots 0 and 2.
TEST_CASE("DefensiveScores: pooled rows rescaled to their mass, max over the window, "
          "floored at the mean", "[policy][defensive]") {
  const Vec kd(5 * 4, 0.0f);
  const std::vector<int32_t> kpos = {0, 1, 2, 3, 4};
  const Vec qd = Concat({kQA, kQB});
  const std::vector<int32_t> qpos = {3, 4};
  Vec scores(5, -1.0f), mean(5, -1.0f);
  DefensiveStream measured;
  REQUIRE_OK(DefensiveScores(Keys(kd, kpos), Queries(qd, qpos, 1), 3, absl::MakeSpan(scores),
                             absl::MakeSpan(mean), &measured));
  RequireNear(scores, {0.25f, 9.0f / 28, 0.25f, 0, 0});
  RequireNear(mean, {0.225f, 0.225f, 0.225f, 0, 0});
  CHECK(measured.prefix == 3);
  // The released window bias reads the last w = 2 keys before the window:
  // (1/4 + 1/4) + (1/5 + 1/5).
  CHECK(measured.mass_before_window == Approx(0.9));
}

// A group of two q heads, one window query at position 3, no pooling. Keys
// Z E1 E2 | Z: QA weighs them 1 2 3 | 1, QB 1 3 2 | 1 (sum 7 each).
// Worst case over the group: (1/7, 3/7, 3/7), mean 1/3; the mean over the
// group, which SnapKV ranks by, is (1/7, 5/14, 5/14).
TEST_CASE("DefensiveScores: the worst case over the GQA group", "[policy][defensive]") {
  const Vec kd = Concat({kZ, kE1, kE2, kZ});
  const std::vector<int32_t> kpos = {0, 1, 2, 3};
  const Vec qd = Concat({kQA, kQB});
  const std::vector<int32_t> qpos = {3};
  Vec scores(4), mean(4);
  DefensiveStream measured;
  REQUIRE_OK(DefensiveScores(Keys(kd, kpos), Queries(qd, qpos, 2), 1, absl::MakeSpan(scores),
                             absl::MakeSpan(mean), &measured));
  RequireNear(scores, {1.0f / 3, 3.0f / 7, 3.0f / 7, 0});
  RequireNear(mean, {1.0f / 7, 5.0f / 14, 5.0f / 14, 0});
  CHECK(measured.prefix == 3);
  CHECK(measured.mass_before_window == Approx(5.0 / 7));  // key 2: 3/7 + 2/7

  SECTION("bad input is refused and writes nothing") {
    Vec untouched(4, -1.0f), untouched_mean(4, -1.0f);
    CHECK(DefensiveScores(Keys(kd, kpos), Queries(qd, qpos, 2), 2, absl::MakeSpan(untouched),
                          absl::MakeSpan(untouched_mean), &measured)
              .code() == StatusCode::kInvalidArgument);  // even kernel
    const std::vector<int32_t> none;
    CHECK(DefensiveScores(Keys(kd, kpos), Queries(qd, none, 2), 1, absl::MakeSpan(untouched),
                          absl::MakeSpan(untouched_mean), &measured)
              .code() == StatusCode::kInvalidArgument);  // empty window
    CHECK(untouched == Vec(4, -1.0f));
    CHECK(untouched_mean == Vec(4, -1.0f));
  }
}

// Two kv heads of 6 tokens, prefix 4 (a window of 2), window bias 0.1.
// Value norms (1 1 3 1) and (1 3 1 1) give the heads the shares (.5 .25 .75 .5)
// and (.5 .75 .25 .5): s' = (.2 .025 .15 .15) and (.05 .375 .025 .05), whose
// largest is .375. Stage 1 at threshold .8: head 0's mean attention
// (.5 .1 .2 .2) sorted is slots 0, 2, 3, 1 with cumulative .5 .7 .9: the first
// index reaching .8 is 2; head 1's (.05 .85 .05 .05) reaches it at once: 0.
TEST_CASE("DefensiveLayerScores: value shares across heads and the secured first stage",
          "[policy][defensive]") {
  Vec s0 = {0.4f, 0.1f, 0.2f, 0.3f, 0, 0}, s1 = {0.1f, 0.5f, 0.1f, 0.1f, 0, 0};
  const Vec a0 = {0.5f, 0.1f, 0.2f, 0.2f, 0, 0}, a1 = {0.05f, 0.85f, 0.05f, 0.05f, 0, 0};
  const Vec n0 = {1, 1, 3, 1, 1, 1}, n1 = {1, 3, 1, 1, 1, 1};
  const std::vector<absl::Span<const float>> mean = {a0, a1}, norms = {n0, n1};

  SECTION("capacity 5: the first stage is capped at trunc(4 * 5/6 - 2) = 1") {
    const std::vector<absl::Span<float>> scores = {absl::MakeSpan(s0), absl::MakeSpan(s1)};
    REQUIRE_OK(DefensiveLayerScores(scores, mean, norms, 4, 0.1, 5));
    RequireNear(s0, {0.375f, 0.025f, 0.15f, 0.15f, 0.375f, 0.375f});
    RequireNear(s1, {0.05f, 0.375f, 0.025f, 0.05f, 0.375f, 0.375f});
  }
  SECTION("capacity 6: the cap is 2, so head 0 secures slots 0 and 2") {
    const std::vector<absl::Span<float>> scores = {absl::MakeSpan(s0), absl::MakeSpan(s1)};
    REQUIRE_OK(DefensiveLayerScores(scores, mean, norms, 4, 0.1, 6));
    RequireNear(s0, {0.375f, 0.025f, 0.375f, 0.15f, 0.375f, 0.375f});
  }
  SECTION("capacity 3: a cap of trunc(4 x 3/6 - 2) = 0 secures nothing") {
    const std::vector<absl::Span<float>> scores = {absl::MakeSpan(s0), absl::MakeSpan(s1)};
    REQUIRE_OK(DefensiveLayerScores(scores, mean, norms, 4, 0.1, 3));
    RequireNear(s0, {0.2f, 0.025f, 0.15f, 0.15f, 0.375f, 0.375f});
  }
  SECTION("capacity 1: a negative cap, trunc(2/3 - 2) = -1, secures nothing either") {
    // (The released code's slice [:k] with k = -1 would secure all but one.)
    const std::vector<absl::Span<float>> scores = {absl::MakeSpan(s0), absl::MakeSpan(s1)};
    REQUIRE_OK(DefensiveLayerScores(scores, mean, norms, 4, 0.1, 1));
    RequireNear(s0, {0.2f, 0.025f, 0.15f, 0.15f, 0.375f, 0.375f});
  }
  SECTION("heads of different lengths are refused") {
    Vec short_scores = {0.1f, 0.2f};
    const std::vector<absl::Span<float>> scores = {absl::MakeSpan(s0), absl::MakeSpan(short_scores)};
    CHECK(DefensiveLayerScores(scores, mean, norms, 4, 0.1, 5).code() ==
          StatusCode::kInvalidArgument);
    CHECK(s0 == Vec{0.4f, 0.1f, 0.2f, 0.3f, 0, 0});
  }
}

}  // namespace
}  // namespace headpage::policy::testing
