// SPDX-License-Identifier: Apache-2.0
// This file tests ref::GlobalKept: Validate, hand-computed cases, every error
// in the arrays' contents, and that the result equals policy::GlobalKept,
// which ref:: adapts.
#include "kernels/global_kept.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "policy/budget.h"
#include "policy/stream_scores.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using Ints = std::vector<int32_t>;
using Floats = std::vector<float>;

constexpr float kInf = std::numeric_limits<float>::infinity();

// Host arrays for GlobalKeptArgs: streams laid out back to back.
struct HostCase {
  Ints offsets = {0};
  Floats scores;
  Ints candidates;
  Ints floors;

  // A stream with these scores whose first `candidates` slots are candidates
  // (-1: all of them).
  void Add(const Floats& stream_scores, int32_t stream_candidates = -1, int32_t floor = 0) {
    scores.insert(scores.end(), stream_scores.begin(), stream_scores.end());
    offsets.push_back(static_cast<int32_t>(scores.size()));
    candidates.push_back(stream_candidates < 0 ? static_cast<int32_t>(stream_scores.size())
                                               : stream_candidates);
    floors.push_back(floor);
  }
  int32_t num_streams() const { return static_cast<int32_t>(candidates.size()); }

  GlobalKeptArgs Args(int32_t page_size, int64_t pages_to_free, int32_t* kept) const {
    GlobalKeptArgs args;
    args.num_streams = num_streams();
    args.score_offsets = offsets.data();
    args.num_scores = static_cast<int32_t>(scores.size());
    args.scores = scores.data();
    args.candidate_counts = candidates.data();
    args.floors = floors.data();
    args.page_size = page_size;
    args.pages_to_free = pages_to_free;
    args.kept_counts = kept;
    return args;
  }
};

Ints RunRef(const HostCase& c, int32_t page_size, int64_t pages_to_free) {
  Ints kept(static_cast<size_t>(c.num_streams()), -1);
  REQUIRE_OK(ref::GlobalKept(c.Args(page_size, pages_to_free, kept.data())));
  return kept;
}

// policy::GlobalKept on the same streams, as the adapter is meant to call it.
Ints RunPolicy(const HostCase& c, int32_t page_size, int64_t pages_to_free) {
  std::vector<policy::StreamScores> views;
  Ints positions(c.scores.size());
  std::iota(positions.begin(), positions.end(), 0);
  for (int32_t s = 0; s < c.num_streams(); ++s) {
    const int32_t n = c.offsets[s + 1] - c.offsets[s];
    views.push_back({absl::MakeConstSpan(c.scores.data() + c.offsets[s], static_cast<size_t>(n)),
                     absl::MakeConstSpan(positions.data(), static_cast<size_t>(n)),
                     {0, n - c.candidates[s]}});
  }
  const absl::StatusOr<Ints> kept = policy::GlobalKept(views, c.floors, page_size, pages_to_free);
  REQUIRE_OK(kept);
  return *kept;
}

// The expected error, with nothing written to kept_counts.
void RequireRefError(const HostCase& c, int32_t page_size, int64_t pages_to_free,
                     const char* substr) {
  Ints kept(static_cast<size_t>(c.num_streams()), -7);
  REQUIRE_ERROR(ref::GlobalKept(c.Args(page_size, pages_to_free, kept.data())),
                absl::StatusCode::kInvalidArgument, substr);
  REQUIRE(std::all_of(kept.begin(), kept.end(), [](int32_t k) { return k == -7; }));
}

TEST_CASE("ref::GlobalKept: hand example, fewest evictions that free the target",
          "[kernels][global_kept]") {
  // The policy's example (tests/policy/budget_global_test.cc). Stream A has
  // scores 4 1 3 2, shares .4 .1 .3 .2. Stream B has 1 1 6 2, shares
  // .1 .1 .6 .2. Page size 2. The eviction order, with equal shares taken
  // from the higher stream first, and the pages freed after each step:
  //   B.1 B.1 | A.1 B.2 A.2 | A.3 A.4 | B.6
  //     0   1 |   1   1   2 |   2   3 |   4
  HostCase c;
  c.Add({4, 1, 3, 2});
  c.Add({1, 1, 6, 2});
  REQUIRE(RunRef(c, 2, 0) == Ints{4, 4});
  REQUIRE(RunRef(c, 2, 1) == Ints{4, 2});
  REQUIRE(RunRef(c, 2, 2) == Ints{2, 1});  // B.2 is below the threshold, so it goes too
  REQUIRE(RunRef(c, 2, 3) == Ints{0, 1});
  REQUIRE(RunRef(c, 2, 4) == Ints{0, 0});
  REQUIRE(RunRef(c, 2, 5) == Ints{0, 0});  // more than can be freed
  for (int64_t pages = 0; pages <= 5; ++pages) {
    REQUIRE(RunRef(c, 2, pages) == RunPolicy(c, 2, pages));
  }
}

