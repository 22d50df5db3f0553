// SPDX-License-Identifier: Apache-2.0
#include "policy/defensive.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "policy/attention_rows.h"
#include "policy/scores_internal.h"

namespace headpage::policy {

using internal::AsFloat;
using internal::ForEachAttentionRow;
using internal::PackKeys;
using internal::Scratch;
using internal::ThreadScratch;
using internal::VisibleKeys;

absl::Status DefensiveScores(const StreamKeys& keys, const GroupQueries& window,
                             int32_t kernel_size, absl::Span<float> scores,
                             absl::Span<float> mean_attention, DefensiveStream* measured) {
  HEADPAGE_RETURN_IF_ERROR(internal::ValidateKeys(keys));
  HEADPAGE_RETURN_IF_ERROR(internal::ValidateQueries(window, keys));
  if (kernel_size < 1 || kernel_size % 2 == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("DefensiveScores: kernel_size must be odd and positive, got ", kernel_size));
  }
  if (window.num_queries < 1) {
    return absl::InvalidArgumentError("DefensiveScores: the window holds no query");
  }
  HEADPAGE_RETURN_IF_ERROR(internal::ValidateSize(scores.size(), keys.num_tokens, "scores"));
  HEADPAGE_RETURN_IF_ERROR(
      internal::ValidateSize(mean_attention.size(), keys.num_tokens, "mean_attention"));
  if (measured == nullptr) return absl::InvalidArgumentError("DefensiveScores: measured is null");

  const int32_t n = keys.num_tokens;
  const int32_t d = keys.head_dim;
  const int32_t w = window.num_queries;
  const int32_t window_start = *std::min_element(window.positions, window.positions + w);
  const int32_t prefix = static_cast<int32_t>(
      std::lower_bound(keys.positions, keys.positions + n, window_start) - keys.positions);
  const int32_t before = std::max(0, prefix - w);  // the keys the window bias measures

  std::vector<float> worst(prefix, 0.0f);      // m[j]: attention >= 0, so 0 starts the max
  std::vector<double> mean(prefix, 0.0);
  std::vector<float> row(prefix), pooled(prefix);
  double mass_before = 0.0;
  if (n > 0 && prefix > 0) {
    Scratch& scratch = ThreadScratch();
    const float* k = PackKeys(keys, &scratch.packed_keys);
    const float* q = AsFloat(window.data, static_cast<size_t>(window.group_size) * w * d,
                             window.dtype, &scratch.queries);
    scratch.visible.resize(w);
    for (int32_t t = 0; t < w; ++t) scratch.visible[t] = VisibleKeys(keys, window.positions[t]);
    const int64_t half = kernel_size / 2;
    for (int32_t g = 0; g < window.group_size; ++g) {
      ForEachAttentionRow(
          k, n, d, q + static_cast<size_t>(g) * w * d, scratch.visible.data(), w, &scratch,
          [&](int32_t, const float* e, int32_t seen, float sum) {
            const int32_t cols = std::min(seen, prefix);
            float base = 0.0f;
            for (int32_t j = 0; j < prefix; ++j) {
              row[j] = j < cols ? e[j] / sum : 0.0f;
              base += row[j];
              mean[j] += row[j];
            }
            for (int32_t j = before; j < prefix; ++j) mass_before += row[j];
            // avg_pool1d with count_include_pad, then the row rescaled to its mass.
            float pooled_sum = 0.0f;
            for (int64_t j = 0; j < prefix; ++j) {
              float s = 0.0f;
              for (int64_t i = std::max<int64_t>(0, j - half);
                   i <= std::min<int64_t>(prefix - 1, j + half); ++i) {
                s += row[i];
              }
              pooled[j] = s / static_cast<float>(kernel_size);
              pooled_sum += pooled[j];
            }
            if (!(pooled_sum > 0.0f)) return;
            for (int32_t j = 0; j < prefix; ++j) {
              worst[j] = std::max(worst[j], pooled[j] / pooled_sum * base);
            }
          });
    }
    scratch.TrimIfLarge();
  }
  double worst_mean = 0.0;
  for (const float m : worst) worst_mean += m;
  if (prefix > 0) worst_mean /= prefix;
  const double rows = static_cast<double>(window.group_size) * w;
  for (int32_t j = 0; j < n; ++j) {
    scores[j] = j < prefix ? std::max(worst[j], static_cast<float>(worst_mean)) : 0.0f;
    mean_attention[j] = j < prefix ? static_cast<float>(mean[j] / rows) : 0.0f;
  }
  measured->prefix = prefix;
  measured->mass_before_window = mass_before;
  return absl::OkStatus();
}

