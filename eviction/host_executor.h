// SPDX-License-Identifier: Apache-2.0
// File: eviction/host_executor.h
//
// The host executor: the eviction engine's three steps (score, budget, select)
// and the compaction, run on a pool whose bytes are host memory, through the
// CPU functions of policy/ and the ref:: kernels. It decides one layer at a
// time, so that the extra memory is one layer's gathered keys.
#ifndef HEADPAGE_EVICTION_HOST_EXECUTOR_H_
#define HEADPAGE_EVICTION_HOST_EXECUTOR_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "blockmgr/block_manager.h"
#include "core/paged_kv.h"
#include "eviction/layer_queries.h"
#include "policy/config.h"
#include "policy/types.h"

namespace headpage {

// Dense keys and positions of one layer's streams of one sequence.
struct LayerKeys {
  std::vector<char> keys;          // [sum lens][head_dim] of the cache dtype, raw
  std::vector<int32_t> positions;  // [sum lens]
  std::vector<int32_t> offsets;    // [kv_heads + 1] into both

  policy::StreamKeys Stream(int32_t h, const CacheGeometry& g) const;
};

// One layer's scores, before the budgets: what the allocator ranks (and the
// engine's score store keeps), per kv head, with the positions and, for
// CriticalKV, the projected value norms its selection weighs by.
struct LayerScores {
  LayerKeys data;  // keys (dropped once scored, when nothing later reads them) and positions
  std::vector<std::vector<float>> scores;
  std::vector<std::vector<float>> value_norms;  // [kv head][token]; empty unless config.critical
  int32_t rows = 0;  // the query rows the attention scores sum over (SnapKV's window)
  // The layer's streams over these scores.
  std::vector<policy::StreamScores> Streams(const CacheGeometry& g,
                                            const policy::Protection& protection) const;
};

// What one layer's policy decided: per kv head, the scores of its tokens (the
// engine's score store keeps them) and the ascending keep set.
struct LayerDecision {
  std::vector<std::vector<float>> scores;
  std::vector<std::vector<int32_t>> keep_sets;
};

class HostExecutor {
 public:
  // REQUIRES: manager outlives the executor; cache matches its geometry (the
  // engine checks). A device cache makes every call an InvalidArgument.
  HostExecutor(BlockManager* manager, const PagedKV& cache) : manager_(manager), cache_(cache) {}

  // Keys and positions of one layer's streams of `seq`, and their values when
  // `values` is non-null ([sum lens][head_dim] raw, the same order).
  [[nodiscard]] absl::Status GatherLayer(SeqId seq, int32_t layer, LayerKeys* out,
                                         std::vector<char>* values = nullptr) const;
  // Step 1: scores layer `layer` of `seq` with the policy's scorer on `queries`
  // (capacity: the layer's, which DefensiveKV's first stage reads).
  [[nodiscard]] absl::StatusOr<LayerScores> Score(SeqId seq, int32_t layer,
                                                  const PolicyConfig& config, int32_t capacity,
                                                  const LayerQueries& queries) const;
  // Step 3: the keep sets of a layer whose kv heads keep kept[h] tokens, at
  // the layer's capacity (CriticalAdaKV's safeguard reads it).
  [[nodiscard]] absl::StatusOr<std::vector<std::vector<int32_t>>> Select(
      const PolicyConfig& config, const LayerScores& scores, absl::Span<const int32_t> kept,
      const policy::Protection& protection, int32_t capacity) const;

  // Score, then allocates each kv head's budget from `capacity` (the layer's,
  // after any pyramid schedule), then Select, protecting `protection`. Not for
  // a policy that allocates across layers (the engine runs the three steps).
  // stream_capacity: head classes' capacity of each of the layer's kv heads.
  [[nodiscard]] absl::StatusOr<LayerDecision> Decide(
      SeqId seq, int32_t layer, const PolicyConfig& config, int32_t capacity,
      const policy::Protection& protection, const LayerQueries& queries,
      absl::Span<const int32_t> stream_capacity = {}) const;

  // Evicts `seq` to the keep sets ([layer][kv_head] order over `layers`), runs
  // the compaction on the host pool and releases the retired pages. The first
  // `frozen` tokens of every stream stay where they are (BlockManager::Evict's
  // frozen tokens): each keep set must start with them.
  [[nodiscard]] absl::Status Apply(SeqId seq, absl::Span<const int32_t> layers,
                                   const std::vector<std::vector<int32_t>>& keep_sets,
                                   int32_t frozen = 0);

 private:
  // InvalidArgument for a device pool: the CPU must not touch device memory.
  absl::Status CheckHostPool() const;

  BlockManager* manager_;
  PagedKV cache_;
  CompactionPlan plan_;  // reused, so that it allocates only while it grows
};

// The kept counts of an allocator that takes one capacity for the layer
// (uniform, pyramid, Ada, Ada-Pyramid); InvalidArgument for the others.
[[nodiscard]] absl::StatusOr<std::vector<int32_t>> AllocateByCapacity(
    const PolicyConfig& config, absl::Span<const policy::StreamScores> streams, int32_t capacity);

// The group of kv head h out of a layer's q-head-major queries.
policy::GroupQueries GroupOf(const LayerQueries& q, const CacheGeometry& g, int32_t h);

}  // namespace headpage

#endif  // HEADPAGE_EVICTION_HOST_EXECUTOR_H_
