// SPDX-License-Identifier: Apache-2.0
// File: python/src/bind_policy.cc
//
// policy: PolicyConfig (the registry's named policies, policy_by_name,
// policy_names), and budgets as Python passes them ("20%", "128", 0.2 or 128).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "eviction/cuda_executor.h"
#include "policy/config.h"
#include "policy/options.h"
#include "python/src/bind.h"

namespace headpage::bindings {
namespace {

template <typename E>
struct Named {
  E value;
  const char* name;
};

using Scorer = PolicyConfig::Scorer;
using Allocator = PolicyConfig::Allocator;
constexpr Named<Scorer> kScorers[] = {{Scorer::kNone, "none"},    {Scorer::kSnapKV, "snapkv"},
                                      {Scorer::kH2O, "h2o"},      {Scorer::kRecency, "recency"},
                                      {Scorer::kTova, "tova"},    {Scorer::kKeyNorm, "knorm"},
                                      {Scorer::kRandom, "random"}, {Scorer::kDefensive, "defensive"}};
constexpr Named<Allocator> kAllocators[] = {{Allocator::kNone, "none"},
                                            {Allocator::kUniform, "uniform"},
                                            {Allocator::kPyramid, "pyramid"},
                                            {Allocator::kAda, "ada"},
                                            {Allocator::kAdaPyramid, "ada-pyramid"},
                                            {Allocator::kDBudget, "dbudget"},
                                            {Allocator::kAdaAcrossLayers, "ada-across-layers"},
                                            {Allocator::kHeadClasses, "head-classes"}};

template <typename E, size_t N>
const char* NameOf(E value, const Named<E> (&names)[N]) {
  for (const Named<E>& n : names) {
    if (n.value == value) return n.name;
  }
  return "unknown";
}

}  // namespace

PolicyConfig PolicyOf(const nb::handle& policy) {
  if (nb::isinstance<nb::str>(policy)) {
    return ValueOrThrow(PolicyByName(nb::cast<std::string>(policy)));
  }
  if (nb::isinstance<PolicyConfig>(policy)) return nb::cast<PolicyConfig>(policy);
  throw nb::type_error("policy: want a name (str) or a headpage.PolicyConfig");
}

Budget BudgetOf(const nb::handle& budget) {
  if (nb::isinstance<nb::str>(budget))
    return ValueOrThrow(Budget::Parse(nb::cast<std::string>(budget)));
  if (nb::isinstance<nb::bool_>(budget)) throw nb::type_error("budget: want str, int or float");
  if (nb::isinstance<nb::int_>(budget)) {
    // try_cast: an int past int64 would make nb::cast throw a bare std::bad_cast.
    int64_t tokens = 0;
    if (!nb::try_cast(budget, tokens) || tokens < 1 || tokens > INT32_MAX) {
      BadArgument(absl::StrCat("budget ", nb::str(budget).c_str(),
                               " is out of range: want 1 to 2147483647 tokens per head"));
    }
    return Budget::TokensPerHead(static_cast<int32_t>(tokens));
  }
  if (nb::isinstance<nb::float_>(budget)) {
    const double f = nb::cast<double>(budget);
    if (!(f > 0.0 && f <= 1.0))
      BadArgument(absl::StrCat("budget fraction ", f, " is not in (0, 1]"));
    return Budget::Fraction(f);
  }
  throw nb::type_error(
      "budget: want '20%' or '128' (str), a fraction (float) or tokens per head (int)");
}

void DefPolicy(nb::module_& m) {
  nb::class_<PolicyConfig>(m, "PolicyConfig", "A policy: scorer + budget allocator, with options.")
      .def_rw("name", &PolicyConfig::name)
      .def_rw("window", &PolicyConfig::window)
      .def_rw("sinks", &PolicyConfig::sinks)
      .def_rw("pyramid_beta", &PolicyConfig::pyramid_beta)
      .def_rw("dbudget_threshold", &PolicyConfig::dbudget_threshold)
      .def_prop_rw(
          "ada_alpha", [](const PolicyConfig& c) { return c.ada.alpha; },
          [](PolicyConfig& c, double a) { c.ada.alpha = a; })
      .def_prop_rw(
          "snapkv_kernel_size", [](const PolicyConfig& c) { return c.snapkv.kernel_size; },
          [](PolicyConfig& c, int32_t k) { c.snapkv.kernel_size = k; })
      .def_prop_ro("scorer",
                   [](const PolicyConfig& c) { return std::string(NameOf(c.scorer, kScorers)); })
      .def_prop_ro(
          "allocator",
          [](const PolicyConfig& c) { return std::string(NameOf(c.allocator, kAllocators)); })
      .def_prop_ro(
          "dbudget_metric",
          [](const PolicyConfig& c) {
            return std::string(c.dbudget_metric == PolicyConfig::DBudgetMetric::kFrobenius
                                   ? "frobenius"
                                   : "last-token");
          },
          "DBudgetKV's halting metric: 'last-token' (the released code) or 'frobenius' (the "
          "paper's reduced attention matrix).")
      .def_prop_ro("compresses", &PolicyConfig::compresses,
                   "Whether the policy evicts anything ('full' does not).")
      .def_prop_ro("critical", [](const PolicyConfig& c) { return c.critical; },
                   "Whether the policy selects in CriticalKV's two stages (attention, then "
                   "attention x projected value norm).")
      .def_prop_ro("needs_output_projection", &PolicyConfig::needs_output_projection,
                   "Whether compress() needs each layer's output projection (o_proj.weight): "
                   "CriticalKV and DefensiveKV weigh tokens by ||v W_o^h||_1.")
      .def_prop_ro(
          "evicts_while_decoding", [](const PolicyConfig& c) { return c.evicts_while_decoding; },
          "Whether the policy evicts at decode steps too (H2O).")
      .def(
          "observed_queries",
          [](const PolicyConfig& c, int32_t prompt_queries) {
            // ObservedQueries would hand a negative count back as it came.
            if (prompt_queries < 0)
              BadArgument(absl::StrCat("prompt_queries ", prompt_queries, " is negative"));
            return c.ObservedQueries(prompt_queries);
          },
          nb::arg("prompt_queries"),
          "How many of the last prompt queries the compression at the end of the prefill "
          "observes.")
      .def_prop_ro("runs_on_head_slices", &PolicyConfig::runs_on_head_slices,
                   "Whether a rank of a tensor-parallel group, holding a slice of each layer's "
                   "kv heads, decides what one engine over every head would "
                   "(EvictionEngine.join_group): not for scores or budgets read across a "
                   "layer's heads (TOVA, DefensiveKV, DBudgetKV, head classes, random).")
      .def_prop_ro(
          "runs_on_gpu", [](const PolicyConfig& c) { return CudaExecutor::Supports(c).ok(); },
          "Whether an EvictionEngine over a CudaArena runs this policy on the GPU.")
      .def("validate", [](const PolicyConfig& c) { ThrowIfError(Validate(c)); })
      .def_prop_ro(
          "options",
          [](const PolicyConfig& c) {
            nb::dict out;
            for (const auto& [key, value] : PolicyOptionValues(c)) out[key.c_str()] = value;
            return out;
          },
          "Every policy option's value as policy_by_name takes it (text), for a results row.")
      .def("__repr__", [](const PolicyConfig& c) {
        return absl::StrCat("PolicyConfig(name='", c.name, "', scorer=", NameOf(c.scorer, kScorers),
                            ", allocator=", NameOf(c.allocator, kAllocators), ", window=", c.window,
                            ", sinks=", c.sinks, ")");
      });
  m.def(
      "policy_by_name",
      [](const std::string& name, const nb::kwargs& options) {
        PolicyOptions parsed;
        for (const auto& [key, value] : options) {
          const std::string k = nb::cast<std::string>(key);
          // Numbers and names alike go through the option's own parser, so that
          // Python and the command line refuse the same values the same way.
          if (!nb::isinstance<nb::str>(value) && !nb::isinstance<nb::int_>(value) &&
              !nb::isinstance<nb::float_>(value)) {
            throw nb::type_error(absl::StrCat("policy option ", k, ": want a number or a name, got ",
                                              nb::type_name(value.type()).c_str())
                                     .c_str());
          }
          if (nb::isinstance<nb::bool_>(value)) {
            throw nb::type_error(absl::StrCat("policy option ", k, ": want a number or a name, got bool")
                                     .c_str());
          }
          ThrowIfError(SetPolicyOption(k, nb::str(value).c_str(), &parsed));
        }
        return ValueOrThrow(PolicyByName(name, parsed));
      },
      nb::arg("name"), nb::arg("options"),
      "The named policy, with the papers' defaults (see policy_names()), and any of the options "
      "window, kernel, pooling ('avg', 'max', 'none'), reduce ('mean', 'max'), alpha, floor "
      "('scaled', 'protect-top'), beta, threshold, sinks, profile (a head-class TSV file for "
      "duoattention and razorattention) and sparsity (their share of streaming heads) replacing "
      "its values (ValueError for a value out of range or a malformed profile).");
  m.def("policy_names", &PolicyNames, "The names policy_by_name knows, in the registry's order.");
  m.def(
      "budget_capacity",
      [](nb::handle budget, int32_t prompt_len) {
        // CapacityFor would answer its minimum, 1, for a negative length.
        if (prompt_len < 0) BadArgument(absl::StrCat("prompt_len ", prompt_len, " is negative"));
        return BudgetOf(budget).CapacityFor(prompt_len);
      },
      nb::arg("budget"), nb::arg("prompt_len"),
      "Tokens per head that a budget ('20%', '128', 0.2 or 128) gives a prompt.");
}

}  // namespace headpage::bindings
