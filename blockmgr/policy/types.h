// SPDX-License-Identifier: Apache-2.0
// File: blockmgr/policy/types.h
//
// The plain inputs every eviction policy works on. Policies are pure functions
// on dense arrays: the eviction engine gathers a stream's keys out of the pool,
// the simulator takes them from a trace, and both hand the policy these views.
// A policy runs in three steps (DESIGN.md, "Eviction"):
//   1. score   (scores.h)  a float per token per stream, higher = more important
//   2. budget  (budget.h)  how many tokens each stream keeps
//   3. select  (select.h)  which ones: an ascending keep set per stream
#ifndef HEADPAGE_BLOCKMGR_POLICY_TYPES_H_
#define HEADPAGE_BLOCKMGR_POLICY_TYPES_H_

#include <cstdint>

#include "absl/types/span.h"
#include "core/dtype.h"

namespace headpage::policy {

// One stream's keys, dense, in slot order: positions strictly ascending (slot
// order is position order, also after compaction).
struct StreamKeys {
  const void* data = nullptr;          // [num_tokens][head_dim] of dtype (post-RoPE)
  const int32_t* positions = nullptr;  // [num_tokens]
  int32_t num_tokens = 0;
  int32_t head_dim = 0;
  DType dtype = DType::kF32;
};

// The queries of the q heads that share one KV head (a GQA group), dense.
struct GroupQueries {
  const void* data = nullptr;          // [group_size][num_queries][head_dim] of dtype
  const int32_t* positions = nullptr;  // [num_queries]: a query at position p sees keys at <= p
  int32_t group_size = 0;
  int32_t num_queries = 0;
  int32_t head_dim = 0;
  DType dtype = DType::kF32;
};

enum class Pooling : uint8_t { kNone, kAvg, kMax };
// How the G query heads of a group are reduced to the one KV head's score.
enum class GroupReduce : uint8_t { kMean, kMax };

// Tokens a policy keeps whatever their score: attention sinks (the tokens at
// positions < sinks) and the `recent` last slots of the stream (SnapKV's
// observation window, H2O's and StreamingLLM's recent tokens).
struct Protection {
  int32_t sinks = 0;
  int32_t recent = 0;
};

// One stream's scores with what its policy protects.
struct StreamScores {
  absl::Span<const float> scores;        // [num_tokens]
  absl::Span<const int32_t> positions;   // [num_tokens], strictly ascending
  Protection protection;

  int32_t num_tokens() const { return static_cast<int32_t>(scores.size()); }
  // Protected slot? Slot j is protected when it is one of the last `recent`
  // slots or holds a position below `sinks`.
  bool IsProtected(int32_t j) const {
    return j >= num_tokens() - protection.recent || positions[j] < protection.sinks;
  }
  // How many slots are protected (sinks and recent may overlap).
  int32_t NumProtected() const;
};

inline int32_t StreamScores::NumProtected() const {
  int32_t n = 0;
  for (int32_t j = 0; j < num_tokens(); ++j) n += IsProtected(j);
  return n;
}

}  // namespace headpage::policy

#endif  // HEADPAGE_BLOCKMGR_POLICY_TYPES_H_
