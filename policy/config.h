// SPDX-License-Identifier: Apache-2.0
// File: policy/config.h
//
// The registry of named policies: what each name means (which scorer, which
// budget allocator, what is protected, which queries are observed), and the
// budget a policy is run at. This is the one place that decides a policy's
// behaviour from its name: the eviction engine, the simulator, the command
// line and the Python package all take a PolicyConfig from PolicyByName() and
// read its fields, never the name.
#ifndef HEADPAGE_POLICY_CONFIG_H_
#define HEADPAGE_POLICY_CONFIG_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "policy/budget.h"
#include "policy/critical.h"
#include "policy/head_classes.h"
#include "policy/scores.h"

namespace headpage {

// A policy: how tokens are scored and how many each stream keeps.
struct PolicyConfig {
  enum class Scorer : uint8_t {
    kNone, kSnapKV, kH2O, kRecency, kTova, kKeyNorm, kRandom,
    kDefensive,  // DefensiveKV's worst case over the window, weighed by value norms (defensive.h)
  };
  enum class Allocator : uint8_t {
    kNone, kUniform, kPyramid, kAda, kAdaPyramid, kDBudget,
    // Ada-KV's top-k over every KV head of every layer at once (Layer-DefensiveKV):
    // the budget moves between layers too.
    kAdaAcrossLayers,
    // Retrieval heads keep everything, streaming heads their sinks and recent
    // window (head_classes.h; DuoAttention, RazorAttention): no budget.
    kHeadClasses,
  };
  // Which prompt queries the compression at the end of the prefill observes:
  // the last max(window, 1) (SnapKV & co.; TOVA and DBudgetKV read the last
  // one), or every prompt query (H2O's accumulated attention).
  enum class Observe : uint8_t { kWindow, kAllPrompt };

  std::string name;
  Scorer scorer = Scorer::kSnapKV;
  Allocator allocator = Allocator::kUniform;
  Observe observe = Observe::kWindow;
  int32_t window = 32;  // observation window: the last `window` tokens, always kept
  int32_t sinks = 0;    // attention sinks (positions < sinks), always kept
  // H2O: half of each stream's budget protects its most recent tokens (the
  // paper's heavy_ratio = recent_ratio), and while decoding every stream is
  // held at its budget by evicting its lowest accumulated attention.
  bool recent_half = false;
  bool evicts_while_decoding = false;
  policy::SnapKVOptions snapkv;
  policy::GroupReduce reduce = policy::GroupReduce::kMean;  // H2O's group reduction
  policy::AdaOptions ada;
  double pyramid_beta = 20.0;
  double dbudget_threshold = 0.05;
  bool dbudget_by_position = false;
  // DBudgetKV's halting metric: the released code's relative drop of the last
  // prompt token's attention norm (DBudgetKept), or the paper's Frobenius norm
  // of the prompt's attention with the pruned rows and columns removed
  // (DBudgetFrobeniusKept), which needs every prompt query (observe kAllPrompt).
  enum class DBudgetMetric : uint8_t { kLastToken, kFrobenius };
  DBudgetMetric dbudget_metric = DBudgetMetric::kLastToken;
  uint64_t seed = 0;  // the random scorer's
  // CriticalKV's two-stage selection (critical.h): after the budgets are
  // allocated on the attention scores, each stream keeps its first stage by
  // attention and the rest by attention x projected value norm.
  bool critical = false;
  policy::CriticalOptions critical_options;
  // Head classes (Allocator::kHeadClasses): the profile that ranks the
  // (layer, kv head)s, where it came from, and the share of heads that
  // stream, keeping `sinks` and the last `window` tokens.
  std::shared_ptr<const policy::HeadClasses> head_profile;
  std::string head_profile_source;
  double head_sparsity = 0.5;

  // Whether the policy evicts anything at all ("full" does not).
  bool compresses() const { return allocator != Allocator::kNone; }
  // Whether compressing needs each layer's output projection W_o (the value
  // norms of CriticalKV and DefensiveKV): LayerQueries::output_projection.
  bool needs_output_projection() const {
    return compresses() && (critical || scorer == Scorer::kDefensive);
  }
  // Whether a member of a tensor-parallel group, holding a slice of each
  // layer's KV heads, decides for its heads what one process holding them all
  // would (EvictionEngine::JoinGroup): the scorers that read one head at a time
  // (not TOVA's or DefensiveKV's scores across a layer's heads, nor the random
  // scorer, seeded by head index), and the allocators whose one layer-wide step
  // is Ada-KV's top-k (not DBudgetKV's layer metric, nor head classes' profile,
  // indexed by every head).
  bool runs_on_head_slices() const;
  // How many of the last `prompt_queries` prompt queries compression observes
  // (one for the scorers that read none: recency, key norm, random).
  int32_t ObservedQueries(int32_t prompt_queries) const;
};

// The named policies of the simulator, the command line and the Python package,
// with the papers' defaults, in a stable order.
const std::vector<std::string>& PolicyNames();
// The policy called `name`; InvalidArgument naming the known ones.
[[nodiscard]] absl::StatusOr<PolicyConfig> PolicyByName(absl::string_view name);
// InvalidArgument for options out of range (window < 0, alpha outside [0, 1],
// beta <= 0, threshold < 0, an even pooling kernel, ...).
[[nodiscard]] absl::Status Validate(const PolicyConfig& config);

// How many tokens a KV head keeps on average: a count per head that includes
// the window (the papers' 128, 256, 512, 1024), or a fraction of the prompt.
struct Budget {
  enum class Kind : uint8_t { kTokensPerHead, kFraction };
  Kind kind = Kind::kFraction;
  double value = 1.0;

  // "128" or "20%". InvalidArgument for anything else, 0, negative, > 100%.
  [[nodiscard]] static absl::StatusOr<Budget> Parse(absl::string_view text);
  static Budget TokensPerHead(int32_t tokens) { return {Kind::kTokensPerHead, double(tokens)}; }
  static Budget Fraction(double f) { return {Kind::kFraction, f}; }
  // Tokens per head for a prompt of prompt_len tokens (at least 1).
  int32_t CapacityFor(int32_t prompt_len) const;
  std::string ToString() const;
};

// InvalidArgument unless the budget is positive (a fraction at most 1).
[[nodiscard]] absl::Status Validate(const Budget& budget);

}  // namespace headpage

#endif  // HEADPAGE_POLICY_CONFIG_H_
