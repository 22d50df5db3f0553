// SPDX-License-Identifier: Apache-2.0
// Helpers of the workload simulator's tests (tests/sim/workload/*_test.cc):
// small geometries, bundled traces' profiles and generated requests.
#ifndef HEADPAGE_TESTS_SIM_WORKLOAD_WORKLOAD_TEST_HELPERS_H_
#define HEADPAGE_TESTS_SIM_WORKLOAD_WORKLOAD_TEST_HELPERS_H_

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/geometry.h"
#include "sim/workload/head_profile.h"
#include "sim/workload/workload_dist.h"
#include "tests/testing/status_matchers.h"

namespace headpage::testing {

// Llama-3-8B's head_dim and dtype with `layers` x `heads` KV heads (4 q heads each).
inline CacheGeometry Geometry(int32_t layers, int32_t heads, int32_t page_size) {
  CacheGeometry g = CacheGeometry::Llama3_8B(DType::kBF16, page_size);
  g.num_layers = layers;
  g.num_kv_heads = heads;
  g.num_q_heads = heads * 4;
  return g;
}

// The profile of a bundled trace, tests/data/traces/<name>.safetensors.
inline HeadProfile TraceProfile(const char* name, const CacheGeometry& g) {
  auto p = HeadProfile::Parse(
      std::string("trace:") + HEADPAGE_SOURCE_DIR + "/tests/data/traces/" + name + ".safetensors",
      g, 1);
  REQUIRE_OK(p);
  return std::move(p).value();
}

// `n` requests from the --dist source `dist`.
inline std::vector<WorkloadRequest> Generate(const char* dist, int64_t n, double rate,
                                             uint64_t seed) {
  auto source = ParseWorkloadSource(dist);
  REQUIRE_OK(source);
  auto requests = GenerateRequests(*source, n, rate, seed);
  REQUIRE_OK(requests);
  return std::move(requests).value();
}

// `n` requests of `prompt` + `output` tokens, all arriving at time 0.
inline std::vector<WorkloadRequest> Fixed(int64_t n, int32_t prompt, int32_t output) {
  WorkloadSource source;
  source.kind = WorkloadSource::Kind::kFixed;
  source.fixed_prompt = prompt;
  source.fixed_output = output;
  auto requests = GenerateRequests(source, n, INFINITY, 1);
  REQUIRE_OK(requests);
  return std::move(requests).value();
}

}  // namespace headpage::testing

#endif  // HEADPAGE_TESTS_SIM_WORKLOAD_WORKLOAD_TEST_HELPERS_H_
