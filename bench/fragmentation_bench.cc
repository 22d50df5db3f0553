// SPDX-License-Identifier: Apache-2.0
// File: bench/fragmentation_bench.cc
//
// The serving-workload simulator (sim/workload/workload.h) on fixed
// configurations, so that its figures and its own speed can be tracked run to
// run. The time of an iteration is the host time of one whole simulation; the
// counters are what the simulation measured (docs/fragmentation.md explains
// each):
//
//   BM_ShareGpt/policy:P/page:S  500 ShareGPT-like requests arriving at once,
//       Llama-3-8B (256 streams a request) on a 16 GiB pool of bf16 KV, the
//       skewed head profile, budget 20% (pool-pressure: the floor).
//   BM_SkewedTailWaste/page:S    Ada-KV at 64 tokens per KV head (an 8-token
//       window) over the skewed profile, 200 requests on the same 16 GiB pool:
//       many heads keep little more than their window and Ada's floor, and the
//       counters say how much of those small streams' memory is the empty tail
//       of their last page (docs/fragmentation.md's table, on fewer requests).
//
// Policies by index: 0 none, 1 uniform, 2 pyramid, 3 ada, 4 dbudget, 5 pool-pressure.
// One iteration each: a run takes from a tenth of a second to a few seconds.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "absl/status/statusor.h"
#include "benchmark/benchmark.h"
#include "core/geometry.h"
#include "sim/workload/head_profile.h"
#include "sim/workload/workload.h"
#include "sim/workload/workload_dist.h"

namespace headpage {
namespace {

using benchmark::Counter;

// Setup failures are bugs in the benchmark: stop loudly.
template <typename T>
T Unwrap(absl::StatusOr<T> value, const char* what) {
  if (!value.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, value.status().ToString().c_str());
    std::abort();
  }
  return *std::move(value);
}

std::vector<WorkloadRequest> ShareGptRequests(int64_t n) {
  // A default WorkloadSource is the ShareGPT fit.
  return Unwrap(GenerateRequests(WorkloadSource(), n, INFINITY, /*seed=*/1), "GenerateRequests");
}

// Runs one configuration per iteration and reports its summary as counters.
void Simulate(benchmark::State& state, const std::vector<WorkloadRequest>& requests,
              const WorkloadOptions& options) {
  const HeadProfile profile =
      Unwrap(HeadProfile::Skewed(options.geometry, /*seed=*/1), "HeadProfile");
  WorkloadSummary s;
  for (auto _ : state) s = Unwrap(RunWorkload(requests, profile, options), "RunWorkload").summary;
  state.SetLabel(s.policy);
  state.counters["steps"] = Counter(static_cast<double>(s.steps));
  state.counters["peak_batch"] = Counter(s.peak_batch);
  state.counters["mean_batch"] = Counter(s.mean_batch);
  state.counters["preemptions"] = Counter(static_cast<double>(s.preemptions));
  state.counters["tokens_per_step"] = Counter(s.tokens_per_step);
  state.counters["mean_frag_pct"] = Counter(100 * s.mean_fragmentation);
  state.counters["final_frag_pct"] = Counter(100 * s.final_fragmentation);
  state.counters["admitted_frag_pct"] = Counter(100 * s.admitted_fragmentation);
  state.counters["small_streams_pct"] = Counter(100 * s.small_stream_share);
  state.counters["small_waste_pct"] = Counter(100 * s.small_stream_waste);
  state.counters["requests_per_s"] =
      Counter(static_cast<double>(s.requests), Counter::kIsIterationInvariantRate);
}

void BM_ShareGpt(benchmark::State& state) {
  static const std::vector<WorkloadRequest> requests = ShareGptRequests(500);
  WorkloadOptions o;
  o.policy = AllWorkloadPolicies()[static_cast<size_t>(state.range(0))];
  o.geometry.page_size = static_cast<int32_t>(state.range(1));
  o.pool_pages = Unwrap(PagesForBudget(o.geometry, 16.0), "PagesForBudget");
  Simulate(state, requests, o);
}
BENCHMARK(BM_ShareGpt)
    ->ArgsProduct({{0, 1, 3, 5}, {8, 16, 32}})
    ->ArgNames({"policy", "page"})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);

void BM_SkewedTailWaste(benchmark::State& state) {
  static const std::vector<WorkloadRequest> requests = ShareGptRequests(200);
  WorkloadOptions o;
  o.policy = WorkloadPolicy::kAda;
  o.budget = Budget::TokensPerHead(64);
  o.window = 8;
  o.geometry.page_size = static_cast<int32_t>(state.range(0));
  o.pool_pages = Unwrap(PagesForBudget(o.geometry, 16.0), "PagesForBudget");
  Simulate(state, requests, o);
}
BENCHMARK(BM_SkewedTailWaste)
    ->ArgName("page")
    ->Arg(1)
    ->Arg(4)
    ->Arg(8)
    ->Arg(16)
    ->Arg(32)
    ->Arg(64)
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace headpage

BENCHMARK_MAIN();