TEST_CASE("ref::GlobalKept: the slots after the candidates are protected, floors hold",
          "[kernels][global_kept]") {
  // B's last slot is its recent window: its candidates are 1 1 6, shares
  // .125 .125 .75. A's shares are .4 .1 .3 .2. Page size 2. Order and pages
  // freed:
  //   A.1 B.125 B.125 | A.2 A.3 | A.4 B.75
  //     0     0     1 |   2   2 |   3    3
  // B's last step, 2 tokens to 1, stays on one page.
  HostCase c;
  c.Add({4, 1, 3, 2});
  c.Add({1, 1, 6, 2}, 3);
  REQUIRE(RunRef(c, 2, 1) == Ints{3, 2});
  REQUIRE(RunRef(c, 2, 2) == Ints{2, 2});
  REQUIRE(RunRef(c, 2, 3) == Ints{0, 2});
  // Beyond the 3 freeable pages, everything the protection allows goes.
  REQUIRE(RunRef(c, 2, 4) == Ints{0, 1});

  // A's floor of 3 lets it free no page: only B's 1 is freeable.
  HostCase floored;
  floored.Add({4, 1, 3, 2}, -1, 3);
  floored.Add({1, 1, 6, 2}, 3);
  REQUIRE(RunRef(floored, 2, 1) == Ints{3, 2});
  REQUIRE(RunRef(floored, 2, 2) == Ints{3, 1});
  // A floor above the length keeps the whole stream.
  HostCase high;
  high.Add({4, 1, 3, 2}, -1, 99);
  high.Add({1, 1, 6, 2});
  REQUIRE(RunRef(high, 2, 2) == Ints{4, 0});
  for (int64_t pages = 0; pages <= 5; ++pages) {
    REQUIRE(RunRef(c, 2, pages) == RunPolicy(c, 2, pages));
    REQUIRE(RunRef(floored, 2, pages) == RunPolicy(floored, 2, pages));
    REQUIRE(RunRef(high, 2, pages) == RunPolicy(high, 2, pages));
  }
}

TEST_CASE("ref::GlobalKept: a stream without mass is uniform, equal shares go higher stream first",
          "[kernels][global_kept]") {
  // Stream 0 is all zeros, so its shares are .25 each. Stream 1's shares are
  // .1 .2 .3 .4. Page size 1. Order: 1.1 1.2 | 0 x4 | 1.3 1.4.
  HostCase zero;
  zero.Add({0, 0, 0, 0});
  zero.Add({1, 2, 3, 4});
  REQUIRE(RunRef(zero, 1, 2) == Ints{4, 2});
  REQUIRE(RunRef(zero, 1, 3) == Ints{3, 2});
  REQUIRE(RunRef(zero, 1, 7) == Ints{0, 1});
  // Two equal streams: every share is .5, and stream 1 goes first.
  HostCase equal;
  equal.Add({1, 1});
  equal.Add({3, 3});
  REQUIRE(RunRef(equal, 1, 1) == Ints{2, 1});
  REQUIRE(RunRef(equal, 1, 2) == Ints{2, 0});
  REQUIRE(RunRef(equal, 1, 3) == Ints{1, 0});
  // -0 is a valid score and ties +0 (one stream of mass 1).
  HostCase signed_zero;
  signed_zero.Add({-0.0f, 0.0f, 1.0f});
  signed_zero.Add({0.0f, -0.0f, 1.0f});
  REQUIRE(RunRef(signed_zero, 1, 3) == Ints{2, 1});
}

TEST_CASE("ref::GlobalKept equals policy::GlobalKept on random pools", "[kernels][global_kept]") {
  std::mt19937_64 rng(29);
  for (int iter = 0; iter < 300; ++iter) {
    HostCase c;
    const int32_t page_size = 1 + static_cast<int32_t>(rng() % 6);
    const int32_t num_streams = 1 + static_cast<int32_t>(rng() % 12);
    for (int32_t s = 0; s < num_streams; ++s) {
      // Lengths around page boundaries, and empty streams.
      const int32_t n = std::max<int32_t>(
          0, page_size * static_cast<int32_t>(rng() % 5) + static_cast<int32_t>(rng() % 3) - 1);
      Floats scores(static_cast<size_t>(n));
      const bool no_mass = rng() % 6 == 0;
      for (float& v : scores) {
        v = no_mass ? 0.0f
                    : (iter % 2 == 0 ? static_cast<float>(rng() % 4)
                                     : std::uniform_real_distribution<float>(0.0f, 1.0f)(rng));
      }
      const int32_t window = static_cast<int32_t>(rng() % 4);
      c.Add(scores, std::max(0, n - window), rng() % 3 == 0 ? static_cast<int32_t>(rng() % 20) : 0);
    }
    for (int64_t pages = 0; pages < 30; pages += 1 + static_cast<int64_t>(rng() % 3)) {
      INFO("iter " << iter << " pages_to_free " << pages);
      REQUIRE(RunRef(c, page_size, pages) == RunPolicy(c, page_size, pages));
    }
  }
}

