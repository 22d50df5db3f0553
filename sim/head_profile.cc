// SPDX-License-Identifier: Apache-2.0
#include "sim/head_profile.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "policy/scores.h"
#include "core/status.h"
#include "sim/walkthrough.h"

namespace headpage {
namespace {

constexpr int32_t kR = HeadProfile::kResolution;
constexpr int32_t kTraceWindow = 32;  // SnapKV's observation window

absl::Status CheckConcentration(double concentration) {
  if (!(concentration > 0.0 && concentration <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("profile concentration must be in (0, 1], got ", concentration));
  }
  return absl::OkStatus();
}

}  // namespace

HeadProfile::HeadProfile(std::string name, const CacheGeometry& geometry)
    : name_(std::move(name)),
      num_layers_(geometry.num_layers),
      num_kv_heads_(geometry.num_kv_heads),
      mass_(static_cast<size_t>(geometry.streams_per_sequence()) * kR, 0.0),
      cumulative_(static_cast<size_t>(geometry.streams_per_sequence()) * (kR + 1), 0.0) {}

void HeadProfile::FinishStream(int32_t stream) {
  double* cum = &cumulative_[static_cast<size_t>(stream) * (kR + 1)];
  const double* mass = &mass_[static_cast<size_t>(stream) * kR];
  cum[0] = 0.0;
  for (int32_t b = 0; b < kR; ++b) cum[b + 1] = cum[b] + mass[b];
  cum[kR] = 1.0;  // exact, whatever the rounding of the sum
}

double HeadProfile::TopMass(int32_t stream, double x) const {
  const double* cum = &cumulative_[static_cast<size_t>(stream) * (kR + 1)];
  const double pos = std::clamp(x, 0.0, 1.0) * kR;
  const auto b = std::min(static_cast<int32_t>(pos), kR - 1);
  return cum[b] + (pos - b) * (cum[b + 1] - cum[b]);
}

void HeadProfile::SetFromScores(int32_t stream, std::vector<double> scores) {
  std::sort(scores.begin(), scores.end(), std::greater<double>());
  const double total = std::accumulate(scores.begin(), scores.end(), 0.0);
  const auto n = static_cast<double>(scores.size());
  // The sorted scores as a piecewise-constant density over [0, 1] (token i
  // covers [i / n, (i + 1) / n)), integrated over each bin.
  double* mass = &mass_[static_cast<size_t>(stream) * kR];
  for (int32_t b = 0; b < kR; ++b) {
    const double lo = b * n / kR, hi = (b + 1) * n / kR;
    double m = 0.0;
    for (auto i = static_cast<int64_t>(lo); i < static_cast<int64_t>(std::ceil(hi)); ++i) {
      const double overlap = std::min(hi, i + 1.0) - std::max(lo, static_cast<double>(i));
      if (overlap > 0) m += overlap * (total > 0 ? scores[i] / total : 1.0 / n);
    }
    mass[b] = m;
  }
  FinishStream(stream);
}

absl::StatusOr<HeadProfile> HeadProfile::Uniform(const CacheGeometry& geometry,
                                                 double concentration) {
  return Skewed(geometry, 0, concentration, 0.0);
}

absl::StatusOr<HeadProfile> HeadProfile::Skewed(const CacheGeometry& geometry, uint64_t seed,
                                                double concentration, double sigma) {
  HEADPAGE_RETURN_IF_ERROR(Validate(geometry));
  HEADPAGE_RETURN_IF_ERROR(CheckConcentration(concentration));
  if (!(sigma >= 0.0 && std::isfinite(sigma))) {
    return absl::InvalidArgumentError(
        absl::StrCat("profile skew must be finite and >= 0, got ", sigma));
  }
  HeadProfile p(sigma == 0.0 ? "uniform" : "skewed", geometry);
  // The same log-normal weights the walkthrough's Ada-like eviction uses.
  const std::vector<double> weights =
      SkewedHeadWeights(geometry.streams_per_sequence(), sigma, seed);
  for (int32_t st = 0; st < geometry.streams_per_sequence(); ++st) {
    const double a = std::clamp(concentration * weights[st], 1e-3, 1.0);
    double* mass = &p.mass_[static_cast<size_t>(st) * kR];
    double prev = 0.0;
    for (int32_t b = 0; b < kR; ++b) {
      const double next = std::pow(static_cast<double>(b + 1) / kR, a);
      mass[b] = next - prev;
      prev = next;
    }
    p.FinishStream(st);
  }
  return p;
}

absl::StatusOr<HeadProfile> HeadProfile::FromTrace(const Trace& trace,
                                                   const CacheGeometry& geometry) {
  HEADPAGE_RETURN_IF_ERROR(Validate(geometry));
  const TraceMetadata& meta = trace.metadata();
  const int32_t prompt = meta.prompt_len, d = meta.head_dim, n = trace.num_tokens();
  const int32_t group = meta.num_q_heads / meta.num_kv_heads;
  const auto captured = static_cast<int32_t>(trace.layers().size());
  if (captured == 0 || prompt <= kTraceWindow) {
    return absl::FailedPreconditionError(absl::StrCat(
        "trace profile: the trace needs a captured layer and a prompt longer than the ",
        kTraceWindow, "-token window (it has ", captured, " layers, ", prompt, " prompt tokens)"));
  }
  // Curves of the trace's own streams, [captured layer][kv head].
  std::vector<std::vector<double>> curves;
  std::vector<int32_t> positions(static_cast<size_t>(prompt));
  std::iota(positions.begin(), positions.end(), 0);
  for (const TraceLayer& layer : trace.layers()) {
    const auto& qp = layer.query_positions;
    const auto first = static_cast<int32_t>(
        std::lower_bound(qp.begin(), qp.end(), prompt - kTraceWindow) - qp.begin());
    const auto last =
        static_cast<int32_t>(std::lower_bound(qp.begin(), qp.end(), prompt) - qp.begin());
    if (last <= first) {
      return absl::FailedPreconditionError(absl::StrCat("trace profile: layer ", layer.index,
                                                        " holds no query of the last ",
                                                        kTraceWindow, " prompt positions"));
    }
    const int32_t window = last - first;
    const size_t row = static_cast<size_t>(d) * SizeOf(layer.queries.dtype);
    std::vector<char> group_queries(static_cast<size_t>(group) * window * row);
    std::vector<float> scores(static_cast<size_t>(prompt));
    for (int32_t h = 0; h < meta.num_kv_heads; ++h) {
      // The window's rows of the group's q heads, [group][window][d].
      for (int32_t g = 0; g < group; ++g) {
        const size_t q_head = static_cast<size_t>(h) * group + g;
        std::memcpy(
            group_queries.data() + static_cast<size_t>(g) * window * row,
            static_cast<const char*>(layer.queries.data) + (q_head * qp.size() + first) * row,
            window * row);
      }
      const policy::StreamKeys keys{static_cast<const char*>(layer.keys.data) +
                                        static_cast<size_t>(h) * n * d * SizeOf(layer.keys.dtype),
                                    positions.data(), prompt, d, layer.keys.dtype};
      const policy::GroupQueries queries{group_queries.data(), qp.data() + first, group, window, d,
                                         layer.queries.dtype};
      HEADPAGE_RETURN_IF_ERROR(
          policy::SnapKVScores(keys, queries, policy::SnapKVOptions(), absl::MakeSpan(scores)));
      // The candidates: the keys before the window's first query.
      curves.emplace_back(scores.begin(), scores.begin() + qp[first]);
    }
  }
  HeadProfile p(absl::StrCat("trace:", meta.task.empty() ? meta.model : meta.task), geometry);
  for (int32_t l = 0; l < geometry.num_layers; ++l) {
    const int64_t src_layer = static_cast<int64_t>(l) * captured / geometry.num_layers;
    for (int32_t h = 0; h < geometry.num_kv_heads; ++h) {
      p.SetFromScores(l * geometry.num_kv_heads + h,
                      curves[src_layer * meta.num_kv_heads + h % meta.num_kv_heads]);
    }
  }
  return p;
}

absl::StatusOr<HeadProfile> HeadProfile::Parse(absl::string_view spec,
                                               const CacheGeometry& geometry, uint64_t seed) {
  if (spec == "uniform") return Uniform(geometry);
  if (spec == "skewed") return Skewed(geometry, seed);
  absl::string_view path = spec;
  if (absl::ConsumePrefix(&path, "trace:")) {
    absl::StatusOr<Trace> trace = Trace::Open(std::string(path));
    if (!trace.ok()) {
      const absl::string_view message = trace.status().message();
      return absl::StartsWith(message, path)
                 ? trace.status()
                 : absl::Status(trace.status().code(), absl::StrCat(path, ": ", message));
    }
    return FromTrace(*trace, geometry);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown head profile '", spec, "'; known: uniform, skewed, trace:FILE"));
}

}  // namespace headpage
