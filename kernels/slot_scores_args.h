// SPDX-License-Identifier: Apache-2.0
// File: kernels/slot_scores_args.h
//
// SlotScores moves per-token scores between a store indexed by flat slot id
// (one float per slot of the pool, beside the K/V and the positions: the
// eviction engine's score store on a device pool, which Compact moves with its
// tokens) and dense per-stream arrays (what the scorers write and Select
// reads), through the streams' block tables:
//  - kStore: slot_scores[slot of token j] = dense[offsets[s] + j] for every
//    token of stream s (a compression's scores, kept for later);
//  - kLoad: dense[offsets[s] + j] = the stored score of token j if j <
//    scored[s], else `unscored` (the pool budget and H2O's streaming eviction
//    read what was kept);
//  - kAdd: the stored score of token j (0 if j >= scored[s]) plus dense[...],
//    written to both (a decode query's attention folded into H2O's running
//    total).
// A stream's scored tokens are a prefix: the tokens appended since the engine
// last scored the stream are its most recent ones. Plain C++: .cu files include it.
#ifndef HEADPAGE_KERNELS_SLOT_SCORES_ARGS_H_
#define HEADPAGE_KERNELS_SLOT_SCORES_ARGS_H_

#include <cstdint>

#include "core/paged_kv.h"
#include "kernels/gpu_launch.h"

namespace headpage {

enum class SlotScoresOp : uint8_t { kStore, kLoad, kAdd };

struct SlotScoresArgs {
  PagedKV cache;  // only its page_size and num_pages are used: the store's shape
  int32_t num_streams = 0;
  // CSR block tables (BlockManager::BlockTable's layout) and the dense layout:
  // stream s's token j is dense[offsets[s] + j], with offsets[s] + lens[s] <=
  // offsets[s + 1] <= num_dense.
  const int32_t* indptr = nullptr;   // [num_streams + 1]
  const int32_t* page_ids = nullptr;   // [num_page_ids]
  int32_t num_page_ids = 0;            // indptr from 0, ascending, ending inside it
  const int32_t* lens = nullptr;     // [num_streams]
  const int32_t* offsets = nullptr;  // [num_streams + 1]
  // [num_streams]: stream s's slots [0, scored[s]) hold a stored score; null:
  // every token is scored. Read by kLoad and kAdd.
  const int32_t* scored = nullptr;
  int32_t max_len = 0;    // host-side bound of lens: sizes the grid
  int32_t num_dense = 0;  // elements of `dense`
  SlotScoresOp op = SlotScoresOp::kStore;
  // kLoad: the dense value of an unscored token.
  float unscored = 0.0f;
  // kLoad: a stream whose stored scores go below zero is shifted up so that its
  // lowest is 0, order kept (policy::GlobalKept weighs shares of a stream's
  // score mass, which needs scores >= 0; Knorm's are -||k||). Unscored tokens
  // still get `unscored`.
  bool shift_to_zero = false;
  float* slot_scores = nullptr;  // [cache.num_slots()]
  float* dense = nullptr;        // [num_dense]
};

namespace gpu::internal {
// slot_scores.cu; gpu::SlotScores (slot_scores.h) validates, then calls it.
LaunchResult LaunchSlotScores(const SlotScoresArgs& args, GpuStream stream);
}  // namespace gpu::internal

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_SLOT_SCORES_ARGS_H_
