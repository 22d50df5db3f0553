// SPDX-License-Identifier: Apache-2.0
#include "policy/critical.h"

#include <cmath>
#include <algorithm>
#include <cstddef>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "policy/attention_rows.h"
#include "policy/scores_internal.h"
#include "policy/select.h"

namespace headpage::policy {

using internal::AsFloat;
using internal::kLanes;
using internal::Load;
using internal::Splat;
using internal::Store;
using internal::V4;

namespace {

// Tokens projected at once: each row of the transposed projection loaded is
// used by this many tokens.
constexpr int32_t kTokenBlock = 4;

absl::Status ValidateProjection(const StreamValues& values, const OutputProjection& w,
                                int32_t num_kv_heads, int32_t kv_head) {
  if (values.num_tokens < 0 || values.head_dim < 1 || SizeOf(values.dtype) == 0 ||
      (values.num_tokens > 0 && values.data == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "values: ", values.num_tokens, " tokens of head_dim ", values.head_dim,
        " (need >= 0 tokens, head_dim >= 1, a known dtype, data unless empty)"));
  }
  if (w.data == nullptr || w.hidden_size < 1 || w.num_q_heads < 1 || SizeOf(w.dtype) == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "output projection: null data, hidden_size ", w.hidden_size, " or num_q_heads ",
        w.num_q_heads, " below 1, or an unknown dtype"));
  }
  if (w.head_dim != values.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat("output projection: head_dim ", w.head_dim,
                                                   " but the values have ", values.head_dim));
  }
  if (num_kv_heads < 1 || w.num_q_heads % num_kv_heads != 0 || kv_head < 0 ||
      kv_head >= num_kv_heads) {
    return absl::InvalidArgumentError(
        absl::StrCat("output projection: kv head ", kv_head, " of ", num_kv_heads, " with ",
                     w.num_q_heads, " q heads (want a whole group per kv head)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ProjectedValueNorms(const StreamValues& values, const OutputProjection& projection,
                                 int32_t num_kv_heads, int32_t kv_head, absl::Span<float> norms) {
  HEADPAGE_RETURN_IF_ERROR(ValidateProjection(values, projection, num_kv_heads, kv_head));
  HEADPAGE_RETURN_IF_ERROR(internal::ValidateSize(norms.size(), values.num_tokens, "norms"));
  const int32_t n = values.num_tokens;
  const int32_t d = values.head_dim;
  const int32_t hidden = projection.hidden_size;
  const int32_t group = projection.num_q_heads / num_kv_heads;
  const size_t row = static_cast<size_t>(projection.num_q_heads) * d;  // one output's weights
  std::vector<float> value_storage;
  const float* v = AsFloat(values.data, static_cast<size_t>(n) * d, values.dtype, &value_storage);

  // W_o^h transposed to [d][hidden_padded], so that one token's projection is
  // d vector multiply-adds across the hidden dimension (lanes run over
  // outputs: every output is still summed over e in order).
  const int32_t padded = internal::CeilDiv(hidden, kLanes) * kLanes;
  std::vector<float> wt(static_cast<size_t>(d) * padded, 0.0f);
  std::vector<float> out(static_cast<size_t>(kTokenBlock) * padded);
  std::vector<double> sums(n, 0.0);
  for (int32_t g = 0; g < group; ++g) {
    const size_t column = static_cast<size_t>(kv_head * group + g) * d;
    for (int32_t o = 0; o < hidden; ++o) {
      for (int32_t e = 0; e < d; ++e) {
        wt[static_cast<size_t>(e) * padded + o] =
            LoadAsFloat(projection.data, o * row + column + e, projection.dtype);
      }
    }
    for (int32_t first = 0; first < n; first += kTokenBlock) {
      const int32_t tokens = std::min(kTokenBlock, n - first);
      for (int32_t o = 0; o < padded; o += kLanes) {
        V4 acc[kTokenBlock] = {};
        for (int32_t e = 0; e < d; ++e) {
          const V4 w = Load(wt.data() + static_cast<size_t>(e) * padded + o);
          for (int32_t t = 0; t < tokens; ++t) {
            acc[t] += Splat(v[static_cast<size_t>(first + t) * d + e]) * w;
          }
        }
        for (int32_t t = 0; t < tokens; ++t) Store(out.data() + t * padded + o, acc[t]);
      }
      for (int32_t t = 0; t < tokens; ++t) {
        float l1 = 0.0f;
        for (int32_t o = 0; o < hidden; ++o) l1 += std::fabs(out[t * padded + o]);
        sums[first + t] += l1;
      }
    }
  }
  for (int32_t i = 0; i < n; ++i) norms[i] = static_cast<float>(sums[i] / group);
  return absl::OkStatus();
}

absl::Status CriticalScores(const StreamScores& stream, absl::Span<const float> value_norms,
                            int32_t kept, const CriticalOptions& options, absl::Span<float> out,
                            int32_t secured) {
  HEADPAGE_RETURN_IF_ERROR(internal::ValidateStream(stream, "CriticalScores").status());
  const int32_t n = stream.num_tokens();
  HEADPAGE_RETURN_IF_ERROR(internal::ValidateSize(value_norms.size(), n, "value_norms"));
  HEADPAGE_RETURN_IF_ERROR(internal::ValidateSize(out.size(), n, "out"));
  const int32_t protected_tokens = stream.NumProtected();
  if (kept < protected_tokens || kept > n) {
    return absl::InvalidArgumentError(absl::StrCat("CriticalScores: kept ", kept, " outside [",
                                                   protected_tokens, ", ", n, "]"));
  }
  if (!(options.first_stage >= 0.0 && options.first_stage <= 1.0) ||
      !std::isfinite(options.epsilon)) {
    return absl::InvalidArgumentError(absl::StrCat("CriticalScores: first stage ",
                                                   options.first_stage, " outside [0, 1] or epsilon ",
                                                   options.epsilon, " not finite"));
  }
  for (int32_t j = 0; j < n; ++j) {
    if (!(value_norms[j] >= 0.0f) || !std::isfinite(value_norms[j])) {
      return absl::InvalidArgumentError(
          absl::StrCat("CriticalScores: value norm ", value_norms[j], " at slot ", j));
    }
  }
  // Stage 1: the top floor(kept * first_stage) by attention, the protected
  // tokens first (SelectKeepSet keeps them whatever their score).
  const int32_t first = std::min(
      kept, std::max({protected_tokens, secured,
                      static_cast<int32_t>(std::floor(kept * options.first_stage))}));
  std::vector<int32_t> stage_one;
  HEADPAGE_RETURN_IF_ERROR(SelectKeepSet(stream, first, &stage_one));
  // A product that overflows stays below the stage-1 tokens' FLT_MAX.
  constexpr float kBelowStageOne = 3.4028232e38f;  // the float just below FLT_MAX
  for (int32_t j = 0; j < n; ++j) {
    out[j] = std::min((stream.scores[j] + options.epsilon) * value_norms[j], kBelowStageOne);
  }
  for (const int32_t j : stage_one) out[j] = std::numeric_limits<float>::max();
  return absl::OkStatus();
}

}  // namespace headpage::policy
