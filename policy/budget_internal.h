// SPDX-License-Identifier: Apache-2.0
// File: policy/budget_internal.h
//
// Not API: what the allocators share (budget.cc, budget_dbudget.cc): the
// candidate range of a validated stream, the radix sort they rank scores
// with, and DBudgetKV's order of candidates.
#ifndef HEADPAGE_POLICY_BUDGET_INTERNAL_H_
#define HEADPAGE_POLICY_BUDGET_INTERNAL_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "policy/stream_scores.h"

namespace headpage::policy::internal {

// What the allocators need to know about one validated stream. Positions
// strictly ascend, so the sinks (positions < sinks) are a prefix of the slots
// and the recent window a suffix: the candidates (unprotected slots) are the
// contiguous range [begin, end), and NumProtected() is num_tokens minus its size.
struct StreamInfo {
  int32_t begin = 0;
  int32_t end = 0;
  int32_t num_tokens = 0;

  int32_t num_candidates() const { return end - begin; }
  int32_t num_protected() const { return num_tokens - num_candidates(); }
};

// Checks what every allocator relies on (equal span sizes, strictly ascending
// positions, no NaN score: selection and sorting rank by score) and
// locates each stream's candidates. `who` prefixes the messages.
absl::StatusOr<std::vector<StreamInfo>> InspectStreams(absl::Span<const StreamScores> streams,
                                                      const char* who);

// Stable LSD radix sort of `values` by the 32-bit key key_of(value): three
// passes of 11, 11 and 10 bits, skipping a pass whose digit every value shares
// (scores concentrated in a few octaves share their top bits). Stability
// carries the tie order the caller laid the values out in. Short inputs, where
// clearing the histograms would dominate, go to std::sort on the values
// themselves, so callers must make the values' natural order agree with (key,
// original position) order.
template <typename T, typename KeyOf>
void RadixSort(std::vector<T>* values, std::vector<T>* scratch, KeyOf key_of) {
  const size_t n = values->size();
  if (n < 1024) {
    std::sort(values->begin(), values->end());
    return;
  }
  constexpr uint32_t kBuckets = 2048;
  constexpr int kShift[3] = {0, 11, 22};
  std::vector<size_t> hist(3 * kBuckets, 0);
  for (const T& v : *values) {
    const uint32_t key = key_of(v);
    ++hist[key & 0x7FFu];
    ++hist[kBuckets + ((key >> 11) & 0x7FFu)];
    ++hist[2 * kBuckets + (key >> 22)];
  }
  scratch->resize(n);
  for (int pass = 0; pass < 3; ++pass) {
    size_t* h = hist.data() + pass * kBuckets;
    if (h[(key_of((*values)[0]) >> kShift[pass]) & 0x7FFu] == n) continue;
    size_t sum = 0;
    for (uint32_t b = 0; b < kBuckets; ++b) {
      const size_t count = h[b];
      h[b] = sum;
      sum += count;
    }
    for (const T& v : *values) (*scratch)[h[(key_of(v) >> kShift[pass]) & 0x7FFu]++] = v;
    values->swap(*scratch);
  }
}

// DBudgetKV's order of a stream's candidates, least important first, into
// `order` (resized to the candidates): score ascending and, among equal scores,
// the higher slot first (the exact reverse of SelectKeepSet's ranking, so that
// the tokens a cut measures as kept are the ones SelectKeepSet keeps); with
// by_position, oldest first. O(n) (a radix sort); `keys` and `scratch` are
// working memory.
void LeastImportantFirst(const StreamScores& stream, const StreamInfo& info, bool by_position,
                         std::vector<uint64_t>* keys, std::vector<uint64_t>* scratch,
                         std::vector<int32_t>* order);

}  // namespace headpage::policy::internal

#endif  // HEADPAGE_POLICY_BUDGET_INTERNAL_H_
