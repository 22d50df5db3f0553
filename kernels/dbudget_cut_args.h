// SPDX-License-Identifier: Apache-2.0
// File: kernels/dbudget_cut_args.h
//
// DBudgetCut is DBudgetKV's budget rule (policy::DBudgetKept) for one layer of
// a batch: per sequence, how many of its candidates every kv head drops (the
// cut, the same for all of them), so that the attention norm of the last
// prompt query's rows over what is kept stays within `threshold` of the norm
// over every candidate. Its kept counts feed Select in kTopB mode, which then
// keeps exactly the tokens measured. Plain C++: .cu files include it.
#ifndef HEADPAGE_KERNELS_DBUDGET_CUT_ARGS_H_
#define HEADPAGE_KERNELS_DBUDGET_CUT_ARGS_H_

#include <cstddef>
#include <cstdint>

#include "kernels/gpu_launch.h"

namespace headpage {

struct DBudgetCutArgs {
  // Streams are seq-major, kv_head-minor: stream s = seq * num_kv_heads + head
  // (as Select's). One sequence's streams are one layer's kv heads.
  int32_t num_seqs = 0;
  int32_t num_kv_heads = 0;
  int32_t group_size = 1;  // q heads per kv head
  // [streams + 1], non-decreasing from >= 0, at most num_tokens: stream s's
  // tokens are [score_offsets[s], score_offsets[s + 1]) of scores and positions.
  const int32_t* score_offsets = nullptr;
  // Host-side: the elements of scores and positions (at least the last offset);
  // sizes the workspace, and the GPU reads nothing past it.
  int32_t num_tokens = 0;
  // Higher = more important, no NaN. Read to order the candidates unless
  // by_position (then only the reference reads them, to check them).
  const float* scores = nullptr;
  const int32_t* positions = nullptr;  // stored token positions, strictly ascending per stream
  // Protected slots, never cut (Select's meaning): those holding positions <
  // sinks, and the last `recent` slots of each stream (recent > length: all;
  // <= 0: none). The rest, the candidates, are one contiguous range of slots.
  int32_t sinks = 0;
  int32_t recent = 0;
  // [group_size * num_tokens], finite: the last prompt query's attention row
  // of each q head over its stream's slots (policy::LastQueryAttention).
  // Stream s's rows are [group_size][n_s] from attention[group_size *
  // score_offsets[s]]: row g's slot j at attention[group_size *
  // score_offsets[s] + g * n_s + j], n_s the stream's length.
  const float* attention = nullptr;
  double threshold = 0.05;  // >= 0; 0 keeps everything
  // Candidates cut oldest first (StreamingLLM's order) instead of lowest score
  // first.
  bool by_position = false;

  // Output: [streams], each stream's length minus its sequence's cut.
  int32_t* kept = nullptr;

  // gpu:: only (ref:: ignores them): at least DBudgetCutWorkspaceBytes(args)
  // bytes of device memory, 16-byte aligned, contents irrelevant.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;

  int32_t num_streams() const { return num_seqs * num_kv_heads; }
};

// How gpu:: lays out its workspace: a pure function of the host-side sizes,
// so that it can be sized before the launch. Byte offsets, each 256-aligned
// (CUB's alignment) from the workspace's start.
//  - spans: per stream, its clamped token range and candidate range (16 bytes);
//  - sort_begin, sort_end, keys[2], slots[2], sort_temp (not by_position):
//    CUB's segmented radix sort of each stream's candidates (double buffers
//    over num_tokens, and its temporary storage);
//  - gathered (not by_position): [group_size] rows per stream, laid out as
//    attention, holding the candidates' values in cut order;
//  - carries: per attention row and tile of kDBudgetTileRanks ranks, the sum
//    of squares of every later tile;
//  - kept_sums: per sequence, the sum over its q heads of the kept norm after
//    cutting k candidates, for each k.
// The per-stream and per-sequence regions are placed from the stream's offset
// (stream s's tiles from offset / kDBudgetTileRanks + s, sequence q's sums
// from its first offset / num_kv_heads + q): no host-side maximum length is
// needed, and no device offset (the host never checks them) can place a write
// past the workspace.
inline constexpr int32_t kDBudgetTileRanks = 128;  // one warp, 4 ranks a lane
// CUB's segmented radix sort over double buffers needs under 256 bytes of
// temporary storage; the launch checks that this covers it.
inline constexpr size_t kDBudgetSortTempBytes = 4096;

struct DBudgetCutLayout {
  size_t spans = 0;
  size_t sort_begin = 0;
  size_t sort_end = 0;
  size_t keys[2] = {0, 0};
  size_t slots[2] = {0, 0};
  size_t sort_temp = 0;
  size_t gathered = 0;
  size_t carries = 0;
  size_t kept_sums = 0;
  size_t bytes = 0;  // 0: nothing to do (no streams)
};

inline DBudgetCutLayout PlanDBudgetCut(const DBudgetCutArgs& args) {
  DBudgetCutLayout layout;
  if (args.num_seqs <= 0 || args.num_kv_heads <= 0 || args.group_size <= 0 || args.num_tokens < 0) {
    return layout;
  }
  const size_t streams =
      static_cast<size_t>(args.num_seqs) * static_cast<size_t>(args.num_kv_heads);
  const size_t tokens = static_cast<size_t>(args.num_tokens);
  const size_t group = static_cast<size_t>(args.group_size);
  const bool sorts = !args.by_position;
  size_t at = 0;
  auto take = [&at](size_t bytes) {
    const size_t offset = at;
    at += (bytes + 255) / 256 * 256;
    return offset;
  };
  layout.spans = take(16 * streams);
  layout.sort_begin = take(sorts ? sizeof(int32_t) * streams : 0);
  layout.sort_end = take(sorts ? sizeof(int32_t) * streams : 0);
  for (int i = 0; i < 2; ++i) {
    layout.keys[i] = take(sorts ? sizeof(uint32_t) * tokens : 0);
    layout.slots[i] = take(sorts ? sizeof(int32_t) * tokens : 0);
  }
  layout.sort_temp = take(sorts ? kDBudgetSortTempBytes : 0);
  layout.gathered = take(sorts ? sizeof(float) * group * tokens : 0);
  layout.carries = take(sizeof(double) * group * (tokens / kDBudgetTileRanks + streams + 1));
  layout.kept_sums = take(sizeof(double) * (tokens / static_cast<size_t>(args.num_kv_heads) +
                                            static_cast<size_t>(args.num_seqs) + 1));
  layout.bytes = at;
  return layout;
}

// The workspace gpu::DBudgetCut needs for `args` (0 when there are no streams).
// For 8 sequences x 8 kv heads x 32K tokens and group size 4 about 67 MiB:
// mostly the sort's buffers (16 bytes a token) and the gathered rows (4 bytes
// a token and q head); by_position needs neither (about 3 MiB).
inline size_t DBudgetCutWorkspaceBytes(const DBudgetCutArgs& args) {
  return PlanDBudgetCut(args).bytes;
}

namespace gpu::internal {
// dbudget_cut.cu; gpu::DBudgetCut (dbudget_cut.h) validates, then calls it.
LaunchResult LaunchDBudgetCut(const DBudgetCutArgs& args, GpuStream stream);
}  // namespace gpu::internal

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_DBUDGET_CUT_ARGS_H_
