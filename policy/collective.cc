// SPDX-License-Identifier: Apache-2.0
#include "policy/collective.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
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
                                           group.size(), ") failed; nothing was changed here"));
  }
  return std::array<int64_t, 2>{message[1], message[2]};
}

namespace internal {

absl::StatusOr<TopK> SelectTopKAcross(absl::Span<const absl::Span<const float>> segments,
                                      absl::Span<const int64_t> order, int64_t num_streams,
                                      Collective& group, int64_t k, int64_t total) {
  TopK result;
  // A bad order is the caller's bug, and returning here would leave the other
  // members waiting in the first all-reduce.
  HEADPAGE_CHECK(order.size() == segments.size());
  for (size_t s = 0; s < order.size(); ++s) {
    HEADPAGE_CHECK(order[s] >= 0 && order[s] < num_streams && (s == 0 || order[s] > order[s - 1]));
  }
  // The same branch on every member: k and total are the group's.
  if (TrivialTopK(segments, k, total, &result)) return result;
  // The k-th largest key, 11, 11 and 10 bits at a time from the top: each pass
  // counts the keys that share the bits found so far, the group sums the
  // counts, and every member walks the same sums down to the bucket holding
  // the k-th. `remaining` is then the rank of the threshold among the keys
  // equal to it: the ties the top k take.
  constexpr int kShift[3] = {21, 10, 0};
  constexpr int kBits[3] = {11, 11, 10};
  std::vector<int64_t> histogram(2048);
  uint32_t prefix = 0;  // the threshold's bits found so far, in place
  int64_t remaining = k;
  for (int pass = 0; pass < 3; ++pass) {
    const uint32_t buckets = 1u << kBits[pass];
    const int known = 32 - kShift[pass] - kBits[pass];  // bits fixed by earlier passes
    const uint32_t known_mask = known == 0 ? 0u : ~0u << (32 - known);
    std::fill(histogram.begin(), histogram.begin() + buckets, 0);
    for (const auto& seg : segments) {
      for (const float v : seg) {
        const uint32_t key = OrderedKey(v);
        if ((key & known_mask) == prefix) ++histogram[(key >> kShift[pass]) & (buckets - 1)];
      }
    }
    HEADPAGE_RETURN_IF_ERROR(
        group.AllReduceSum(absl::MakeSpan(histogram.data(), buckets)));
    uint32_t bucket = buckets - 1;
    while (histogram[bucket] < remaining) remaining -= histogram[bucket--];
    prefix |= bucket << kShift[pass];
  }
  const uint32_t threshold = prefix;
  // The ties: each member counts its segments', the group lays them out in
  // stream order, and a segment takes what the streams before it left.
  std::vector<int64_t> ties(static_cast<size_t>(num_streams), 0);
  std::vector<int64_t> above(segments.size(), 0);
  for (size_t s = 0; s < segments.size(); ++s) {
    for (const float v : segments[s]) {
      const uint32_t key = OrderedKey(v);
      above[s] += key > threshold;
      ties[order[s]] += key == threshold;
    }
  }
  HEADPAGE_RETURN_IF_ERROR(group.AllReduceSum(absl::MakeSpan(ties)));
  int64_t before = 0;  // ties of the streams before the current one
  int64_t next = 0;    // the first stream not yet summed into `before`
  for (size_t s = 0; s < segments.size(); ++s) {
    for (; next < order[s]; ++next) before += ties[next];
    int64_t mine = 0;
    for (const float v : segments[s]) mine += OrderedKey(v) == threshold;
    const int64_t take = std::clamp<int64_t>(remaining - before, 0, mine);
    result.counts[s] = above[s] + take;
    result.ties_taken += take;
  }
  result.threshold = FromOrderedKey(threshold);
  return result;
}

}  // namespace internal
}  // namespace headpage::policy
