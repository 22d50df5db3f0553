// SPDX-License-Identifier: Apache-2.0
// The serving-workload simulator's scheduler and policies
// (sim/workload/workload.h), on cases small enough to follow by hand, then on
// ShareGPT lengths and a real trace's profile.
#include "sim/workload/workload.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "sim/workload/head_profile.h"
#include "sim/workload/workload_dist.h"
#include "tests/sim/workload/workload_test_helpers.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::Generate;
using testing::Fixed;
using testing::Geometry;
using testing::TraceProfile;

HeadProfile Uniform(const CacheGeometry& g) {
  auto p = HeadProfile::Uniform(g);
  REQUIRE_OK(p);
  return std::move(p).value();
}

// `requests` with every output cut to at most `max_output` tokens. The cases
// stay small because a debug build (HEADPAGE_DEBUG_LEVEL=2, scripts/test's
// sanitizer pass) proves the block manager's invariants, O(pool), after every
// mutation: a case costs about (decode tokens) x (pool pages).
std::vector<WorkloadRequest> Capped(std::vector<WorkloadRequest> requests, int32_t max_output) {
  for (WorkloadRequest& r : requests) r.output_len = std::min(r.output_len, max_output);
  return requests;
}

// Options for the small cases: invariants proved after every step, no watermark.
WorkloadOptions Small(const CacheGeometry& g, int64_t pool_pages, WorkloadPolicy policy) {
  WorkloadOptions o;
  o.geometry = g;
  o.pool_pages = pool_pages;
  o.watermark = 0.0;
  o.policy = policy;
  o.check_invariants = true;
  return o;
}

WorkloadResult Run(const std::vector<WorkloadRequest>& requests, const HeadProfile& profile,
                   const WorkloadOptions& options) {
  auto result = RunWorkload(requests, profile, options);
  REQUIRE_OK(result);
  return std::move(result).value();
}

// What a test worked out by hand about a run.
struct Counted {
  int64_t steps;
  int64_t completed;
  int64_t preemptions;
  int32_t peak_batch;
  double mean_batch;
  double tokens_per_step;
  double final_fragmentation;
};

void RequireCounted(const WorkloadSummary& s, const Counted& c) {
  REQUIRE(s.steps == c.steps);
  REQUIRE(s.completed == c.completed);
  REQUIRE(s.preemptions == c.preemptions);
  REQUIRE(s.peak_batch == c.peak_batch);
  REQUIRE(s.mean_batch == Approx(c.mean_batch));
  REQUIRE(s.tokens_per_step == Approx(c.tokens_per_step));
  REQUIRE(s.final_fragmentation == Approx(c.final_fragmentation));
}

// The summary as CSV with the wall time left out: equal for equal runs.
std::string Fingerprint(WorkloadSummary s) {
  s.wall_s = 0;
  return WorkloadSummaryCsv({s});
}

// ---------------------------------------------------------------------------
// The scheduler, by hand

TEST_CASE("Workload: one request, counted by hand", "[sim][workload]") {
  // 2 layers x 2 kv heads = 4 streams, 4-token pages. Prompt 10, output 3: the
  // prefill step holds 10 tokens (3 pages a stream), then three decode steps
  // hold 11, 12, 13 (the last needs a 4th page); the request ends with 13 of
  // 16 slots a stream.
  const CacheGeometry g = Geometry(2, 2, 4);
  const WorkloadResult r = Run(Fixed(1, 10, 3), Uniform(g), Small(g, 100, WorkloadPolicy::kNone));
  const WorkloadSummary& s = r.summary;
  RequireCounted(s,
                 {/*steps=*/4, /*completed=*/1, /*preemptions=*/0, /*peak_batch=*/1,
                  /*mean_batch=*/1.0, /*tokens_per_step=*/0.75, /*final_fragmentation=*/3.0 / 16});
  REQUIRE(s.admitted_fragmentation == 2.0 / 12.0);
  // Over time: (8 + 4 + 0 + 12) empty slots of (48 + 48 + 48 + 64).
  REQUIRE(s.mean_fragmentation == Approx(24.0 / 208.0));
  REQUIRE(s.simulated_s == Approx(0.08));
  REQUIRE(s.mean_queue_s == 0.0);
  REQUIRE(s.kept_fraction == 1.0);
  REQUIRE(r.steps.size() == 4);
  const int64_t pages[] = {12, 12, 12, 16}, used[] = {40, 44, 48, 52}, tokens[] = {0, 1, 1, 1};
  for (size_t i = 0; i < 4; ++i) {
    CAPTURE(i);
    REQUIRE(r.steps[i].step == static_cast<int64_t>(i));
    REQUIRE(r.steps[i].pages_in_use == pages[i]);
    REQUIRE(r.steps[i].used_slots == used[i]);
    REQUIRE(r.steps[i].tokens == tokens[i]);
    REQUIRE(r.steps[i].running == 1);
  }
  REQUIRE(r.steps[0].admitted == 1);
  REQUIRE(r.steps[3].completed == 1);
  const std::string csv = WorkloadStepsCsv(s, r.steps);
  REQUIRE(std::count(csv.begin(), csv.end(), '\n') == 5);
  REQUIRE(csv.find("none,4,3,0.060,1,0,0,1,0,1,0,16,64,52,12,0.187500,") != std::string::npos);
}

