// SPDX-License-Identifier: Apache-2.0
// File: policy/defensive.h
//
// DefensiveKV (Feng et al., arXiv 2510.13334, "Taming the Fragility of KV
// Cache Eviction"): the mean of the window's attention, which SnapKV and
// Ada-KV rank by, hides a token that one query needs badly; DefensiveKV ranks
// by the worst case instead, the largest attention any observation query of
// the group gives the token, floored at the head's mean of those maxima (an
// "adaptive prior": no token's risk is below the head's average). It then
// weighs the score by the token's projected value norm, as CriticalKV does,
// normalised across the layer's KV heads, and secures the tokens that carry
// 90% of each head's mean attention (less the window's share) first.
//
// Released code: FFY0/DefensiveKV, kvpress/presses/efficient_defensivekv_press.py
// (compute_window_attention lines 117-156, score lines 158-220, vwl1norm lines
// 32-112); DefensiveKV allocates per layer (efficient_ada_scorer_press.py: one
// top-k over the layer's KV heads, no safeguard floor), Layer-DefensiveKV
// across layers (efficient_ada_global_scorer_press.py: one top-k over every
// layer's KV heads). Defaults: window 32, average pooling with kernel 5.
#ifndef HEADPAGE_POLICY_DEFENSIVE_H_
#define HEADPAGE_POLICY_DEFENSIVE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "policy/types.h"

namespace headpage::policy {

// What DefensiveScores measures of one stream.
struct DefensiveStream {
  // Keys before the window (the candidates): the slot prefix below the lowest
  // window query's position.
  int32_t prefix = 0;
  // The attention the window's rows give the last min(w, prefix) keys before
  // the window, summed over the group's rows (w = window.num_queries). The
  // released code's window_bias is the mean of this over every query row of
  // the layer (its slice of the attention is taken after the window's own
  // columns were dropped, so it measures the keys just before the window).
  double mass_before_window = 0.0;
};

// One stream's defensive score over the keys before the window, and its mean
// attention there. With A[g][t][j] the softmax attention of window query t of
// q head g over the keys it sees (causal, in float), restricted to the prefix:
//   P[g][t]   = avg_pool(A[g][t], kernel, padding kernel/2, zeros counted),
//               rescaled to the row's own prefix mass sum_j A[g][t][j]
//   m[j]      = max over g and t of P[g][t][j]
//   scores[j] = max(m[j], mean over the prefix of m)          j < prefix
//   mean_attention[j] = mean over g and t of A[g][t][j]      (unpooled)
// and 0 at the window's own keys (the caller scores them; they are kept). A
// row whose pooled prefix sums to 0 contributes nothing.
// InvalidArgument: the scorers' checks (scores.h), an even or non-positive
// kernel, spans of the wrong size, an empty window.
[[nodiscard]] absl::Status DefensiveScores(const StreamKeys& keys, const GroupQueries& window,
                                           int32_t kernel_size, absl::Span<float> scores,
                                           absl::Span<float> mean_attention,
                                           DefensiveStream* measured);

// The layer step of DefensiveKV, over the layer's KV heads (all with the same
// prefix, as at the end of a prefill): on the candidates j < prefix,
//   s'[h][j] = scores[h][j] * value_norms[h][j] / sum_h' value_norms[h'][j]
// (the released code's normalisation across KV heads; a token whose norms are
// all zero weighs 1 / heads); then per head, with q = mean_attention[h]
// normalised to sum 1 and sorted descending (ties: the lower slot first), the
// first c tokens of that order, c = the index of the first cumulative sum
// >= 0.9 - window_bias, at most floor(prefix * capacity / n - (n - prefix))
// and at least 0, score the layer's largest s' (the released code's stage 1:
// secured tokens). The window's keys (j >= prefix) score it too. Written in
// place into `scores`. window_bias: DefensiveStream::mass_before_window summed
// over the layer, divided by its q heads x window rows.
// InvalidArgument: no heads, spans of different sizes, heads with different
// lengths, prefix outside [0, n], capacity < 1, a negative, NaN or infinite
// norm or mean attention.
[[nodiscard]] absl::Status DefensiveLayerScores(absl::Span<const absl::Span<float>> scores,
                                                absl::Span<const absl::Span<const float>> mean_attention,
                                                absl::Span<const absl::Span<const float>> value_norms,
                                                int32_t prefix, double window_bias,
                                                int32_t capacity);

}  // namespace headpage::policy

#endif  // HEADPAGE_POLICY_DEFENSIVE_H_