absl::Status DefensiveLayerScores(absl::Span<const absl::Span<float>> scores,
                                  absl::Span<const absl::Span<const float>> mean_attention,
                                  absl::Span<const absl::Span<const float>> value_norms,
                                  int32_t prefix, double window_bias, int32_t capacity) {
  const size_t heads = scores.size();
  if (heads == 0 || mean_attention.size() != heads || value_norms.size() != heads) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DefensiveLayerScores: ", heads, " heads of scores, ", mean_attention.size(),
        " of mean attention, ", value_norms.size(), " of value norms (want the same, >= 1)"));
  }
  const int32_t n = static_cast<int32_t>(scores[0].size());
  for (size_t h = 0; h < heads; ++h) {
    if (static_cast<int32_t>(scores[h].size()) != n ||
        static_cast<int32_t>(mean_attention[h].size()) != n ||
        static_cast<int32_t>(value_norms[h].size()) != n) {
      return absl::InvalidArgumentError(absl::StrCat(
          "DefensiveLayerScores: kv head ", h, " holds ", scores[h].size(), " scores, ",
          mean_attention[h].size(), " mean attentions, ", value_norms[h].size(),
          " norms; every head needs ", n, " of each"));
    }
    for (int32_t j = 0; j < n; ++j) {
      const float a = mean_attention[h][j];
      const float v = value_norms[h][j];
      if (!(a >= 0.0f) || !std::isfinite(a) || !(v >= 0.0f) || !std::isfinite(v) ||
          std::isnan(scores[h][j])) {
        return absl::InvalidArgumentError(absl::StrCat(
            "DefensiveLayerScores: kv head ", h, " slot ", j, ": mean attention ", a,
            ", value norm ", v, ", score ", scores[h][j]));
      }
    }
  }
  if (prefix < 0 || prefix > n || capacity < 1 || std::isnan(window_bias)) {
    return absl::InvalidArgumentError(absl::StrCat("DefensiveLayerScores: prefix ", prefix,
                                                   " of ", n, " tokens, capacity ", capacity,
                                                   ", window bias ", window_bias));
  }
  // Weigh by the value norms, normalised across the layer's KV heads.
  float layer_max = -std::numeric_limits<float>::infinity();
  for (int32_t j = 0; j < prefix; ++j) {
    float total = 0.0f;
    for (size_t h = 0; h < heads; ++h) total += value_norms[h][j];
    for (size_t h = 0; h < heads; ++h) {
      const float share = total > 0.0f ? value_norms[h][j] / total : 1.0f / heads;
      scores[h][j] *= share;
      layer_max = std::max(layer_max, scores[h][j]);
    }
  }
  if (prefix == 0) layer_max = 0.0f;
  // Stage 1: per head, the tokens before the cumulative mean attention
  // reaches 0.9 - window_bias, capped so that they and the window fit the budget.
  const double cap_value =
      std::trunc(static_cast<double>(prefix) * capacity / std::max(n, 1) - (n - prefix));
  const int32_t cap = static_cast<int32_t>(std::max(0.0, cap_value));
  const float threshold = static_cast<float>(0.9 - window_bias);
  std::vector<int32_t> order(prefix);
  for (size_t h = 0; h < heads; ++h) {
    const absl::Span<const float> a = mean_attention[h];
    float total = 0.0f;
    for (int32_t j = 0; j < prefix; ++j) total += a[j];
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t x, int32_t y) { return a[x] > a[y]; });
    // argmax of (cumsum >= threshold): the first index where it holds, 0 if none.
    int32_t count = 0;
    float cumulative = 0.0f;
    for (int32_t i = 0; i < prefix; ++i) {
      cumulative += total > 0.0f ? a[order[i]] / total : 0.0f;
      if (cumulative >= threshold) {
        count = i;
        break;
      }
    }
    count = std::min(count, cap);
    for (int32_t i = 0; i < count; ++i) scores[h][order[i]] = layer_max;
    for (int32_t j = prefix; j < n; ++j) scores[h][j] = layer_max;
  }
  return absl::OkStatus();
}

}  // namespace headpage::policy
