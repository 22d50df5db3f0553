// SPDX-License-Identifier: Apache-2.0
// DBudgetKV's cuts (budget.h): the released code's last-token attention norm
// and the paper's Frobenius norm of the reduced attention matrix.
#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "policy/budget.h"
#include "policy/budget_internal.h"

namespace headpage::policy {

using internal::InspectStreams;
using internal::LeastImportantFirst;
using internal::StreamInfo;

namespace {
constexpr char kWho[] = "DBudgetFrobeniusKept";
}  // namespace

absl::StatusOr<std::vector<int32_t>> DBudgetKept(
    absl::Span<const StreamScores> streams, absl::Span<const absl::Span<const float>> attention,
    int32_t group_size, double threshold, bool by_position) {
  if (group_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("DBudgetKept: group_size must be >= 1, got ", group_size));
  }
  if (!(threshold >= 0.0)) {  // also rejects NaN
    return absl::InvalidArgumentError(
        absl::StrCat("DBudgetKept: threshold must be >= 0, got ", threshold));
  }
  if (attention.size() != streams.size()) {
    return absl::InvalidArgumentError(absl::StrCat("DBudgetKept: ", streams.size(),
                                                   " streams but ", attention.size(),
                                                   " attention spans"));
  }
  auto infos = InspectStreams(streams, "DBudgetKept");
  if (!infos.ok()) return infos.status();
  std::vector<int32_t> kept(streams.size());
  if (streams.empty()) return kept;
  const int32_t n = (*infos)[0].num_candidates();
  for (size_t h = 0; h < streams.size(); ++h) {
    const StreamInfo& s = (*infos)[h];
    kept[h] = s.num_tokens;
    if (attention[h].size() != static_cast<size_t>(group_size) * s.num_tokens) {
      return absl::InvalidArgumentError(absl::StrCat(
          "DBudgetKept: attention[", h, "] has ", attention[h].size(), " values, expected group_size ",
          group_size, " x num_tokens ", s.num_tokens));
    }
    for (const float a : attention[h]) {
      if (!std::isfinite(a)) {
        return absl::InvalidArgumentError(
            absl::StrCat("DBudgetKept: attention[", h, "] holds a non-finite value"));
      }
    }
    if (s.num_candidates() != n) {
      return absl::InvalidArgumentError(absl::StrCat(
          "DBudgetKept: streams must have equally many candidates; stream 0 has ", n,
          ", stream ", h, " has ", s.num_candidates()));
    }
  }
  // threshold 0 keeps everything by definition. Without this, candidates whose
  // attention is exactly 0 in every head (fp32 softmax underflow) would leave
  // kept(k) == base and be cut even at T = 0.
  if (threshold == 0.0 || n == 0) return kept;

  // kept_sum[k] = sum over every q head of sqrt(sum of a^2 over all but the k
  // least important candidates): each head's reverse cumulative sum of squares
  // in its stream's order, added into one array, O(n) per head after sorting.
  // Each term is non-increasing in k and they are added in the same order for
  // every k, so kept_sum is non-increasing in floating point too: the ratio is
  // monotone and the largest admissible k is found by one scan.
  std::vector<double> kept_sum(n + 1, 0.0);
  std::vector<double> suffix(n + 1);
  std::vector<int32_t> order;  // candidate slots, least important first
  std::vector<uint64_t> keys, scratch;
  for (size_t h = 0; h < streams.size(); ++h) {
    const StreamInfo& s = (*infos)[h];
    LeastImportantFirst(streams[h], s, by_position, &keys, &scratch, &order);
    for (int32_t g = 0; g < group_size; ++g) {
      const float* a = attention[h].data() + static_cast<size_t>(g) * s.num_tokens;
      suffix[n] = 0.0;
      for (int32_t i = n - 1; i >= 0; --i) {
        const double x = a[order[i]];
        suffix[i] = suffix[i + 1] + x * x;
      }
      for (int32_t k = 0; k <= n; ++k) kept_sum[k] += std::sqrt(suffix[k]);
    }
  }
  const double num_heads = static_cast<double>(streams.size()) * group_size;
  const double base = kept_sum[0] / num_heads;
  // No attention mass on any candidate: the rule is 0/0 (the reference's NaN
  // comparison keeps all), and there is nothing to measure a loss by.
  if (!(base > 0.0)) return kept;
  int32_t cut = 0;
  for (int32_t k = n; k > 0; --k) {
    const double ratio = (base - kept_sum[k] / num_heads) / base;
    if (ratio <= threshold) {
      cut = k;
      break;
    }
  }
  for (size_t h = 0; h < streams.size(); ++h) kept[h] = (*infos)[h].num_tokens - cut;
  return kept;
}

absl::StatusOr<DBudgetFrobenius> DBudgetFrobenius::Create(absl::Span<const int32_t> row_positions,
                                                          int32_t group_size, double threshold) {
  if (group_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(kWho, ": group_size must be >= 1, got ", group_size));
  }
  if (!(threshold >= 0.0)) {  // also rejects NaN
    return absl::InvalidArgumentError(absl::StrCat(kWho, ": threshold must be >= 0, got ", threshold));
  }
  for (size_t r = 1; r < row_positions.size(); ++r) {
    if (row_positions[r] <= row_positions[r - 1]) {
      return absl::InvalidArgumentError(absl::StrCat(
          kWho, ": row positions must strictly ascend; row ", r, " is at ", row_positions[r],
          " after ", row_positions[r - 1]));
    }
  }
  DBudgetFrobenius sums;
  sums.row_positions_ = row_positions;
  sums.group_size_ = group_size;
  sums.threshold_ = threshold;
  return sums;
}