TEST_CASE("Workload: head classes, counted by hand", "[sim][workload]") {
  // 2 layers x 2 kv heads, 4-token pages, one request of 400 prompt tokens. A
  // profile of one layer (0.9, 0.1), tiled over both layers: at sparsity 0.5
  // kv head 0 of each layer is a retrieval head (400 tokens, 100 pages), kv
  // head 1 streams (64 sinks + 256 recent = 320 tokens, 80 pages).
  const CacheGeometry g = Geometry(2, 2, 4);
  WorkloadOptions o = Small(g, 1000, WorkloadPolicy::kHeadClasses);
  REQUIRE_ERROR(RunWorkload(Fixed(1, 400, 1), Uniform(g), o), absl::StatusCode::kInvalidArgument,
                "head-classes needs a head profile");
  auto classes = policy::HeadClasses::FromScores(1, 2, {0.9f, 0.1f});
  REQUIRE_OK(classes);
  o.head_classes = std::make_shared<const policy::HeadClasses>(*classes);
  const WorkloadResult r = Run(Fixed(1, 400, 1), Uniform(g), o);
  REQUIRE(r.steps[0].used_slots == 2 * (400 + 320));
  REQUIRE(r.steps[0].pages_in_use == 2 * (100 + 80));
  REQUIRE(r.summary.kept_fraction == Approx(720.0 / 800.0));
  // Every head streams at sparsity 1; a short prompt is kept whole.
  o.head_sparsity = 1.0;
  REQUIRE(Run(Fixed(1, 400, 1), Uniform(g), o).steps[0].used_slots == 4 * 320);
  REQUIRE(Run(Fixed(1, 200, 1), Uniform(g), o).steps[0].used_slots == 4 * 200);
  REQUIRE(ParseWorkloadPolicy("head-classes").value() == WorkloadPolicy::kHeadClasses);
  const std::vector<WorkloadPolicy> all = AllWorkloadPolicies();
  REQUIRE(std::count(all.begin(), all.end(), WorkloadPolicy::kHeadClasses) == 0);  // --heads adds it
}

