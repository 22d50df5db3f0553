// SPDX-License-Identifier: Apache-2.0
// The attention scorers: SnapKV, H2O (AccumulateAttention), TOVA and
// DBudgetKV's LastQueryAttention. Their softmax rows come from
// attention_rows.h; the scorers that need no attention are in scores.cc.
#include "policy/scores.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
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
using internal::ValidateKeys;
using internal::ValidatePooling;
using internal::ValidateQueries;
using internal::ValidateReduce;
using internal::ValidateSize;
using internal::VisibleKeys;

namespace {

// reduced[j] = reduce_g( sum_r A[g][r][j] ): the attention key j receives from
// every query row of q head g, then reduced over the group. Written, not added
// (to scratch->total, [n]). The whole group is reduced per call (max of the
// sums, not sum of the maxes).
void ReducedAttentionSum(const StreamKeys& keys, const GroupQueries& queries, GroupReduce reduce,
                         Scratch* scratch) {
  const int32_t n = keys.num_tokens;
  const int32_t d = keys.head_dim;
  const int32_t w = queries.num_queries;
  std::vector<float>& reduced = scratch->total;
  std::vector<float>& head_sum = scratch->head_sum;
  reduced.assign(n, 0.0f);
  if (n == 0 || w == 0) return;

  const float* k = PackKeys(keys, &scratch->packed_keys);
  const float* q = AsFloat(queries.data, static_cast<size_t>(queries.group_size) * w * d,
                           queries.dtype, &scratch->queries);
  scratch->visible.resize(w);
  for (int32_t r = 0; r < w; ++r) scratch->visible[r] = VisibleKeys(keys, queries.positions[r]);

  for (int32_t g = 0; g < queries.group_size; ++g) {
    head_sum.assign(n, 0.0f);
    float* sum_of_rows = head_sum.data();
    ForEachAttentionRow(k, n, d, q + static_cast<size_t>(g) * w * d, scratch->visible.data(), w,
                        scratch, [&](int32_t, const float* e, int32_t seen, float sum) {
                          for (int32_t j = 0; j < seen; ++j) sum_of_rows[j] += e[j] / sum;
                        });
    if (reduce == GroupReduce::kMax) {
      // Sums are >= 0, so the first head's sum may start the max.
      for (int32_t j = 0; j < n; ++j) {
        reduced[j] = g == 0 ? head_sum[j] : std::max(reduced[j], head_sum[j]);
      }
    } else {
      for (int32_t j = 0; j < n; ++j) reduced[j] += head_sum[j];
    }
  }
  if (reduce == GroupReduce::kMean) {
    for (float& v : reduced) v /= static_cast<float>(queries.group_size);
  }
}

// out[j] = pool over in[j - k/2, j + k/2], stride 1, as PyTorch's avg_pool1d
// (count_include_pad=True: zeros outside [0, n), always divided by k, so edge
// scores are damped) and max_pool1d (-inf outside, which never wins because
// in[j] itself is always inside the window). `out` must not alias `in`.
void Pool1d(const float* in, int32_t n, int32_t kernel_size, Pooling pooling, float* out) {
  const int64_t half = kernel_size / 2;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t lo = std::max<int64_t>(0, j - half);
    const int64_t hi = std::min<int64_t>(n - 1, j + half);
    if (pooling == Pooling::kMax) {
      float m = in[lo];
      for (int64_t i = lo + 1; i <= hi; ++i) m = std::max(m, in[i]);
      out[j] = m;
    } else if (pooling == Pooling::kAvg) {
      float sum = 0.0f;
      for (int64_t i = lo; i <= hi; ++i) sum += in[i];
      out[j] = sum / static_cast<float>(kernel_size);
    } else {
      out[j] = in[j];
    }
  }
}

}  // namespace

