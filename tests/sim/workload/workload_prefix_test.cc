// SPDX-License-Identifier: Apache-2.0
// The workload simulator's prefix sharing (WorkloadOptions::prefix_*): requests
// with a common system prompt, with and without the block manager's prefix
// cache, counted by hand on small cases.
#include <cmath>
#include <vector>

#include "sim/workload/head_profile.h"
#include "sim/workload/workload.h"
#include "sim/workload/workload_dist.h"
#include "tests/sim/workload/workload_test_helpers.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::Fixed;
using testing::Geometry;

WorkloadSummary Run(const std::vector<WorkloadRequest>& requests, const WorkloadOptions& o) {
  auto profile = HeadProfile::Uniform(o.geometry);
  REQUIRE_OK(profile);
  auto result = RunWorkload(requests, *profile, o);
  REQUIRE_OK(result);
  return result->summary;
}

// 1 layer x 2 kv heads = 2 streams, 4-token pages; prompts of 18 tokens whose
// first 16 are the common prefix, 2 new tokens each.
WorkloadOptions Shared(int64_t pool_pages, bool cache) {
  WorkloadOptions o;
  o.geometry = Geometry(1, 2, 4);
  o.pool_pages = pool_pages;
  o.watermark = 0.0;
  o.prefix_share = 1.0;
  o.prefix_tokens = 16;
  o.prefix_cache = cache;
  o.check_invariants = true;
  return o;
}

TEST_CASE("Workload prefix: a cached system prompt is held once", "[sim][workload]") {
  // Each request alone holds 18..20 tokens: 5 pages a stream, 10 in all. A
  // pool of 24 pages runs two at a time without the cache.
  const std::vector<WorkloadRequest> requests = Fixed(4, 18, 2);
  const WorkloadSummary plain = Run(requests, Shared(24, false));
  REQUIRE(plain.peak_batch == 2);
  REQUIRE(plain.prefix_hits == 0);
  REQUIRE(plain.final_cached_pages == 0);
  // With the cache the first request computes the prefix; the others start on
  // its 4 pages a stream and take 1 page a stream of their own: all four fit.
  const WorkloadSummary cached = Run(requests, Shared(24, true));
  REQUIRE(cached.peak_batch == 4);
  REQUIRE(cached.prefix_hits == 3);
  REQUIRE(cached.prefix_hit_tokens == 3 * 16);
  REQUIRE(cached.preemptions == 0);
  // The requests are gone, the prefix's 4 blocks of 2 pages stay (no request
  // filled a block of its own).
  REQUIRE(cached.final_cached_pages == 4 * 2);
  REQUIRE(cached.steps < plain.steps);
}

TEST_CASE("Workload prefix: only requests with the prefix hit, and only its blocks",
          "[sim][workload]") {
  WorkloadOptions o = Shared(400, true);
  o.prefix_share = 0.5;  // every second request
  const WorkloadSummary s = Run(Fixed(8, 18, 2), o);
  REQUIRE(s.prefix_hits == 3);  // requests 1, 3, 5, 7 share it; the first computes it
  REQUIRE(s.prefix_hit_tokens == 3 * 16);
}

TEST_CASE("Workload prefix: compression keeps the cached prefix whole", "[sim][workload]") {
  // Prompts of 16 shared + 20 own tokens, uniform 20% with a window of 4:
  // without the cache every request keeps what a 36-token prompt keeps (7
  // tokens). With it, the first request (a miss) does the same; a hit keeps
  // its 16 cached tokens whole, plus what a 20-token prompt keeps.
  WorkloadOptions o = Shared(400, false);
  o.policy = WorkloadPolicy::kUniform;
  o.window = 4;
  const double kept36 = Run(Fixed(1, 36, 1), o).kept_fraction * 36;
  const double kept20 = Run(Fixed(1, 20, 1), o).kept_fraction * 20;
  REQUIRE(kept36 == Approx(7));
  REQUIRE(kept20 < 16);
  REQUIRE(Run(Fixed(3, 36, 1), o).kept_fraction == Approx(kept36 / 36));
  o.prefix_cache = true;
  const WorkloadSummary s = Run(Fixed(3, 36, 1), o);
  REQUIRE(s.prefix_hits == 2);
  REQUIRE(s.kept_fraction == Approx((kept36 + 2 * (16 + kept20)) / (3 * 36)));
}

TEST_CASE("Workload prefix: a compressed prefix is computed once and shared",
          "[sim][workload]") {
  // Prompts of 16 shared + 20 own tokens, uniform 50% with a window of 4: the
  // prefix keeps 8 of its 16 tokens in each stream, once; every request starts
  // on it and keeps its own 20 tokens whole: 28 of 36.
  WorkloadOptions o = Shared(400, false);
  o.compressed_prefix = true;
  o.policy = WorkloadPolicy::kUniform;
  o.budget = Budget::Fraction(0.5);
  o.window = 4;
  const WorkloadSummary s = Run(Fixed(3, 36, 1), o);
  REQUIRE(s.completed == 3);
  REQUIRE(s.prefix_hits == 3);
  REQUIRE(s.prefix_hit_tokens == 3 * 16);
  REQUIRE(s.kept_fraction == Approx(28.0 / 36));
}

TEST_CASE("Workload prefix: bad options are refused", "[sim][workload]") {
  WorkloadOptions o = Shared(64, true);
  auto profile = HeadProfile::Uniform(o.geometry);
  REQUIRE_OK(profile);
  o.prefix_share = 1.5;
  REQUIRE_ERROR(RunWorkload(Fixed(1, 8, 1), *profile, o), absl::StatusCode::kInvalidArgument,
                "prefix share");
  o.prefix_share = 1.0;
  o.prefix_tokens = -1;
  REQUIRE_ERROR(RunWorkload(Fixed(1, 8, 1), *profile, o), absl::StatusCode::kInvalidArgument,
                "prefix tokens");
  o.prefix_tokens = 4;
  o.compressed_prefix = true;  // with the default policy, none
  REQUIRE_ERROR(RunWorkload(Fixed(1, 8, 1), *profile, o), absl::StatusCode::kInvalidArgument,
                "needs a policy that compresses");
}

}  // namespace
}  // namespace headpage
