// SPDX-License-Identifier: Apache-2.0
// File: policy/types.h
//
// The plain inputs every eviction policy works on, and the enums the CUDA
// kernels share with the CPU functions (plain C++, no Abseil: .cu files include
// it). Policies are pure functions on dense arrays: the eviction engine gathers a stream's keys out of the pool,
// the simulator takes them from a trace, and both hand the policy these views.
// A policy runs in three steps (DESIGN.md, "Eviction"):
//   1. score   (scores.h)  a float per token per stream, higher = more important
//   2. budget  (budget.h)  how many tokens each stream keeps
//   3. select  (select.h)  which ones: an ascending keep set per stream
#ifndef HEADPAGE_POLICY_TYPES_H_
#define HEADPAGE_POLICY_TYPES_H_

#include <cstdint>

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

// One stream's values, dense, in slot order (CriticalKV's and DefensiveKV's
// value norms read them).
struct StreamValues {
  const void* data = nullptr;  // [num_tokens][head_dim] of dtype
  int32_t num_tokens = 0;
  int32_t head_dim = 0;
  DType dtype = DType::kF32;
};

// A layer's attention output projection W_o as torch.nn.Linear stores it:
// [hidden_size][num_q_heads * head_dim], so that q head h's slice W_o^h is
// columns [h * head_dim, (h + 1) * head_dim) and o = sum_h (A_h V_h) W_o^h^T.
// CriticalKV weighs tokens by || v W_o^h ||_1 (critical.h).
struct OutputProjection {
  const void* data = nullptr;
  int32_t hidden_size = 0;
  int32_t num_q_heads = 0;
  int32_t head_dim = 0;
  DType dtype = DType::kF32;
};

enum class Pooling : uint8_t { kNone, kAvg, kMax };
// How the G query heads of a group are reduced to the one KV head's score.
enum class GroupReduce : uint8_t { kMean, kMax };

// How Ada-KV guarantees each head a floor of its budget (AdaOptions, budget.h;
// the kernels' Select takes the same enum).
enum class AdaFloor : uint8_t {
  // Ada-KV's paper and code: global top-(H B') over the layer's candidate
  // scores, c_h hits per stream, B_h = round_half_even(c_h (1 - alpha) +
  // floor(alpha B')). Before rounding the sum is H B' minus the fractions the
  // floors drop (sum_h frac(alpha B'_h), none when alpha B' is an integer);
  // rounding then moves it by at most H/2. So sum B_h is in
  // (H B' - 3H/2, H B' + H/2], within H/2 when alpha B' is integral.
  kScaled,
  // kvpress's AdaKVPress: each stream's top floor(alpha B') candidates are
  // protected (its code: n_safe = int(alpha * n_kept)), the rest of the H B' is
  // a pure global top-k. Sum is exact.
  kProtectTop,
};

// Tokens a policy keeps whatever their score: attention sinks (the tokens at
// positions < sinks) and the `recent` last slots of the stream (SnapKV's
// observation window, H2O's and StreamingLLM's recent tokens).
struct Protection {
  int32_t sinks = 0;
  int32_t recent = 0;
};

}  // namespace headpage::policy

#endif  // HEADPAGE_POLICY_TYPES_H_