absl::Status SnapKVScores(const StreamKeys& keys, const GroupQueries& window,
                          const SnapKVOptions& options, absl::Span<float> scores) {
  HEADPAGE_RETURN_IF_ERROR(ValidateKeys(keys));
  HEADPAGE_RETURN_IF_ERROR(ValidateQueries(window, keys));
  if (options.kernel_size < 1 || options.kernel_size % 2 == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kernel_size must be odd and positive (1 disables pooling), got ", options.kernel_size));
  }
  HEADPAGE_RETURN_IF_ERROR(ValidatePooling(options.pooling));
  HEADPAGE_RETURN_IF_ERROR(ValidateReduce(options.reduce));
  HEADPAGE_RETURN_IF_ERROR(ValidateSize(scores.size(), keys.num_tokens, "scores"));

  Scratch& scratch = ThreadScratch();
  ReducedAttentionSum(keys, window, options.reduce, &scratch);
  const std::vector<float>& reduced = scratch.total;

  // The window starts at its lowest query position; the keys before it (a slot
  // prefix) are the candidates that get pooled. Pooling stops at the window so
  // that the window's own (large, recent) scores do not leak into the prefix
  // edge: SnapKV pools only the L - w prefix columns. No queries: no window.
  int32_t window_start = std::numeric_limits<int32_t>::max();
  for (int32_t r = 0; r < window.num_queries; ++r) {
    window_start = std::min(window_start, window.positions[r]);
  }
  const int32_t prefix =
      keys.num_tokens == 0
          ? 0
          : static_cast<int32_t>(std::lower_bound(keys.positions, keys.positions + keys.num_tokens,
                                                  window_start) -
                                 keys.positions);
  Pool1d(reduced.data(), prefix, options.kernel_size, options.pooling, scores.data());
  std::copy(reduced.begin() + prefix, reduced.end(), scores.begin() + prefix);
  scratch.TrimIfLarge();
  return absl::OkStatus();
}

absl::Status AccumulateAttention(const StreamKeys& keys, const GroupQueries& queries,
                                 GroupReduce reduce, absl::Span<float> scores) {
  HEADPAGE_RETURN_IF_ERROR(ValidateKeys(keys));
  HEADPAGE_RETURN_IF_ERROR(ValidateQueries(queries, keys));
  HEADPAGE_RETURN_IF_ERROR(ValidateReduce(reduce));
  HEADPAGE_RETURN_IF_ERROR(ValidateSize(scores.size(), keys.num_tokens, "scores"));

  Scratch& scratch = ThreadScratch();
  ReducedAttentionSum(keys, queries, reduce, &scratch);
  for (int32_t j = 0; j < keys.num_tokens; ++j) scores[j] += scratch.total[j];
  scratch.TrimIfLarge();
  return absl::OkStatus();
}

absl::Status TovaScores(absl::Span<const StreamKeys> layer_keys,
                        absl::Span<const GroupQueries> last_queries, absl::Span<float> scores) {
  if (layer_keys.empty()) {
    return absl::InvalidArgumentError("TOVA: layer_keys is empty (a layer has >= 1 KV head)");
  }
  if (last_queries.size() != layer_keys.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("TOVA: ", layer_keys.size(), " KV heads of keys but ", last_queries.size(),
                     " query groups"));
  }
  // Per head: the row holding its last query (highest position, first on ties).
  std::vector<int32_t> last_row(layer_keys.size());
  for (size_t h = 0; h < layer_keys.size(); ++h) {
    HEADPAGE_RETURN_IF_ERROR(ValidateKeys(layer_keys[h]));
    HEADPAGE_RETURN_IF_ERROR(ValidateQueries(last_queries[h], layer_keys[h]));
    const GroupQueries& q = last_queries[h];
    if (q.num_queries == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("TOVA: KV head ", h, " has no query (TOVA scores the last one)"));
    }
    int32_t best = 0;
    for (int32_t r = 1; r < q.num_queries; ++r) {
      if (q.positions[r] > q.positions[best]) best = r;
    }
    last_row[h] = best;
    // Every q head's last query is the same token's: differing positions mean
    // the caller mixed up the groups.
    const int32_t position = q.positions[best];
    const int32_t first = last_queries[0].positions[last_row[0]];
    if (position != first) {
      return absl::InvalidArgumentError(absl::StrCat(
          "TOVA: the last query is at position ", position, " for KV head ", h, " but at ",
          first, " for KV head 0"));
    }
  }
  // TOVA keeps one token set per layer, so the heads must hold the same one.
  const StreamKeys& head0 = layer_keys[0];
  for (size_t h = 1; h < layer_keys.size(); ++h) {
    const StreamKeys& kh = layer_keys[h];
    if (kh.num_tokens != head0.num_tokens ||
        !std::equal(kh.positions, kh.positions + kh.num_tokens, head0.positions)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "TOVA: KV head ", h, " holds different positions from KV head 0 (", kh.num_tokens,
          " vs ", head0.num_tokens, " tokens); TOVA keeps one token set per layer"));
    }
  }
  HEADPAGE_RETURN_IF_ERROR(ValidateSize(scores.size(), head0.num_tokens, "scores"));

  const int32_t n = head0.num_tokens;
  Scratch& scratch = ThreadScratch();
  std::vector<float>& total = scratch.total;
  total.assign(n, 0.0f);
  int64_t num_q_heads = 0;
  for (size_t h = 0; h < layer_keys.size(); ++h) {
    const StreamKeys& keys = layer_keys[h];
    const GroupQueries& q = last_queries[h];
    const int32_t d = keys.head_dim;
    num_q_heads += q.group_size;
    const int32_t seen = VisibleKeys(keys, q.positions[last_row[h]]);
    if (seen == 0) continue;  // the last query sees no key: nothing to add
    // The last row of each q head, [group_size][d] as float.
    scratch.rows.resize(static_cast<size_t>(q.group_size) * d);
    for (int32_t g = 0; g < q.group_size; ++g) {
      const size_t row = (static_cast<size_t>(g) * q.num_queries + last_row[h]) * d;
      for (int32_t c = 0; c < d; ++c) {
        scratch.rows[static_cast<size_t>(g) * d + c] = LoadAsFloat(q.data, row + c, q.dtype);
      }
    }
    scratch.visible.assign(q.group_size, seen);
    const float* k = PackKeys(keys, &scratch.packed_keys);
    ForEachAttentionRow(k, n, d, scratch.rows.data(), scratch.visible.data(), q.group_size,
                        &scratch, [&](int32_t, const float* e, int32_t, float sum) {
                          for (int32_t j = 0; j < seen; ++j) total[j] += e[j] / sum;
                        });
  }
  for (int32_t j = 0; j < n; ++j) scores[j] = total[j] / static_cast<float>(num_q_heads);
  scratch.TrimIfLarge();
  return absl::OkStatus();
}