TEST_CASE("Workload: decode-time compression, counted by hand", "[sim][workload]") {
  // 4 streams, 4-token pages, uniform at 50% with a 2-token window. The 16-token
  // prompt keeps 8 tokens a stream; after 4 generated tokens a stream holds 12
  // and is cut to half of the 20 seen, 10; after 8 it holds 14, cut to 12.
  const CacheGeometry g = Geometry(2, 2, 4);
  WorkloadOptions o = Small(g, 100, WorkloadPolicy::kUniform);
  o.budget = Budget::Fraction(0.5);
  o.window = 2;
  o.compress_every = 4;
  const WorkloadResult r = Run(Fixed(1, 16, 8), Uniform(g), o);
  const int64_t used[] = {32, 36, 40, 44, 40, 44, 48, 52, 48};
  REQUIRE(r.steps.size() == 9);
  for (size_t i = 0; i < 9; ++i) {
    CAPTURE(i);
    REQUIRE(r.steps[i].used_slots == used[i]);
  }
  // Without it the request ends with 8 + 8 tokens a stream.
  o.compress_every = 0;
  REQUIRE(Run(Fixed(1, 16, 8), Uniform(g), o).steps.back().used_slots == 64);
  // Preempted, a request comes back with its generated tokens as prompt: it is
  // compressed whole at admission and counts its next compress_every from there.
  {
    WorkloadOptions tight = o;
    tight.compress_every = 4;
    // 28 pages: both compressed requests fit until they need 4 pages a stream (7
    // generated tokens); the newer is preempted and comes back with 22 tokens.
    tight.pool_pages = 28;
    const WorkloadResult both = Run(Fixed(2, 16, 12), Uniform(g), tight);
    REQUIRE(both.summary.completed == 2);
    REQUIRE(both.summary.preemptions >= 1);
  }
  // None keeps everything either way.
  WorkloadOptions none = Small(g, 100, WorkloadPolicy::kNone);
  none.compress_every = 4;
  REQUIRE(Run(Fixed(1, 16, 8), Uniform(g), none).steps.back().used_slots == 96);
}

