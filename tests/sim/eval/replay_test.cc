// SPDX-License-Identifier: Apache-2.0
// Replay on the real SmolLM2 traces bundled in tests/data/traces.
#include "sim/eval/replay.h"

#include <dirent.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "sim/eval/sweep.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

std::vector<std::string> BundledTraces() {
  const std::string dir = std::string(HEADPAGE_SOURCE_DIR) + "/tests/data/traces";
  std::vector<std::string> out;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name.size() > 12 && name.substr(name.size() - 12) == ".safetensors") out.push_back(dir + "/" + name);
    }
    closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

Trace Open(const std::string& path) {
  auto trace = Trace::Open(path);
  REQUIRE_OK(trace);
  return std::move(trace).value();
}

ReplayResult Run(const Trace& trace, const char* policy, const Budget& budget, int32_t threads = 0) {
  auto config = PolicyByName(policy);
  REQUIRE_OK(config);
  ReplayOptions options;
  options.threads = threads;
  auto result = Replay(trace, *config, budget, options);
  REQUIRE_OK(result);
  return std::move(result).value();
}

TEST_CASE("Replay: the bundled traces are real and their attention recomputes", "[sim]") {
  const std::vector<std::string> traces = BundledTraces();
  REQUIRE(traces.size() >= 1);
  for (const std::string& path : traces) {
    CAPTURE(path);
    const Trace trace = Open(path);
    REQUIRE(trace.metadata().model.find("SmolLM2") != std::string::npos);
    // Our attention over the trace's Q, K, V equals the model's own outputs
    // (stored by the same capture) within fp16 rounding.
    auto check = CheckTraceOutputs(trace);
    REQUIRE_OK(check);
    CAPTURE(check->max_abs_error, check->max_rel_error);
    REQUIRE(check->outputs_checked > 0);
    REQUIRE(check->max_rel_error < 2e-2);
    REQUIRE(check->max_abs_error < 2e-2);
  }
}

TEST_CASE("Replay: full has no error and keeps everything", "[sim]") {
  for (const std::string& path : BundledTraces()) {
    CAPTURE(path);
    const Trace trace = Open(path);
    const ReplayResult r = Run(trace, "full", Budget::Fraction(0.2));
    REQUIRE(r.all.mean_l1_error == 0.0);
    REQUIRE(r.all.mean_lost_mass == 0.0);
    REQUIRE(r.all.mean_topk_recall == 1.0);
    REQUIRE(r.all.kept_tokens == r.all.full_tokens);
    REQUIRE(r.all.queries > 0);
  }
}

// uniform-snapkv and ada-snapkv replayed on the observation window's queries
// (the attention their scores sum) at `fraction` of the prompt, after `adjust`
// edits the two configurations.
struct UniformAndAda {
  ReplayMetrics uniform, ada;
};
UniformAndAda ReplayOnWindow(const Trace& trace, double fraction,
                             const std::function<void(PolicyConfig*, PolicyConfig*)>& adjust) {
  ReplayOptions options;
  options.queries = ReplayOptions::Queries::kWindow;
  auto uniform = PolicyByName("uniform-snapkv");
  auto ada = PolicyByName("ada-snapkv");
  REQUIRE_OK(uniform);
  REQUIRE_OK(ada);
  adjust(&*uniform, &*ada);
  auto u = Replay(trace, *uniform, Budget::Fraction(fraction), options);
  auto a = Replay(trace, *ada, Budget::Fraction(fraction), options);
  REQUIRE_OK(u);
  REQUIRE_OK(a);
  return {u->all, a->all};
}

TEST_CASE("Replay: Ada-KV's theorem holds on the window that scored the prompt", "[sim]") {
  // Ada-KV's Theorem 3: with the same total budget, allocating by a global
  // top-k over the heads' scores retains at least the attention mass of any
  // other allocation, uniform included, for the attention those scores sum.
  // That is the observation window's, unpooled, with no floor (alpha = 0).
  for (const std::string& path : BundledTraces()) {
    const Trace trace = Open(path);
    for (const double fraction : {0.05, 0.1, 0.2, 0.3, 0.5}) {
      CAPTURE(path, fraction);
      const UniformAndAda r = ReplayOnWindow(trace, fraction, [](PolicyConfig* u, PolicyConfig* a) {
        for (PolicyConfig* c : {u, a}) {
          c->snapkv.kernel_size = 1;
          c->snapkv.pooling = policy::Pooling::kNone;
        }
        a->ada.alpha = 0.0;
      });
      REQUIRE(r.ada.kept_tokens == r.uniform.kept_tokens);  // alpha = 0: an exact total
      REQUIRE(r.ada.mean_lost_mass <= r.uniform.mean_lost_mass * (1 + 1e-9) + 1e-12);
      REQUIRE(r.ada.mean_bound <= r.uniform.mean_bound * (1 + 1e-9) + 1e-9);
    }
  }
}

