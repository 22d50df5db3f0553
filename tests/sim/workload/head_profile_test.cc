// SPDX-License-Identifier: Apache-2.0
// The workload simulator's head profiles (sim/workload/head_profile.h).
#include "sim/workload/head_profile.h"

#include <cstdint>

#include "tests/sim/workload/workload_test_helpers.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::Geometry;
using testing::TraceProfile;

// ---------------------------------------------------------------------------
// Head profiles

TEST_CASE("Workload: head profiles are sorted curves of total mass 1", "[sim][workload]") {
  const CacheGeometry g = Geometry(4, 2, 16);
  auto uniform = HeadProfile::Uniform(g);
  auto skewed = HeadProfile::Skewed(g, 3);
  auto again = HeadProfile::Skewed(g, 3);
  REQUIRE_OK(uniform);
  REQUIRE_OK(skewed);
  REQUIRE_OK(again);
  for (const HeadProfile* p : {&*uniform, &*skewed}) {
    for (int32_t st = 0; st < 8; ++st) {
      const absl::Span<const double> mass = p->BinMass(st);
      double total = 0;
      for (size_t b = 0; b < mass.size(); ++b) {
        total += mass[b];
        if (b > 0) REQUIRE(mass[b] <= mass[b - 1]);
      }
      REQUIRE(total == Approx(1.0).epsilon(1e-9));
      REQUIRE(p->TopMass(st, 0.0) == 0.0);
      REQUIRE(p->TopMass(st, 1.0) == 1.0);
      REQUIRE(p->TopMass(st, 0.3) <= p->TopMass(st, 0.31));
    }
  }
  // x^a with a = 0.04: 90% of the mass on 7.2% of the tokens, in every stream.
  REQUIRE(uniform->TopMass(5, 0.0718) == Approx(0.9).epsilon(0.01));
  REQUIRE(uniform->TopMass(0, 0.25) == uniform->TopMass(7, 0.25));
  REQUIRE(skewed->TopMass(0, 0.01) != skewed->TopMass(1, 0.01));
  REQUIRE(skewed->TopMass(6, 0.01) == again->TopMass(6, 0.01));
  REQUIRE(skewed->name() == "skewed");

  REQUIRE_ERROR(HeadProfile::Uniform(g, 0.0), absl::StatusCode::kInvalidArgument, "concentration");
  REQUIRE_ERROR(HeadProfile::Skewed(g, 1, 0.04, -1.0), absl::StatusCode::kInvalidArgument, "skew");
  REQUIRE_ERROR(HeadProfile::Parse("zipf", g, 1), absl::StatusCode::kInvalidArgument,
                "unknown head profile");
  REQUIRE_ERROR(HeadProfile::Parse("trace:/nonexistent.safetensors", g, 1),
                absl::StatusCode::kNotFound, "/nonexistent.safetensors");
}

TEST_CASE("Workload: a trace profile is the trace's SnapKV scores, tiled", "[sim][workload]") {
  const CacheGeometry g = Geometry(8, 6, 16);
  const HeadProfile profile = TraceProfile("needle", g);
  const HeadProfile* p = &profile;
  REQUIRE(p->name() == "trace:needle");
  // 4 captured layers x 3 kv heads tiled onto 8 x 6: layers 2l and 2l + 1 share a
  // captured layer, heads h and h + 3 a trace head.
  REQUIRE(p->TopMass(0, 0.05) == p->TopMass(1 * 6 + 0, 0.05));
  REQUIRE(p->TopMass(2 * 6 + 1, 0.05) == p->TopMass(2 * 6 + 4, 0.05));
  REQUIRE(p->TopMass(0, 0.05) != p->TopMass(2 * 6, 0.05));
  // Real attention is concentrated: the top tenth of the tokens holds most of it.
  double mean = 0;
  for (int32_t st = 0; st < 48; ++st) {
    REQUIRE(p->TopMass(st, 0.1) > 0.3);
    mean += p->TopMass(st, 0.1) / 48;
  }
  REQUIRE(mean > 0.6);
}

}  // namespace
}  // namespace headpage
