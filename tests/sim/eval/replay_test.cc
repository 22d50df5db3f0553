// SPDX-License-Identifier: Apache-2.0
// Replay on the real SmolLM2 traces bundled in tests/data/traces.
#include "sim/eval/replay.h"

#include <dirent.h>

#include <algorithm>
#include <functional>
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
  // less than head-adaptive allocation gains. On later queries (kAll) this is
  // an empirical question the traces answer differently (docs/eviction.md).
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
