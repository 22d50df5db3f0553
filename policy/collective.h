// SPDX-License-Identifier: Apache-2.0
// File: policy/collective.h
//
// A group of processes that allocate one budget together. Under tensor
// parallelism each rank holds a slice of every layer's KV heads, yet Ada-KV's
// budget is a top-k over all of a layer's heads and the pool-wide budget one
// threshold over every stream: the allocators below reach the same decision as
// one process holding every stream by exchanging a few small integer arrays
// (score histograms and tie counts) through the group's all-reduce.
//
// The library never talks to a network itself: the engine that embeds it
// supplies the group (Python: headpage.ProcessGroupCollective over a
// torch.distributed group; tests: threads in one process).
#ifndef HEADPAGE_POLICY_COLLECTIVE_H_
#define HEADPAGE_POLICY_COLLECTIVE_H_

#include <array>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "policy/select.h"

namespace headpage::policy {

// The one operation the allocators need from a group. Every member calls the
// same operations with arrays of the same sizes in the same order; a member
// that calls out of turn leaves the others waiting, so callers agree on errors
// through the operation itself (an allocator's first all-reduce carries a
// "failed" count) rather than by returning early.
class Collective {
 public:
  virtual ~Collective() = default;
  // This member's index in [0, size()).
  virtual int32_t rank() const = 0;
  virtual int32_t size() const = 0;
  // Replaces values[i], on every member, with the sum over the members of
  // their values[i]. An error (Unavailable: a member left, a timeout) means the
  // group can no longer agree: the caller changes nothing and reports it.
  [[nodiscard]] virtual absl::Status AllReduceSum(absl::Span<int64_t> values) = 0;
};

// Where this member's streams stand among the group's: the allocators see
// only the local streams, and order[i] is local stream i's index in the order
// of all num_streams streams of the group (the order one process holding them
// all would list them in, which is the order ties break in). order ascends.
struct Shard {
  Collective* group = nullptr;
  absl::Span<const int64_t> order;
  int64_t num_streams = 0;
};

// The group's verdict on a step every member has just tried, and two sums
// that come with it: every "may we go on" point of a protocol is one of these,
// of the same shape, so that a member that failed can meet the others at their
// next point whichever it is. Returns the sums of `values` when every member's
// `local` is OK; otherwise `local` where it failed here, and Aborted naming
// `who` where another member failed. One all-reduce of three values (a broken
// group: its error).
[[nodiscard]] absl::StatusOr<std::array<int64_t, 2>> Agree(Collective& group,
                                                           const absl::Status& local,
                                                           std::array<int64_t, 2> values,
                                                           const char* who);

// Whether every member passed the same `value` (an argument the contract
// says they share): OK, or InvalidArgument naming `what` and the values on
// every member alike. One all-reduce of size() values (each member's in its
// slot), so the verdict comes from the same numbers everywhere.
[[nodiscard]] absl::Status AgreeSame(Collective& group, int64_t value, const char* what);

namespace internal {

// One selection of SelectTopKAcross's batch: the segments this member holds
// and their indices in the group's stream order, the group's k and the
// group's count of values (already agreed: Agree, then a sum).
struct TopKProblem {
  absl::Span<const absl::Span<const float>> segments;
  absl::Span<const int64_t> order;
  int64_t k = 0;
  int64_t total = 0;
};

// SelectTopK (select.h) over segments spread across a group, for several
// independent selections at once: for each problem, the top k of all members'
// segments together, ranked by value, equal values by (order[s], index) order,
// earlier first; counts and ties_taken are the local segments'. Three
// all-reduces of 2048, 2048 and 1024 buckets per problem find the thresholds'
// bits, 11, 11 and 10 at a time, and one of num_streams tie counts per problem places the
// ties; the problems share each all-reduce. REQUIRES (checked: a bad order is
// a bug that would leave the group waiting): order.size() == segments.size(),
// order ascends strictly inside [0, num_streams). O(local values) per pass.
[[nodiscard]] absl::StatusOr<std::vector<TopK>> SelectTopKAcross(
    absl::Span<const TopKProblem> problems, int64_t num_streams, Collective& group);

}  // namespace internal

}  // namespace headpage::policy

#endif  // HEADPAGE_POLICY_COLLECTIVE_H_
