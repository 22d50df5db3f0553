// SPDX-License-Identifier: Apache-2.0
// EvictionEngine in a tensor-parallel group (JoinGroup): what lets members
// holding a slice of every layer's KV heads decide as one engine over all of
// them, and fail together. Compress's steps are in engine.cc.
#include "eviction/engine.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "eviction/cuda_executor.h"
#include "policy/budget.h"

namespace headpage {

absl::Status EvictionEngine::JoinGroup(policy::Collective* group) {
  if (group == nullptr) {
    return absl::InvalidArgumentError("EvictionEngine::JoinGroup: group is null");
  }
  if (group->size() < 1 || group->rank() < 0 || group->rank() >= group->size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "EvictionEngine::JoinGroup: rank ", group->rank(), " of a group of ", group->size()));
  }
  group_ = group;
  if (cuda_ != nullptr) cuda_->SetGroupMembers(group->size());
  return absl::OkStatus();
}

absl::Status EvictionEngine::FailTogether(absl::Status error) {
  if (group_ == nullptr || error.ok()) return error;
  // Agree returns our own error; the exchange only lets the others stop.
  return policy::Agree(*group_, error, {0, 0}, "EvictionEngine").status();
}

absl::StatusOr<std::vector<int32_t>> EvictionEngine::AdaKeptInGroup(
    const PolicyConfig& config, absl::Span<const policy::AdaAllocation> allocations,
    absl::Span<const int64_t> order, int64_t group_heads) const {
  HEADPAGE_ASSIGN_OR_RETURN(
      const std::vector<std::vector<int32_t>> each,
      policy::AdaKept(allocations, config.ada, policy::Shard{group_, order, group_heads}));
  std::vector<int32_t> kept;
  for (const std::vector<int32_t>& k : each) kept.insert(kept.end(), k.begin(), k.end());
  return kept;
}

absl::StatusOr<std::vector<int32_t>> EvictionEngine::AgreeAdaKept(
    const PolicyConfig& config, absl::Span<const int32_t> layer_capacity,
    absl::Span<const std::vector<policy::StreamScores>> layers) const {
  const int32_t heads = manager_->geometry().num_kv_heads;
  std::vector<policy::AdaAllocation> allocations;
  for (size_t layer = 0; layer < layers.size(); ++layer) {
    allocations.push_back({layers[layer], layer_capacity[layer]});
  }
  std::vector<int64_t> order;
  for (int32_t h = 0; h < heads; ++h) order.push_back(GroupOrder(0, h));
  return AdaKeptInGroup(config, allocations, order, int64_t{heads} * group_->size());
}

absl::StatusOr<std::vector<int32_t>> EvictionEngine::GlobalKeptInGroup(
    size_t num_seqs, absl::Span<const policy::StreamScores> streams, absl::Span<const int32_t> floors,
    int64_t pages_to_free, bool agreed) const {
  const CacheGeometry& g = manager_->geometry();
  const int32_t heads = g.num_kv_heads;
  if (!agreed) {
    HEADPAGE_RETURN_IF_ERROR(
        policy::Agree(*group_, absl::OkStatus(), {0, 0}, "EvictionEngine::EnforcePoolBudget")
            .status());
  }
  // The members hold the same sequences (a replicated scheduler made them):
  // stream i of sequence s, layer l is the group's (s L + l) H_group + rank H + h.
  HEADPAGE_RETURN_IF_ERROR(policy::AgreeSame(*group_, static_cast<int64_t>(num_seqs),
                                             "EnforcePoolBudget: the scored sequences"));
  std::vector<int64_t> order;
  for (size_t s = 0; s < num_seqs; ++s) {
    for (int32_t layer = 0; layer < g.num_layers; ++layer) {
      for (int32_t h = 0; h < heads; ++h) {
        order.push_back(GroupOrder(static_cast<int32_t>(s * g.num_layers + layer), h));
      }
    }
  }
  const int64_t group_streams = static_cast<int64_t>(num_seqs) * g.num_layers * heads * group_->size();
  return policy::GlobalKept(streams, floors, g.page_size, pages_to_free,
                            policy::Shard{group_, order, group_streams});
}

absl::StatusOr<std::vector<int32_t>> EvictionEngine::GroupLongest(
    absl::Span<const SeqId> seqs, const absl::Status& checked) const {
  const size_t n = seqs.size();
  // First the point every failure meets (this member's refusal of the call,
  // or an embedder's before the engine: FailTogether), which also checks that
  // every member brought as many sequences: the sums of n and n^2 over the
  // members say so alike on all.
  const auto count = static_cast<int64_t>(n);
  HEADPAGE_ASSIGN_OR_RETURN(const auto sums, policy::Agree(*group_, checked,
                                                           {count, count * count},
                                                           "EvictionEngine::Compress"));
  if (sums[0] * sums[0] != int64_t{group_->size()} * sums[1]) {
    return absl::InvalidArgumentError(absl::StrCat(
        "EvictionEngine::Compress: the members of the group compress batches of different "
        "sizes (", sums[0], " sequences over ", group_->size(), " members)"));
  }
  // Each member's lengths in its own slots: the sums are every member's. A
  // sequence this member does not hold counts 0 here; PrepareBatch refuses it.
  std::vector<int64_t> lengths(n * group_->size(), 0);
  for (size_t i = 0; i < n; ++i) {
    const absl::StatusOr<absl::Span<const uint32_t>> lens = manager_->StreamLengths(seqs[i]);
    if (lens.ok() && !lens->empty()) {
      lengths[group_->rank() * n + i] = *std::max_element(lens->begin(), lens->end());
    }
  }
  HEADPAGE_RETURN_IF_ERROR(group_->AllReduceSum(absl::MakeSpan(lengths)));
  std::vector<int32_t> longest(n, 0);
  for (int32_t member = 0; member < group_->size(); ++member) {
    for (size_t i = 0; i < n; ++i) {
      longest[i] = std::max<int32_t>(longest[i], static_cast<int32_t>(lengths[member * n + i]));
    }
  }
  return longest;
}

int64_t EvictionEngine::GroupOrder(int32_t layer, int32_t h) const {
  const int64_t heads = manager_->geometry().num_kv_heads;
  const int64_t size = group_ == nullptr ? 1 : group_->size();
  const int64_t rank = group_ == nullptr ? 0 : group_->rank();
  return layer * heads * size + rank * heads + h;
}

}  // namespace headpage