TEST_CASE("Replay: with the paper defaults, Ada-KV loses no more window mass than uniform",
          "[sim]") {
  // The defaults (max pooling k = 7, the alpha = 0.2 floor, GQA mean) step
  // outside the theorem's conditions, but on the queries whose attention chose
  // the cache it still holds on every bundled trace: pooling and the floor cost
  // less than head-adaptive allocation gains. Over every stored query (kAll,
  // the prompt's before the window included) the traces answer differently
  // (docs/eviction.md); over the later ones, see the next test.
  for (const std::string& path : BundledTraces()) {
    const Trace trace = Open(path);
    for (const double fraction : {0.05, 0.1, 0.2, 0.3, 0.5}) {
      CAPTURE(path, fraction);
      const UniformAndAda r = ReplayOnWindow(trace, fraction, [](PolicyConfig*, PolicyConfig*) {});
      // kScaled's rounding may keep a few tokens fewer than uniform, and at
      // most H/2 per layer more.
      REQUIRE(r.ada.kept_tokens <= r.uniform.kept_tokens + 8);
      REQUIRE(r.ada.mean_lost_mass <= r.uniform.mean_lost_mass);
      REQUIRE(r.ada.mean_bound <= r.uniform.mean_bound);
    }
  }
}

TEST_CASE("Replay: over the later queries (the default), Ada-KV loses no more mass than uniform",
          "[sim]") {
  // The queries that attend after the compression: the observation window and
  // the generated tokens'. On every bundled trace, at the budgets docs/eviction.md
  // reports, head-adaptive allocation loses less attention mass than uniform.
  REQUIRE(ReplayOptions().queries == ReplayOptions::Queries::kLater);
  for (const std::string& path : BundledTraces()) {
    const Trace trace = Open(path);
    for (const double fraction : {0.1, 0.2, 0.5}) {
      CAPTURE(path, fraction);
      const ReplayResult uniform = Run(trace, "uniform-snapkv", Budget::Fraction(fraction));
      const ReplayResult ada = Run(trace, "ada-snapkv", Budget::Fraction(fraction));
      REQUIRE(ada.all.mean_lost_mass <= uniform.all.mean_lost_mass);
    }
  }
}

TEST_CASE("Replay: later is the window and the generated queries, all adds the prompt's before",
          "[sim]") {
  const Trace trace = Open(BundledTraces()[0]);
  auto policy = PolicyByName("ada-snapkv");
  REQUIRE_OK(policy);
  std::map<ReplayOptions::Queries, ReplayMetrics> by_set;
  for (const auto set : {ReplayOptions::Queries::kLater, ReplayOptions::Queries::kWindow,
                         ReplayOptions::Queries::kGenerated, ReplayOptions::Queries::kAll}) {
    ReplayOptions options;
    options.queries = set;
    auto result = Replay(trace, *policy, Budget::Fraction(0.2), options);
    REQUIRE_OK(result);
    by_set[set] = result->all;
    // The set's name reads back.
    auto named = QueriesByName(QueriesName(set));
    REQUIRE_OK(named);
    REQUIRE(*named == set);
  }
  const ReplayMetrics& later = by_set[ReplayOptions::Queries::kLater];
  const ReplayMetrics& window = by_set[ReplayOptions::Queries::kWindow];
  const ReplayMetrics& generated = by_set[ReplayOptions::Queries::kGenerated];
  const ReplayMetrics& all = by_set[ReplayOptions::Queries::kAll];
  // 32 window queries and the generated tokens' for each of the q heads.
  const TraceMetadata& meta = trace.metadata();
  REQUIRE(window.queries == int64_t{32} * meta.num_q_heads * static_cast<int64_t>(trace.layers().size()));
  REQUIRE(later.queries == window.queries + generated.queries);
  REQUIRE(later.mean_lost_mass * later.queries ==
          Approx(window.mean_lost_mass * window.queries +
                 generated.mean_lost_mass * generated.queries).epsilon(1e-9));
  REQUIRE(all.queries > later.queries);  // the trace stores prompt queries before the window
  // The window follows the policies' observation window when a study changes it.
  ReplayOptions wider;
  wider.queries = ReplayOptions::Queries::kWindow;
  wider.measured_window = 48;
  auto result = Replay(trace, *policy, Budget::Fraction(0.2), wider);
  REQUIRE_OK(result);
  REQUIRE(result->all.queries == window.queries / 32 * 48);
  wider.measured_window = 0;
  REQUIRE_ERROR(Replay(trace, *policy, Budget::Fraction(0.2), wider),
                absl::StatusCode::kInvalidArgument, "measured window 0 must be positive");
  REQUIRE_ERROR(QueriesByName("prompt"), absl::StatusCode::kInvalidArgument,
                "unknown query set 'prompt'; known: later");
}

