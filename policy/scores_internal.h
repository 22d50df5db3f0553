// SPDX-License-Identifier: Apache-2.0
// File: policy/scores_internal.h
//
// Not API: the input checks every scorer shares (scores.cc and
// scores_attention.cc). Every public scorer validates all of its inputs before
// it writes anything, so a failed call leaves the output untouched.
#ifndef HEADPAGE_POLICY_SCORES_INTERNAL_H_
#define HEADPAGE_POLICY_SCORES_INTERNAL_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "policy/types.h"

namespace headpage::policy::internal {

// Checks the parts of `keys` every scorer needs: the count and the positions.
// Slot order must be position order: visibility (VisibleKeys) relies on it.
absl::Status ValidateKeyPositions(const StreamKeys& keys);

// Checks everything a scorer that reads the key vectors needs.
absl::Status ValidateKeys(const StreamKeys& keys);

// Checks `queries` on their own, then against the keys they attend to.
absl::Status ValidateQueries(const GroupQueries& queries, const StreamKeys& keys);

absl::Status ValidateReduce(GroupReduce reduce);
absl::Status ValidatePooling(Pooling pooling);

// `what` holds one float per token (or per row entry): its size must be exact,
// since a caller passing a stale buffer would otherwise get silently partial
// scores.
absl::Status ValidateSize(size_t actual, int64_t expected, const char* what);

}  // namespace headpage::policy::internal

#endif  // HEADPAGE_POLICY_SCORES_INTERNAL_H_
