// SPDX-License-Identifier: Apache-2.0
#include "policy/budget.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "policy/budget_internal.h"
#include "policy/select.h"

namespace headpage::policy {
namespace internal {

absl::StatusOr<std::vector<StreamInfo>> InspectStreams(absl::Span<const StreamScores> streams,
                                                      const char* who) {
  std::vector<StreamInfo> infos(streams.size());
  for (size_t i = 0; i < streams.size(); ++i) {
    const absl::StatusOr<internal::CandidateRange> range =
        internal::ValidateStream(streams[i], who, static_cast<int64_t>(i));
    if (!range.ok()) return range.status();
    const int32_t begin = range->begin, end = range->end, n = streams[i].num_tokens();
    infos[i] = StreamInfo{begin, end, n};
  }
  return infos;
}

void LeastImportantFirst(const StreamScores& stream, const StreamInfo& info, bool by_position,
                         std::vector<uint64_t>* keys, std::vector<uint64_t>* scratch,
                         std::vector<int32_t>* order) {
  const int32_t n = info.num_candidates();
  order->resize(n);
  if (by_position) {
    // Oldest first: slot order is position order.
    for (int32_t i = 0; i < n; ++i) (*order)[i] = info.begin + i;
    return;
  }
  // Packed as (score key, ~slot) in one uint64 laid out highest slot first, then
  // radix-sorted by the score key (stable: equal scores keep that layout).
  keys->resize(n);
  const float* scores = stream.scores.data();
  for (int32_t i = 0; i < n; ++i) {
    const uint32_t slot = static_cast<uint32_t>(info.end - 1 - i);
    (*keys)[i] = (uint64_t{OrderedKey(scores[slot])} << 32) | (0xFFFFFFFFu - slot);
  }
  RadixSort(keys, scratch, [](uint64_t key) { return static_cast<uint32_t>(key >> 32); });
  for (int32_t i = 0; i < n; ++i) {
    (*order)[i] = static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>((*keys)[i]));
  }
}

}  // namespace internal

namespace {

using internal::FromOrderedKey;
using internal::InspectStreams;
using internal::RadixSort;
using internal::StreamInfo;
using internal::OrderedKey;
using internal::SelectTopK;

constexpr int64_t kMaxInt32 = std::numeric_limits<int32_t>::max();


// Python's // (floor division), which the PyramidKV schedule is written in;
// C++'s / truncates toward zero and differs when the step is negative.
int64_t FloorDiv(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

// Python's int(x) for x >= 0, which both Ada-KV (int(B' * alpha)) and kvpress
// (int(alpha * n_kept)) use for the floor: computed on the double product.
int64_t FloorOfProduct(double alpha, int64_t b) {
  return static_cast<int64_t>(std::floor(alpha * static_cast<double>(b)));
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> UniformKept(absl::Span<const StreamScores> streams,
                                                 int32_t capacity) {
  if (capacity <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("UniformKept: capacity must be positive, got ", capacity));
  }
  auto infos = InspectStreams(streams, "UniformKept");
  if (!infos.ok()) return infos.status();
  std::vector<int32_t> kept(streams.size());
  for (size_t i = 0; i < streams.size(); ++i) {
    const StreamInfo& s = (*infos)[i];
    if (capacity < s.num_protected()) {
      return absl::InvalidArgumentError(absl::StrCat("UniformKept: capacity ", capacity,
                                                     " is smaller than stream ", i, "'s ",
                                                     s.num_protected(), " protected tokens"));
    }
    kept[i] = std::min(capacity, s.num_tokens);
  }
  return kept;
}

absl::StatusOr<std::vector<int32_t>> PyramidCapacities(int32_t num_layers, int32_t capacity,
                                                       int32_t window, int32_t prompt_len,
                                                       double beta) {
  if (num_layers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("PyramidCapacities: num_layers must be >= 1, got ", num_layers));
  }
  if (capacity <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("PyramidCapacities: capacity must be positive, got ", capacity));
  }
  if (!(beta > 0) || !std::isfinite(beta)) {  // also rejects NaN
    return absl::InvalidArgumentError(
        absl::StrCat("PyramidCapacities: beta must be positive and finite, got ", beta));
  }
  if (window < 0 || window >= capacity) {
    return absl::InvalidArgumentError(absl::StrCat("PyramidCapacities: window ", window,
                                                   " must be in [0, capacity ", capacity, ")"));
  }
  if (prompt_len <= window) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PyramidCapacities: prompt_len ", prompt_len, " must exceed window ", window));
  }
  // All arithmetic in int64: 2 B' and l * step overflow int32 near its limit.
  const int64_t b = int64_t{capacity} - window;  // B' >= 1
  const double min_real = std::floor(static_cast<double>(b) / beta);
  // beta < 1/2 makes min > 2 B', so the bottom layer's max = 2 B' - min would be
  // negative: no schedule exists (beta < 1 merely inverts the pyramid).
  if (min_real > static_cast<double>(2 * b)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PyramidCapacities: beta ", beta, " gives min = floor(B'/beta) = ", min_real,
        " above 2 B' = ", 2 * b, ", a negative bottom-layer budget"));
  }
  int64_t min_b = static_cast<int64_t>(min_real);
  int64_t max_b = 2 * b - min_b;
  const int64_t prefix = int64_t{prompt_len} - window;
  if (max_b >= prefix) {
    max_b = prefix;
    min_b = 2 * b - max_b;
  }
  // Negative only when capacity > prompt_len (max was clamped below min); then
  // every layer's capacity is >= prompt_len and the schedule is a no-op anyway.
  const int64_t step = num_layers == 1 ? 0 : FloorDiv(max_b - min_b, num_layers - 1);
  std::vector<int32_t> caps(num_layers);
  for (int32_t l = 0; l < num_layers; ++l) {
    const int64_t cap = max_b - l * step + window;
    if (cap > kMaxInt32) {
      return absl::InvalidArgumentError(
          absl::StrCat("PyramidCapacities: layer ", l, "'s capacity ", cap, " overflows int32"));
    }
    caps[l] = static_cast<int32_t>(cap);
  }
  return caps;
}

