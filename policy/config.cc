// SPDX-License-Identifier: Apache-2.0
#include "policy/config.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"

namespace headpage {
namespace {

using S = PolicyConfig::Scorer;
using A = PolicyConfig::Allocator;

// CriticalKV as released (kvpress's CriticalKVPress and CriticalAdaKVPress):
// on kvpress's SnapKVPress (window 64, average pooling with kernel 5); the Ada
// variant's safeguard protects each head's top int(0.2 C), the window counted
// in, and the rest is a layer-wide top-k.
void ConfigureCritical(A allocator, PolicyConfig* c) {
  c->allocator = allocator;
  c->critical = true;
  c->window = 64;
  c->snapkv.kernel_size = 5;
  c->snapkv.pooling = policy::Pooling::kAvg;
  c->ada.floor = policy::AdaFloor::kProtectTop;
  c->ada.safe_counts_protected = true;
}

// DefensiveKV as released: its scorer, average pooling with kernel 5, no
// safeguard floor, and the budget shared by the layer's heads (kAda) or by
// every layer's (kAdaAcrossLayers).
void ConfigureDefensive(A allocator, PolicyConfig* c) {
  c->scorer = S::kDefensive;
  c->allocator = allocator;
  c->ada.alpha = 0.0;
  c->snapkv.kernel_size = 5;
  c->snapkv.pooling = policy::Pooling::kAvg;
}

// The registry: a name, and what it changes from PolicyConfig's defaults
// (SnapKV scores, window 32, maxpool 7, GQA mean, Ada alpha 0.2).
struct NamedPolicy {
  const char* name;
  void (*configure)(PolicyConfig*);
};

constexpr NamedPolicy kPolicies[] = {
    {"full", [](PolicyConfig* c) { c->scorer = S::kNone; c->allocator = A::kNone; }},
    {"uniform-snapkv", [](PolicyConfig* c) { c->allocator = A::kUniform; }},
    {"pyramid", [](PolicyConfig* c) { c->allocator = A::kPyramid; }},
    {"ada-snapkv", [](PolicyConfig* c) { c->allocator = A::kAda; }},
    {"ada-pyramid", [](PolicyConfig* c) { c->allocator = A::kAdaPyramid; }},
    // ReFreeKV's released run: SnapKV-style window vote without pooling, w = 8,
    // last-token attention norm with T = 0.05.
    {"dbudget",
     [](PolicyConfig* c) {
       c->allocator = A::kDBudget;
       c->window = 8;
       c->snapkv.kernel_size = 1;
       c->snapkv.pooling = policy::Pooling::kNone;
     }},
    // The paper's metric (arXiv 2502.16886; ReFreeKV's norm-fro path): the same
    // vote over the last 8 queries orders the candidates, and the cut is where
    // the Frobenius norm of the prompt's attention, with the pruned rows and
    // columns removed, has lost 1% (the threshold its later version reports).
    // The matrix needs every prompt query's attention.
    {"dbudget-fro",
     [](PolicyConfig* c) {
       c->allocator = A::kDBudget;
       c->dbudget_metric = PolicyConfig::DBudgetMetric::kFrobenius;
       c->dbudget_threshold = 0.01;
       c->observe = PolicyConfig::Observe::kAllPrompt;
       c->window = 8;
       c->snapkv.kernel_size = 1;
       c->snapkv.pooling = policy::Pooling::kNone;
     }},
    // Heavy hitters (attention accumulated over every prompt query) plus as many
    // recent tokens, held at the budget while decoding.
    {"h2o",
     [](PolicyConfig* c) {
       c->scorer = S::kH2O;
       c->observe = PolicyConfig::Observe::kAllPrompt;
       c->window = 0;
       c->recent_half = true;
       c->evicts_while_decoding = true;
     }},
    {"streamingllm",
     [](PolicyConfig* c) {
       c->scorer = S::kRecency;
       c->window = 0;
       c->sinks = 4;
     }},
    // kvpress's TOVAPress always keeps the last token.
    {"tova", [](PolicyConfig* c) { c->scorer = S::kTova; c->window = 1; }},
    {"knorm", [](PolicyConfig* c) { c->scorer = S::kKeyNorm; c->window = 0; }},
    {"random", [](PolicyConfig* c) { c->scorer = S::kRandom; c->window = 0; }},
    // CriticalKV (arXiv 2502.03805) on SnapKV's scores with a uniform budget,
    // and on Ada-KV's allocation. Both need each layer's output projection.
    {"critical-snapkv", [](PolicyConfig* c) { ConfigureCritical(A::kUniform, c); }},
    {"critical-ada-snapkv", [](PolicyConfig* c) { ConfigureCritical(A::kAda, c); }},
    // DefensiveKV (arXiv 2510.13334) as released: window 32, average pooling
    // with kernel 5, the layer's budget shared by its heads with no floor;
    // Layer-DefensiveKV shares it across layers. Both need the output projection.
    // Head classes: a profile (option `profile`) ranks the heads; the lowest
    // `sparsity` share streams. DuoAttention's deployment keeps 64 sinks and
    // 256 recent tokens (scripts/longbench.sh) and sweeps sparsity 0.5 and 0.75;
    // RazorAttention protects the heads its calibration selects (14% induction,
    // 1% echo: tools/profile_heads.py --method razor writes them as 1, so the
    // profile's own classes, sparsity -1) and keeps 4 sinks and a local window
    // of 256 (golden-stick's deploy: 4 sinks, one compensation token and 251
    // recent; headpage stores no synthetic token, so 252 recent).
    {"duoattention",
     [](PolicyConfig* c) {
       c->scorer = S::kRecency;
       c->allocator = A::kHeadClasses;
       c->sinks = 64;
       c->window = 256;
       c->head_sparsity = 0.5;
     }},
    {"razorattention",
     [](PolicyConfig* c) {
       c->scorer = S::kRecency;
       c->allocator = A::kHeadClasses;
       c->sinks = 4;
       c->window = 252;
       c->head_sparsity = -1.0;
     }},
    {"defensivekv", [](PolicyConfig* c) { ConfigureDefensive(A::kAda, c); }},
    {"layer-defensivekv", [](PolicyConfig* c) { ConfigureDefensive(A::kAdaAcrossLayers, c); }},
};

}  // namespace

bool PolicyConfig::runs_on_head_slices() const {
  using S = Scorer;
  using A = Allocator;
  const bool per_head_scores = scorer != S::kTova && scorer != S::kDefensive && scorer != S::kRandom;
  const bool sliceable_budget = allocator != A::kDBudget && allocator != A::kHeadClasses;
  return !compresses() || (per_head_scores && sliceable_budget);
}

int32_t PolicyConfig::ObservedQueries(int32_t prompt_queries) const {
  if (observe == Observe::kAllPrompt) return prompt_queries;
  // Scorers that read no query still get one (the engine wants a window to
  // place the compression), however long the recent window they protect.
  if (scorer == Scorer::kRecency || scorer == Scorer::kKeyNorm || scorer == Scorer::kRandom) {
    return std::min(prompt_queries, 1);
  }
  return std::min(prompt_queries, std::max(window, 1));
}

const std::vector<std::string>& PolicyNames() {
  static const auto* names = [] {
    auto* v = new std::vector<std::string>;
    for (const NamedPolicy& p : kPolicies) v->emplace_back(p.name);
    return v;
  }();
  return *names;
}

absl::StatusOr<PolicyConfig> PolicyByName(absl::string_view name) {
  for (const NamedPolicy& p : kPolicies) {
    if (name != p.name) continue;
    PolicyConfig c;
    c.name = std::string(name);
    p.configure(&c);
    return c;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown policy '", name, "'; known: ",
                                                 absl::StrJoin(PolicyNames(), ", ")));
}

