// SPDX-License-Identifier: Apache-2.0
// The scorers that need no attention (position, key norm, random) and the
// input checks every scorer shares. The attention scorers (SnapKV, H2O, TOVA,
// LastQueryAttention) are in scores_attention.cc, their softmax machinery in
// attention_rows.cc.
#include "policy/scores.h"

#include <cmath>
#include <cstddef>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "policy/scores_internal.h"

namespace headpage::policy {
namespace {

absl::Status ValidateDType(DType dtype, const char* what) {
  if (SizeOf(dtype) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": unknown dtype value ", static_cast<int>(dtype)));
  }
  return absl::OkStatus();
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

namespace internal {

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

absl::Status ValidateSize(size_t actual, int64_t expected, const char* what) {
  if (static_cast<int64_t>(actual) != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": size ", actual, ", expected ", expected));
  }
  return absl::OkStatus();
}

}  // namespace internal

using internal::ValidateKeyPositions;
using internal::ValidateKeys;
using internal::ValidateSize;

absl::Status RecencyScores(const StreamKeys& keys, absl::Span<float> scores) {
  // Only positions are read, so a positions-only StreamKeys is enough.
  HEADPAGE_RETURN_IF_ERROR(ValidateKeyPositions(keys));
  HEADPAGE_RETURN_IF_ERROR(ValidateSize(scores.size(), keys.num_tokens, "scores"));
  // NOTE: positions above 2^24 round in float, so very distant neighbours may
  // tie; the order is never inverted (rounding is monotone).
  for (int32_t j = 0; j < keys.num_tokens; ++j) scores[j] = static_cast<float>(keys.positions[j]);
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

}  // namespace headpage::policy
