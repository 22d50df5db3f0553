// SPDX-License-Identifier: Apache-2.0
// File: blockmgr/policy/select.h
//
// Step 3 of a policy: which tokens a stream keeps, given how many.
#ifndef HEADPAGE_BLOCKMGR_POLICY_SELECT_H_
#define HEADPAGE_BLOCKMGR_POLICY_SELECT_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "blockmgr/policy/types.h"

namespace headpage::policy {

// The keep set of one stream: every protected slot, plus the (kept -
// protected) unprotected slots with the highest scores, ties broken by the
// lower slot (the older token); written to `keep` ascending (replacing its
// contents). InvalidArgument if kept < NumProtected() or kept > num_tokens.
// O(n) expected (nth_element), plus O(kept log kept) to sort the result.
[[nodiscard]] absl::Status SelectKeepSet(const StreamScores& stream, int32_t kept,
                                         std::vector<int32_t>* keep);

}  // namespace headpage::policy

#endif  // HEADPAGE_BLOCKMGR_POLICY_SELECT_H_