TEST_CASE("Sweep: every row records its query set and the options its policy ran with", "[sim]") {
  SweepSpec spec;
  spec.traces = {BundledTraces()[0]};
  spec.policies = {"ada-snapkv", "pyramid"};
  spec.budgets = {Budget::Fraction(0.2)};
  REQUIRE_OK(SetPolicyOption("window", "16", &spec.options));
  REQUIRE_OK(SetPolicyOption("pooling", "avg", &spec.options));
  REQUIRE_OK(SetPolicyOption("beta", "10", &spec.options));
  spec.replay.queries = ReplayOptions::Queries::kGenerated;
  spec.threads = 1;
  auto rows = RunSweep(spec);
  REQUIRE_OK(rows);
  const std::string csv = SweepCsv(*rows);
  const std::string header = csv.substr(0, csv.find('\n'));
  REQUIRE(header.rfind("trace,policy,budget,page_size,query_set,query_window,window,kernel,pooling,"
                       "reduce,alpha,floor,beta,threshold,sinks,profile,sparsity,layer,", 0) == 0);
  for (const SweepRow& row : *rows) {
    REQUIRE(row.query_set == "generated");
    REQUIRE(row.query_window == 16);  // the window option moves the measured window too
    REQUIRE(row.options[0] == std::make_pair(std::string("window"), std::string("16")));
    REQUIRE(row.options[2] == std::make_pair(std::string("pooling"), std::string("avg")));
    REQUIRE(row.options[6] == std::make_pair(std::string("beta"), std::string("10")));
  }
  REQUIRE(csv.find("code.safetensors,ada-snapkv,20%,16,generated,16,16,7,avg,mean,0.2,scaled,10,"
                   "0.05,0,-,0.5,all,") != std::string::npos);
  // A bad option fails the sweep before it runs, naming the policy.
  REQUIRE_OK(SetPolicyOption("alpha", "2", &spec.options));
  REQUIRE_ERROR(RunSweep(spec), absl::StatusCode::kInvalidArgument,
                "policy ada-snapkv: alpha 2 is outside [0, 1]");
}

TEST_CASE("Replay: the same numbers every run, whatever the thread count", "[sim]") {
  const std::vector<std::string> traces = BundledTraces();
  REQUIRE(!traces.empty());
  const Trace trace = Open(traces[0]);
  const ReplayResult a = Run(trace, "ada-snapkv", Budget::TokensPerHead(128), 1);
  const ReplayResult b = Run(trace, "ada-snapkv", Budget::TokensPerHead(128), 3);
  REQUIRE(a.layers.size() == b.layers.size());
  for (size_t i = 0; i < a.layers.size(); ++i) {
    REQUIRE(a.layers[i].mean_l1_error == b.layers[i].mean_l1_error);
    REQUIRE(a.layers[i].mean_lost_mass == b.layers[i].mean_lost_mass);
    REQUIRE(a.layers[i].kept_pages == b.layers[i].kept_pages);
  }
  SweepSpec spec;
  spec.traces = {traces[0]};
  spec.policies = {"uniform-snapkv", "h2o", "streamingllm"};
  spec.budgets = {Budget::TokensPerHead(96), Budget::Fraction(0.3)};
  spec.page_sizes = {8, 16};
  spec.threads = 1;
  auto one = RunSweep(spec);
  REQUIRE_OK(one);
  spec.threads = 4;
  auto four = RunSweep(spec);
  REQUIRE_OK(four);
  REQUIRE(SweepCsv(*one) == SweepCsv(*four));
  REQUIRE(one->size() == 3 * 2 * 2 * (trace.layers().size() + 1));
}

