// SPDX-License-Identifier: Apache-2.0
// File: eviction/layer_queries.h
//
// LayerQueries: the queries a policy observes for one layer of one sequence.
#ifndef HEADPAGE_EVICTION_LAYER_QUERIES_H_
#define HEADPAGE_EVICTION_LAYER_QUERIES_H_

#include <cstdint>

#include "core/dtype.h"
#include "core/paged_kv.h"
#include "policy/types.h"

namespace headpage {

// One layer's queries for one sequence, dense, q-head-major, so that the group
// of KV head h is the contiguous block of q heads [h * G, (h + 1) * G). Where
// `memory` is kDevice, data and positions are device pointers (the CUDA
// executor reads them in place; the host executor refuses them).
struct LayerQueries {
  const void* data = nullptr;          // [num_q_heads][num_queries][head_dim] of dtype
  const int32_t* positions = nullptr;  // [num_queries]
  int32_t num_queries = 0;
  DType dtype = DType::kF32;
  MemoryKind memory = MemoryKind::kHost;
  // The layer's output projection W_o, for the policies that weigh tokens by
  // their projected value norms (PolicyConfig::needs_output_projection():
  // CriticalKV, DefensiveKV); null data otherwise. In `memory`, like the
  // queries; num_q_heads and head_dim must be the geometry's.
  policy::OutputProjection output_projection;
};

}  // namespace headpage

#endif  // HEADPAGE_EVICTION_LAYER_QUERIES_H_
