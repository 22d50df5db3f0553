// SPDX-License-Identifier: Apache-2.0
// The pool-wide allocator (GlobalKept, budget.h): in one process, and across
// the members of a tensor-parallel group, each holding a share of the streams.
#include <algorithm>
#include <cstring>
#include <limits>
#include <queue>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "policy/budget.h"
#include "policy/budget_internal.h"
#include "policy/collective.h"
#include "policy/select.h"

namespace headpage::policy {
namespace {

using internal::FromOrderedKey;
using internal::InspectStreams;
using internal::OrderedKey;
using internal::RadixSort;
using internal::StreamInfo;

constexpr float kInf = std::numeric_limits<float>::infinity();

int64_t PagesFor(int64_t tokens, int64_t page_size) { return (tokens + page_size - 1) / page_size; }

// What both versions work from: every stream checked, its minimum, and each
// evicting stream's candidates sorted ascending with their mass.
struct Candidates {
  std::vector<StreamInfo> infos;
  std::vector<int32_t> kept;      // num_tokens, lowered by the caller
  std::vector<int32_t> min_kept;  // max(protected, min(floor, num_tokens))
  int64_t freeable = 0;           // pages freed were every stream at its minimum
  std::vector<size_t> offset;     // [stream + 1]: evicting streams' ranges of `sorted`
  std::vector<uint32_t> sorted;   // candidates' OrderedKeys, ascending per stream
  std::vector<double> mass;       // [stream]: the candidates' score sum

  size_t size(size_t i) const { return offset[i + 1] - offset[i]; }
  // The share of its stream's mass that the stream's rank-th lowest candidate
  // carries. A stream with no mass on its candidates (all scores 0) is treated
  // as uniform: each token carries 1/n of it. Any other choice would make its
  // tokens free (share 0) or priceless against every other stream. Ascending
  // in rank; never -0.
  double share(size_t i, size_t rank) const {
    return mass[i] > 0.0
               ? static_cast<double>(FromOrderedKey(sorted[offset[i] + rank])) / mass[i] + 0.0
               : 1.0 / static_cast<double>(size(i));
  }
};

absl::StatusOr<Candidates> Inspect(absl::Span<const StreamScores> streams,
                                   absl::Span<const int32_t> floors, int32_t page_size,
                                   int64_t pages_to_free) {
  if (floors.size() != streams.size()) {
    return absl::InvalidArgumentError(absl::StrCat("GlobalKept: ", streams.size(),
                                                   " streams but ", floors.size(), " floors"));
  }
  if (page_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("GlobalKept: page_size must be positive, got ", page_size));
  }
  if (pages_to_free < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("GlobalKept: pages_to_free must be >= 0, got ", pages_to_free));
  }
  Candidates c;
  HEADPAGE_ASSIGN_OR_RETURN(c.infos, InspectStreams(streams, "GlobalKept"));
  c.kept.resize(streams.size());
  c.min_kept.resize(streams.size());
  for (size_t i = 0; i < streams.size(); ++i) {
    const StreamInfo& s = c.infos[i];
    if (floors[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("GlobalKept: floors[", i, "] is negative (", floors[i], ")"));
    }
    // Normalizing to a share of the stream's mass needs mass: a negative score
    // (Knorm's -||k||) would flip the order, an infinite one makes 0/0.
    const float* scores = streams[i].scores.data();
    int bad = 0;
    for (int32_t j = s.begin; j < s.end; ++j) bad |= !(scores[j] >= 0.0f && scores[j] < kInf);
    if (bad) {
      int32_t j = s.begin;
      while (scores[j] >= 0.0f && scores[j] < kInf) ++j;
      return absl::InvalidArgumentError(absl::StrCat("GlobalKept: stream ", i,
                                                     ": scores must be finite and >= 0 "
                                                     "(attention mass), slot ",
                                                     j, " has ", scores[j]));
    }
    c.kept[i] = s.num_tokens;
    c.min_kept[i] = std::max(s.num_protected(), std::min(floors[i], s.num_tokens));
    c.freeable += PagesFor(s.num_tokens, page_size) - PagesFor(c.min_kept[i], page_size);
  }
  // Restricted to one stream the eviction order is the stream's ascending
  // score order, so each stream's candidates are sorted once.
  c.offset.assign(streams.size() + 1, 0);
  c.mass.assign(streams.size(), 0.0);
  for (size_t i = 0; i < streams.size(); ++i) {
    const bool evicts = c.kept[i] > c.min_kept[i];
    c.offset[i + 1] = c.offset[i] + (evicts ? c.infos[i].num_candidates() : 0);
  }
  c.sorted.resize(c.offset.back());
  std::vector<uint32_t> keys, scratch;
  for (size_t i = 0; i < streams.size(); ++i) {
    const StreamInfo& s = c.infos[i];
    if (c.size(i) == 0) continue;
    keys.resize(s.num_candidates());
    const float* scores = streams[i].scores.data() + s.begin;
    for (int32_t j = 0; j < s.num_candidates(); ++j) {
      const float v = scores[j];
      c.mass[i] += v;
      keys[j] = OrderedKey(v);
    }
    RadixSort(&keys, &scratch, [](uint32_t key) { return key; });
    std::copy(keys.begin(), keys.end(), c.sorted.begin() + c.offset[i]);
  }
  return c;
}

