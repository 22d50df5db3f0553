// SPDX-License-Identifier: Apache-2.0
// File: policy/budget.h
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
// beta <= 0, threshold < 0, num_layers < 1, spans of mismatched sizes,
// positions not strictly ascending, a NaN score.
#ifndef HEADPAGE_POLICY_BUDGET_H_
#define HEADPAGE_POLICY_BUDGET_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "policy/collective.h"
#include "policy/stream_scores.h"

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
// The division floors like Python's // (the step is negative only when
// capacity > prompt_len, where every layer keeps the whole prompt anyway). One
// layer gets max, as the formula says. The capacities average to capacity plus
// r / 2, r = (max - min) mod (num_layers - 1), the remainder the integer step
// drops. Also an error: window outside [0, capacity), prompt_len <= window, and
// beta so small (< 1/2) that max = 2 B' - min would be negative.
[[nodiscard]] absl::StatusOr<std::vector<int32_t>> PyramidCapacities(int32_t num_layers,
                                                                     int32_t capacity,
                                                                     int32_t window,
                                                                     int32_t prompt_len,
                                                                     double beta = 20.0);

// Ada-KV's options; the floor rules are described at AdaFloor (types.h).
struct AdaOptions {
  double alpha = 0.2;  // floor / safeguard, in [0, 1]
  AdaFloor floor = AdaFloor::kScaled;
  // kProtectTop only: kvpress's safeguard as its code computes it, n_safe =
  // int(alpha * capacity) with the protected tokens counted in (their scores
  // are the highest), so each stream's safe candidates are
  // max(0, floor(alpha C) - protected) instead of floor(alpha (C - protected)).
  // CriticalAdaKV's released code (kvpress's CriticalAdaKVPress) runs this.
  bool safe_counts_protected = false;
};

// Ada-KV head-adaptive allocation over the streams of one layer (or any set of
// streams meant to compete). `capacity` is the average per stream, protected
// tokens included: stream h's selectable budget is B'_h = capacity -
// NumProtected(h), the global top-k takes sum_h B'_h of the candidates (the
// unprotected tokens; ties break by (stream, slot) order), c_h are the hits in
// stream h, and floor(alpha B'_h) replaces floor(alpha B'). A stream whose B'_h
// covers its candidates keeps everything and does not compete (its budget is
// not handed to the others), so when every stream's does, nothing is evicted
// (the reference compresses at B' == L - w and its rounding can drop a token
// there; this does not). kept_h = B_h + protected_h, clamped to num_tokens_h.
// B_h is computed in double (torch uses float32; they agree on every exact .5
// tie). O(total tokens): a sampled/radix select, no sort.
[[nodiscard]] absl::StatusOr<std::vector<int32_t>> AdaKept(absl::Span<const StreamScores> streams,
                                                           int32_t capacity,
                                                           const AdaOptions& options = AdaOptions());

// AdaKept for one member of a group whose streams together are the ones a
// single call would be given (tensor parallelism: each rank holds a slice of
// the layer's KV heads; collective.h): shard.order places each local stream in
// that order. Every member calls it with the same capacity and options and
// gets, for its streams, exactly the kept counts of the single call, ties
// included. The members agree on errors first: a member whose streams are
// refused gets its error, the others Aborted, and no member waits for ever.
// Six all-reduces (an agreement, the sums of K and of the candidates, three
// histograms of 2048 counts, the tie counts of shard.num_streams streams).
[[nodiscard]] absl::StatusOr<std::vector<int32_t>> AdaKept(absl::Span<const StreamScores> streams,
                                                           int32_t capacity,
                                                           const AdaOptions& options,
                                                           const Shard& shard);

// One allocation of a batch: a set of streams meant to compete, at a capacity.
struct AdaAllocation {
  absl::Span<const StreamScores> streams;
  int32_t capacity = 0;
};

// The group AdaKept above for several independent allocations at once (each
// layer of a sequence, over the same heads: shard.order is each allocation's),
// in the same six all-reduces, each the allocations' arrays end to end: a
// compression's agreement costs the same few round trips for any number of
// layers. Returns each allocation's kept counts.
[[nodiscard]] absl::StatusOr<std::vector<std::vector<int32_t>>> AdaKept(
    absl::Span<const AdaAllocation> allocations, const AdaOptions& options, const Shard& shard);

// DBudgetKV (ReFreeKV's released code) for one layer. Per stream, candidates
// (unprotected tokens) are ordered least important first: by score, or, with
// by_position, oldest first. attention[h] holds the last prompt token's
// attention rows of the q heads of stream h ([group][num_tokens], from
// LastQueryAttention). With a[g] restricted to the candidates,
//   base = mean_g ||a[g]||_2,  kept(k) = mean_g sqrt(sum over all but the k
//   least important candidates of a[g][j]^2),
// the cut is the largest k with (base - kept(k)) / base <= threshold, the same
// k for every stream of the layer: kept_h = num_tokens_h - k. threshold 0
// keeps everything (even candidates with exactly zero attention), and so does
// base == 0 (no attention on any candidate: the rule is 0/0). Streams must have
// equally many candidates. Ties in score order the higher slot as less
// important, the reverse of SelectKeepSet, so SelectKeepSet(kept_h) keeps
// exactly the tokens measured; with by_position, select with position scores
// (StreamingLLM's) for the same reason. O(n) per stream to order (a radix
// sort) and per q head for the metric.
[[nodiscard]] absl::StatusOr<std::vector<int32_t>> DBudgetKept(
    absl::Span<const StreamScores> streams, absl::Span<const absl::Span<const float>> attention,
    int32_t group_size, double threshold = 0.05, bool by_position = false);

