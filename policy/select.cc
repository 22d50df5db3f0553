// SPDX-License-Identifier: Apache-2.0
#include "policy/select.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace headpage::policy {
namespace {

using internal::FromOrderedKey;
using internal::OrderedKey;

// The highest bucket b such that the buckets above it hold fewer than `need`
// values, and how many of b's values the top `need` take.
struct Bucket {
  uint32_t index;
  int64_t take;
};
Bucket FindBucket(const int64_t* hist, uint32_t num_buckets, int64_t need) {
  int64_t above = 0;
  uint32_t b = num_buckets - 1;
  while (above + hist[b] < need) above += hist[b--];
  return {b, need - above};
}

}  // namespace

namespace internal {
namespace {

// The value t of the k-th largest, and how many values equal to t the top k
// take (`need`), given 0 < k < total.
struct KthLargest {
  float value;
  int64_t need;
};

// MSD radix select on the keys, 11 + 11 + 10 bits at a time: exact for any
// input, at the price of two full passes (a histogram, then gathering the
// threshold's bucket). Four interleaved histograms keep runs of values in one
// bucket (concentrated scores, the common case) from serializing on a single
// counter.
KthLargest RadixKthLargest(absl::Span<const absl::Span<const float>> segments, int64_t k) {
  constexpr uint32_t kBuckets = 2048;
  std::vector<int64_t> hist(4 * kBuckets, 0);
  for (const auto& seg : segments) {
    const float* v = seg.data();
    const size_t n = seg.size();
    size_t j = 0;
    for (; j + 4 <= n; j += 4) {
      ++hist[0 * kBuckets + (OrderedKey(v[j + 0]) >> 21)];
      ++hist[1 * kBuckets + (OrderedKey(v[j + 1]) >> 21)];
      ++hist[2 * kBuckets + (OrderedKey(v[j + 2]) >> 21)];
      ++hist[3 * kBuckets + (OrderedKey(v[j + 3]) >> 21)];
    }
    for (; j < n; ++j) ++hist[OrderedKey(v[j]) >> 21];
  }
  for (uint32_t b = 0; b < kBuckets; ++b) {
    hist[b] += hist[kBuckets + b] + hist[2 * kBuckets + b] + hist[3 * kBuckets + b];
  }
  const Bucket top = FindBucket(hist.data(), kBuckets, k);
  uint32_t prefix = top.index << 21;
  int64_t need = top.take;

  // The bucket is a closed float interval: two compares select it, and the
  // unconditional write (overwritten unless the value matched) avoids
  // mispredictions when the bucket holds a large share. The interval's ends
  // must be values whose keys lie in the bucket: the outermost buckets span
  // NaN bit patterns beyond the infinities (clamped to the infinities: there
  // is no NaN to miss), and key 0x7FFFFFFF, the top of the bucket below zero,
  // decodes to -0, which compares equal to +0 of the next bucket (no value has
  // that key, -0 being folded into +0; its neighbor is -denorm_min).
  constexpr float kInf = std::numeric_limits<float>::infinity();
  uint32_t high_key = std::min(prefix | 0x1FFFFFu, OrderedKey(kInf));
  if (high_key == 0x7FFFFFFFu) high_key = 0x7FFFFFFEu;
  const float bucket_low = FromOrderedKey(std::max(prefix, OrderedKey(-kInf)));
  const float bucket_high = FromOrderedKey(high_key);
  std::vector<uint32_t> keys(static_cast<size_t>(hist[top.index]) + 1);
  size_t num_keys = 0;
  for (const auto& seg : segments) {
    for (const float v : seg) {
      keys[num_keys] = OrderedKey(v);
      num_keys += v >= bucket_low && v <= bucket_high;
    }
  }
  keys.resize(num_keys);
  struct Level {
    int shift;
    uint32_t mask;
  };
  for (const Level level : {Level{10, 0x7FFu}, Level{0, 0x3FFu}}) {
    std::fill(hist.begin(), hist.begin() + kBuckets, 0);
    for (const uint32_t key : keys) ++hist[(key >> level.shift) & level.mask];
    const Bucket b = FindBucket(hist.data(), level.mask + 1, need);
    prefix |= b.index << level.shift;
    need = b.take;
    keys.erase(std::remove_if(keys.begin(), keys.end(),
                              [&](uint32_t key) {
                                return ((key >> level.shift) & level.mask) != b.index;
                              }),
               keys.end());
  }
  return {FromOrderedKey(prefix), need};
}

// Splits the top k into per-segment counts given the k-th largest value t and
// how many values equal to t the top k take: one counting pass.
void CountPerSegment(absl::Span<const absl::Span<const float>> segments, const KthLargest& kth,
                     TopK* result) {
  result->threshold = kth.value;
  result->ties_taken = kth.need;
  int64_t ties_left = kth.need;
  for (size_t s = 0; s < segments.size(); ++s) {
    int64_t above = 0, equal = 0;
    for (const float v : segments[s]) {
      above += v > kth.value;
      equal += v == kth.value;
    }
    const int64_t ties = std::min(equal, ties_left);
    result->counts[s] = above + ties;
    ties_left -= ties;
  }
}

// Sample-bracketed select (Floyd-Rivest style), the fast path. A strided
// sample brackets the k-th largest between two of its order statistics
// [low, high], with a margin of 4 standard deviations of the sample rank plus
// 4. One branch-free pass then counts, per segment, the values above `high`
// and gathers those inside [low, high] (the store is unconditional and only the
// output index depends on the test: mispredicted branches, not memory, are
// what a select pass pays for), and nth_element over the few gathered values
// finishes. Returns false when the bracket missed (a sample unluckily aligned
// with the data): the answer is exact either way, only the speed depends on
// the sample.
bool SampledSelect(absl::Span<const absl::Span<const float>> segments, int64_t k, int64_t total,
                   TopK* result) {
  const int64_t target = std::clamp<int64_t>(total / 64, 512, 8192);
  const int64_t stride = std::max<int64_t>(1, total / target);
  std::vector<float> sample;
  sample.reserve(static_cast<size_t>(total / stride + 1));
  int64_t next = stride / 2;  // next sampled index in the concatenation
  int64_t offset = 0;
  for (const auto& seg : segments) {
    const int64_t size = static_cast<int64_t>(seg.size());
    for (; next < offset + size; next += stride) sample.push_back(seg[next - offset]);
    offset += size;
  }
  const int64_t m = static_cast<int64_t>(sample.size());
  const double p = static_cast<double>(k) / static_cast<double>(total);
  const int64_t rank = static_cast<int64_t>(p * static_cast<double>(m));  // 0-based, descending
  const int64_t margin =
      static_cast<int64_t>(std::ceil(4.0 * std::sqrt(static_cast<double>(m) * p * (1.0 - p)))) + 4;
  const int64_t high_rank = rank - margin;
  const int64_t low_rank = rank + margin;
  float high = std::numeric_limits<float>::infinity();
  float low = -std::numeric_limits<float>::infinity();
  if (high_rank >= 0) {
    std::nth_element(sample.begin(), sample.begin() + high_rank, sample.end(),
                     std::greater<float>());
    high = sample[high_rank];
  }
  if (low_rank < m) {
    const auto from = sample.begin() + std::max<int64_t>(high_rank + 1, 0);
    std::nth_element(from, sample.begin() + low_rank, sample.end(), std::greater<float>());
    low = sample[low_rank];
  }

  // Gathered block by block through a small buffer sized for a whole block
  // (the unconditional store needs room for every value of it), so memory
  // grows with what is gathered, not with the input.
  constexpr size_t kBlock = 1024;
  float block[kBlock + 1];
  std::vector<float> inside;
  inside.reserve(static_cast<size_t>(total / m * (2 * margin + 1)) + kBlock);
  std::vector<int64_t> above(segments.size()), inside_end(segments.size());
  int64_t num_above = 0;
  for (size_t s = 0; s < segments.size(); ++s) {
    const float* v = segments[s].data();
    const size_t n = segments[s].size();
    int64_t seg_above = 0;
    for (size_t first = 0; first < n; first += kBlock) {
      const size_t last = std::min(n, first + kBlock);
      size_t gathered = 0;
      for (size_t j = first; j < last; ++j) {
        seg_above += v[j] > high;
        block[gathered] = v[j];
        gathered += (v[j] >= low) & (v[j] <= high);
      }
      inside.insert(inside.end(), block, block + gathered);
    }
    above[s] = seg_above;
    inside_end[s] = static_cast<int64_t>(inside.size());
    num_above += seg_above;
  }
  const int64_t num_inside = static_cast<int64_t>(inside.size());
  if (num_above >= k || num_above + num_inside < k) return false;

  // The (k - num_above)-th largest gathered value, on a copy: the gathered
  // values stay in segment order for the per-segment counts below.
  const int64_t pos = k - num_above - 1;
  std::vector<float> work(inside.begin(), inside.end());
  std::nth_element(work.begin(), work.begin() + pos, work.end(), std::greater<float>());
  const float t = work[pos];
  int64_t need = k - num_above;
  for (int64_t i = 0; i < num_inside; ++i) need -= inside[i] > t;
  result->threshold = t;
  result->ties_taken = need;
  int64_t ties_left = need;
  int64_t begin = 0;
  for (size_t s = 0; s < segments.size(); ++s) {
    int64_t greater = 0, equal = 0;
    for (int64_t i = begin; i < inside_end[s]; ++i) {
      greater += inside[i] > t;
      equal += inside[i] == t;
    }
    const int64_t ties = std::min(equal, ties_left);
    result->counts[s] = above[s] + greater + ties;
    ties_left -= ties;
    begin = inside_end[s];
  }
  return true;
}

}  // namespace

bool TrivialTopK(absl::Span<const absl::Span<const float>> segments, int64_t k, int64_t total,
                 TopK* result) {
  result->counts.assign(segments.size(), 0);
  result->ties_taken = 0;
  if (k <= 0) {
    result->threshold = std::numeric_limits<float>::infinity();
    return true;
  }
  if (k < total) return false;
  result->threshold = -std::numeric_limits<float>::infinity();
  for (size_t s = 0; s < segments.size(); ++s) {
    result->counts[s] = static_cast<int64_t>(segments[s].size());
    for (const float v : segments[s]) result->ties_taken += v == result->threshold;
  }
  return true;
}

TopK SelectTopK(absl::Span<const absl::Span<const float>> segments, int64_t k) {
  TopK result;
  int64_t total = 0;
  for (const auto& seg : segments) total += static_cast<int64_t>(seg.size());
  if (TrivialTopK(segments, k, total, &result)) return result;
  if (!SampledSelect(segments, k, total, &result)) {
    CountPerSegment(segments, RadixKthLargest(segments, k), &result);
  }
  return result;
}

absl::StatusOr<CandidateRange> ValidateStream(const StreamScores& stream, absl::string_view who,
                                              int64_t index) {
  const auto prefix = [&] {
    return index < 0 ? std::string(who) : absl::StrCat(who, ": stream ", index);
  };
  if (stream.positions.size() != stream.scores.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix(), ": ", stream.scores.size(), " scores but ",
                     stream.positions.size(), " positions"));
  }
  if (stream.scores.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat(prefix(), ": longer than int32"));
  }
  const int32_t n = stream.num_tokens();
  // Branch-free scans over raw pointers (they vectorize; absl::Span's
  // operator[] may carry a hardening check that stops that). The failing slot
  // is looked up only on the error path.
  const int32_t* positions = stream.positions.data();
  const float* scores = stream.scores.data();
  int bad_order = 0, bad_score = 0;
  for (int32_t j = 1; j < n; ++j) bad_order |= positions[j] <= positions[j - 1];
  for (int32_t j = 0; j < n; ++j) bad_score |= scores[j] != scores[j];
  if (bad_order) {
    int32_t j = 1;
    while (positions[j] > positions[j - 1]) ++j;
    return absl::InvalidArgumentError(
        absl::StrCat(prefix(), ": positions are not strictly ascending at slot ", j));
  }
  if (bad_score) {
    // A NaN has no place in the order the selection ranks by.
    int32_t j = 0;
    while (!std::isnan(scores[j])) ++j;
    return absl::InvalidArgumentError(absl::StrCat(prefix(), ": NaN score at slot ", j));
  }
  const int32_t begin = static_cast<int32_t>(
      std::lower_bound(stream.positions.begin(), stream.positions.end(), stream.protection.sinks) -
      stream.positions.begin());
  // recent may exceed n (a stream shorter than its window: all protected) or be
  // negative (nothing recent is protected); IsProtected() reads it the same way.
  const int32_t end = static_cast<int32_t>(
      std::clamp<int64_t>(int64_t{n} - stream.protection.recent, begin, int64_t{n}));
  return CandidateRange{begin, end};
}


}  // namespace internal