namespace {

// AdaKept's steps before and after its one global selection, so that the
// selection can run here (SelectTopK) or across a group, for several
// allocations at once (SelectTopKAcross).
struct AdaPrepared {
  absl::Status checked;
  std::vector<StreamInfo> infos;
  std::vector<int32_t> kept;
  // The streams that compete, and the values their global top-k ranks: their
  // candidates (kScaled), or what their safe sets leave (kProtectTop).
  std::vector<size_t> competing;
  std::vector<absl::Span<const float>> segments;
  std::vector<int64_t> safe;         // kProtectTop: each competing stream's safe set
  std::unique_ptr<float[]> buffer;   // kProtectTop: the segments' storage
  int64_t k = 0;                     // how many of the segments' values the top-k takes
  int64_t values = 0;                // the segments' values
};

// Checks and lays out one allocation. With a shard, the order is checked too;
// every error is left in `checked` for the caller to agree on.
AdaPrepared PrepareAda(absl::Span<const StreamScores> streams, int32_t capacity,
                       const AdaOptions& options, const Shard* shard) {
  AdaPrepared p;
  if (capacity <= 0) {
    p.checked = absl::InvalidArgumentError(
        absl::StrCat("AdaKept: capacity must be positive, got ", capacity));
  } else if (!(options.alpha >= 0.0 && options.alpha <= 1.0)) {  // also rejects NaN
    p.checked = absl::InvalidArgumentError(
        absl::StrCat("AdaKept: alpha must be in [0, 1], got ", options.alpha));
  } else if (options.floor != AdaFloor::kScaled && options.floor != AdaFloor::kProtectTop) {
    p.checked = absl::InvalidArgumentError(absl::StrCat("AdaKept: unknown AdaFloor value ",
                                                        static_cast<int>(options.floor)));
  } else if (shard != nullptr && shard->order.size() != streams.size()) {
    p.checked = absl::InvalidArgumentError(absl::StrCat(
        "AdaKept: ", streams.size(), " streams but ", shard->order.size(),
        " in the shard's order"));
  }
  for (size_t i = 0; p.checked.ok() && shard != nullptr && i < streams.size(); ++i) {
    const int64_t o = shard->order[i];
    if (o < 0 || o >= shard->num_streams || (i > 0 && o <= shard->order[i - 1])) {
      p.checked = absl::InvalidArgumentError(absl::StrCat(
          "AdaKept: the shard's order must ascend strictly inside [0, ", shard->num_streams,
          "), stream ", i, " has ", o));
    }
  }
  if (!p.checked.ok()) return p;
  absl::StatusOr<std::vector<StreamInfo>> infos = InspectStreams(streams, "AdaKept");
  p.checked = infos.status();
  if (!p.checked.ok()) return p;
  p.infos = *std::move(infos);
  p.kept.resize(streams.size());
  // The streams that compete: those whose B'_h does not cover their candidates.
  // A covered stream keeps everything and leaves the competition, taking its
  // B'_h with it (unused budget is not handed to the others). When every
  // stream's candidates are equally many (one layer of one sequence, as in the
  // papers) either all streams compete or none does, and this is Ada-KV's
  // "B' >= L - w: no compression" (the reference's test is B' > L - w; at
  // B' == L - w its rounding can still drop a token, which we do not).
  for (size_t i = 0; i < streams.size(); ++i) {
    const StreamInfo& s = p.infos[i];
    if (capacity < s.num_protected()) {
      p.checked = absl::InvalidArgumentError(absl::StrCat("AdaKept: capacity ", capacity,
                                                          " is smaller than stream ", i, "'s ",
                                                          s.num_protected(), " protected tokens"));
      return p;
    }
    p.kept[i] = s.num_tokens;
    const int64_t b = int64_t{capacity} - s.num_protected();
    if (b < s.num_candidates()) {
      p.competing.push_back(i);
      p.segments.push_back(streams[i].scores.subspan(s.begin, s.num_candidates()));
      p.k += b;  // K = sum of B'_h over the competing streams
    }
  }
  if (options.floor == AdaFloor::kProtectTop) {
    // kvpress: each stream's top floor(alpha B'_h) candidates are in first; the
    // rest of K is a global top-k over what remains. Only counts leave AdaKept,
    // so a stream's remainder is built as a multiset: the values below its safe
    // threshold plus the threshold ties the safe set did not take.
    const double alpha = options.alpha;
    size_t total = 0;
    for (const auto& seg : p.segments) total += seg.size();
    // One past the end for the unconditional store of the compaction below;
    // uninitialized, every value read is written first.
    p.buffer.reset(new float[total + 1]);
    p.safe.resize(p.competing.size());
    std::vector<size_t> rest_begin(p.competing.size()), rest_size(p.competing.size());
    size_t used = 0;
    for (size_t c = 0; c < p.competing.size(); ++c) {
      const size_t i = p.competing[c];
      const int64_t b = int64_t{capacity} - p.infos[i].num_protected();
      p.safe[c] = options.safe_counts_protected  // <= B'_h < candidates
                      ? std::max<int64_t>(0, FloorOfProduct(alpha, capacity) -
                                                 p.infos[i].num_protected())
                      : FloorOfProduct(alpha, b);
      p.k -= p.safe[c];
      rest_begin[c] = used;
      const float* v = p.segments[c].data();
      const size_t n = p.segments[c].size();
      if (p.safe[c] == 0) {
        std::copy(v, v + n, p.buffer.get() + used);
        used += n;
      } else {
        // Branch-free compaction of the values below the safe threshold (the
        // store is unconditional, only the index moves), then the ties it left.
        const internal::TopK top = SelectTopK({p.segments[c]}, p.safe[c]);
        const float t = top.threshold;
        int64_t equal = 0;
        for (size_t j = 0; j < n; ++j) {
          p.buffer[used] = v[j];
          used += v[j] < t;
          equal += v[j] == t;
        }
        const size_t leftover = static_cast<size_t>(equal - top.ties_taken);
        std::fill(p.buffer.get() + used, p.buffer.get() + used + leftover, t);
        used += leftover;
      }
      rest_size[c] = used - rest_begin[c];
    }
    for (size_t c = 0; c < p.competing.size(); ++c) {
      p.segments[c] = absl::MakeConstSpan(p.buffer.get() + rest_begin[c], rest_size[c]);
    }
  }
  for (const auto& seg : p.segments) p.values += static_cast<int64_t>(seg.size());
  return p;
}

// The kept counts, from the hits of the global top-k in each competing stream.
std::vector<int32_t> FinishAda(AdaPrepared& p, int32_t capacity, const AdaOptions& options,
                               absl::Span<const int64_t> hits) {
  for (size_t c = 0; c < p.competing.size(); ++c) {
    const size_t i = p.competing[c];
    const StreamInfo& s = p.infos[i];
    if (options.floor == AdaFloor::kScaled) {
      // Ada-KV: the global top-K picks c_h per stream, then
      // B_h = round_half_even(c_h (1 - alpha) + floor(alpha B'_h)). The
      // reference computes this in float32 (torch); double agrees with it on
      // every exact .5 tie and is closer to the formula elsewhere. nearbyint in
      // the default rounding mode (to nearest) rounds half to even, like
      // torch.round.
      const int64_t b = int64_t{capacity} - s.num_protected();
      const double scaled = static_cast<double>(hits[c]) * (1.0 - options.alpha) +
                            static_cast<double>(FloorOfProduct(options.alpha, b));
      const int64_t budget = static_cast<int64_t>(std::nearbyint(scaled));
      p.kept[i] = static_cast<int32_t>(std::min<int64_t>(budget + s.num_protected(), s.num_tokens));
    } else {
      p.kept[i] = static_cast<int32_t>(p.safe[c] + hits[c] + s.num_protected());
    }
  }
  return std::move(p.kept);
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> AdaKept(absl::Span<const StreamScores> streams,
                                             int32_t capacity, const AdaOptions& options) {
  AdaPrepared p = PrepareAda(streams, capacity, options, nullptr);
  HEADPAGE_RETURN_IF_ERROR(p.checked);
  if (p.competing.empty()) return std::move(p.kept);
  const internal::TopK top = SelectTopK(p.segments, p.k);
  return FinishAda(p, capacity, options, top.counts);
}

absl::StatusOr<std::vector<int32_t>> AdaKept(absl::Span<const StreamScores> streams,
                                             int32_t capacity, const AdaOptions& options,
                                             const Shard& shard) {
  const AdaAllocation one[] = {{streams, capacity}};
  HEADPAGE_ASSIGN_OR_RETURN(std::vector<std::vector<int32_t>> kept, AdaKept(one, options, shard));
  return std::move(kept[0]);
}

absl::StatusOr<std::vector<std::vector<int32_t>>> AdaKept(
    absl::Span<const AdaAllocation> allocations, const AdaOptions& options, const Shard& shard) {
  if (shard.group == nullptr) return absl::InvalidArgumentError("AdaKept: the shard has no group");
  std::vector<AdaPrepared> prepared;
  absl::Status checked = absl::OkStatus();
  for (const AdaAllocation& a : allocations) {
    prepared.push_back(PrepareAda(a.streams, a.capacity, options, &shard));
    if (checked.ok()) checked = prepared.back().checked;
  }
  // The members go on only if every one accepted its streams; then they sum
  // each allocation's k and values, and select them all at once.
  HEADPAGE_RETURN_IF_ERROR(Agree(*shard.group, checked, {0, 0}, "AdaKept").status());
  // A batch of another length on some member would misalign every exchange.
  HEADPAGE_RETURN_IF_ERROR(AgreeSame(*shard.group, static_cast<int64_t>(allocations.size()),
                                     "AdaKept: the number of allocations"));
  std::vector<int64_t> sums;
  for (const AdaPrepared& p : prepared) {
    sums.push_back(p.k);
    sums.push_back(p.values);
  }
  HEADPAGE_RETURN_IF_ERROR(shard.group->AllReduceSum(absl::MakeSpan(sums)));
  std::vector<std::vector<int64_t>> orders(prepared.size());
  std::vector<internal::TopKProblem> problems(prepared.size());
  for (size_t a = 0; a < prepared.size(); ++a) {
    for (const size_t i : prepared[a].competing) orders[a].push_back(shard.order[i]);
    problems[a] = {prepared[a].segments, orders[a], sums[2 * a], sums[2 * a + 1]};
  }
  HEADPAGE_ASSIGN_OR_RETURN(
      const std::vector<internal::TopK> tops,
      internal::SelectTopKAcross(problems, shard.num_streams, *shard.group));
  std::vector<std::vector<int32_t>> kept;
  for (size_t a = 0; a < prepared.size(); ++a) {
    kept.push_back(FinishAda(prepared[a], allocations[a].capacity, options, tops[a].counts));
  }
  return kept;
}

}  // namespace headpage::policy
