// SPDX-License-Identifier: Apache-2.0
// File: blockmgr/policy/budget.h
//
// Step 2 of a policy: budget allocators. They decide how many tokens each
// stream keeps, counting its protected tokens (the papers' capacity C includes
// the observation window). Every result satisfies, per stream,
//   NumProtected() <= kept <= num_tokens,
// and a capacity at least the stream's length keeps everything (a no-op).
// Formulas and defaults: shared/research/eviction-methods.md.
//
// Errors (InvalidArgument with the reason, nothing computed): capacity <= 0,
// a capacity smaller than a stream's protected tokens, alpha outside [0, 1],
// beta <= 0, threshold < 0, num_layers < 1, spans of mismatched sizes.
#ifndef HEADPAGE_BLOCKMGR_POLICY_BUDGET_H_
#define HEADPAGE_BLOCKMGR_POLICY_BUDGET_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "blockmgr/policy/types.h"

namespace headpage::policy {

// Uniform: min(capacity, num_tokens) for every stream (SnapKV, H2O,
// StreamingLLM, Knorm at a per-head budget).
[[nodiscard]] absl::StatusOr<std::vector<int32_t>> UniformKept(
    absl::Span<const StreamScores> streams, int32_t capacity);

// PyramidKV's layer schedule: with B' = capacity - window,
//   min = floor(B' / beta), max = 2 B' - min,
//   if max >= prompt_len - window: max = prompt_len - window, min = 2 B' - max,
//   step = (max - min) / (num_layers - 1) (integer division; 0 for one layer),
//   capacity_l = max - l * step + window.
// Returns the capacity (window included) of each layer, bottom layer first.
[[nodiscard]] absl::StatusOr<std::vector<int32_t>> PyramidCapacities(int32_t num_layers,
                                                                     int32_t capacity,
                                                                     int32_t window,
                                                                     int32_t prompt_len,
                                                                     double beta = 20.0);

enum class AdaFloor : uint8_t {
  // Ada-KV's paper and code: global top-(H B') over the layer's candidate
  // scores, c_h hits per stream, B_h = round_half_even(c_h (1 - alpha) +
  // floor(alpha B')). Sum of B_h is H B' up to rounding (at most H/2 off).
  kScaled,
  // kvpress's AdaKVPress: each stream's top floor(alpha B') candidates are
  // protected (its code: n_safe = int(alpha * n_kept)), the rest of the H B' is
  // a pure global top-k. Sum is exact.
  kProtectTop,
};

struct AdaOptions {
  double alpha = 0.2;  // floor / safeguard, in [0, 1]
  AdaFloor floor = AdaFloor::kScaled;
};

// Ada-KV head-adaptive allocation over the streams of one layer (or any set of
// streams meant to compete). `capacity` is the average per stream, protected
// tokens included: stream h's selectable budget is B'_h = capacity -
// NumProtected(h), the global top-k takes sum_h B'_h of the candidates (the
// unprotected tokens; ties break by (stream, slot) order), c_h are the hits in
// stream h, and floor(alpha B'_h) replaces floor(alpha B'). When every stream's
// B'_h covers its candidates nothing is evicted. kept_h = B_h + protected_h,
// clamped to num_tokens_h.
[[nodiscard]] absl::StatusOr<std::vector<int32_t>> AdaKept(absl::Span<const StreamScores> streams,
                                                           int32_t capacity,
                                                           const AdaOptions& options = AdaOptions());

// DBudgetKV (ReFreeKV's released code) for one layer. Per stream, candidates
// (unprotected tokens) are ordered least important first: by score, or, with
// by_position, oldest first. attention[h] holds the last prompt token's
// attention rows of the q heads of stream h ([group][num_tokens], from
// LastQueryAttention). With a[g] restricted to the candidates,
//   base = mean_g ||a[g]||_2,  kept(k) = mean_g sqrt(sum over all but the k
//   least important candidates of a[g][j]^2),
// the cut is the largest k with (base - kept(k)) / base <= threshold, the same
// k for every stream of the layer: kept_h = num_tokens_h - k. threshold 0
// keeps everything. Streams must have equally many candidates.
[[nodiscard]] absl::StatusOr<std::vector<int32_t>> DBudgetKept(
    absl::Span<const StreamScores> streams, absl::Span<const absl::Span<const float>> attention,
    int32_t group_size, double threshold = 0.05, bool by_position = false);

// The pool-wide allocator: one threshold over the candidates of every stream
// given (every layer of every sequence in the pool), so that the pages freed,
// sum over streams of pages(num_tokens) - pages(kept), reach pages_to_free.
// Scores are first normalized per stream to sum to one over its candidates,
// making streams of different layers, lengths and requests comparable: a
// token's normalized score is the share of its stream's attention mass it
// carries, so evicting the globally lowest minimizes the sum over streams of
// lost mass (Ada-KV's L1 bound summed over every head in the pool). Each
// stream keeps at least floors[i] tokens (and its protected ones). Returns the
// kept counts; when the floors forbid freeing pages_to_free, frees what they allow.
[[nodiscard]] absl::StatusOr<std::vector<int32_t>> GlobalKept(absl::Span<const StreamScores> streams,
                                                              absl::Span<const int32_t> floors,
                                                              int32_t page_size,
                                                              int64_t pages_to_free);

}  // namespace headpage::policy

#endif  // HEADPAGE_BLOCKMGR_POLICY_BUDGET_H_