absl::Status LastQueryAttention(const StreamKeys& keys, const GroupQueries& query,
                                absl::Span<float> rows) {
  HEADPAGE_RETURN_IF_ERROR(ValidateKeys(keys));
  HEADPAGE_RETURN_IF_ERROR(ValidateQueries(query, keys));
  if (query.num_queries != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LastQueryAttention needs exactly one query (num_queries == 1), got ", query.num_queries));
  }
  const int64_t n = keys.num_tokens;
  HEADPAGE_RETURN_IF_ERROR(ValidateSize(rows.size(), query.group_size * n, "rows"));

  const int32_t seen = VisibleKeys(keys, query.positions[0]);
  if (seen == 0) {  // the query sees no key: all rows are zero
    std::fill(rows.begin(), rows.end(), 0.0f);
    return absl::OkStatus();
  }
  const int32_t d = keys.head_dim;
  Scratch& scratch = ThreadScratch();
  const float* k = PackKeys(keys, &scratch.packed_keys);
  const float* q = AsFloat(query.data, static_cast<size_t>(query.group_size) * d, query.dtype,
                           &scratch.queries);
  scratch.visible.assign(query.group_size, seen);
  ForEachAttentionRow(k, keys.num_tokens, d, q, scratch.visible.data(), query.group_size, &scratch,
                      [&](int32_t g, const float* e, int32_t, float sum) {
                        float* row = rows.data() + g * n;
                        for (int32_t j = 0; j < seen; ++j) row[j] = e[j] / sum;
                        std::fill(row + seen, row + n, 0.0f);  // keys the query cannot see
                      });
  scratch.TrimIfLarge();
  return absl::OkStatus();
}

absl::Status QueryAttentionRows(const StreamKeys& keys, const GroupQueries& queries,
                                absl::Span<float> rows) {
  HEADPAGE_RETURN_IF_ERROR(ValidateKeys(keys));
  HEADPAGE_RETURN_IF_ERROR(ValidateQueries(queries, keys));
  const int64_t n = keys.num_tokens;
  const int32_t w = queries.num_queries;
  const int32_t num_rows = queries.group_size * w;
  HEADPAGE_RETURN_IF_ERROR(ValidateSize(rows.size(), num_rows * n, "rows"));
  if (num_rows == 0) return absl::OkStatus();
  const int32_t d = keys.head_dim;
  Scratch& scratch = ThreadScratch();
  const float* k = PackKeys(keys, &scratch.packed_keys);
  const float* q = AsFloat(queries.data, static_cast<size_t>(num_rows) * d, queries.dtype,
                           &scratch.queries);
  scratch.visible.resize(num_rows);
  for (int32_t i = 0; i < num_rows; ++i) {
    scratch.visible[i] = VisibleKeys(keys, queries.positions[i % w]);
  }
  // Zero first: keys a query cannot see, and the rows of queries that see none
  // (ForEachAttentionRow skips those).
  std::fill(rows.begin(), rows.end(), 0.0f);
  ForEachAttentionRow(k, keys.num_tokens, d, q, scratch.visible.data(), num_rows, &scratch,
                      [&](int32_t i, const float* e, int32_t seen, float sum) {
                        float* row = rows.data() + static_cast<int64_t>(i) * n;
                        for (int32_t j = 0; j < seen; ++j) row[j] = e[j] / sum;
                      });
  scratch.TrimIfLarge();
  return absl::OkStatus();
}

}  // namespace headpage::policy
