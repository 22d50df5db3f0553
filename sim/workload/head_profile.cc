// SPDX-License-Identifier: Apache-2.0
#include "sim/workload/head_profile.h"

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
#include "sim/workload/random.h"

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

std::vector<double> SkewedHeadWeights(int32_t num_heads, double sigma, uint64_t seed) {
  std::vector<double> weights(static_cast<size_t>(std::max(num_heads, 0)));
  SplitMix64 rng(seed);
  for (double& w : weights) w = std::exp(sigma * rng.Normal());
  return weights;
}

std::vector<int32_t> ProportionalKeptCounts(absl::Span<const double> weights,
                                            absl::Span<const uint32_t> lens, int64_t budget,
                                            int32_t min_kept) {
  const size_t n = lens.size();
  std::vector<int64_t> lo(n), hi(n);
  int64_t sum_lo = 0, sum_hi = 0;
  for (size_t h = 0; h < n; ++h) {
    hi[h] = lens[h];
    lo[h] = std::min<int64_t>(std::max(min_kept, 0), hi[h]);
    sum_lo += lo[h];
    sum_hi += hi[h];
  }
  const int64_t target = std::clamp(budget, sum_lo, sum_hi);

  // Water-filling: find the scale s with sum_h clamp(s * w_h, lo_h, hi_h) = target
  // by bisection (the sum is non-decreasing in s).
  auto share = [&](double scale, size_t h) {
    return std::clamp(scale * weights[h], static_cast<double>(lo[h]), static_cast<double>(hi[h]));
  };
  double below = 0.0, above = 0.0;
  for (size_t h = 0; h < n; ++h) {
    if (weights[h] > 0.0) above = std::max(above, static_cast<double>(hi[h]) / weights[h]);
  }
  for (int iter = 0; iter < 200; ++iter) {
    const double mid = 0.5 * (below + above);
    double total = 0.0;
    for (size_t h = 0; h < n; ++h) total += share(mid, h);
    (total < static_cast<double>(target) ? below : above) = mid;
  }

  // Round down, then hand out what is left by largest remainder.
  std::vector<double> exact(n);
  std::vector<int64_t> kept(n);
  int64_t left = target;
  for (size_t h = 0; h < n; ++h) {
    exact[h] = share(above, h);
    kept[h] = std::clamp(static_cast<int64_t>(std::floor(exact[h])), lo[h], hi[h]);
    left -= kept[h];
  }
  while (left != 0) {
    size_t pick = n;
    for (size_t h = 0; h < n; ++h) {
      const bool can = left > 0 ? kept[h] < hi[h] : kept[h] > lo[h];
      if (!can) continue;
      const double frac = exact[h] - static_cast<double>(kept[h]);
      if (pick == n || (left > 0 ? frac > exact[pick] - static_cast<double>(kept[pick])
                                 : frac < exact[pick] - static_cast<double>(kept[pick]))) {
        pick = h;
      }
    }
    const int64_t step = left > 0 ? 1 : -1;
    kept[pick] += step;
    left -= step;
  }
  return std::vector<int32_t>(kept.begin(), kept.end());
}

}  // namespace headpage