absl::Status Validate(const PolicyConfig& c) {
  if (c.window < 0 || c.sinks < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy ", c.name, ": window ", c.window, " and sinks ", c.sinks, " must be >= 0"));
  }
  if (!(c.ada.alpha >= 0.0 && c.ada.alpha <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy ", c.name, ": alpha ", c.ada.alpha, " is outside [0, 1]"));
  }
  if (!(c.pyramid_beta > 0.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy ", c.name, ": beta ", c.pyramid_beta, " must be > 0"));
  }
  if (!(c.dbudget_threshold >= 0.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy ", c.name, ": threshold ", c.dbudget_threshold, " must be >= 0"));
  }
  if (c.snapkv.kernel_size < 1 || c.snapkv.kernel_size % 2 == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "policy ", c.name, ": pooling kernel ", c.snapkv.kernel_size, " must be odd and >= 1"));
  }
  if (c.dbudget_metric == PolicyConfig::DBudgetMetric::kFrobenius && c.dbudget_by_position) {
    return absl::InvalidArgumentError(absl::StrCat(
        "policy ", c.name, ": DBudgetKV's Frobenius metric orders candidates by score only"));
  }
  if (c.scorer == PolicyConfig::Scorer::kDefensive &&
      (c.window < 1 || c.snapkv.pooling != policy::Pooling::kAvg)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "policy ", c.name, ": DefensiveKV needs an observation window (>= 1) and average pooling"));
  }
  if (!((c.head_sparsity >= 0.0 && c.head_sparsity <= 1.0) || c.head_sparsity == -1.0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "policy ", c.name, ": head sparsity ", c.head_sparsity,
        " is outside [0, 1] (or -1: the profile's own classes, score >= 0.5)"));
  }
  if (c.critical && !(c.critical_options.first_stage >= 0.0 && c.critical_options.first_stage <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("policy ", c.name, ": CriticalKV's first stage ",
                                                   c.critical_options.first_stage,
                                                   " is outside [0, 1]"));
  }
  if (c.scorer == PolicyConfig::Scorer::kNone && c.allocator != PolicyConfig::Allocator::kNone) {
    return absl::InvalidArgumentError(absl::StrCat("policy ", c.name, ": an allocator needs a scorer"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Budget> Budget::Parse(absl::string_view text) {
  absl::string_view number = text;
  const bool percent = absl::ConsumeSuffix(&number, "%");
  double value = 0;
  if (!absl::SimpleAtod(number, &value) || !std::isfinite(value) || value <= 0 ||
      (percent && value > 100)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "budget '", text, "' is not a positive token count per head (e.g. 128) or a percentage "
        "of the prompt in (0, 100] (e.g. 20%)"));
  }
  if (percent) return Fraction(value / 100.0);
  if (value != std::floor(value) || value > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("budget '", text, "' is not a whole token count"));
  }
  return TokensPerHead(static_cast<int32_t>(value));
}

int32_t Budget::CapacityFor(int32_t prompt_len) const {
  if (kind == Kind::kTokensPerHead) return static_cast<int32_t>(value);
  return std::max<int32_t>(1, static_cast<int32_t>(std::lround(value * prompt_len)));
}

std::string Budget::ToString() const {
  if (kind == Kind::kTokensPerHead) return absl::StrCat(static_cast<int64_t>(value));
  return absl::StrCat(value * 100.0, "%");
}

absl::Status Validate(const Budget& budget) {
  if (!(budget.value > 0) || (budget.kind == Budget::Kind::kFraction && budget.value > 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("budget ", budget.ToString(), " is out of range"));
  }
  return absl::OkStatus();
}

}  // namespace headpage
