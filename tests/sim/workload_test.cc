// SPDX-License-Identifier: Apache-2.0
// The serving-workload simulator: length distributions and CSV arrivals, head
// profiles, and the scheduler on cases small enough to follow by hand.
#include "sim/workload.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "sim/head_profile.h"
#include "sim/workload_dist.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

CacheGeometry Geometry(int32_t layers, int32_t heads, int32_t page_size) {
  CacheGeometry g = CacheGeometry::Llama3_8B(DType::kBF16, page_size);
  g.num_layers = layers;
  g.num_kv_heads = heads;
  g.num_q_heads = heads * 4;
  return g;
}

HeadProfile Uniform(const CacheGeometry& g) {
  auto p = HeadProfile::Uniform(g);
  REQUIRE_OK(p);
  return std::move(p).value();
}

// The profile of a bundled trace, tests/data/traces/<name>.safetensors.
HeadProfile TraceProfile(const char* name, const CacheGeometry& g) {
  auto p = HeadProfile::Parse(
      std::string("trace:") + HEADPAGE_SOURCE_DIR + "/tests/data/traces/" + name + ".safetensors",
      g, 1);
  REQUIRE_OK(p);
  return std::move(p).value();
}

std::vector<WorkloadRequest> Fixed(int64_t n, int32_t prompt, int32_t output) {
  WorkloadSource source;
  source.kind = WorkloadSource::Kind::kFixed;
  source.fixed_prompt = prompt;
  source.fixed_output = output;
  auto requests = GenerateRequests(source, n, INFINITY, 1);
  REQUIRE_OK(requests);
  return std::move(requests).value();
}

