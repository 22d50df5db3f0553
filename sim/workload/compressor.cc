// SPDX-License-Identifier: Apache-2.0
#include "sim/workload/compressor.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/status.h"
#include "policy/budget.h"

namespace headpage {
namespace workload_internal {
namespace {

constexpr int32_t kR = HeadProfile::kResolution;

}  // namespace

Compressor::Compressor(const HeadProfile& profile, const CacheGeometry& geometry,
                       WorkloadPolicy policy, const Budget& budget, const PolicyConfig& config)
    : profile_(profile), geometry_(geometry), policy_(policy), budget_(budget), config_(config) {
  positions_.resize(kR);
  std::iota(positions_.begin(), positions_.end(), 0);
}

absl::Status Compressor::PromptKept(int32_t prompt_len, std::vector<int32_t>* kept) {
  const int32_t heads = geometry_.num_kv_heads, layers = geometry_.num_layers;
  kept->assign(static_cast<size_t>(geometry_.streams_per_sequence()), prompt_len);
  const int32_t w = config_.window;
  if (policy_ == WorkloadPolicy::kHeadClasses) {
    // Streaming heads keep their sinks and recent window, retrieval heads all.
    const policy::HeadClasses& classes = *config_.head_profile;
    if (retrieval_.empty()) retrieval_ = classes.Retrieval(config_.head_sparsity);
    const int64_t streaming = std::min<int64_t>(prompt_len, int64_t{config_.sinks} + w);
    for (int32_t l = 0; l < layers; ++l) {
      const int64_t row = static_cast<int64_t>(l) * classes.num_layers() / layers;
      for (int32_t h = 0; h < heads; ++h) {
        const bool keeps_all =
            retrieval_[static_cast<size_t>(row) * classes.num_kv_heads() + h % classes.num_kv_heads()];
        (*kept)[static_cast<size_t>(l) * heads + h] =
            keeps_all ? prompt_len : static_cast<int32_t>(streaming);
      }
    }
    return absl::OkStatus();
  }
  if (policy_ == WorkloadPolicy::kNone || policy_ == WorkloadPolicy::kPoolPressure ||
      prompt_len <= w + 1) {
    return absl::OkStatus();
  }
  // A capacity under the window would be an error for the allocators: the
  // window (plus one token) is always kept.
  const int32_t capacity = std::max(budget_.CapacityFor(prompt_len), w + 1);
  if (capacity >= prompt_len && policy_ != WorkloadPolicy::kDBudget) return absl::OkStatus();
  const int32_t candidates = prompt_len - w, selectable = capacity - w;
  for (int32_t l = 0; l < layers; ++l) {
    int32_t* layer_kept = kept->data() + static_cast<size_t>(l) * heads;
    switch (policy_) {
      case WorkloadPolicy::kUniform:
        std::fill(layer_kept, layer_kept + heads, capacity);
        break;
      case WorkloadPolicy::kPyramid: {
        if (l == 0) {
          HEADPAGE_ASSIGN_OR_RETURN(
              pyramid_,
              policy::PyramidCapacities(layers, capacity, w, prompt_len, config_.pyramid_beta));
        }
        std::fill(layer_kept, layer_kept + heads, std::clamp(pyramid_[l], w, prompt_len));
        break;
      }
      case WorkloadPolicy::kAda: {
        // The layer's Ada allocation at the profile's resolution, as shares
        // of its budget, handed out over the request's candidates.
        const auto reference = static_cast<int32_t>(std::clamp<int64_t>(
            std::llround(static_cast<double>(selectable) * kR / candidates), 1, kR));
        HEADPAGE_ASSIGN_OR_RETURN(const std::vector<double>* shares, AdaShares(l, reference));
        const std::vector<uint32_t> lens(static_cast<size_t>(heads),
                                         static_cast<uint32_t>(candidates));
        const std::vector<int32_t> split = ProportionalKeptCounts(
            *shares, lens, static_cast<int64_t>(selectable) * heads, /*min_kept=*/0);
        for (int32_t h = 0; h < heads; ++h) layer_kept[h] = w + split[h];
        break;
      }
      case WorkloadPolicy::kDBudget: {
        HEADPAGE_ASSIGN_OR_RETURN(const double cut, DBudgetCut(l));
        const auto dropped = static_cast<int32_t>(std::llround(cut * candidates));
        std::fill(layer_kept, layer_kept + heads, prompt_len - dropped);
        break;
      }
      case WorkloadPolicy::kNone:
      case WorkloadPolicy::kPoolPressure:
      case WorkloadPolicy::kHeadClasses:
        break;
    }
  }
  return absl::OkStatus();
}

std::vector<policy::StreamScores> Compressor::ReferenceStreams(int32_t layer) {
  const int32_t heads = geometry_.num_kv_heads;
  if (reference_scores_.empty()) {
    reference_scores_.resize(static_cast<size_t>(geometry_.streams_per_sequence()));
    for (int32_t st = 0; st < geometry_.streams_per_sequence(); ++st) {
      const absl::Span<const double> mass = profile_.BinMass(st);
      reference_scores_[st].assign(mass.begin(), mass.end());
    }
  }
  std::vector<policy::StreamScores> streams(static_cast<size_t>(heads));
  for (int32_t h = 0; h < heads; ++h) {
    streams[h] = policy::StreamScores{reference_scores_[layer * heads + h], positions_, {}};
  }
  return streams;
}

absl::StatusOr<const std::vector<double>*> Compressor::AdaShares(int32_t layer,
                                                                 int32_t reference) {
  std::vector<double>& shares = ada_memo_[static_cast<int64_t>(layer) * (kR + 1) + reference];
  if (shares.empty()) {
    HEADPAGE_ASSIGN_OR_RETURN(const std::vector<int32_t> kept,
                              policy::AdaKept(ReferenceStreams(layer), reference, config_.ada));
    shares.assign(kept.begin(), kept.end());
  }
  return &shares;
}

absl::StatusOr<double> Compressor::DBudgetCut(int32_t layer) {
  if (dbudget_cut_.empty()) dbudget_cut_.assign(static_cast<size_t>(geometry_.num_layers), -1.0);
  if (dbudget_cut_[layer] < 0) {
    const std::vector<policy::StreamScores> streams = ReferenceStreams(layer);
    // The last query's attention: the same curve (one row, a group of one).
    std::vector<absl::Span<const float>> rows;
    for (const policy::StreamScores& s : streams) rows.push_back(s.scores);
    HEADPAGE_ASSIGN_OR_RETURN(const std::vector<int32_t> kept,
                              policy::DBudgetKept(streams, rows, 1, config_.dbudget_threshold));
    dbudget_cut_[layer] = 1.0 - static_cast<double>(kept[0]) / kR;
  }
  return dbudget_cut_[layer];
}

}  // namespace workload_internal
}  // namespace headpage