absl::Status SelectKeepSet(const StreamScores& stream, int32_t kept, std::vector<int32_t>* keep) {
  if (keep == nullptr) return absl::InvalidArgumentError("SelectKeepSet: keep is null");
  const absl::StatusOr<internal::CandidateRange> range = internal::ValidateStream(stream, "SelectKeepSet");
  if (!range.ok()) return range.status();
  const int32_t n = stream.num_tokens();
  const int32_t num_candidates = range->end - range->begin;
  const int32_t num_protected = n - num_candidates;
  if (kept < num_protected || kept > n) {
    return absl::InvalidArgumentError(absl::StrCat("SelectKeepSet: kept ", kept,
                                                   " outside [protected ", num_protected,
                                                   ", num_tokens ", n, "]"));
  }
  const int32_t take = kept - num_protected;  // unprotected slots to keep

  keep->resize(static_cast<size_t>(kept));
  int32_t* out = keep->data();
  int32_t m = 0;
  for (int32_t j = 0; j < range->begin; ++j) out[m++] = j;
  if (take == num_candidates) {
    for (int32_t j = range->begin; j < range->end; ++j) out[m++] = j;
  } else if (take > 0) {
    // Rather than ranking (score, slot) pairs, find the threshold and walk the
    // slots in order: everything above it is kept, and of the slots equal to it
    // the lowest ones fill what is left, so the output comes out ascending.
    const float* candidates = stream.scores.data() + range->begin;
    const internal::TopK top =
        internal::SelectTopK({absl::MakeConstSpan(candidates, num_candidates)}, take);
    const float t = top.threshold;
    int64_t ties_left = top.ties_taken;
    for (int32_t j = 0; j < num_candidates; ++j) {
      const float v = candidates[j];
      if (v >= t && (v > t || ties_left-- > 0)) out[m++] = range->begin + j;
    }
  }
  for (int32_t j = range->end; j < n; ++j) out[m++] = j;
  return absl::OkStatus();
}

}  // namespace headpage::policy
