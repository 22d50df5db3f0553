// SPDX-License-Identifier: Apache-2.0
// File: sim/workload/head_profile.h
//
// How the attention of each stream (layer, KV head) spreads over its tokens:
// what the workload simulator's eviction policies decide from, in place of the
// per-token scores a real engine computes from K/V bytes the simulator does not
// have.
//
// A profile holds one *importance curve* per stream: the stream's candidate
// tokens (the prompt tokens outside the observation window) sorted from most to
// least important and cut into kResolution bins of equal token count, with the
// share of the stream's attention mass each bin holds. Bin masses sum to 1 and
// never increase along the bins. A curve is scale-free: a request with n
// candidates gives bin b the tokens of ranks [b n / R, (b + 1) n / R). That is
// the simulator's one modelling assumption about attention: a head that puts 90%
// of its mass on 5% of a 1,000-token prompt does so on a 30,000-token prompt too.
//
// Profiles:
//   uniform         every stream the same curve: the top share x of the
//                   candidates holds x^a of the mass, a = kDefaultConcentration
//                   (90% of the mass on 7% of the tokens, about what the
//                   bundled SmolLM2 traces show on average);
//   skewed          per stream a = kDefaultConcentration * exp(sigma z), z
//                   standard normal from the seed (sigma 1): some heads look at a
//                   handful of tokens, others spread out, as Ada-KV observes;
//   trace:FILE      SnapKV scores of a real trace's prompt (window 32, max
//                   pooling 7, the group's mean), one curve per captured layer
//                   and KV head. A trace of another geometry is tiled: layer l
//                   takes captured layer floor(l * captured / num_layers), KV
//                   head h the trace's head h mod its KV heads.
#ifndef HEADPAGE_SIM_WORKLOAD_HEAD_PROFILE_H_
#define HEADPAGE_SIM_WORKLOAD_HEAD_PROFILE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "core/geometry.h"
#include "sim/trace/trace.h"

namespace headpage {

class HeadProfile {
 public:
  static constexpr int32_t kResolution = 1024;
  static constexpr double kDefaultConcentration = 0.04;
  static constexpr double kDefaultSkew = 1.0;

  // InvalidArgument for a bad geometry, a concentration outside (0, 1] or a
  // sigma that is negative or not finite. Exponents are clamped to [1e-3, 1].
  [[nodiscard]] static absl::StatusOr<HeadProfile> Uniform(
      const CacheGeometry& geometry, double concentration = kDefaultConcentration);
  [[nodiscard]] static absl::StatusOr<HeadProfile> Skewed(
      const CacheGeometry& geometry, uint64_t seed, double concentration = kDefaultConcentration,
      double sigma = kDefaultSkew);
  // FailedPrecondition for a trace whose prompt is not longer than the window
  // or that holds no query inside it.
  [[nodiscard]] static absl::StatusOr<HeadProfile> FromTrace(const Trace& trace,
                                                             const CacheGeometry& geometry);
  // "uniform", "skewed" or "trace:FILE", as the command line names them.
  [[nodiscard]] static absl::StatusOr<HeadProfile> Parse(absl::string_view spec,
                                                         const CacheGeometry& geometry,
                                                         uint64_t seed);

  const std::string& name() const { return name_; }
  int32_t num_layers() const { return num_layers_; }
  int32_t num_kv_heads() const { return num_kv_heads_; }

  // Stream `stream`'s (layer * num_kv_heads + kv_head) bin masses, most
  // important bin first. REQUIRES: stream in range.
  absl::Span<const double> BinMass(int32_t stream) const {
    return absl::MakeConstSpan(mass_).subspan(static_cast<size_t>(stream) * kResolution,
                                              kResolution);
  }
  // The share of the stream's mass that its top fraction x (in [0, 1]) of
  // candidates holds: linear inside a bin.
  double TopMass(int32_t stream, double x) const;

 private:
  HeadProfile(std::string name, const CacheGeometry& geometry);
  // Sets stream `stream`'s curve from candidate scores (any order, >= 0).
  void SetFromScores(int32_t stream, std::vector<double> scores);
  void FinishStream(int32_t stream);

  std::string name_;
  int32_t num_layers_ = 0;
  int32_t num_kv_heads_ = 0;
  std::vector<double> mass_;        // [streams][kResolution]
  std::vector<double> cumulative_;  // [streams][kResolution + 1]
};

// `num_heads` weights exp(sigma * z), z standard normal, from a fixed generator
// seeded with `seed`: the skewed per-head importance Ada-KV observes (the
// skewed profile's exponents; the walkthrough's eviction too). The same seed
// gives the same weights on every platform.
std::vector<double> SkewedHeadWeights(int32_t num_heads, double sigma, uint64_t seed);

// Kept counts for the streams of one layer, split by importance: kept[h] is
// proportional to weights[h] (> 0), clamped to [min(min_kept, lens[h]), lens[h]],
// and the counts sum to `budget` clamped into the range those bounds allow
// (largest-remainder rounding). The workload's Ada scales its per-head shares
// to a request's prompt with it. REQUIRES: weights.size() == lens.size().
std::vector<int32_t> ProportionalKeptCounts(absl::Span<const double> weights,
                                            absl::Span<const uint32_t> lens, int64_t budget,
                                            int32_t min_kept);

}  // namespace headpage

#endif  // HEADPAGE_SIM_WORKLOAD_HEAD_PROFILE_H_
