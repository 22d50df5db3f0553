// SPDX-License-Identifier: Apache-2.0
// File: kernels/window_scores_args.h
//
// WindowScores is SnapKV's scorer run straight on the paged keys of one layer:
// for every stream (sequence, kv head), the attention that the sequence's
// observation window (its last W queries) pays each key, softmax per query row
// over the keys that row may see (position <= the query's position), summed
// over the rows of each q head, reduced over the q heads of the GQA group (mean
// or max), then pooled over the keys before the window. It is
// policy::SnapKVScores (policy/scores.h) on every stream at once,
// without gathering the keys first. Plain C++: .cu files include it.
//
// Pooling (stride 1, padding kernel_size / 2, PyTorch semantics: avg counts the
// zero padding, max pads with -inf) covers only the keys before the window,
// those at positions below the window's lowest query position; a key at or
// after it keeps its unpooled score and acts as padding for its neighbours.
// Positions ascend along a stream (the block manager keeps slot order =
// position order), so those keys are a slot prefix, exactly SnapKV's L - W
// prefix columns.
#ifndef HEADPAGE_KERNELS_WINDOW_SCORES_ARGS_H_
#define HEADPAGE_KERNELS_WINDOW_SCORES_ARGS_H_

#include <cstddef>
#include <cstdint>

#include "core/paged_kv.h"
#include "kernels/gpu_launch.h"
#include "policy/types.h"

