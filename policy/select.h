// SPDX-License-Identifier: Apache-2.0
// File: policy/select.h
//
// Step 3 of a policy: which tokens a stream keeps, given how many.
#ifndef HEADPAGE_POLICY_SELECT_H_
#define HEADPAGE_POLICY_SELECT_H_

#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "policy/stream_scores.h"

namespace headpage::policy {

// The keep set of one stream: every protected slot, plus the (kept -
// protected) unprotected slots with the highest scores, ties broken by the
// lower slot (the older token); written to `keep` ascending (replacing its
// contents). InvalidArgument if kept < NumProtected() or kept > num_tokens,
// if scores and positions differ in size, positions do not strictly ascend, or
// a score is NaN. O(n): a radix select (internal::SelectTopK), after which the
// keep set is emitted already ascending.
[[nodiscard]] absl::Status SelectKeepSet(const StreamScores& stream, int32_t kept,
                                         std::vector<int32_t>* keep);

namespace internal {

// A key whose unsigned order is the float order (NaN excluded): negative
// floats get every bit flipped (a larger magnitude is smaller), the others just
// the sign bit set. -0 is folded into +0 first, so that keys are equal exactly
// when float comparison calls the values equal.
inline uint32_t OrderedKey(float x) {
  x += 0.0f;
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits ^ ((0u - (bits >> 31)) | 0x80000000u);
}
inline float FromOrderedKey(uint32_t key) {
  const uint32_t bits = (key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key;
  float x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
}

// Not policy API: the selection primitive SelectKeepSet and the Ada allocators
// (budget.cc) share. The top k of the concatenation of `segments`, ranked by
// value, equal values by (segment, index) order, earlier first. The set is
// described by a threshold: it holds every value > threshold and, of the values
// == threshold, the first ties_taken in that order; counts[s] is how many of the
// k lie in segment s. k <= 0 gives the empty set (threshold +inf), k >= the
// total everything (threshold -inf). REQUIRES: no NaN. O(total): a radix select
// on the float bits (one histogram pass, then only the threshold's bucket)
// and one counting pass.
struct TopK {
  float threshold = 0.0f;
  int64_t ties_taken = 0;
  std::vector<int64_t> counts;
};
TopK SelectTopK(absl::Span<const absl::Span<const float>> segments, int64_t k);
// SelectTopK's two cases that need no selection, given the values' count:
// fills *result and returns true for k <= 0 (nothing) and k >= total
// (everything); returns false otherwise.
bool TrivialTopK(absl::Span<const absl::Span<const float>> segments, int64_t k, int64_t total,
                 TopK* result);

// Positions strictly ascend, so the sinks (positions < sinks) are a prefix of
// the slots and the recent window a suffix: the candidates (unprotected slots)
// are the one contiguous range [begin, end). This is what lets selection skip
// IsProtected() per slot and emit the keep set already sorted.
struct CandidateRange {
  int32_t begin = 0;
  int32_t end = 0;
};

// Checks what selection and every allocator rely on (equal span sizes, an int32
// length, strictly ascending positions, no NaN score: they rank by score) and
// locates the stream's candidates. InvalidArgument messages start with `who`,
// and ": stream <index>" when index >= 0 (built only on the error path).
absl::StatusOr<CandidateRange> ValidateStream(const StreamScores& stream, absl::string_view who,
                                              int64_t index = -1);

}  // namespace internal

}  // namespace headpage::policy

#endif  // HEADPAGE_POLICY_SELECT_H_