TEST_CASE("Workload: preemption by recompute, counted by hand", "[sim][workload]") {
  // One stream, 4-token pages, a pool of 4 pages. Two requests of prompt 4 and
  // output 8 (3 pages each at the end) are both admitted (1 page each) and
  // decode side by side until step 5, when the older needs its third page and
  // the pool has none: the newer is preempted (2 pages back). The older ends
  // at step 8; the newer comes back at step 9 with 4 + 4 tokens to prefill
  // again and decodes its last 4 tokens in steps 10-13.
  const CacheGeometry g = Geometry(1, 1, 4);
  const WorkloadResult r = Run(Fixed(2, 4, 8), Uniform(g), Small(g, 4, WorkloadPolicy::kNone));
  const WorkloadSummary& s = r.summary;
  RequireCounted(s, {/*steps=*/14, /*completed=*/2, /*preemptions=*/1, /*peak_batch=*/2,
                     /*mean_batch=*/19.0 / 14, /*tokens_per_step=*/16.0 / 14,
                     /*final_fragmentation=*/0.0});
  REQUIRE(s.recomputed_tokens == 8);
  const int32_t running[] = {2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  const int64_t pages[] = {2, 4, 4, 4, 4, 3, 3, 3, 3, 2, 3, 3, 3, 3};
  for (size_t i = 0; i < 14; ++i) {
    CAPTURE(i);
    REQUIRE(r.steps[i].running == running[i]);
    REQUIRE(r.steps[i].pages_in_use == pages[i]);
    REQUIRE(r.steps[i].preempted == (i == 5 ? 1 : 0));
  }
  REQUIRE(r.steps[9].admitted == 1);
  REQUIRE(r.steps[8].completed == 1);
  REQUIRE(r.steps[13].completed == 1);
}

TEST_CASE("Workload: pool-pressure eviction instead of preemption, counted by hand",
          "[sim][workload]") {
  // One stream, 4-token pages, 20 pages. Two requests of prompt 40 and output 8
  // fill the pool at admission (10 pages each). A budget of 32 keeps only the
  // 32-token window of each prompt, and what it generated: 8 candidates each.
  // At step 1 both need a page: the global allocator evicts 4 tokens (one page)
  // from each, the lowest-ranked of the 8 (two groups could go, it takes what
  // the step needs); at step 5 again. Nobody is preempted; each ends with
  // 48 - 8 = 40 tokens.
  const CacheGeometry g = Geometry(1, 1, 4);
  WorkloadOptions o = Small(g, 20, WorkloadPolicy::kPoolPressure);
  o.budget = Budget::TokensPerHead(32);
  o.pressure_headroom = 0.0;
  const std::vector<WorkloadRequest> requests = Fixed(2, 40, 8);
  const WorkloadResult pressure = Run(requests, Uniform(g), o);
  // Each ends with 40 tokens in 10 full pages.
  RequireCounted(pressure.summary, {/*steps=*/9, /*completed=*/2, /*preemptions=*/0,
                                    /*peak_batch=*/2, /*mean_batch=*/2.0,
                                    /*tokens_per_step=*/16.0 / 9, /*final_fragmentation=*/0.0});
  REQUIRE(pressure.summary.pressure_rounds == 2);
  REQUIRE(pressure.summary.evicted_tokens == 16);
  REQUIRE(pressure.summary.evicted_fraction == 16.0 / 80.0);  // of the prompts' 2 x 40 tokens
  REQUIRE(pressure.steps[1].evicted_tokens == 8);
  REQUIRE(pressure.steps[5].evicted_tokens == 8);

  // The vLLM baseline on the same pool preempts.
  o.policy = WorkloadPolicy::kNone;
  const WorkloadResult baseline = Run(requests, Uniform(g), o);
  REQUIRE(baseline.summary.preemptions >= 1);
  REQUIRE(baseline.summary.steps > pressure.summary.steps);

  // A floor of 36 keeps 4 of the 8 candidates: a page (4 tokens) can go at
  // step 1, but at step 5 nothing is above the floor: it preempts then.
  o.policy = WorkloadPolicy::kPoolPressure;
  o.budget = Budget::TokensPerHead(36);
  const WorkloadResult partial = Run(requests, Uniform(g), o);
  REQUIRE(partial.summary.evicted_tokens == 8);
  REQUIRE(partial.steps[1].evicted_tokens == 8);
  REQUIRE(partial.summary.preemptions >= 1);

  // Floors at the whole prompt leave nothing to evict: it preempts like none.
  o.budget = Budget::TokensPerHead(40);
  const WorkloadResult floored = Run(requests, Uniform(g), o);
  REQUIRE(floored.summary.evicted_tokens == 0);
  REQUIRE(floored.summary.preemptions == baseline.summary.preemptions);
  REQUIRE(floored.summary.steps == baseline.summary.steps);
}

TEST_CASE("Workload: pool-pressure brings preemptions to zero where the floors allow",
          "[sim][workload]") {
  // A loaded pool (about 5 requests of the mean length) with outputs of up to
  // 150 tokens: the baseline preempts, eviction down to 10% floors does not.
  const CacheGeometry g = Geometry(1, 2, 16);
  auto profile = HeadProfile::Skewed(g, 1);
  REQUIRE_OK(profile);
  const std::vector<WorkloadRequest> requests = Capped(Generate("sharegpt", 40, INFINITY, 2), 150);
  WorkloadOptions o = Small(g, 1500, WorkloadPolicy::kNone);
  o.budget = Budget::Fraction(0.1);
  const WorkloadResult none = Run(requests, *profile, o);
  o.policy = WorkloadPolicy::kPoolPressure;
  const WorkloadResult pressure = Run(requests, *profile, o);
  CAPTURE(Fingerprint(none.summary), Fingerprint(pressure.summary));
  REQUIRE(none.summary.preemptions > 0);
  REQUIRE(pressure.summary.preemptions == 0);
  REQUIRE(pressure.summary.evicted_tokens > 0);
  int64_t evicted = 0;  // the steps add up to the summary
  for (const WorkloadStep& step : pressure.steps) evicted += step.evicted_tokens;
  REQUIRE(evicted == pressure.summary.evicted_tokens);
  REQUIRE(pressure.summary.completed == 40);
  REQUIRE(pressure.summary.tokens_per_step > none.summary.tokens_per_step);
}

TEST_CASE("Workload: a request that can never fit is rejected, the rest run", "[sim][workload]") {
  const CacheGeometry g = Geometry(1, 1, 4);
  std::vector<WorkloadRequest> requests = Fixed(3, 4, 4);
  requests[1].prompt_len = 100;  // 26 pages > the pool of 8
  const WorkloadResult r = Run(requests, Uniform(g), Small(g, 8, WorkloadPolicy::kNone));
  REQUIRE(r.summary.rejected == 1);
  REQUIRE(r.summary.completed == 2);
}

TEST_CASE("Workload: admission keeps the watermark, the batch and the prefill budget",
          "[sim][workload]") {
  const CacheGeometry g = Geometry(1, 1, 4);
  // A 1% watermark of 100 pages is 1 page: 24 prompts of 16 tokens (4 pages
  // each) fit 24 at once, not 25.
  WorkloadOptions o = Small(g, 100, WorkloadPolicy::kNone);
  o.watermark = 0.01;
  REQUIRE(Run(Fixed(30, 16, 1), Uniform(g), o).steps[0].admitted == 24);
  o.max_batch = 5;
  REQUIRE(Run(Fixed(30, 16, 1), Uniform(g), o).summary.peak_batch == 5);
  o.max_batch = 256;
  o.max_prefill_tokens = 40;  // two 16-token prompts a step
  REQUIRE(Run(Fixed(30, 16, 1), Uniform(g), o).steps[0].admitted == 2);
  o.max_prefill_tokens = 10;  // a longer prompt still goes, alone
  REQUIRE(Run(Fixed(30, 16, 1), Uniform(g), o).steps[0].admitted == 1);
}

// ---------------------------------------------------------------------------
// Policies and figures

TEST_CASE("Workload: no eviction at page 16 wastes ~0.3% on ShareGPT lengths", "[sim][workload]") {
  // The research notes' figure from the real trace: 0.27% at completion. It
  // depends only on each request's final length P + O, so one stream does, and
  // each request is prefilled to P + O - 1 and decodes the last token.
  const CacheGeometry g = Geometry(1, 1, 16);
  std::vector<WorkloadRequest> requests = Generate("sharegpt", 3000, INFINITY, 1);
  for (WorkloadRequest& r : requests) {
    r.prompt_len += r.output_len - 1;
    r.output_len = 1;
  }
  WorkloadOptions o = Small(g, 2000, WorkloadPolicy::kNone);
  o.check_invariants = false;  // the block manager's own checks run in debug builds
  const WorkloadResult r = Run(requests, Uniform(g), o);
  REQUIRE(r.summary.completed == 3000);
  REQUIRE(r.summary.final_fragmentation > 0.0020);
  REQUIRE(r.summary.final_fragmentation < 0.0035);
}

TEST_CASE("Workload: the policies keep what their budgets say", "[sim][workload]") {
  const CacheGeometry g = Geometry(2, 8, 16);
  auto profile = HeadProfile::Skewed(g, 1);
  REQUIRE_OK(profile);
  // Compression happens at admission: one output token is enough.
  const std::vector<WorkloadRequest> requests = Capped(Generate("sharegpt", 60, INFINITY, 4), 1);
  // Room for what can be alive at once: two steps' prefills, at most 2048
  // tokens a step or one longer prompt (<= 8192) alone.
  WorkloadOptions o = Small(g, 17000, WorkloadPolicy::kNone);
  o.max_prefill_tokens = 2048;
  auto run = [&](WorkloadPolicy policy, Budget budget) {
    o.policy = policy;
    o.budget = budget;
    return Run(requests, *profile, o).summary;
  };
  const WorkloadSummary none = run(WorkloadPolicy::kNone, Budget::Fraction(0.2));
  REQUIRE(none.kept_fraction == 1.0);
  REQUIRE(none.preemptions == 0);
  for (const WorkloadPolicy policy :
       {WorkloadPolicy::kUniform, WorkloadPolicy::kPyramid, WorkloadPolicy::kAda}) {
    const WorkloadSummary s = run(policy, Budget::Fraction(0.2));
    CAPTURE(Fingerprint(s));
    // 20% of each prompt (a little more: short prompts keep their window).
    REQUIRE(s.kept_fraction > 0.19);
    REQUIRE(s.kept_fraction < 0.23);
    // Shorter streams, each with its own partly filled last page: more waste.
    REQUIRE(s.admitted_fragmentation > 2 * none.admitted_fragmentation);
    REQUIRE(s.steps == none.steps);  // nothing is short of memory here
  }
  // Ada moves the budget between heads: many heads at a 64-token budget keep
  // only their window and Ada's floor, small streams whose last page is often
  // mostly empty.
  const WorkloadSummary uniform64 = run(WorkloadPolicy::kUniform, Budget::TokensPerHead(64));
  const WorkloadSummary ada64 = run(WorkloadPolicy::kAda, Budget::TokensPerHead(64));
  REQUIRE(ada64.kept_fraction == Approx(uniform64.kept_fraction).epsilon(0.02));
  REQUIRE(ada64.small_stream_share > 0.3);
  REQUIRE(ada64.small_stream_waste > 0.1);
  // SnapKV's 32-token window is a floor under every head; KVCache-Factory's 8
  // lets heads go below 32 tokens.
  o.small_stream_tokens = 32;
  REQUIRE(run(WorkloadPolicy::kAda, Budget::TokensPerHead(64)).small_stream_share == 0.0);
  o.window = 8;
  const WorkloadSummary ada64_w8 = run(WorkloadPolicy::kAda, Budget::TokensPerHead(64));
  o.window = -1;
  o.small_stream_tokens = 64;
  REQUIRE(ada64_w8.kept_fraction == Approx(ada64.kept_fraction).epsilon(0.02));
  REQUIRE(ada64_w8.small_stream_share > 0.05);
  // DBudgetKV ignores the budget and keeps what its threshold allows.
  const WorkloadSummary dbudget = run(WorkloadPolicy::kDBudget, Budget::Fraction(0.2));
  REQUIRE(dbudget.kept_fraction < 1.0);
  REQUIRE(dbudget.kept_fraction > 0.0);
}

TEST_CASE("Workload: runs are deterministic", "[sim][workload]") {
  const CacheGeometry g = Geometry(2, 1, 8);
  auto profile = HeadProfile::Skewed(g, 9);
  REQUIRE_OK(profile);
  // Random arrivals and lengths, with prompts cut to an eighth so that decoding
  // (outputs up to 200 tokens) runs the pool short.
  std::vector<WorkloadRequest> requests = Capped(Generate("sharegpt", 16, 50.0, 9), 200);
  for (WorkloadRequest& r : requests) r.prompt_len = std::max(40, r.prompt_len / 8);
  bool pressed = false, preempted = false;
  for (const WorkloadPolicy policy : AllWorkloadPolicies()) {
    CAPTURE(WorkloadPolicyName(policy));
    WorkloadOptions o = Small(g, 300, policy);  // about 5 prompts
    const WorkloadResult a = Run(requests, *profile, o), b = Run(requests, *profile, o);
    REQUIRE(Fingerprint(a.summary) == Fingerprint(b.summary));
    REQUIRE(WorkloadStepsCsv(a.summary, a.steps) == WorkloadStepsCsv(b.summary, b.steps));
    REQUIRE(a.summary.completed == 16);
    pressed |= a.summary.evicted_tokens > 0;
    preempted |= a.summary.preemptions > 0;
  }
  REQUIRE(pressed);  // the pool was short: eviction and preemption ran too
  REQUIRE(preempted);
}

TEST_CASE("Workload: bad options are refused with the reason", "[sim][workload]") {
  {
    const CacheGeometry g = Geometry(2, 2, 4);
    WorkloadOptions o = Small(g, 100, WorkloadPolicy::kUniform);
    o.compress_every = -1;
    REQUIRE(RunWorkload(Fixed(1, 16, 8), Uniform(g), o).status().code() ==
            absl::StatusCode::kInvalidArgument);
  }
  const CacheGeometry g = Geometry(1, 1, 4);
  const HeadProfile profile = Uniform(g);
  const std::vector<WorkloadRequest> requests = Fixed(2, 4, 4);
  struct Bad {
    void (*edit)(WorkloadOptions*);
    const char* message;
  };
  for (const Bad& b :
       {Bad{[](WorkloadOptions* o) { o->pool_pages = 0; }, "at least one page"},
        Bad{[](WorkloadOptions* o) { o->pool_pages = int64_t{1} << 30; }, "2^31 - 1 slots"},
        Bad{[](WorkloadOptions* o) { o->watermark = 1.0; }, "watermark"},
        Bad{[](WorkloadOptions* o) { o->max_batch = 0; }, "max_batch"},
        Bad{[](WorkloadOptions* o) { o->step_s = 0; }, "step_s"},
        Bad{[](WorkloadOptions* o) { o->budget = Budget::Fraction(1.5); }, "budget"},
        Bad{[](WorkloadOptions* o) { o->pressure_headroom = 1.0; }, "headroom"},
        Bad{[](WorkloadOptions* o) { o->window = -2; }, "window -2"},
        Bad{[](WorkloadOptions* o) { o->geometry.num_kv_heads = 2; }, "head profile"},
        Bad{[](WorkloadOptions* o) { o->geometry.page_size = 0; }, "page_size"}}) {
    WorkloadOptions o = Small(g, 8, WorkloadPolicy::kNone);
    b.edit(&o);
    REQUIRE_ERROR(RunWorkload(requests, profile, o), absl::StatusCode::kInvalidArgument, b.message);
  }
  std::vector<WorkloadRequest> unordered = requests;
  unordered[0].arrival_s = 5;
  REQUIRE_ERROR(RunWorkload(unordered, profile, Small(g, 8, WorkloadPolicy::kNone)),
                absl::StatusCode::kInvalidArgument, "arrival order");
  std::vector<WorkloadRequest> empty_prompt = requests;
  empty_prompt[1].prompt_len = 0;
  REQUIRE_ERROR(RunWorkload(empty_prompt, profile, Small(g, 8, WorkloadPolicy::kNone)),
                absl::StatusCode::kInvalidArgument, "request 1 has prompt 0");
  REQUIRE_ERROR(ParseWorkloadPolicy("lru"), absl::StatusCode::kInvalidArgument, "pool-pressure");
  for (const WorkloadPolicy p : AllWorkloadPolicies()) {
    REQUIRE(*ParseWorkloadPolicy(WorkloadPolicyName(p)) == p);
  }
}

TEST_CASE("Workload: a sweep keeps the pool's bytes across page sizes", "[sim][workload]") {
  const CacheGeometry g = Geometry(1, 2, 8);
  const HeadProfile profile = Uniform(g);
  const std::vector<WorkloadRequest> requests = Capped(Generate("sharegpt", 8, INFINITY, 3), 40);
  WorkloadOptions o = Small(g, 5000, WorkloadPolicy::kNone);  // 40,000 slots
  const std::vector<WorkloadPolicy> policies = {WorkloadPolicy::kNone, WorkloadPolicy::kUniform};
  auto one = RunWorkloadSweep(requests, profile, o, {4, 32}, policies, 1);
  auto two = RunWorkloadSweep(requests, profile, o, {4, 32}, policies, 2);
  REQUIRE_OK(one);
  REQUIRE_OK(two);
  REQUIRE(one->size() == 4);
  const int32_t sizes[] = {4, 4, 32, 32};
  for (size_t i = 0; i < 4; ++i) {
    CAPTURE(i);
    REQUIRE((*one)[i].page_size == sizes[i]);
    REQUIRE((*one)[i].policy == WorkloadPolicyName(policies[i % 2]));
    REQUIRE((*one)[i].pool_pages * (*one)[i].page_size == 40000);
    REQUIRE(Fingerprint((*one)[i]) == Fingerprint((*two)[i]));
  }
  const std::string csv = WorkloadSummaryCsv(*one);
  REQUIRE(
      csv.rfind("policy,page_size,requests,steps,peak_batch,mean_batch,preemptions,tokens_per_step,"
                "mean_fragmentation,final_fragmentation,",
                0) == 0);
  REQUIRE(std::count(csv.begin(), csv.end(), '\n') == 5);
  REQUIRE_ERROR(RunWorkloadSweep(requests, profile, o, {}, policies),
                absl::StatusCode::kInvalidArgument, "no page size");
  REQUIRE_ERROR(RunWorkloadSweep(requests, profile, o, {0}, policies),
                absl::StatusCode::kInvalidArgument, "page_size");
}

TEST_CASE("Workload: every policy runs on a real trace's profile", "[sim][workload]") {
  const CacheGeometry g = Geometry(2, 4, 16);
  const HeadProfile profile = TraceProfile("summary", g);
  const std::vector<WorkloadRequest> requests = Capped(Generate("sharegpt", 15, INFINITY, 8), 10);
  for (const WorkloadPolicy policy : AllWorkloadPolicies()) {
    CAPTURE(WorkloadPolicyName(policy));
    const WorkloadResult r = Run(requests, profile, Small(g, 6000, policy));
    REQUIRE(r.summary.completed == 15);
    REQUIRE(r.summary.kept_fraction > 0.0);
    REQUIRE(r.summary.kept_fraction <= 1.0);
  }
}

}  // namespace
}  // namespace headpage