// DBudgetKV as its paper states the metric: the norm of the reduced attention
// matrix (ReFreeKV's `norm-fro` path, dynamic_attn in
// modified_models/dynamic_metrics.py). Candidates are ordered least important
// first by score, as in DBudgetKept. attention[h] holds, per q head g of stream
// h's group, the attention rows of the observed prompt queries at
// row_positions ([group][rows][num_tokens], QueryAttentionRows). A_g is that
// matrix restricted to the rows of candidate queries and the candidate
// columns (the reference slices the prompt's attention to the tokens before
// the window, and to the candidates); with R_k the k least important
// candidates,
//   removed_g(k) = sum of A_g[i][j]^2 over i or j in R_k,
//   cut = the largest k < n with mean_g sqrt(removed_g(k)) <= threshold * mean_g ||A_g||_F,
// the same k for every stream of the layer (mean over every q head of the
// layer): kept_h = num_tokens_h - k. The reference finds k by a binary search
// over the same monotone function. threshold 0, a layer with at most one
// candidate, or no attention among the candidates keep everything. Rows the
// observation does not hold (a trace stores the last prompt queries only)
// count as absent. O(n (rows + n)) per q head.
[[nodiscard]] absl::StatusOr<std::vector<int32_t>> DBudgetFrobeniusKept(
    absl::Span<const StreamScores> streams, absl::Span<const absl::Span<const float>> attention,
    absl::Span<const int32_t> row_positions, int32_t group_size, double threshold = 0.01);

// DBudgetFrobeniusKept one stream at a time, for callers that compute each
// stream's attention rows in turn (a layer's are prompt x prompt floats per q
// head): Create, Add every stream of the layer, then every stream keeps
// num_tokens - Cut(). row_positions must outlive it.
class DBudgetFrobenius {
 public:
  // InvalidArgument for group_size < 1, threshold < 0 or NaN, row positions
  // that do not strictly ascend.
  [[nodiscard]] static absl::StatusOr<DBudgetFrobenius> Create(
      absl::Span<const int32_t> row_positions, int32_t group_size, double threshold = 0.01);
  // Adds one stream's q heads ([group][rows][num_tokens]). InvalidArgument, and
  // nothing added, for a bad stream, a wrong size, a non-finite value, or
  // another candidate count than the first stream's.
  [[nodiscard]] absl::Status Add(const StreamScores& stream, absl::Span<const float> attention);
  // The number of least important candidates every stream drops (0: none).
  int32_t Cut() const;

 private:
  DBudgetFrobenius() = default;
  absl::Span<const int32_t> row_positions_;
  int32_t group_size_ = 1;
  double threshold_ = 0.01;
  int32_t streams_ = 0;
  int32_t num_candidates_ = 0;
  std::vector<double> removed_sum_;  // [k]: sum over q heads of sqrt(removed_g(k))
  double base_sum_ = 0.0;            // sum over q heads of ||A_g||_F
};

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
//
// Precisely: tokens are evicted in one global order, lowest normalized score
// first, equal ones from the higher stream index first (the mirror of Ada's
// (stream, slot) tie rule), each stream stopping at its minimum, and the
// result is the shortest prefix of that order that frees pages_to_free pages
// (pages(t) = ceil(t / page_size)). Every token below the threshold goes, also
// one that frees no page by itself. A stream whose candidates sum to 0 counts
// as uniform (1/n each). Scores must be finite and >= 0 (attention mass; a
// Knorm score is negative): InvalidArgument otherwise, as for a floor < 0,
// page_size <= 0 or pages_to_free < 0. O(N) to validate and radix-sort each
// evicting stream's candidates, plus O(E log S) to merge them (E tokens
// evicted, S streams); memory 4 bytes per candidate.
[[nodiscard]] absl::StatusOr<std::vector<int32_t>> GlobalKept(absl::Span<const StreamScores> streams,
                                                              absl::Span<const int32_t> floors,
                                                              int32_t page_size,
                                                              int64_t pages_to_free);

// GlobalKept for one member of a group whose streams together are the ones a
// single call would be given (collective.h; the pool-wide budget of a
// tensor-parallel group, each rank's pool holding a slice of every layer's KV
// heads): the members free pages_to_free pages between them (each member
// passes the group's target), and each gets, for its streams, exactly the kept
// counts of the single call. The members agree on errors first, as AdaKept's
// do. About ten all-reduces: an agreement, eight rounds of 256 candidate
// thresholds for the stop share, and one of shard.num_streams + 1 counts for
// the ties at it. O(local candidates + 256 local streams) a round.
[[nodiscard]] absl::StatusOr<std::vector<int32_t>> GlobalKept(
    absl::Span<const StreamScores> streams, absl::Span<const int32_t> floors, int32_t page_size,
    int64_t pages_to_free, const Shard& shard);

}  // namespace headpage::policy

#endif  // HEADPAGE_POLICY_BUDGET_H_