std::vector<WorkloadRequest> Generate(const char* dist, int64_t n, double rate, uint64_t seed) {
  auto source = ParseWorkloadSource(dist);
  REQUIRE_OK(source);
  auto requests = GenerateRequests(*source, n, rate, seed);
  REQUIRE_OK(requests);
  return std::move(requests).value();
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

double Quantile(std::vector<int32_t> v, double q) {
  const auto k = static_cast<size_t>(q * static_cast<double>(v.size()));
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return v[k];
}

// ---------------------------------------------------------------------------
// Distributions and arrivals

TEST_CASE("Workload: the log-normal fits give the traces' medians and p90s", "[sim][workload]") {
  struct Expect {
    const char* dist;
    double prompt_median, prompt_p90, output_median, output_p90;
  };
  for (const Expect& e :
       {Expect{"sharegpt", 1730, 5696, 415, 834}, Expect{"arxiv", 2730, 3702, 167, 372},
        Expect{"long", 16384, 28672, 318, 571}}) {
    CAPTURE(e.dist);
    const std::vector<WorkloadRequest> requests = Generate(e.dist, 40000, INFINITY, 7);
    std::vector<int32_t> prompts, outputs;
    for (const WorkloadRequest& r : requests) {
      prompts.push_back(r.prompt_len);
      outputs.push_back(r.output_len);
    }
    REQUIRE(Quantile(prompts, 0.5) == Approx(e.prompt_median).epsilon(0.03));
    REQUIRE(Quantile(prompts, 0.9) == Approx(e.prompt_p90).epsilon(0.03));
    REQUIRE(Quantile(outputs, 0.5) == Approx(e.output_median).epsilon(0.03));
    REQUIRE(Quantile(outputs, 0.9) == Approx(e.output_p90).epsilon(0.03));
  }
  // sigma = (ln p90 - ln median) / 1.2816, and the clamps hold.
  REQUIRE(ShareGptLengths().prompt.sigma() == Approx(0.92984).epsilon(1e-4));
  REQUIRE(ShareGptLengths().output.sigma() == Approx(0.54462).epsilon(1e-4));
  for (const WorkloadRequest& r : Generate("long", 5000, INFINITY, 3)) {
    REQUIRE(r.prompt_len >= 8192);
    REQUIRE(r.prompt_len <= 32768);
    REQUIRE(r.output_len <= 2048);
  }
}

TEST_CASE("Workload: requests are the same for a seed, and the rate does not move lengths",
          "[sim][workload]") {
  const auto a = Generate("sharegpt", 500, 4.0, 11), b = Generate("sharegpt", 500, 4.0, 11);
  const auto c = Generate("sharegpt", 500, 4.0, 12), d = Generate("sharegpt", 500, 9.0, 11);
  bool differs = false;
  for (size_t i = 0; i < a.size(); ++i) {
    REQUIRE(a[i].id == static_cast<int64_t>(i));
    REQUIRE(a[i].arrival_s == b[i].arrival_s);
    REQUIRE(a[i].prompt_len == b[i].prompt_len);
    REQUIRE(a[i].output_len == b[i].output_len);
    REQUIRE(a[i].prompt_len == d[i].prompt_len);
    REQUIRE(a[i].output_len == d[i].output_len);
    differs |= a[i].prompt_len != c[i].prompt_len;
  }
  REQUIRE(differs);
}

TEST_CASE("Workload: Poisson arrivals have the rate's mean gap; inf sends all at 0",
          "[sim][workload]") {
  const std::vector<WorkloadRequest> r = Generate("fixed:10,2", 20001, 10.0, 5);
  REQUIRE(r[0].arrival_s == 0.0);
  for (size_t i = 1; i < r.size(); ++i) REQUIRE(r[i].arrival_s >= r[i - 1].arrival_s);
  REQUIRE(r.back().arrival_s / 20000 == Approx(0.1).epsilon(0.03));
  for (const WorkloadRequest& x : Generate("fixed:10,2", 50, INFINITY, 5)) {
    REQUIRE(x.arrival_s == 0.0);
    REQUIRE(x.prompt_len == 10);
    REQUIRE(x.output_len == 2);
  }
  auto source = ParseWorkloadSource("sharegpt");
  REQUIRE_OK(source);
  REQUIRE_ERROR(GenerateRequests(*source, 10, 0.0, 1), absl::StatusCode::kInvalidArgument, "rate");
  REQUIRE_ERROR(GenerateRequests(*source, 10, NAN, 1), absl::StatusCode::kInvalidArgument, "rate");
  REQUIRE_ERROR(GenerateRequests(*source, 0, 1.0, 1), absl::StatusCode::kInvalidArgument,
                "requests");
}

TEST_CASE("Workload: --dist names, and what it rejects", "[sim][workload]") {
  for (const char* name : {"sharegpt", "arxiv", "long"}) {
    auto source = ParseWorkloadSource(name);
    REQUIRE_OK(source);
    REQUIRE(source->Name() == name);
  }
  auto fixed = ParseWorkloadSource("fixed:1730,415");
  REQUIRE_OK(fixed);
  REQUIRE(fixed->kind == WorkloadSource::Kind::kFixed);
  REQUIRE(fixed->fixed_prompt == 1730);
  REQUIRE(fixed->fixed_output == 415);
  for (const char* bad : {"fixed:0,3", "fixed:3", "fixed:a,3", "fixed:3,4,5", "fixed:3,-1"}) {
    CAPTURE(bad);
    REQUIRE_ERROR(ParseWorkloadSource(bad), absl::StatusCode::kInvalidArgument, "fixed needs");
  }
  REQUIRE_ERROR(ParseWorkloadSource("zipf"), absl::StatusCode::kInvalidArgument,
                "unknown distribution");
  REQUIRE_ERROR(ParseWorkloadSource("csv:/nonexistent/arrivals.csv"), absl::StatusCode::kNotFound,
                "/nonexistent/arrivals.csv");
}

TEST_CASE("Workload: arrivals CSV rows", "[sim][workload]") {
  auto rows =
      ParseArrivalsCsv("arrival_s,prompt_len,output_len\r\n0,100,20\r\n\r\n0.5, 7 ,1\n2.25,3,9\n");
  REQUIRE_OK(rows);
  REQUIRE(rows->size() == 3);
  REQUIRE((*rows)[1].arrival_s == 0.5);
  REQUIRE((*rows)[1].prompt_len == 7);
  REQUIRE((*rows)[2].id == 2);
  REQUIRE((*rows)[2].output_len == 9);
  REQUIRE_OK(ParseArrivalsCsv("1,2,3"));  // no header is fine

  // Every malformed row: its line, its field, the text found.
  struct Bad {
    const char* text;
    const char* message;
  };
  for (const Bad& b :
       {Bad{"0,10", "line 1: '0,10' has 2 fields"}, Bad{"0,10,5,1", "has 4 fields"},
        Bad{"x,10,5", "line 1: arrival_s 'x'"}, Bad{"-1,10,5", "arrival_s '-1'"},
        Bad{"nan,10,5", "arrival_s 'nan'"}, Bad{"inf,10,5", "arrival_s 'inf'"},
        Bad{"1,10,5\n0.5,10,5", "line 2: arrival_s 0.5 is before"}, Bad{"0,0,5", "prompt_len '0'"},
        Bad{"0,1.5,5", "prompt_len '1.5'"}, Bad{"0,10,", "output_len ''"},
        Bad{"0,10,2000000000", "output_len '2000000000'"},
        Bad{"0,1,1\narrival_s,prompt_len,output_len", "line 2: arrival_s 'arrival_s'"},
        Bad{"", "no request rows"}, Bad{"arrival_s,prompt_len,output_len\n", "no request rows"}}) {
    CAPTURE(b.text);
    REQUIRE_ERROR(ParseArrivalsCsv(b.text), absl::StatusCode::kInvalidArgument, b.message);
  }

  // Through --dist csv:FILE, with a count.
  const char* tmp = std::getenv("TMPDIR");
  const std::string path =
      std::string(tmp != nullptr ? tmp : "/tmp") + "/headpage_workload_test.csv";
  {
    std::ofstream out(path);
    out << "arrival_s,prompt_len,output_len\n0,10,2\n1,20,3\n1,30,4\n";
  }
  auto source = ParseWorkloadSource("csv:" + path);
  REQUIRE_OK(source);
  REQUIRE(source->Name() == "csv:" + path);
  auto all = GenerateRequests(*source, 0, INFINITY, 1);
  REQUIRE_OK(all);
  REQUIRE(all->size() == 3);
  REQUIRE((*all)[2].prompt_len == 30);
  auto two = GenerateRequests(*source, 2, 123.0, 1);  // the rate is the file's business
  REQUIRE_OK(two);
  REQUIRE(two->size() == 2);
  REQUIRE((*two)[1].arrival_s == 1.0);
  REQUIRE_ERROR(GenerateRequests(*source, 4, 1.0, 1), absl::StatusCode::kInvalidArgument,
                "the CSV has 3");
  {
    std::ofstream out(path);
    out << "0,10,2\n0,ten,3\n";
  }
  REQUIRE_ERROR(ParseWorkloadSource("csv:" + path), absl::StatusCode::kInvalidArgument,
                "line 2: prompt_len 'ten'");
  std::remove(path.c_str());
}

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
