// SPDX-License-Identifier: Apache-2.0
#include "blockmgr/policy/scores.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace headpage::policy {
namespace {

// ---------------------------------------------------------------------------
// Validation. Every public function validates all of its inputs before it
// writes anything, so a failed call leaves the output untouched.

absl::Status ValidateDType(DType dtype, const char* what) {
  if (SizeOf(dtype) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": unknown dtype value ", static_cast<int>(dtype)));
  }
  return absl::OkStatus();
}

// Checks the parts of `keys` every scorer needs: the count and the positions.
// Slot order must be position order: visibility (VisibleKeys) relies on it.
absl::Status ValidateKeyPositions(const StreamKeys& keys) {
  if (keys.num_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("keys: num_tokens must be >= 0, got ", keys.num_tokens));
  }
  if (keys.num_tokens > 0 && keys.positions == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("keys: positions is null for ", keys.num_tokens, " tokens"));
  }
  for (int32_t j = 1; j < keys.num_tokens; ++j) {
    if (keys.positions[j] <= keys.positions[j - 1]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "keys: positions must be strictly ascending, slot ", j, " holds ", keys.positions[j],
          " after ", keys.positions[j - 1]));
    }
  }
  return absl::OkStatus();
}

// Checks everything a scorer that reads the key vectors needs.
absl::Status ValidateKeys(const StreamKeys& keys) {
  HEADPAGE_RETURN_IF_ERROR(ValidateKeyPositions(keys));
  if (keys.head_dim < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("keys: head_dim must be >= 1, got ", keys.head_dim));
  }
  HEADPAGE_RETURN_IF_ERROR(ValidateDType(keys.dtype, "keys"));
  if (keys.num_tokens > 0 && keys.data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("keys: data is null for ", keys.num_tokens, " tokens"));
  }
  return absl::OkStatus();
}

// Checks `queries` on their own, then against the keys they attend to.
absl::Status ValidateQueries(const GroupQueries& queries, const StreamKeys& keys) {
  if (queries.group_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("queries: group_size must be >= 1, got ", queries.group_size));
  }
  if (queries.num_queries < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("queries: num_queries must be >= 0, got ", queries.num_queries));
  }
  if (queries.head_dim < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("queries: head_dim must be >= 1, got ", queries.head_dim));
  }
  HEADPAGE_RETURN_IF_ERROR(ValidateDType(queries.dtype, "queries"));
  if (queries.num_queries > 0 && queries.data == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("queries: data is null for ", queries.num_queries, " queries"));
  }
  if (queries.num_queries > 0 && queries.positions == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("queries: positions is null for ", queries.num_queries, " queries"));
  }
  if (queries.head_dim != keys.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat("head_dim mismatch: keys have ", keys.head_dim,
                                                   ", queries have ", queries.head_dim));
  }
  return absl::OkStatus();
}

