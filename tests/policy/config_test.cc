// SPDX-License-Identifier: Apache-2.0
#include "policy/config.h"

#include <set>
#include <string>

#include "tests/testing/catch.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

TEST_CASE("PolicyByName: every registered name resolves, validates and names itself", "[policy]") {
  const std::vector<std::string>& names = PolicyNames();
  REQUIRE(names.size() == 18);
  REQUIRE(std::set<std::string>(names.begin(), names.end()).size() == names.size());
  for (const std::string& name : names) {
    CAPTURE(name);
    auto config = PolicyByName(name);
    REQUIRE_OK(config);
    REQUIRE(config->name == name);
    REQUIRE_OK(Validate(*config));
    REQUIRE(config->compresses() == (name != "full"));
  }
  REQUIRE_ERROR(PolicyByName("snapkv2"), absl::StatusCode::kInvalidArgument,
                "known: full, uniform-snapkv");
}

TEST_CASE("PolicyByName: what the names mean", "[policy]") {
  using S = PolicyConfig::Scorer;
  using A = PolicyConfig::Allocator;
  auto h2o = PolicyByName("h2o");
  REQUIRE_OK(h2o);
  REQUIRE(h2o->scorer == S::kH2O);
  REQUIRE(h2o->observe == PolicyConfig::Observe::kAllPrompt);
  REQUIRE(h2o->recent_half);
  REQUIRE(h2o->evicts_while_decoding);
  REQUIRE(h2o->ObservedQueries(500) == 500);

  auto ada = PolicyByName("ada-snapkv");
  REQUIRE_OK(ada);
  REQUIRE(ada->scorer == S::kSnapKV);
  REQUIRE(ada->allocator == A::kAda);
  REQUIRE(ada->window == 32);
  REQUIRE(ada->snapkv.kernel_size == 7);
  REQUIRE(ada->ada.alpha == 0.2);
  REQUIRE_FALSE(ada->evicts_while_decoding);
  REQUIRE(ada->ObservedQueries(500) == 32);
  REQUIRE(ada->ObservedQueries(20) == 20);

  auto dbudget = PolicyByName("dbudget");
  REQUIRE_OK(dbudget);
  REQUIRE(dbudget->window == 8);
  REQUIRE(dbudget->snapkv.pooling == policy::Pooling::kNone);

  auto fro = PolicyByName("dbudget-fro");
  REQUIRE_OK(fro);
  REQUIRE(fro->allocator == A::kDBudget);
  REQUIRE(fro->dbudget_metric == PolicyConfig::DBudgetMetric::kFrobenius);
  REQUIRE(fro->dbudget_threshold == 0.01);
  REQUIRE(fro->window == 8);
  REQUIRE(fro->ObservedQueries(500) == 500);  // the whole prompt's attention
  REQUIRE(dbudget->dbudget_metric == PolicyConfig::DBudgetMetric::kLastToken);

  auto stream = PolicyByName("streamingllm");
  REQUIRE_OK(stream);
  REQUIRE(stream->sinks == 4);
  REQUIRE(stream->window == 0);
  REQUIRE(stream->ObservedQueries(500) == 1);  // the registry never asks for no query

  // CriticalKV: SnapKV's scores, the two-stage selection; its Ada variant uses
  // kvpress's safeguard. Both read the output projection, as DefensiveKV does.
  auto critical = PolicyByName("critical-snapkv");
  REQUIRE_OK(critical);
  REQUIRE(critical->critical);
  REQUIRE(critical->allocator == A::kUniform);
  REQUIRE(critical->critical_options.first_stage == 0.5);
  REQUIRE(critical->window == 64);  // kvpress's SnapKVPress, which the released code wraps
  REQUIRE(critical->snapkv.kernel_size == 5);
  REQUIRE(critical->snapkv.pooling == policy::Pooling::kAvg);
  REQUIRE(critical->needs_output_projection());
  auto critical_ada = PolicyByName("critical-ada-snapkv");
  REQUIRE_OK(critical_ada);
  REQUIRE(critical_ada->allocator == A::kAda);
  REQUIRE(critical_ada->ada.floor == policy::AdaFloor::kProtectTop);
  REQUIRE(critical_ada->ada.safe_counts_protected);
  REQUIRE_FALSE(ada->needs_output_projection());

  auto defensive = PolicyByName("defensivekv");
  REQUIRE_OK(defensive);
  REQUIRE(defensive->scorer == S::kDefensive);
  REQUIRE(defensive->allocator == A::kAda);
  REQUIRE(defensive->ada.alpha == 0.0);
  REQUIRE(defensive->window == 32);
  REQUIRE(defensive->snapkv.kernel_size == 5);
  REQUIRE(defensive->snapkv.pooling == policy::Pooling::kAvg);
  REQUIRE(defensive->needs_output_projection());
  auto layer_defensive = PolicyByName("layer-defensivekv");
  REQUIRE_OK(layer_defensive);
  REQUIRE(layer_defensive->allocator == A::kAdaAcrossLayers);

  auto duo = PolicyByName("duoattention");
  REQUIRE_OK(duo);
  REQUIRE(duo->allocator == A::kHeadClasses);
  REQUIRE(duo->scorer == S::kRecency);
  REQUIRE(duo->sinks == 64);
  REQUIRE(duo->window == 256);
  REQUIRE(duo->head_sparsity == 0.5);
  REQUIRE(duo->head_profile == nullptr);  // the option profile gives it
  REQUIRE(duo->ObservedQueries(500) == 1);  // its recency scores read no query
  auto razor = PolicyByName("razorattention");
  REQUIRE_OK(razor);
  REQUIRE(razor->sinks + razor->window == 256);
  REQUIRE(razor->head_sparsity == -1.0);  // the profile's own classes
}

TEST_CASE("Budget: parsing token counts and percentages", "[policy]") {
  auto b = Budget::Parse("128");
  REQUIRE_OK(b);
  REQUIRE(b->CapacityFor(4000) == 128);
  b = Budget::Parse("20%");
  REQUIRE_OK(b);
  REQUIRE(b->CapacityFor(4000) == 800);
  REQUIRE(b->ToString() == "20%");
  for (const char* bad : {"0", "-5", "abc", "150%", "0%", "12.5", ""}) {
    CAPTURE(bad);
    REQUIRE(Budget::Parse(bad).status().code() == absl::StatusCode::kInvalidArgument);
  }
}

TEST_CASE("Validate(Budget): out-of-range budgets built by hand are refused", "[policy]") {
  REQUIRE_OK(Validate(Budget::Fraction(1.0)));
  REQUIRE_ERROR(Validate(Budget::Fraction(1.5)), absl::StatusCode::kInvalidArgument, "out of range");
  REQUIRE_ERROR(Validate(Budget::TokensPerHead(0)), absl::StatusCode::kInvalidArgument, "out of range");
}

}  // namespace
}  // namespace headpage
