// SPDX-License-Identifier: Apache-2.0
// EvictionEngine in a tensor-parallel group (JoinGroup): what lets members
// holding a slice of every layer's KV heads decide as one engine over all of
// them, and fail together. Compress's steps are in engine.cc.
#include "eviction/engine.h"

#include "absl/strings/str_cat.h"
#include "core/status.h"
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
  if (cuda_ != nullptr) {
    return absl::UnimplementedError(
        "EvictionEngine::JoinGroup: not on a device pool yet (its Ada selection runs on the GPU "
        "and would need its histograms exchanged there)");
  }
  group_ = group;
  return absl::OkStatus();
}

absl::Status EvictionEngine::FailTogether(absl::Status error) {
  if (group_ == nullptr || error.ok()) return error;
  // Agree returns our own error; the exchange only lets the others stop.
  return policy::Agree(*group_, error, {0, 0}, "EvictionEngine").status();
}

int64_t EvictionEngine::GroupOrder(int32_t layer, int32_t h) const {
  const int64_t heads = manager_->geometry().num_kv_heads;
  const int64_t size = group_ == nullptr ? 1 : group_->size();
  const int64_t rank = group_ == nullptr ? 0 : group_->rank();
  return layer * heads * size + rank * heads + h;
}

}  // namespace headpage
