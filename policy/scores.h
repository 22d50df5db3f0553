// SPDX-License-Identifier: Apache-2.0
// File: policy/scores.h
//
// Step 1 of a policy: scorers. Each writes one float per token of one stream
// (per KV head; GQA groups are reduced, KV heads are never repeated), higher
// meaning more important. Formulas and defaults follow
// shared/research/eviction-methods.md; every attention softmax is computed in
// float over the keys a query may see (positions <= the query's position).
//
// A query that sees no key (every key's position is above its own) contributes
// nothing. head_dim may be any value >= 1; keys and queries may differ in dtype.
//
// Errors (all InvalidArgument, naming the problem, writing nothing): null
// arrays (null is fine for an empty one), negative counts, head_dim < 1, key
// positions not strictly ascending, a scores span of the wrong size, head_dim
// mismatch between keys and queries, group_size < 1, an even or non-positive
// pooling kernel (checked even with Pooling::kNone), an unknown enum value
// (DType included).
#ifndef HEADPAGE_POLICY_SCORES_H_
#define HEADPAGE_POLICY_SCORES_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "policy/types.h"

namespace headpage::policy {

struct SnapKVOptions {
  // The observation window is the queries passed in (SnapKV: the last w = 32
  // prompt tokens); the keys at positions >= the first (lowest) window query's
  // position are the window's own keys: always kept, and excluded from pooling.
  // An empty window (num_queries == 0) scores every key 0.
  int32_t kernel_size = 7;             // odd; 1 disables pooling
  Pooling pooling = Pooling::kMax;     // SnapKV's LongBench configs: maxpool, k = 7
  GroupReduce reduce = GroupReduce::kMean;  // Ada-KV's GQA default
};

// SnapKV: A = softmax(q k^T / sqrt(d)) per window query row (causal), summed
// over the rows, reduced over the group, then pooled with stride 1 and padding
// kernel_size / 2 over the prefix (the keys before the window) with PyTorch's
// semantics: avg counts the zero padding (count_include_pad), max pads with
// -inf. Group reduction happens before pooling, as in Ada-KV's GQA mode.
// Window keys get their unpooled reduced sum (they are protected anyway).
[[nodiscard]] absl::Status SnapKVScores(const StreamKeys& keys, const GroupQueries& window,
                                        const SnapKVOptions& options, absl::Span<float> scores);

// H2O: attention received, accumulated over every query given (all prompt rows
// at prefill, then each decode query), reduced over the group. No pooling.
// Accumulates: adds into `scores`, so a caller can fold in one decode step at a
// time; zero it first for a fresh score. The group is reduced per call: with
// GroupReduce::kMax, one call over queries A and B gives max_g(A_g + B_g) while
// two calls give max_g A_g + max_g B_g (kMean agrees either way, up to
// rounding).
[[nodiscard]] absl::Status AccumulateAttention(const StreamKeys& keys, const GroupQueries& queries,
                                               GroupReduce reduce, absl::Span<float> scores);

// StreamingLLM: the score is the token's position, so the most recent tokens
// win; the sinks (4 by default) come from Protection, not from the score. Reads
// only keys.positions and keys.num_tokens (data, head_dim, dtype are ignored).
[[nodiscard]] absl::Status RecencyScores(const StreamKeys& keys, absl::Span<float> scores);

// TOVA: the attention of the last query (the query with the highest position
// among `last_queries`, one row per q head) averaged over *every* q head of the
// layer, so one score per token for the whole layer. `layer_keys[h]` are the
// keys of KV head h; all must hold the same positions (TOVA keeps one token set
// per layer), else FailedPrecondition. `last_queries[h]` is the group of KV head h.
// InvalidArgument also for an empty layer, a size mismatch between the spans, a
// group with no query, or last queries at different positions across heads.
[[nodiscard]] absl::Status TovaScores(absl::Span<const StreamKeys> layer_keys,
                                      absl::Span<const GroupQueries> last_queries,
                                      absl::Span<float> scores);

// Knorm: -||k||_2, so the keys with the lowest L2 norm are kept.
[[nodiscard]] absl::Status KeyNormScores(const StreamKeys& keys, absl::Span<float> scores);

// Uniform random scores in [0, 1) from `seed`: the baseline. Deterministic.
void RandomScores(uint64_t seed, absl::Span<float> scores);

// DBudgetKV's input: the attention row of one query (the last prompt token),
// per q head of the group: rows[g * num_tokens + j] = softmax over the keys the
// query sees. `query` must hold exactly one query (num_queries == 1).
[[nodiscard]] absl::Status LastQueryAttention(const StreamKeys& keys, const GroupQueries& query,
                                              absl::Span<float> rows);

// DBudgetKV's Frobenius metric's input: the causal attention rows of every
// query of the group, rows[(g * num_queries + r) * num_tokens + j] = softmax
// over the keys query r sees (those at positions <= its own; 0 for the rest).
[[nodiscard]] absl::Status QueryAttentionRows(const StreamKeys& keys, const GroupQueries& queries,
                                              absl::Span<float> rows);

}  // namespace headpage::policy

#endif  // HEADPAGE_POLICY_SCORES_H_