TEST_CASE("Replay: every policy runs, and memory kept shrinks with the budget", "[sim]") {
  const std::vector<std::string> traces = BundledTraces();
  REQUIRE(!traces.empty());
  const Trace trace = Open(traces[0]);
  for (const char* policy : {"uniform-snapkv", "pyramid", "ada-snapkv", "ada-pyramid", "dbudget",
                             "h2o", "streamingllm", "tova", "knorm", "random"}) {
    CAPTURE(policy);
    const ReplayResult small = Run(trace, policy, Budget::Fraction(0.1));
    const ReplayResult large = Run(trace, policy, Budget::Fraction(0.5));
    REQUIRE(small.all.kept_tokens < small.all.full_tokens);
    if (std::string(policy) != "dbudget") REQUIRE(small.all.kept_tokens < large.all.kept_tokens);
    REQUIRE(small.all.mean_lost_mass >= 0.0);
    REQUIRE(small.all.mean_lost_mass <= 1.0);
  }
}

TEST_CASE("Replay: bad arguments are refused", "[sim]") {
  const std::vector<std::string> traces = BundledTraces();
  REQUIRE(!traces.empty());
  const Trace trace = Open(traces[0]);
  auto config = PolicyByName("ada-snapkv");
  REQUIRE_OK(config);
  ReplayOptions options;
  options.page_size = 0;
  REQUIRE_ERROR(Replay(trace, *config, Budget::Fraction(0.2), options), absl::StatusCode::kInvalidArgument,
                "page size");
  PolicyConfig bad = *config;
  bad.ada.alpha = -1;
  REQUIRE_ERROR(Replay(trace, bad, Budget::Fraction(0.2)), absl::StatusCode::kInvalidArgument, "alpha");
  SweepSpec spec;
  spec.traces = {traces[0]};
  spec.policies = {"nope"};
  spec.budgets = {Budget::Fraction(0.2)};
  REQUIRE_ERROR(RunSweep(spec), absl::StatusCode::kInvalidArgument, "unknown policy");
  spec.policies = {"full"};
  spec.traces = {"/nonexistent.safetensors"};
  REQUIRE(RunSweep(spec).status().code() == absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace headpage

namespace headpage {
namespace {

TEST_CASE("Replay: decode-time compression keeps streams near their target", "[sim]") {
  const std::vector<std::string> traces = BundledTraces();
  REQUIRE(!traces.empty());
  const Trace trace = Open(traces[0]);
  auto config = PolicyByName("uniform-snapkv");
  REQUIRE_OK(config);
  ReplayOptions options;
  options.decode = DecodeSchedule{/*interval=*/8, /*target=*/150, /*window=*/8};
  auto r = Replay(trace, *config, Budget::Fraction(0.2), options);
  REQUIRE_OK(r);
  const int64_t streams = static_cast<int64_t>(trace.layers().size()) * trace.metadata().num_kv_heads;
  const int32_t generated = trace.metadata().generated_len;
  // The last compression came at most 7 steps before the end.
  REQUIRE(r->all.kept_tokens <= streams * (150 + 7));
  REQUIRE(r->all.kept_tokens >= streams * 150);
  REQUIRE(generated >= 8);
}

}  // namespace
}  // namespace headpage

namespace headpage {
namespace {

// The bundled traces hold each layer's output projection (tools/
// add_output_projection.py), so CriticalKV and DefensiveKV replay on them and
// every replay reports the error after o_proj; the full cache has none.
TEST_CASE("Replay: the value-weighted policies on the bundled traces", "[sim]") {
  for (const std::string& path : BundledTraces()) {
    CAPTURE(path);
    const Trace trace = Open(path);
    REQUIRE(trace.layers()[0].output_projection.has_value());
    const ReplayResult full = Run(trace, "full", Budget::Fraction(0.2));
    REQUIRE(full.all.has_projected_error);
    REQUIRE(full.all.mean_projected_l1_error == 0.0);
    for (const char* name : {"critical-snapkv", "critical-ada-snapkv", "defensivekv",
                             "layer-defensivekv"}) {
      CAPTURE(name);
      const ReplayResult r = Run(trace, name, Budget::Fraction(0.2));
      REQUIRE(r.all.mean_projected_l1_error > 0);
      REQUIRE(r.all.kept_tokens < r.all.full_tokens);
      // A fixed budget: 20% of the prompt in every stream on average (Ada's
      // rounding within a token a head), then the generated tokens.
      const TraceMetadata& m = trace.metadata();
      const double per_stream = std::lround(0.2 * m.prompt_len) + m.generated_len;
      const double streams = static_cast<double>(r.all.full_tokens) / trace.num_tokens();
      REQUIRE(r.all.kept_tokens / streams == Approx(per_stream).margin(1.0));
    }
  }
}

}  // namespace
}  // namespace headpage
