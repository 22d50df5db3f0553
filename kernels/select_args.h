// SPDX-License-Identifier: Apache-2.0
// File: kernels/select_args.h
//
// Select turns one layer's token scores into keep sets: per stream, the
// protected slots (sinks and the recent window) plus the highest-scoring other
// slots (ties to the lower slot, the older token), ascending. How many each
// stream keeps is either given (kTopB) or allocated by Ada-KV over the
// kv heads of each sequence (kAda: one global threshold per sequence, with
// floors), exactly as blockmgr/policy's SelectKeepSet and AdaKept compute it.
// Plain C++: .cu files include it.
#ifndef HEADPAGE_KERNELS_SELECT_ARGS_H_
#define HEADPAGE_KERNELS_SELECT_ARGS_H_

#include <cstdint>

#include "kernels/gpu_launch.h"
#include "policy/types.h"

namespace headpage {

enum class SelectMode : uint8_t {
  kTopB,  // kept[s] given per stream (uniform budgets, PyramidKV, DBudgetKV, ...)
  kAda,   // Ada-KV: capacity per stream on average, reallocated within each sequence
};


// The most kv heads one kAda sequence may have (its competition runs in one
// thread-block cluster, which keeps a few words per stream in shared memory).
inline constexpr int32_t kSelectMaxAdaHeads = 256;
// The most CTAs that cooperate on one group (a stream, or a kAda sequence):
// the portable thread-block cluster size.
inline constexpr int32_t kSelectMaxCtasPerGroup = 8;

struct SelectArgs {
  // Streams are seq-major, kv_head-minor: stream s = seq * num_kv_heads + head.
  int32_t num_seqs = 0;
  int32_t num_kv_heads = 0;
  // [streams + 1], non-decreasing: stream s's tokens are
  // [score_offsets[s], score_offsets[s + 1]) of scores, positions and keep.
  const int32_t* score_offsets = nullptr;
  const float* scores = nullptr;        // higher = more important; no NaN
  const int32_t* positions = nullptr;   // stored token positions, strictly ascending per stream
  // Protected slots, always kept: those holding positions < sinks, and the
  // last `recent` slots of each stream (recent > length: all; <= 0: none).
  int32_t sinks = 0;
  int32_t recent = 0;

  SelectMode mode = SelectMode::kTopB;
  // kTopB: [streams] how many tokens each stream keeps, protected ones
  // included, in [protected, length].
  const int32_t* kept = nullptr;
  // kAda: the average per stream, protected tokens included (stream h may
  // select B'_h = capacity - protected_h candidates); must cover every
  // stream's protected tokens. A stream whose B'_h covers its candidates keeps
  // everything and does not compete.
  int32_t capacity = 0;
  double alpha = 0.2;  // in [0, 1]
  policy::AdaFloor floor = policy::AdaFloor::kScaled;

  // Outputs. keep: stream s's keep set at keep[score_offsets[s]] onwards,
  // kept_counts[s] entries, ascending slot indices (the rest of its range is
  // not written). kept_counts: [streams], what the block manager's Evict takes.
  int32_t* keep = nullptr;
  int32_t* kept_counts = nullptr;

  // How many CTAs (one thread-block cluster) work on one group (a kTopB
  // stream, a kAda sequence, whose CTAs each own whole streams: at most
  // num_kv_heads of them): 0 lets the GPU backend choose from the batch and
  // the device; 1..8 forces it (tests cover every path this way). The result
  // never depends on it.
  int32_t ctas_per_group = 0;

  int32_t num_streams() const { return num_seqs * num_kv_heads; }
};

namespace gpu::internal {
// select.cu; gpu::Select (select.h) validates, then calls it.
LaunchResult LaunchSelect(const SelectArgs& args, GpuStream stream);
}  // namespace gpu::internal

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_SELECT_ARGS_H_