TEST_CASE("GlobalKept Validate: counts, page size, target and pointers", "[kernels][global_kept]") {
  HostCase c;
  c.Add({1, 2, 3});
  Ints kept(1);
  const GlobalKeptArgs good = c.Args(4, 1, kept.data());
  REQUIRE_OK(Validate(good));
  // No streams needs no pointers.
  REQUIRE_OK(Validate(GlobalKeptArgs{0, nullptr, 0, nullptr, nullptr, nullptr, 1, 5}));

  GlobalKeptArgs args = good;
  args.num_streams = -1;
  REQUIRE_ERROR(Validate(args), absl::StatusCode::kInvalidArgument, "num_streams");
  args = good;
  args.num_scores = -1;
  REQUIRE_ERROR(Validate(args), absl::StatusCode::kInvalidArgument, "num_scores");
  args = good;
  args.page_size = 0;
  REQUIRE_ERROR(Validate(args), absl::StatusCode::kInvalidArgument, "page_size");
  args = good;
  args.pages_to_free = -1;
  REQUIRE_ERROR(Validate(args), absl::StatusCode::kInvalidArgument, "pages_to_free");
  args = good;
  args.num_scores = std::numeric_limits<int32_t>::max();
  args.page_size = 1;
  REQUIRE_ERROR(Validate(args), absl::StatusCode::kInvalidArgument, "int32 pages");
  for (int which = 0; which < 5; ++which) {
    args = good;
    if (which == 0) args.score_offsets = nullptr;
    if (which == 1) args.scores = nullptr;
    if (which == 2) args.candidate_counts = nullptr;
    if (which == 3) args.floors = nullptr;
    if (which == 4) args.kept_counts = nullptr;
    REQUIRE_ERROR(Validate(args), absl::StatusCode::kInvalidArgument, "null");
    REQUIRE_ERROR(ref::GlobalKept(args), absl::StatusCode::kInvalidArgument, "null");
  }
  // Scores may be null when there are none: every stream is empty.
  HostCase empty;
  empty.Add({});
  args = empty.Args(4, 1, kept.data());
  args.scores = nullptr;
  REQUIRE_OK(ref::GlobalKept(args));
  REQUIRE(kept == Ints{0});
}

TEST_CASE("ref::GlobalKept: bad contents are errors that write nothing", "[kernels][global_kept]") {
  auto two_streams = [] {
    HostCase c;
    c.Add({1, 2, 3, 4}, 3);
    c.Add({5, 6, 7}, 2);
    return c;
  };
  HostCase c = two_streams();
  c.offsets = {0, 5, 3};
  RequireRefError(c, 2, 1, "score_offsets");
  c = two_streams();
  c.offsets = {-1, 4, 7};
  RequireRefError(c, 2, 1, "score_offsets");
  c = two_streams();
  c.offsets[2] = 8;  // past num_scores
  RequireRefError(c, 2, 1, "num_scores");
  for (const int32_t bad : {-1, 4}) {
    c = two_streams();
    c.candidates[1] = bad;
    RequireRefError(c, 2, 1, "candidate count");
  }
  c = two_streams();
  c.floors[0] = -1;
  RequireRefError(c, 2, 1, "negative");
  for (const float bad : {-1.0f, kInf, std::nanf("")}) {
    c = two_streams();
    c.scores[5] = bad;  // stream 1's second candidate
    RequireRefError(c, 2, 1, std::isnan(bad) ? "NaN" : "finite and >= 0");
  }
  // Even with pages_to_free 0 the contents are checked, as the policy does.
  c = two_streams();
  c.scores[0] = -kInf;
  RequireRefError(c, 2, 0, "finite and >= 0");
  // A protected slot is no candidate: any score but NaN is accepted there.
  c = two_streams();
  c.scores[3] = -5.0f;
  c.scores[6] = kInf;
  REQUIRE(RunRef(c, 2, 1) == RunPolicy(c, 2, 1));
}

}  // namespace
}  // namespace headpage
