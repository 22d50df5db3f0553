// SPDX-License-Identifier: Apache-2.0
#include "policy/options.h"

#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace headpage {
namespace {

// The text of each enum value, as the command line and Python write it.
template <typename E>
struct Named {
  E value;
  const char* name;
};
constexpr Named<policy::Pooling> kPoolings[] = {
    {policy::Pooling::kAvg, "avg"}, {policy::Pooling::kMax, "max"}, {policy::Pooling::kNone, "none"}};
constexpr Named<policy::GroupReduce> kReduces[] = {{policy::GroupReduce::kMean, "mean"},
                                                   {policy::GroupReduce::kMax, "max"}};
constexpr Named<policy::AdaFloor> kFloors[] = {{policy::AdaFloor::kScaled, "scaled"},
                                               {policy::AdaFloor::kProtectTop, "protect-top"}};

template <typename E, size_t N>
const char* NameOf(E value, const Named<E> (&names)[N]) {
  for (const Named<E>& n : names) {
    if (n.value == value) return n.name;
  }
  return "?";
}

template <typename E, size_t N>
absl::Status ParseNamed(absl::string_view key, absl::string_view text, const Named<E> (&names)[N],
                        std::optional<E>* out) {
  std::vector<std::string> known;
  for (const Named<E>& n : names) {
    if (text == n.name) {
      *out = n.value;
      return absl::OkStatus();
    }
    known.emplace_back(n.name);
  }
  return absl::InvalidArgumentError(absl::StrCat("policy option ", key, "='", text,
                                                 "': want one of ", absl::StrJoin(known, ", ")));
}

absl::Status ParseInt(absl::string_view key, absl::string_view text, std::optional<int32_t>* out) {
  int32_t value = 0;
  if (!absl::SimpleAtoi(text, &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy option ", key, "='", text, "': want a whole number"));
  }
  *out = value;
  return absl::OkStatus();
}

absl::Status ParseReal(absl::string_view key, absl::string_view text, std::optional<double>* out) {
  double value = 0;
  if (!absl::SimpleAtod(text, &value) || !std::isfinite(value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy option ", key, "='", text, "': want a finite number"));
  }
  *out = value;
  return absl::OkStatus();
}

// The shortest text that reads back as `x` (absl::StrCat keeps 6 digits).
std::string Exact(double x) {
  for (int digits = 6; digits < 17; ++digits) {
    const std::string text = absl::StrFormat("%.*g", digits, x);
    double back = 0;
    if (absl::SimpleAtod(text, &back) && back == x) return text;
  }
  return absl::StrFormat("%.17g", x);
}

}  // namespace

bool PolicyOptions::empty() const {
  return !window && !kernel_size && !pooling && !reduce && !alpha && !floor && !beta &&
         !threshold && !sinks && !profile && !sparsity;
}

const std::vector<std::string>& PolicyOptionNames() {
  static const auto* names = new std::vector<std::string>{
      "window", "kernel", "pooling",   "reduce", "alpha",   "floor",
      "beta",   "threshold", "sinks", "profile", "sparsity"};
  return *names;
}

absl::Status SetPolicyOption(absl::string_view key, absl::string_view value,
                             PolicyOptions* options) {
  if (key == "window") return ParseInt(key, value, &options->window);
  if (key == "kernel") return ParseInt(key, value, &options->kernel_size);
  if (key == "pooling") return ParseNamed(key, value, kPoolings, &options->pooling);
  if (key == "reduce") return ParseNamed(key, value, kReduces, &options->reduce);
  if (key == "alpha") return ParseReal(key, value, &options->alpha);
  if (key == "floor") return ParseNamed(key, value, kFloors, &options->floor);
  if (key == "beta") return ParseReal(key, value, &options->beta);
  if (key == "threshold") return ParseReal(key, value, &options->threshold);
  if (key == "sinks") return ParseInt(key, value, &options->sinks);
  if (key == "profile") {
    options->profile = std::string(value);
    return absl::OkStatus();
  }
  if (key == "sparsity") return ParseReal(key, value, &options->sparsity);
  return absl::InvalidArgumentError(absl::StrCat("unknown policy option '", key, "'; known: ",
                                                 absl::StrJoin(PolicyOptionNames(), ", ")));
}

absl::StatusOr<PolicyConfig> WithOptions(PolicyConfig config, const PolicyOptions& options) {
  if (options.window) config.window = *options.window;
  if (options.kernel_size) config.snapkv.kernel_size = *options.kernel_size;
  if (options.pooling) config.snapkv.pooling = *options.pooling;
  if (options.reduce) config.snapkv.reduce = config.reduce = *options.reduce;
  if (options.alpha) config.ada.alpha = *options.alpha;
  if (options.floor) config.ada.floor = *options.floor;
  if (options.beta) config.pyramid_beta = *options.beta;
  if (options.threshold) config.dbudget_threshold = *options.threshold;
  if (options.sinks) config.sinks = *options.sinks;
  if (options.sparsity) config.head_sparsity = *options.sparsity;
  if (options.profile) {
    absl::StatusOr<policy::HeadClasses> profile = policy::HeadClasses::Load(*options.profile);
    if (!profile.ok()) return profile.status();
    config.head_profile = std::make_shared<const policy::HeadClasses>(*std::move(profile));
    config.head_profile_source = *options.profile;
  }
  if (absl::Status valid = Validate(config); !valid.ok()) return valid;
  return config;
}

absl::StatusOr<PolicyConfig> PolicyByName(absl::string_view name, const PolicyOptions& options) {
  absl::StatusOr<PolicyConfig> config = PolicyByName(name);
  if (!config.ok()) return config.status();
  return WithOptions(*std::move(config), options);
}

std::vector<std::pair<std::string, std::string>> PolicyOptionValues(const PolicyConfig& c) {
  const policy::GroupReduce reduce =
      c.scorer == PolicyConfig::Scorer::kH2O ? c.reduce : c.snapkv.reduce;
  return {{"window", absl::StrCat(c.window)},
          {"kernel", absl::StrCat(c.snapkv.kernel_size)},
          {"pooling", NameOf(c.snapkv.pooling, kPoolings)},
          {"reduce", NameOf(reduce, kReduces)},
          {"alpha", Exact(c.ada.alpha)},
          {"floor", NameOf(c.ada.floor, kFloors)},
          {"beta", Exact(c.pyramid_beta)},
          {"threshold", Exact(c.dbudget_threshold)},
          {"sinks", absl::StrCat(c.sinks)},
          {"profile", c.head_profile_source.empty() ? "-" : c.head_profile_source},
          {"sparsity", Exact(c.head_sparsity)}};
}

}  // namespace headpage