absl::Status ValidateReduce(GroupReduce reduce) {
  switch (reduce) {
    case GroupReduce::kMean:
    case GroupReduce::kMax:
      return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown GroupReduce value ", static_cast<int>(reduce)));
}

absl::Status ValidatePooling(Pooling pooling) {
  switch (pooling) {
    case Pooling::kNone:
    case Pooling::kAvg:
    case Pooling::kMax:
      return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown Pooling value ", static_cast<int>(pooling)));
}

// `what` holds one float per token (or per row entry): its size must be exact,
// since a caller passing a stale buffer would otherwise get silently partial
// scores.
absl::Status ValidateSize(size_t actual, int64_t expected, const char* what) {
  if (static_cast<int64_t>(actual) != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": size ", actual, ", expected ", expected));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Numerics.

// A float view of `count` elements of `dtype`: f32 is read in place, f16 and
// bf16 are widened once into `storage` so that the O(n d) loops below do not
// dispatch on the dtype per element. Widening is exact, so the results do not
// depend on the storage dtype beyond the rounding already in the values.
const float* AsFloat(const void* data, size_t count, DType dtype, std::vector<float>* storage) {
  if (dtype == DType::kF32) return static_cast<const float*>(data);
  storage->resize(count);
  for (size_t i = 0; i < count; ++i) (*storage)[i] = LoadAsFloat(data, i, dtype);
  return storage->data();
}

// How many keys a query at `position` sees. Positions ascend with the slot, so
// the visible keys are exactly the slot prefix [0, VisibleKeys).
int32_t VisibleKeys(const StreamKeys& keys, int32_t position) {
  if (keys.num_tokens == 0) return 0;
  return static_cast<int32_t>(
      std::upper_bound(keys.positions, keys.positions + keys.num_tokens, position) -
      keys.positions);
}

// row[j] = softmax_j(q . k_j / sqrt(d)) over the first `visible` keys, in float
// with the max subtracted (as the references' fp32 softmax). Entries past
// `visible` are not touched. With visible == 0 there is nothing to write, which
// is how a query that sees no key contributes nothing.
void SoftmaxRow(const float* q, const float* k, int32_t visible, int32_t head_dim,
                float* row) {
  if (visible == 0) return;
  const float sqrt_d = std::sqrt(static_cast<float>(head_dim));
  float max_logit = -std::numeric_limits<float>::infinity();
  for (int32_t j = 0; j < visible; ++j) {
    const float* kj = k + static_cast<size_t>(j) * head_dim;
    float dot = 0.0f;
    for (int32_t c = 0; c < head_dim; ++c) dot += q[c] * kj[c];
    row[j] = dot / sqrt_d;
    max_logit = std::max(max_logit, row[j]);
  }
  // The max entry contributes exp(0) = 1, so the sum is >= 1: no division by 0.
  float sum = 0.0f;
  for (int32_t j = 0; j < visible; ++j) {
    row[j] = std::exp(row[j] - max_logit);
    sum += row[j];
  }
  for (int32_t j = 0; j < visible; ++j) row[j] /= sum;
}

// reduced[j] = reduce_g( sum_r A[g][r][j] ): the attention key j receives from
// every query row of q head g, then reduced over the group. Written, not added.
// The whole group is reduced per call (max of the sums, not sum of the maxes).
void ReducedAttentionSum(const StreamKeys& keys, const GroupQueries& queries, GroupReduce reduce,
                         std::vector<float>* reduced) {
  const int32_t n = keys.num_tokens;
  const int32_t d = keys.head_dim;
  std::vector<float> key_storage, query_storage;
  const float* k = AsFloat(keys.data, static_cast<size_t>(n) * d, keys.dtype, &key_storage);
  const float* q = AsFloat(
      queries.data, static_cast<size_t>(queries.group_size) * queries.num_queries * d,
      queries.dtype, &query_storage);

  reduced->assign(n, 0.0f);
  std::vector<float> head_sum(n);  // sum over rows for the current q head
  std::vector<float> row(n);
  for (int32_t g = 0; g < queries.group_size; ++g) {
    std::fill(head_sum.begin(), head_sum.end(), 0.0f);
    for (int32_t r = 0; r < queries.num_queries; ++r) {
      const int32_t visible = VisibleKeys(keys, queries.positions[r]);
      const float* qr = q + (static_cast<size_t>(g) * queries.num_queries + r) * d;
      SoftmaxRow(qr, k, visible, d, row.data());
      for (int32_t j = 0; j < visible; ++j) head_sum[j] += row[j];
    }
    for (int32_t j = 0; j < n; ++j) {
      if (reduce == GroupReduce::kMax) {
        // Sums are >= 0, so the first head's sum may start the max.
        (*reduced)[j] = g == 0 ? head_sum[j] : std::max((*reduced)[j], head_sum[j]);
      } else {
        (*reduced)[j] += head_sum[j];
      }
    }
  }
  if (reduce == GroupReduce::kMean) {
    for (float& v : *reduced) v /= static_cast<float>(queries.group_size);
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

// One stream of splitmix64 (Steele et al.): fully specified, so RandomScores
// gives the same values on every platform (std:: distributions do not).
uint64_t SplitMix64Next(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
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

  std::vector<float> reduced;
  ReducedAttentionSum(keys, window, options.reduce, &reduced);

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
  return absl::OkStatus();
}

absl::Status AccumulateAttention(const StreamKeys& keys, const GroupQueries& queries,
                                 GroupReduce reduce, absl::Span<float> scores) {
  HEADPAGE_RETURN_IF_ERROR(ValidateKeys(keys));
  HEADPAGE_RETURN_IF_ERROR(ValidateQueries(queries, keys));
  HEADPAGE_RETURN_IF_ERROR(ValidateReduce(reduce));
  HEADPAGE_RETURN_IF_ERROR(ValidateSize(scores.size(), keys.num_tokens, "scores"));

  std::vector<float> reduced;
  ReducedAttentionSum(keys, queries, reduce, &reduced);
  for (int32_t j = 0; j < keys.num_tokens; ++j) scores[j] += reduced[j];
  return absl::OkStatus();
}

absl::Status RecencyScores(const StreamKeys& keys, absl::Span<float> scores) {
  // Only positions are read, so a positions-only StreamKeys is enough.
  HEADPAGE_RETURN_IF_ERROR(ValidateKeyPositions(keys));
  HEADPAGE_RETURN_IF_ERROR(ValidateSize(scores.size(), keys.num_tokens, "scores"));
  // NOTE: positions above 2^24 round in float, so very distant neighbours may
  // tie; the order is never inverted (rounding is monotone).
  for (int32_t j = 0; j < keys.num_tokens; ++j) scores[j] = static_cast<float>(keys.positions[j]);
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
  std::vector<float> total(n, 0.0f);
  std::vector<float> row(n);
  int64_t num_q_heads = 0;
  for (size_t h = 0; h < layer_keys.size(); ++h) {
    const StreamKeys& keys = layer_keys[h];
    const GroupQueries& q = last_queries[h];
    const int32_t d = keys.head_dim;
    std::vector<float> key_storage, query_storage;
    const float* k = AsFloat(keys.data, static_cast<size_t>(n) * d, keys.dtype, &key_storage);
    const float* qf =
        AsFloat(q.data, static_cast<size_t>(q.group_size) * q.num_queries * d, q.dtype,
                &query_storage);
    const int32_t visible = VisibleKeys(keys, q.positions[last_row[h]]);
    for (int32_t g = 0; g < q.group_size; ++g) {
      const float* qr = qf + (static_cast<size_t>(g) * q.num_queries + last_row[h]) * d;
      SoftmaxRow(qr, k, visible, d, row.data());
      for (int32_t j = 0; j < visible; ++j) total[j] += row[j];
    }
    num_q_heads += q.group_size;
  }
  for (int32_t j = 0; j < n; ++j) scores[j] = total[j] / static_cast<float>(num_q_heads);
  return absl::OkStatus();
}

absl::Status KeyNormScores(const StreamKeys& keys, absl::Span<float> scores) {
  HEADPAGE_RETURN_IF_ERROR(ValidateKeys(keys));
  HEADPAGE_RETURN_IF_ERROR(ValidateSize(scores.size(), keys.num_tokens, "scores"));
  const size_t d = static_cast<size_t>(keys.head_dim);
  for (int32_t j = 0; j < keys.num_tokens; ++j) {
    float sum_sq = 0.0f;
    for (size_t c = 0; c < d; ++c) {
      const float x = LoadAsFloat(keys.data, j * d + c, keys.dtype);
      sum_sq += x * x;
    }
    scores[j] = -std::sqrt(sum_sq);
  }
  return absl::OkStatus();
}

void RandomScores(uint64_t seed, absl::Span<float> scores) {
  uint64_t state = seed;
  for (float& s : scores) {
    // The top 24 bits fill a float's significand exactly: k / 2^24 < 1.
    s = static_cast<float>(SplitMix64Next(&state) >> 40) * 0x1p-24f;
  }
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

  const int32_t d = keys.head_dim;
  std::vector<float> key_storage, query_storage;
  const float* k = AsFloat(keys.data, static_cast<size_t>(n) * d, keys.dtype, &key_storage);
  const float* q = AsFloat(query.data, static_cast<size_t>(query.group_size) * d, query.dtype,
                           &query_storage);
  const int32_t visible = VisibleKeys(keys, query.positions[0]);
  for (int32_t g = 0; g < query.group_size; ++g) {
    float* row = rows.data() + g * n;
    SoftmaxRow(q + static_cast<size_t>(g) * d, k, visible, d, row);
    std::fill(row + visible, row + n, 0.0f);  // keys the query cannot see
  }
  return absl::OkStatus();
}

}  // namespace headpage::policy