namespace headpage {

inline constexpr int32_t kMaxScoreWindow = 128;

// Which tensor-core instruction gpu::WindowScores computes the logits of f16
// and bf16 keys with (fp8 pages count as their model dtype). kAuto takes
// Hopper's warpgroup MMA (wgmma) where the library was built for sm_90a (90
// among CMAKE_CUDA_ARCHITECTURES) and the device is of compute capability
// 9.0, the warp MMA (mma.sync, sm_80 and newer) elsewhere, and FMAs for f32
// keys; kWarpMma the warp MMA (FMAs for f32); kWarpgroupMma the warpgroup MMA,
// an error for f32 keys (InvalidArgument) and where it cannot run
// (FailedPrecondition, gpu::WindowScoresWarpgroupMmaRuns()). The backends'
// scores agree to float rounding (the gpu tests compare them); tests and
// benchmarks pin one.
enum class WindowScoresBackend : uint8_t { kAuto, kWarpMma, kWarpgroupMma };

struct WindowScoresArgs {
  PagedKV cache;
  int32_t num_seqs = 0;
  int32_t num_q_heads = 0;   // a multiple of num_kv_heads
  int32_t num_kv_heads = 0;
  int32_t window = 0;        // W query rows per sequence, 1..kMaxScoreWindow
  const void* queries = nullptr;             // [num_seqs][num_q_heads][window][head_dim] of cache.dtype
  const int32_t* query_positions = nullptr;  // [num_seqs][window], any order
  // CSR block tables over the num_seqs * num_kv_heads streams, seq-major,
  // kv-head-minor (BlockManager::BlockTable's layout).
  const int32_t* indptr = nullptr;    // [streams + 1] into page_ids
  const int32_t* page_ids = nullptr;   // [num_page_ids]
  int32_t num_page_ids = 0;            // indptr from 0, ascending, ending inside it
  const int32_t* lens = nullptr;      // [streams], each in [0, max_len]
  // Stream i's scores go to scores[score_offsets[i] + j], j < lens[i]; nothing
  // else of `scores` is written. score_offsets[i] + lens[i] <= score_offsets[i + 1]
  // <= num_scores (the prefix sums of lens are the tight choice).
  const int32_t* score_offsets = nullptr;  // [streams + 1]
  int32_t max_len = 0;     // host-side bound of lens: sizes the grid and the workspace
  int32_t num_scores = 0;  // elements of `scores`
  // The stream count the key chunks are sized for (0: num_seqs * num_kv_heads).
  // A score's last bits depend on the chunks its stream is cut into (their
  // softmax statistics are merged), so a tensor-parallel member passes its
  // group's total to score its streams bit for bit as one call over every
  // head would.
  int32_t plan_streams = 0;
  // Likewise the stream length they are sized for, when longer than max_len:
  // a member's group's longest stream (0: max_len).
  int32_t plan_max_len = 0;
  float sm_scale = 0.0f;   // logit = (q . k) * sm_scale; SnapKV uses 1 / sqrt(head_dim)
  int32_t kernel_size = 7;  // odd; 1 disables pooling
  policy::Pooling pooling = policy::Pooling::kMax;
  policy::GroupReduce reduce = policy::GroupReduce::kMean;
  float* scores = nullptr;  // [num_scores]
  // Adds each stream's scores into `scores` instead of overwriting them: H2O's
  // attention summed over chunks of prompt queries, or a decode step's
  // attention folded into a running total.
  bool accumulate = false;
  WindowScoresBackend backend = WindowScoresBackend::kAuto;  // gpu:: only
  // gpu:: only (ref:: ignores them): at least WindowScoresWorkspaceBytes(args)
  // bytes of device memory, 16-byte aligned, contents irrelevant.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// How gpu:: splits the work; a pure function of the host-side sizes, so the
// workspace can be sized before the launch. The query rows of a stream's group
// form row groups of whole q heads, each head padded to a multiple of 16 rows
// (the tensor-core tile), at most kScoreRowsPerGroup rows per group; a stream's
// keys are cut into num_splits chunks of `chunk` keys.
inline constexpr int32_t kScoreRowsPerGroup = 128;
inline constexpr int32_t kScoreTileKeys = 64;

struct WindowScoresPlan {
  int32_t num_streams = 0;
  int32_t group_size = 0;       // q heads per kv head
  int32_t padded_window = 0;    // window rounded up to 16
  int32_t heads_per_group = 0;  // q heads per row group
  int32_t row_groups = 0;
  int32_t chunk = 0;            // keys per split, a multiple of kScoreTileKeys
  int32_t num_splits = 0;
  // Workspace sections, in bytes from its start.
  size_t stats_offset = 0;      // [streams][row_groups][num_splits][128] float2 (max, sum)
  size_t merged_offset = 0;     // [streams][row_groups][128] float
  size_t partial_offset = 0;    // [row_groups][num_scores] float
  size_t workspace_bytes = 0;
};

// Meaningful only for arguments that pass Validate(); zeros otherwise.
inline WindowScoresPlan PlanWindowScores(const WindowScoresArgs& args) {
  WindowScoresPlan plan;
  if (args.num_seqs <= 0 || args.num_kv_heads <= 0 || args.num_q_heads < args.num_kv_heads ||
      args.window < 1 || args.window > kMaxScoreWindow || args.max_len <= 0 ||
      args.num_scores < 0 || args.plan_streams < 0 || args.plan_max_len < 0) {
    return plan;
  }
  plan.num_streams = args.num_seqs * args.num_kv_heads;
  plan.group_size = args.num_q_heads / args.num_kv_heads;
  plan.padded_window = (args.window + 15) / 16 * 16;
  const int32_t fit = kScoreRowsPerGroup / plan.padded_window;
  plan.heads_per_group = fit < plan.group_size ? fit : plan.group_size;
  plan.row_groups = (plan.group_size + plan.heads_per_group - 1) / plan.heads_per_group;
  // About 2048 blocks over the longest streams (a few waves on any current
  // GPU), with chunks of 256..1024 keys: shorter ones multiply the blocks'
  // fixed cost (each loads its 32 KiB of queries), longer ones leave SMs idle.
  const int64_t sized_for = args.plan_streams > 0 ? args.plan_streams : plan.num_streams;
  const int64_t sized_len = args.plan_max_len > args.max_len ? args.plan_max_len : args.max_len;
  const int64_t work = sized_len * sized_for * plan.row_groups;
  int64_t tiles = (work + 2048 * kScoreTileKeys - 1) / (2048 * kScoreTileKeys);
  tiles = tiles < 4 ? 4 : (tiles > 16 ? 16 : tiles);
  const int64_t len_tiles = (sized_len + kScoreTileKeys - 1) / kScoreTileKeys;
  if (tiles > len_tiles) tiles = len_tiles;
  plan.chunk = static_cast<int32_t>(tiles) * kScoreTileKeys;
  plan.num_splits = (args.max_len + plan.chunk - 1) / plan.chunk;

  auto align = [](size_t bytes) { return (bytes + 255) / 256 * 256; };
  const size_t row_sets = static_cast<size_t>(plan.num_streams) * plan.row_groups;
  plan.stats_offset = 0;
  plan.merged_offset =
      align(row_sets * plan.num_splits * kScoreRowsPerGroup * 2 * sizeof(float));
  plan.partial_offset = plan.merged_offset + align(row_sets * kScoreRowsPerGroup * sizeof(float));
  plan.workspace_bytes = plan.partial_offset +
                         align(static_cast<size_t>(plan.row_groups) * args.num_scores * sizeof(float));
  return plan;
}

// The workspace gpu::WindowScores needs for `args` (0 when there is nothing to do).
inline size_t WindowScoresWorkspaceBytes(const WindowScoresArgs& args) {
  return PlanWindowScores(args).workspace_bytes;
}

namespace gpu::internal {
// window_scores.cu; gpu::WindowScores (window_scores.h) validates, resolves
// args.backend to kWarpMma or (f16/bf16 keys where WarpgroupMmaRuns) to
// kWarpgroupMma, then calls it.
LaunchResult LaunchWindowScores(const WindowScoresArgs& args, GpuStream stream);
// window_scores.cu: *runs = whether the warpgroup MMA's instances are built and
// the current device (compute capability 9.0) runs them; kCudaError when the
// device cannot be queried.
LaunchResult WarpgroupMmaRuns(bool* runs);
}  // namespace gpu::internal

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_WINDOW_SCORES_ARGS_H_
