// SPDX-License-Identifier: Apache-2.0
// File: policy/stream_scores.h
//
// StreamScores: one stream's token scores and what its policy protects, the
// input of the budget allocators (budget.h) and of selection (select.h).
#ifndef HEADPAGE_POLICY_STREAM_SCORES_H_
#define HEADPAGE_POLICY_STREAM_SCORES_H_

#include <cstdint>

#include "absl/types/span.h"
#include "policy/types.h"

namespace headpage::policy {

// One stream's scores with what its policy protects.
struct StreamScores {
  absl::Span<const float> scores;        // [num_tokens]
  absl::Span<const int32_t> positions;   // [num_tokens], strictly ascending
  Protection protection;

  int32_t num_tokens() const { return static_cast<int32_t>(scores.size()); }
  // Protected slot? Slot j is protected when it is one of the last `recent`
  // slots or holds a position below `sinks`.
  bool IsProtected(int32_t j) const {
    return j >= num_tokens() - protection.recent || positions[j] < protection.sinks;
  }
  // How many slots are protected (sinks and recent may overlap).
  int32_t NumProtected() const;
};

inline int32_t StreamScores::NumProtected() const {
  int32_t n = 0;
  for (int32_t j = 0; j < num_tokens(); ++j) n += IsProtected(j);
  return n;
}

}  // namespace headpage::policy

#endif  // HEADPAGE_POLICY_STREAM_SCORES_H_
