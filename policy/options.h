// SPDX-License-Identifier: Apache-2.0
// File: policy/options.h
//
// What a policy study changes on top of a named policy: the observation window,
// SnapKV's pooling, the GQA reduction, Ada-KV's alpha and floor rule,
// PyramidKV's beta, DBudgetKV's threshold, the attention sinks. The registry
// (config.h) still decides what a name means; an option that is set replaces
// the registry's value for that one field, and the others keep the papers'
// defaults. `headpage replay --window 64 --pooling avg`, the sweep, and
// `headpage.policy_by_name(name, window=64, pooling="avg")` all come here.
#ifndef HEADPAGE_POLICY_OPTIONS_H_
#define HEADPAGE_POLICY_OPTIONS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "policy/config.h"

namespace headpage {

struct PolicyOptions {
  std::optional<int32_t> window;              // the last `window` tokens: observed, kept
  std::optional<int32_t> kernel_size;         // SnapKV's pooling kernel (odd; 1: none)
  std::optional<policy::Pooling> pooling;     // avg, max, none
  std::optional<policy::GroupReduce> reduce;  // a GQA group's query heads: mean, max
  std::optional<double> alpha;                // Ada-KV's floor share, in [0, 1]
  std::optional<policy::AdaFloor> floor;      // scaled (the paper), protect-top (kvpress)
  std::optional<double> beta;                 // PyramidKV's beta, > 0
  std::optional<double> threshold;            // DBudgetKV's threshold T, >= 0
  std::optional<int32_t> sinks;               // attention sinks, kept whatever their score
  std::optional<std::string> profile;         // head classes: a profile file (head_classes.h)
  std::optional<double> sparsity;             // head classes: the share of streaming heads

  bool empty() const;
};

// The option names, in the order PolicyOptionValues lists them: window,
// kernel, pooling, reduce, alpha, floor, beta, threshold, sinks, profile,
// sparsity.
const std::vector<std::string>& PolicyOptionNames();

// Sets the option `key` from its text ("64", "avg", "protect-top", "0.3"),
// without checking its range (Validate does, once all are set).
// InvalidArgument for an unknown key or a value that does not parse, naming
// what would.
[[nodiscard]] absl::Status SetPolicyOption(absl::string_view key, absl::string_view value,
                                           PolicyOptions* options);

// `config` with the options that are set replacing its fields, validated:
// InvalidArgument for an option out of range (an even kernel, alpha outside
// [0, 1], a negative window, ...), naming the policy. The reduction applies to
// the SnapKV family's scores and H2O's alike. `profile` is read here
// (HeadClasses::Load): NotFound or InvalidArgument for a file that is missing
// or malformed.
[[nodiscard]] absl::StatusOr<PolicyConfig> WithOptions(PolicyConfig config,
                                                       const PolicyOptions& options);
// PolicyByName(name) with the options applied.
[[nodiscard]] absl::StatusOr<PolicyConfig> PolicyByName(absl::string_view name,
                                                        const PolicyOptions& options);

// Every option's value in `config` as (name, text), in PolicyOptionNames'
// order, so that a result can say how it was made.
std::vector<std::pair<std::string, std::string>> PolicyOptionValues(const PolicyConfig& config);

}  // namespace headpage

#endif  // HEADPAGE_POLICY_OPTIONS_H_
