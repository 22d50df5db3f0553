// SPDX-License-Identifier: Apache-2.0
// File: sim/workload/compressor.h
//
// The workload simulator's compression at admission (sim/workload/workload.h,
// "Policies"): how many prompt tokens each stream of a request keeps, as the
// policy's budget allocation decides it. Ada and DBudgetKV need per-token
// scores the simulator does not have, so they run on the head profile's curves
// (kResolution bins a stream) and their per-head result is scaled to the
// request's prompt. Internal to the workload simulator.
#ifndef HEADPAGE_SIM_WORKLOAD_COMPRESSOR_H_
#define HEADPAGE_SIM_WORKLOAD_COMPRESSOR_H_

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/geometry.h"
#include "policy/config.h"
#include "policy/stream_scores.h"
#include "sim/workload/head_profile.h"
#include "sim/workload/workload.h"

namespace headpage {
namespace workload_internal {

// One per run. Memoizes what depends only on the layer (and, for Ada, the
// budget at the profile's resolution), so admitting many requests stays cheap.
// Thread-compatible.
class Compressor {
 public:
  Compressor(const HeadProfile& profile, const CacheGeometry& geometry, WorkloadPolicy policy,
             const Budget& budget, const PolicyConfig& config);

  // The prompt tokens each stream ([layer][kv_head]) keeps of a prompt of
  // `prompt_len` tokens. Errors of the policy allocators pass through.
  [[nodiscard]] absl::Status PromptKept(int32_t prompt_len, std::vector<int32_t>* kept);

 private:
  // The profile's streams of layer `layer`, as StreamScores at its resolution.
  std::vector<policy::StreamScores> ReferenceStreams(int32_t layer);
  // Ada's kept counts for the layer's heads at `reference` tokens a head (of
  // kResolution), as weights for ProportionalKeptCounts.
  absl::StatusOr<const std::vector<double>*> AdaShares(int32_t layer, int32_t reference);
  // The share of the layer's candidates DBudgetKV drops.
  absl::StatusOr<double> DBudgetCut(int32_t layer);

  const HeadProfile& profile_;
  CacheGeometry geometry_;
  WorkloadPolicy policy_;
  Budget budget_;
  PolicyConfig config_;
  std::vector<int32_t> positions_;                    // 0..kR-1
  std::vector<std::vector<float>> reference_scores_;  // [stream][kR]
  std::vector<int32_t> pyramid_;
  absl::flat_hash_map<int64_t, std::vector<double>> ada_memo_;  // (layer, reference) -> kept
  std::vector<double> dbudget_cut_;                             // [layer], -1: not yet
  std::vector<uint8_t> retrieval_;  // head-classes: the profile's classes, once
};

}  // namespace workload_internal
}  // namespace headpage

#endif  // HEADPAGE_SIM_WORKLOAD_COMPRESSOR_H_
