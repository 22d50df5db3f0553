// SPDX-License-Identifier: Apache-2.0
#include "policy/collective.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/check.h"
#include "core/status.h"

namespace headpage::policy {

absl::StatusOr<std::array<int64_t, 2>> Agree(Collective& group, const absl::Status& local,
                                             std::array<int64_t, 2> values, const char* who) {
  int64_t message[3] = {local.ok() ? 0 : 1, values[0], values[1]};
  const absl::Status reduced = group.AllReduceSum(absl::MakeSpan(message));
  if (!local.ok()) return local;
  if (!reduced.ok()) return reduced;
  if (message[0] > 0) {
    return absl::AbortedError(absl::StrCat(who, ": ", message[0], " other member",
                                           message[0] == 1 ? "" : "s", " of the group (of ",
                                           group.size(), ") failed, and this one stopped with "
                                           "it (steps already taken here stay taken)"));
  }
  return std::array<int64_t, 2>{message[1], message[2]};
}

absl::Status AgreeSame(Collective& group, int64_t value, const char* what) {
  std::vector<int64_t> values(static_cast<size_t>(group.size()), 0);
  values[static_cast<size_t>(group.rank())] = value;
  HEADPAGE_RETURN_IF_ERROR(group.AllReduceSum(absl::MakeSpan(values)));
  if (std::all_of(values.begin(), values.end(), [&](int64_t v) { return v == values[0]; })) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(what, " differs between the members of the "
                                                 "group: ", absl::StrJoin(values, ", ")));
}

namespace internal {

absl::StatusOr<std::vector<TopK>> SelectTopKAcross(absl::Span<const TopKProblem> problems,
                                                   int64_t num_streams, Collective& group) {
  std::vector<TopK> results(problems.size());
  // The problems that need a selection: the same on every member (k and total
  // are the group's), and they share every exchange below.
  std::vector<size_t> open;
  for (size_t p = 0; p < problems.size(); ++p) {
    const TopKProblem& problem = problems[p];
    // A bad order is the caller's bug, and returning here would leave the other
    // members waiting in the first all-reduce.
    HEADPAGE_CHECK(problem.order.size() == problem.segments.size());
    for (size_t s = 0; s < problem.order.size(); ++s) {
      HEADPAGE_CHECK(problem.order[s] >= 0 && problem.order[s] < num_streams &&
                     (s == 0 || problem.order[s] > problem.order[s - 1]));
    }
    if (!TrivialTopK(problem.segments, problem.k, problem.total, &results[p])) open.push_back(p);
  }
  if (open.empty()) return results;
  // Each problem's k-th largest key, 11, 11 and 10 bits at a time from the top:
  // each pass counts the keys that share the bits found so far, the group sums
  // the counts, and every member walks the same sums down to the bucket
  // holding the k-th. `remaining` is then the rank of the threshold among the
  // keys equal to it: the ties the top k take.
  constexpr int kShift[3] = {21, 10, 0};
  constexpr int kBits[3] = {11, 11, 10};
  std::vector<uint32_t> prefix(open.size(), 0);  // each threshold's bits found so far
  std::vector<int64_t> remaining(open.size());
  for (size_t o = 0; o < open.size(); ++o) remaining[o] = problems[open[o]].k;
  std::vector<int64_t> histograms;
  for (int pass = 0; pass < 3; ++pass) {
    const uint32_t buckets = 1u << kBits[pass];
    const int known = 32 - kShift[pass] - kBits[pass];  // bits fixed by earlier passes
    const uint32_t known_mask = known == 0 ? 0u : ~0u << (32 - known);
    histograms.assign(open.size() * buckets, 0);
    for (size_t o = 0; o < open.size(); ++o) {
      int64_t* histogram = histograms.data() + o * buckets;
      for (const auto& seg : problems[open[o]].segments) {
        for (const float v : seg) {
          const uint32_t key = OrderedKey(v);
          if ((key & known_mask) == prefix[o]) ++histogram[(key >> kShift[pass]) & (buckets - 1)];
        }
      }
    }
    HEADPAGE_RETURN_IF_ERROR(group.AllReduceSum(absl::MakeSpan(histograms)));
    for (size_t o = 0; o < open.size(); ++o) {
      const int64_t* histogram = histograms.data() + o * buckets;
      uint32_t bucket = buckets - 1;
      while (histogram[bucket] < remaining[o]) remaining[o] -= histogram[bucket--];
      prefix[o] |= bucket << kShift[pass];
    }
  }
  // The ties: each member counts its segments', the group lays them out in
  // stream order, and a segment takes what the streams before it left.
  const auto streams = static_cast<size_t>(num_streams);
  std::vector<int64_t> ties(open.size() * streams, 0);
  std::vector<std::vector<int64_t>> above(open.size());
  for (size_t o = 0; o < open.size(); ++o) {
    const TopKProblem& problem = problems[open[o]];
    above[o].assign(problem.segments.size(), 0);
    for (size_t s = 0; s < problem.segments.size(); ++s) {
      for (const float v : problem.segments[s]) {
        const uint32_t key = OrderedKey(v);
        above[o][s] += key > prefix[o];
        ties[o * streams + problem.order[s]] += key == prefix[o];
      }
    }
  }
  HEADPAGE_RETURN_IF_ERROR(group.AllReduceSum(absl::MakeSpan(ties)));
  for (size_t o = 0; o < open.size(); ++o) {
    const TopKProblem& problem = problems[open[o]];
    TopK& result = results[open[o]];
    const int64_t* tie_counts = ties.data() + o * streams;
    int64_t before = 0;  // ties of the streams before the current one
    int64_t next = 0;    // the first stream not yet summed into `before`
    for (size_t s = 0; s < problem.segments.size(); ++s) {
      for (; next < problem.order[s]; ++next) before += tie_counts[next];
      int64_t mine = 0;
      for (const float v : problem.segments[s]) mine += OrderedKey(v) == prefix[o];
      const int64_t take = std::clamp<int64_t>(remaining[o] - before, 0, mine);
      result.counts[s] = above[o][s] + take;
      result.ties_taken += take;
    }
    result.threshold = FromOrderedKey(prefix[o]);
  }
  return results;
}

}  // namespace internal
}  // namespace headpage::policy