absl::Status DBudgetFrobenius::Add(const StreamScores& stream, absl::Span<const float> attention) {
  const StreamScores one[] = {stream};
  auto infos = InspectStreams(one, kWho);
  if (!infos.ok()) return infos.status();
  const StreamInfo& s = (*infos)[0];
  const auto num_rows = static_cast<int64_t>(row_positions_.size());
  if (attention.size() != static_cast<size_t>(group_size_ * num_rows * s.num_tokens)) {
    return absl::InvalidArgumentError(absl::StrCat(
        kWho, ": stream ", streams_, "'s attention has ", attention.size(),
        " values, expected group_size ", group_size_, " x ", num_rows, " rows x num_tokens ",
        s.num_tokens));
  }
  for (const float a : attention) {
    if (!std::isfinite(a)) {
      return absl::InvalidArgumentError(
          absl::StrCat(kWho, ": stream ", streams_, "'s attention holds a non-finite value"));
    }
  }
  const int32_t n = s.num_candidates();
  if (streams_ > 0 && n != num_candidates_) {
    return absl::InvalidArgumentError(absl::StrCat(
        kWho, ": streams must have equally many candidates; stream 0 has ", num_candidates_,
        ", stream ", streams_, " has ", n));
  }
  num_candidates_ = n;
  ++streams_;
  removed_sum_.resize(std::max(n, 1), 0.0);
  // As in DBudgetKept, threshold 0 keeps everything; the reference also never
  // cuts the last candidate (its search ends at n - 1): nothing to measure.
  if (threshold_ == 0.0 || n <= 1) return absl::OkStatus();

  // removed_sum_[k] gains, per q head, sqrt(removed_g(k)): the squared
  // attention in the rows and columns of the k least important candidates,
  // built one removal at a time. Removing candidate t adds its row over the
  // candidates still in, and its column over the candidate rows still in. The
  // terms are >= 0 and added in the same order for every k, so the sums are
  // non-decreasing in floating point too, and one scan finds the cut.
  std::vector<int32_t> order;
  std::vector<uint64_t> keys, scratch;
  LeastImportantFirst(stream, s, /*by_position=*/false, &keys, &scratch, &order);
  std::vector<int32_t> row_of(s.num_tokens, -1);  // per slot: its query's row, or -1
  std::vector<std::pair<int32_t, int32_t>> cand_rows;  // (row, slot): queries of candidates
  const absl::Span<const int32_t> positions = stream.positions;
  for (int64_t r = 0; r < num_rows; ++r) {
    const auto it = std::lower_bound(positions.begin() + s.begin, positions.begin() + s.end,
                                     row_positions_[r]);
    if (it == positions.begin() + s.end || *it != row_positions_[r]) continue;
    const auto slot = static_cast<int32_t>(it - positions.begin());
    row_of[slot] = static_cast<int32_t>(r);
    cand_rows.emplace_back(static_cast<int32_t>(r), slot);
  }
  std::vector<uint8_t> removed;
  for (int32_t g = 0; g < group_size_; ++g) {
    const float* a = attention.data() + static_cast<size_t>(g) * num_rows * s.num_tokens;
    auto at = [&](int64_t row, int32_t slot) {
      const double x = a[row * s.num_tokens + slot];
      return x * x;
    };
    double total = 0.0;
    for (const auto& [r, slot] : cand_rows) {
      for (int32_t j = s.begin; j < s.end; ++j) total += at(r, j);
    }
    base_sum_ += std::sqrt(total);
    removed.assign(s.num_tokens, 0);
    double sq = 0.0;
    for (int32_t k = 1; k < n; ++k) {
      const int32_t t = order[k - 1];
      if (row_of[t] >= 0) {  // its row, over the columns still in (itself included)
        for (int32_t j = s.begin; j < s.end; ++j) {
          if (!removed[j]) sq += at(row_of[t], j);
        }
      }
      for (const auto& [r, slot] : cand_rows) {  // its column, over the other rows still in
        if (slot != t && !removed[slot]) sq += at(r, t);
      }
      removed[t] = 1;
      removed_sum_[k] += std::sqrt(sq);
    }
  }
  return absl::OkStatus();
}

int32_t DBudgetFrobenius::Cut() const {
  // No attention among the candidates: nothing to measure a loss by.
  if (threshold_ == 0.0 || !(base_sum_ > 0.0)) return 0;
  int32_t cut = 0;
  for (int32_t k = 1; k < num_candidates_; ++k) {
    if (removed_sum_[k] > threshold_ * base_sum_) break;
    cut = k;
  }
  return cut;
}

absl::StatusOr<std::vector<int32_t>> DBudgetFrobeniusKept(
    absl::Span<const StreamScores> streams, absl::Span<const absl::Span<const float>> attention,
    absl::Span<const int32_t> row_positions, int32_t group_size, double threshold) {
  if (attention.size() != streams.size()) {
    return absl::InvalidArgumentError(absl::StrCat(kWho, ": ", streams.size(), " streams but ",
                                                   attention.size(), " attention spans"));
  }
  absl::StatusOr<DBudgetFrobenius> sums = DBudgetFrobenius::Create(row_positions, group_size,
                                                                   threshold);
  if (!sums.ok()) return sums.status();
  for (size_t h = 0; h < streams.size(); ++h) {
    HEADPAGE_RETURN_IF_ERROR(sums->Add(streams[h], attention[h]));
  }
  const int32_t cut = sums->Cut();
  std::vector<int32_t> kept(streams.size());
  for (size_t h = 0; h < streams.size(); ++h) kept[h] = streams[h].num_tokens() - cut;
  return kept;
}

}  // namespace headpage::policy