// A share as a key whose unsigned order is its order (shares are >= 0).
uint64_t ShareKey(double share) {
  uint64_t bits;
  std::memcpy(&bits, &share, sizeof(bits));
  return bits;
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> GlobalKept(absl::Span<const StreamScores> streams,
                                                absl::Span<const int32_t> floors,
                                                int32_t page_size, int64_t pages_to_free) {
  HEADPAGE_ASSIGN_OR_RETURN(Candidates c, Inspect(streams, floors, page_size, pages_to_free));
  if (pages_to_free == 0) return c.kept;
  if (c.freeable < pages_to_free) return c.min_kept;  // free what the floors allow

  // Eviction goes in one global order: lowest normalized score (share) first,
  // equal shares the higher stream first (the mirror of Ada's (stream, slot)
  // top-k tie rule), each stream stopping at its minimum. A heap holding each
  // stream's next token merges the sorted streams, stopping at the first
  // prefix that frees enough pages.
  struct Next {
    double share;
    int32_t stream;
    int32_t rank;  // the stream's tokens evicted so far
  };
  // priority_queue pops its largest: "a < b" says b is evicted first.
  auto later = [](const Next& a, const Next& b) {
    return a.share > b.share || (a.share == b.share && a.stream < b.stream);
  };
  std::priority_queue<Next, std::vector<Next>, decltype(later)> heap(later);
  for (size_t i = 0; i < streams.size(); ++i) {
    if (c.size(i) > 0) heap.push({c.share(i, 0), static_cast<int32_t>(i), 0});
  }
  int64_t freed = 0;
  while (freed < pages_to_free && !heap.empty()) {
    const Next next = heap.top();
    heap.pop();
    int32_t& k = c.kept[next.stream];
    // A token frees a page exactly when it was alone on its stream's last page.
    freed += PagesFor(k, page_size) - PagesFor(k - 1, page_size);
    --k;
    if (k > c.min_kept[next.stream]) {
      heap.push({c.share(next.stream, next.rank + 1), next.stream, next.rank + 1});
    }
  }
  return c.kept;
}

absl::StatusOr<std::vector<int32_t>> GlobalKept(absl::Span<const StreamScores> streams,
                                                absl::Span<const int32_t> floors,
                                                int32_t page_size, int64_t pages_to_free,
                                                const Shard& shard) {
  if (shard.group == nullptr) {
    return absl::InvalidArgumentError("GlobalKept: the shard has no group");
  }
  absl::StatusOr<Candidates> inspected = Inspect(streams, floors, page_size, pages_to_free);
  if (inspected.ok() && shard.order.size() != streams.size()) {
    inspected = absl::InvalidArgumentError(absl::StrCat(
        "GlobalKept: ", streams.size(), " streams but ", shard.order.size(), " in the order"));
  }
  for (size_t i = 0; inspected.ok() && i < streams.size(); ++i) {
    const int64_t o = shard.order[i];
    if (o < 0 || o >= shard.num_streams || (i > 0 && o <= shard.order[i - 1])) {
      inspected = absl::InvalidArgumentError(absl::StrCat(
          "GlobalKept: the shard's order must ascend strictly inside [0, ", shard.num_streams,
          "), stream ", i, " has ", o));
    }
  }
  // The members agree on their inputs, on the target, and on what the floors
  // let the group free.
  const int64_t freeable = inspected.ok() ? inspected->freeable : 0;
  HEADPAGE_ASSIGN_OR_RETURN(const auto sums,
                            Agree(*shard.group, inspected.status(), {freeable, 0}, "GlobalKept"));
  HEADPAGE_RETURN_IF_ERROR(AgreeSame(*shard.group, pages_to_free, "GlobalKept: pages_to_free"));
  Candidates& c = *inspected;
  if (pages_to_free == 0) return c.kept;
  if (sums[0] < pages_to_free) return c.min_kept;

  // The pages the local streams free when each evicts, up to its minimum, its
  // candidates whose share key is <= t, for ascending thresholds t[0..n).
  const auto freed_below = [&](absl::Span<const uint64_t> t, std::vector<int64_t>* freed) {
    freed->assign(t.size(), 0);
    for (size_t i = 0; i < streams.size(); ++i) {
      const size_t n = c.size(i);
      const int64_t cap = c.kept[i] - c.min_kept[i];
      size_t below = 0;
      for (size_t j = 0; j < t.size(); ++j) {
        while (below < n && ShareKey(c.share(i, below)) <= t[j]) ++below;
        const int64_t evicted = std::min<int64_t>(static_cast<int64_t>(below), cap);
        (*freed)[j] += PagesFor(c.kept[i], page_size) - PagesFor(c.kept[i] - evicted, page_size);
      }
    }
  };
  // 1. The share s at which eviction stops: the smallest key whose "everything
  // at or below it" frees pages_to_free across the group. Each round splits
  // the interval known to hold it at 256 thresholds and the group sums what
  // each would free: eight rounds cover the 63 bits of a non-negative double.
  constexpr int kSplits = 256;
  uint64_t lo = 0, hi = ShareKey(std::numeric_limits<double>::infinity());
  std::vector<uint64_t> thresholds;
  std::vector<int64_t> freed;
  while (lo < hi) {
    thresholds.clear();
    const uint64_t width = hi - lo;
    for (int j = 1; j <= kSplits; ++j) {
      // lo + floor(width * j / kSplits), without overflowing 64 bits.
      const uint64_t t = lo + (width / kSplits) * j + (width % kSplits) * j / kSplits;
      if (thresholds.empty() || t > thresholds.back()) thresholds.push_back(t);
    }
    freed_below(thresholds, &freed);
    HEADPAGE_RETURN_IF_ERROR(shard.group->AllReduceSum(absl::MakeSpan(freed)));
    size_t j = 0;
    while (freed[j] < pages_to_free) ++j;  // the last threshold is hi: it frees enough
    hi = thresholds[j];
    if (j > 0) lo = thresholds[j - 1] + 1;
  }
  const uint64_t stop = lo;
  // 2. Everything below the stop share goes; of the tokens at it, the higher
  // streams' first, each stream's in turn, until the group has freed enough.
  // The group sums, per stream, what taking its ties adds, and every member
  // walks the streams down from the top to the one where the sum is reached.
  std::vector<int64_t> base(streams.size()), ties(streams.size());
  std::vector<int64_t> adds(static_cast<size_t>(shard.num_streams) + 1, 0);
  int64_t& base_sum = adds.back();  // the pages freed below the stop share
  for (size_t i = 0; i < streams.size(); ++i) {
    size_t below = 0, at = 0;
    while (below < c.size(i) && ShareKey(c.share(i, below)) < stop) ++below;
    at = below;
    while (at < c.size(i) && ShareKey(c.share(i, at)) == stop) ++at;
    const int64_t cap = c.kept[i] - c.min_kept[i];
    base[i] = std::min<int64_t>(static_cast<int64_t>(below), cap);
    ties[i] = std::min<int64_t>(static_cast<int64_t>(at), cap) - base[i];
    const int64_t pages_before = PagesFor(c.kept[i], page_size);
    const int64_t pages_base = pages_before - PagesFor(c.kept[i] - base[i], page_size);
    const int64_t pages_all = pages_before - PagesFor(c.kept[i] - base[i] - ties[i], page_size);
    base_sum += pages_base;
    adds[shard.order[i]] += pages_all - pages_base;
  }
  HEADPAGE_RETURN_IF_ERROR(shard.group->AllReduceSum(absl::MakeSpan(adds)));
  // The boundary stream: the highest one whose ties, with those of every higher
  // stream, reach pages_to_free.
  int64_t total = adds.back();
  int64_t boundary = shard.num_streams - 1;
  for (; boundary >= 0; --boundary) {
    if (total + adds[boundary] >= pages_to_free) break;
    total += adds[boundary];
  }
  for (size_t i = 0; i < streams.size(); ++i) {
    const int64_t g = shard.order[i];
    int64_t evicted = base[i] + (g > boundary ? ties[i] : 0);
    if (g == boundary) {
      // As many of its ties as it takes, one token at a time.
      int64_t freed_here = total;
      for (int64_t t = 0; t < ties[i] && freed_here < pages_to_free; ++t) {
        const int64_t k = c.kept[i] - base[i] - t;
        freed_here += PagesFor(k, page_size) - PagesFor(k - 1, page_size);
        ++evicted;
      }
    }
    c.kept[i] -= static_cast<int32_t>(evicted);
  }
  return c.kept;
}

}  // namespace headpage::policy
