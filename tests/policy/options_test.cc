// SPDX-License-Identifier: Apache-2.0
#include "policy/options.h"

#include <string>

#include "tests/testing/catch.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

PolicyOptions Parsed(std::initializer_list<std::pair<const char*, const char*>> pairs) {
  PolicyOptions options;
  for (const auto& [key, value] : pairs) REQUIRE_OK(SetPolicyOption(key, value, &options));
  return options;
}

TEST_CASE("PolicyOptions: each option replaces its one field, the rest keep the defaults",
          "[policy]") {
  const PolicyOptions options =
      Parsed({{"window", "64"}, {"kernel", "5"}, {"pooling", "avg"}, {"reduce", "max"},
              {"alpha", "0.3"}, {"floor", "protect-top"}, {"sinks", "4"}});
  auto ada = PolicyByName("ada-snapkv", options);
  REQUIRE_OK(ada);
  REQUIRE(ada->window == 64);
  REQUIRE(ada->snapkv.kernel_size == 5);
  REQUIRE(ada->snapkv.pooling == policy::Pooling::kAvg);
  REQUIRE(ada->snapkv.reduce == policy::GroupReduce::kMax);
  REQUIRE(ada->ada.alpha == 0.3);
  REQUIRE(ada->ada.floor == policy::AdaFloor::kProtectTop);
  REQUIRE(ada->sinks == 4);
  // Not set: the registry's values.
  const PolicyConfig defaults = *PolicyByName("ada-snapkv");
  REQUIRE(ada->pyramid_beta == defaults.pyramid_beta);
  REQUIRE(ada->dbudget_threshold == defaults.dbudget_threshold);
  REQUIRE(ada->allocator == defaults.allocator);

  // The reduction is H2O's too; beta and threshold reach their allocators.
  auto h2o = PolicyByName("h2o", Parsed({{"reduce", "max"}}));
  REQUIRE_OK(h2o);
  REQUIRE(h2o->reduce == policy::GroupReduce::kMax);
  auto pyramid = PolicyByName("pyramid", Parsed({{"beta", "10"}}));
  REQUIRE_OK(pyramid);
  REQUIRE(pyramid->pyramid_beta == 10.0);
  auto dbudget = PolicyByName("dbudget", Parsed({{"threshold", "0.01"}}));
  REQUIRE_OK(dbudget);
  REQUIRE(dbudget->dbudget_threshold == 0.01);
  REQUIRE(dbudget->window == 8);  // its registry window stays

  // No option: exactly the named policy.
  REQUIRE(PolicyOptions().empty());
  REQUIRE_FALSE(options.empty());
  auto plain = PolicyByName("uniform-snapkv", PolicyOptions());
  REQUIRE_OK(plain);
  REQUIRE(PolicyOptionValues(*plain) == PolicyOptionValues(*PolicyByName("uniform-snapkv")));
}

TEST_CASE("PolicyOptions: values out of range are refused with the policy named", "[policy]") {
  const struct {
    const char* key;
    const char* value;
    const char* message;
  } cases[] = {
      {"kernel", "4", "pooling kernel 4 must be odd"},
      {"kernel", "0", "pooling kernel 0 must be odd"},
      {"alpha", "1.5", "alpha 1.5 is outside [0, 1]"},
      {"alpha", "-0.1", "alpha -0.1 is outside [0, 1]"},
      {"window", "-1", "window -1 and sinks 0 must be >= 0"},
      {"sinks", "-2", "window 32 and sinks -2 must be >= 0"},
      {"beta", "0", "beta 0 must be > 0"},
      {"threshold", "-0.5", "threshold -0.5 must be >= 0"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.key, c.value);
    PolicyOptions options;
    REQUIRE_OK(SetPolicyOption(c.key, c.value, &options));
    REQUIRE_ERROR(PolicyByName("ada-snapkv", options), absl::StatusCode::kInvalidArgument,
                  absl::StrCat("policy ada-snapkv: ", c.message));
  }
}

TEST_CASE("PolicyOptions: unknown keys and values that do not parse name what would", "[policy]") {
  PolicyOptions options;
  REQUIRE_ERROR(SetPolicyOption("kernal", "7", &options), absl::StatusCode::kInvalidArgument,
                "unknown policy option 'kernal'; known: window, kernel, pooling");
  REQUIRE_ERROR(SetPolicyOption("pooling", "mean", &options), absl::StatusCode::kInvalidArgument,
                "pooling='mean': want one of avg, max, none");
  REQUIRE_ERROR(SetPolicyOption("floor", "top", &options), absl::StatusCode::kInvalidArgument,
                "want one of scaled, protect-top");
  REQUIRE_ERROR(SetPolicyOption("window", "3.5", &options), absl::StatusCode::kInvalidArgument,
                "want a whole number");
  REQUIRE_ERROR(SetPolicyOption("alpha", "nan", &options), absl::StatusCode::kInvalidArgument,
                "want a finite number");
  REQUIRE(options.empty());  // nothing was set by a refused value
  REQUIRE_ERROR(PolicyByName("snapkv", PolicyOptions()), absl::StatusCode::kInvalidArgument,
                "unknown policy 'snapkv'");
}

TEST_CASE("PolicyOptionValues: every option's value, in the documented order", "[policy]") {
  const auto values = PolicyOptionValues(*PolicyByName("ada-snapkv"));
  REQUIRE(values.size() == PolicyOptionNames().size());
  for (size_t i = 0; i < values.size(); ++i) REQUIRE(values[i].first == PolicyOptionNames()[i]);
  REQUIRE(values == std::vector<std::pair<std::string, std::string>>{
                        {"window", "32"}, {"kernel", "7"}, {"pooling", "max"}, {"reduce", "mean"},
                        {"alpha", "0.2"}, {"floor", "scaled"}, {"beta", "20"},
                        {"threshold", "0.05"}, {"sinks", "0"}, {"profile", "-"}, {"sparsity", "0.5"}});
  // Values read back exactly, not rounded to six digits.
  PolicyOptions fine;
  REQUIRE_OK(SetPolicyOption("threshold", "0.00123456789", &fine));
  auto precise = PolicyByName("dbudget", fine);
  REQUIRE_OK(precise);
  REQUIRE(PolicyOptionValues(*precise)[7].second == "0.00123456789");
  // H2O reports the reduction its scorer uses.
  auto h2o = PolicyByName("h2o", Parsed({{"reduce", "max"}}));
  REQUIRE_OK(h2o);
  REQUIRE(PolicyOptionValues(*h2o)[3].second == "max");
}

}  // namespace
}  // namespace headpage
