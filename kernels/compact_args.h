// SPDX-License-Identifier: Apache-2.0
// File: kernels/compact_args.h
//
// Compact executes a compaction plan (blockmgr/plans.h): for every row (one
// stream of one layer), the tokens of its keep set move, in order, to slots
// 0..kept-1 of its destination block table, K, V and position alike (and, on
// fp8 pages, the K and V scales; and the token's score, where the caller keeps
// one per slot).
//
// A row is either fresh (its destination pages are newly allocated and disjoint
// from every source page) or in place (its destination block table is a prefix of
// its source block table). In place is safe because the keep set is ascending:
// survivor i comes from logical slot keep[i] >= i, so copying in ascending chunks
// (read a whole chunk, then write it) never overwrites a slot still to be read.
// Plain C++: .cu files include it.
#ifndef HEADPAGE_KERNELS_COMPACT_ARGS_H_
#define HEADPAGE_KERNELS_COMPACT_ARGS_H_

#include <cstdint>

#include "core/paged_kv.h"
#include "kernels/gpu_launch.h"

namespace headpage {

struct CompactArgs {
  PagedKV cache;
  int32_t num_rows = 0;
  // Every indptr starts at 0, ascends and ends inside the array it indexes,
  // whose length is given beside it.
  const int32_t* src_indptr = nullptr;    // [num_rows + 1] into src_page_ids
  const int32_t* src_page_ids = nullptr;  // the rows' block tables before compaction
  int32_t num_src_page_ids = 0;
  const int32_t* src_lens = nullptr;      // [num_rows] tokens in each row before compaction
  const int32_t* dst_indptr = nullptr;    // [num_rows + 1] into dst_page_ids
  const int32_t* dst_page_ids = nullptr;  // the rows' block tables after compaction
  int32_t num_dst_page_ids = 0;
  const int32_t* keep_indptr = nullptr;   // [num_rows + 1] into keep
  const int32_t* keep = nullptr;          // logical slots kept, strictly ascending per row
  int32_t num_keep = 0;
  const uint8_t* in_place = nullptr;      // [num_rows] 1: dst pages are a prefix of src pages
  // Optional [num_rows]: where row r's keep set starts in `keep`, for keep sets
  // that do not lie back to back in row order. gpu::Select writes stream s's
  // at its score offset, in (sequence, kv head) order of one layer, where a
  // plan's rows are (layer, kv head) of one sequence: these offsets let
  // Compact read Select's output where it lies. Null: at keep_indptr[r].
  // keep_indptr still gives the counts (the host knows them: Evict takes them).
  const int32_t* keep_offsets = nullptr;
  // What every keep entry is offset by: entry e names the row's slot e -
  // keep_base. A plan whose rows start past a stream's frozen prefix
  // (BlockManager::Evict with frozen tokens) reads keep sets written over the
  // whole stream this way. >= 0.
  int32_t keep_base = 0;
  // Optional [cache.num_slots()]: one float per slot (the eviction engine's
  // score store on a device pool), moved with its token as positions are.
  // Null: no scores are kept.
  float* slot_scores = nullptr;
  // Optional, device memory, one word: the GPU checks the plan on the device
  // first (kernels/table_checks.h, as the CPU reference does) and records the
  // first fault here; then nothing moves. Read it with gpu::ReadTableFault.
  // Null: the plan is trusted (the eviction engine builds it from the block
  // manager) and is not checked on the GPU.
  uint64_t* fault = nullptr;
};

namespace gpu::internal {
// compact.cu; gpu::Compact (compact.h) validates, then calls it.
LaunchResult LaunchCompact(const CompactArgs& args, GpuStream stream);
}  // namespace gpu::internal

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_COMPACT_ARGS_H_
