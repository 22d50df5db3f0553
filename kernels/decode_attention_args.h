// SPDX-License-Identifier: Apache-2.0
// File: kernels/decode_attention_args.h
//
// DecodeAttention: one query token per sequence against that sequence's paged
// KV of one layer, where every kv head (stream) has its own block table and
// length. Query head h reads kv head h / (num_q_heads / num_kv_heads) (GQA).
//
//   score_i = sm_scale * dot(q, k_i)                 over the stream's tokens i
//   out     = sum_i softmax(score)_i * v_i
//   lse     = ln(sum_i exp(score_i))                 natural log (base e; FlashInfer's
//                                                    wrappers return base 2 by default:
//                                                    multiply by log2(e) to merge with them)
//
// A stream of length 0 gives out = 0 and lse = -inf (FlashInfer's convention),
// so partial results over disjoint token sets merge as online softmax states.
//
// Split-KV, two divisions of the work, both read from the lengths on the device
// with a grid fixed by the shapes alone, so that one capture in a CUDA graph
// serves every later set of lengths:
// - even splits (num_splits): every stream is cut into `num_splits` contiguous,
//   page-aligned ranges of its own length, one block each;
// - balanced (balanced_blocks > 0): the streams are laid end to end and each of
//   `balanced_blocks` blocks reads an equal run of their pages, whatever the
//   streams' lengths (decode_attention_plan.h), so that streams of different
//   lengths leave no block working alone at the end.
// More than one range per stream computes a partial (out, lse) per range into
// the workspace, then merges them. Plain C++: .cu files include it.
#ifndef HEADPAGE_KERNELS_DECODE_ATTENTION_ARGS_H_
#define HEADPAGE_KERNELS_DECODE_ATTENTION_ARGS_H_

#include <cstddef>
#include <cstdint>

#include "core/paged_kv.h"
#include "kernels/gpu_launch.h"

namespace headpage {

// The largest GQA group (num_q_heads / num_kv_heads) the kernels hold in
// registers: every query head of a group shares one read of its kv head.
inline constexpr int32_t kDecodeMaxGroup = 8;
// Bounds num_splits (and so the workspace); far above what helps.
inline constexpr int32_t kDecodeMaxSplits = 1024;

// What the kernels read, passed to them by value. The fields only the host
// reads are in DecodeAttentionArgs below: added to this struct, they moved
// the attention kernel's parameters and cost it four registers, and with them
// a resident block per SM (8% at 8x32K on the H200).
struct DecodeAttentionKernelArgs {
  PagedKV cache;
  int32_t num_seqs = 0;
  int32_t num_q_heads = 0;   // a multiple of num_kv_heads, at most kDecodeMaxGroup times it
  int32_t num_kv_heads = 0;
  const void* q = nullptr;   // [num_seqs][num_q_heads][head_dim] of cache.dtype, 16-byte aligned
  // Block tables, CSR over streams, seq-major and kv-head-minor (BlockManager::
  // BlockTable's layout): stream s * num_kv_heads + h holds tokens 0..lens-1 in
  // pages page_ids[indptr[stream] ...].
  const int32_t* indptr = nullptr;    // [num_seqs * num_kv_heads + 1], from 0, ascending
  const int32_t* page_ids = nullptr;  // [num_page_ids]
  const int32_t* lens = nullptr;      // [num_seqs * num_kv_heads]
  float sm_scale = 0.0f;              // usually 1 / sqrt(head_dim)
  void* out = nullptr;                // [num_seqs][num_q_heads][head_dim] of cache.dtype
  float* lse = nullptr;               // [num_seqs][num_q_heads], natural log; null: not wanted
  // KV splits per stream, chosen on the host (DecodeAttentionSplits) and fixed
  // for a CUDA graph; 1 writes `out` directly and needs no workspace.
  int32_t num_splits = 1;
  // > 0: the balanced division over this many blocks (DecodeAttentionBalancedBlocks
  // fills the GPU once), with num_splits left at 1. (It fills the padding before
  // `workspace`: the kernels' parameters keep their layout.)
  int32_t balanced_blocks = 0;
  void* workspace = nullptr;          // 16-byte aligned, DecodeAttentionWorkspaceBytes(...) long
  size_t workspace_bytes = 0;
};

// A decode step's new tokens, one per sequence, which the op writes into the
// cache before reading it: stream (seq, kv head) of length len = lens[stream]
// > 0 gets the rows keys[seq][kv head] and values[seq][kv head] in the slot of
// its token len - 1 (where the block manager's Reserve put the step's token),
// and positions[seq] beside them; fp8 pages store the rows quantized with
// their scales, as WriteKV does. A sequence whose position is negative has no
// new token (a row that reserved nothing, as WriteKV's slot -1): nothing of it
// is written. This is WriteKV over Reserve's slot mapping, done by the pass's
// block that reads the stream's last token, before it reads it: a serving step
// saves a kernel and its boundary per layer. No other stream of the batch may
// hold that slot (Reserve's copy-on-write makes a tail page private). A
// checked table that faults writes nothing, the pool included. Passed to the
// kernels as a parameter of its own, after the fault word
// (DecodeAttentionKernelArgs' layout is register-sensitive).
struct DecodeNewTokens {
  const void* keys = nullptr;          // [num_seqs][num_kv_heads][head_dim] of cache.dtype,
                                       // 16-byte aligned; null: no new tokens
  const void* values = nullptr;        // the same shape
  const int32_t* positions = nullptr;  // [num_seqs]; negative: that seq has none
};

struct DecodeAttentionArgs : DecodeAttentionKernelArgs {
  int32_t num_page_ids = 0;  // entries of page_ids: indptr must end inside it
  DecodeNewTokens new_tokens;
  // Optional, device memory, one word: the GPU checks the block tables on the
  // device first (kernels/table_checks.h: indptr, lens, page ids against the
  // lengths above and the pool) and records the first fault here; then the op
  // writes nothing. Read it with gpu::ReadTableFault. Null: the tables are
  // trusted (the eviction engine and the runtime build them from the block
  // manager) and are not checked on the GPU. The CPU reference always checks.
  uint64_t* fault = nullptr;
};

// Workspace bytes the partial results of `num_splits` > 1 need; 0 for one split.
size_t DecodeAttentionWorkspaceBytes(int32_t num_seqs, int32_t num_q_heads, int32_t head_dim,
                                     int32_t num_splits);

// Workspace bytes of the balanced division over `balanced_blocks` blocks: a
// partial per piece (at most num_seqs * num_kv_heads + balanced_blocks - 1 of
// them) and query head of its group; 0 when balanced_blocks is 0.
size_t DecodeAttentionBalancedWorkspaceBytes(int32_t num_seqs, int32_t num_q_heads,
                                             int32_t num_kv_heads, int32_t head_dim,
                                             int32_t balanced_blocks);

// The workspace `args` needs, whichever division they ask for.
size_t DecodeAttentionWorkspaceBytes(const DecodeAttentionKernelArgs& args);

// Blocks of the balanced pass over `cache` that are resident on one
// multiprocessor at once, as the kernels' registers and shared memory allow:
// two for 16-bit pages (one at head_dim 256, whose stages take 128 KiB) and
// f32 pages, four for fp8 pages (two at head_dim 256). A gpu test holds it to
// CUDA's occupancy calculator (gpu::internal::DecodeAttentionResidentBlocks).
int32_t DecodeAttentionResidentBlocks(const PagedKV& cache);

// The balanced division's block count: one wave, every resident block of
// `num_sms` multiprocessors, so that all of them read the whole time.
int32_t DecodeAttentionBalancedBlocks(const PagedKV& cache, int32_t num_sms);

// A split count for streams of at most `max_len` tokens: enough (stream, split)
// blocks to fill `num_sms` multiprocessors a few times over, in whole waves of
// `resident_blocks` blocks per multiprocessor (DecodeAttentionResidentBlocks
// of the cache; 2, the default, is the 16-bit pass's), so that a few long
// streams do not leave the GPU idle; fewer waves where splits would fall under
// 512 tokens (the merge and each block's start would cost more than they
// save), and where even one wave would, one wave of splits of at least 256.
// `min_len`, where the caller knows it (0: unknown), is the shortest stream's
// length: streams within an eighth of one length take one wave. A min_len
// outside (0, max_len] counts as unknown.
int32_t DecodeAttentionSplits(int64_t max_len, int32_t num_streams, int32_t num_sms,
                              int32_t resident_blocks = 2, int64_t min_len = 0);

namespace gpu::internal {
// decode_attention.cu; gpu::DecodeAttention (decode_attention.h) validates, then calls it.
LaunchResult LaunchDecodeAttention(const DecodeAttentionArgs& args, GpuStream stream);
// The blocks of the pass `args` would launch that one SM holds at once, from
// CUDA's occupancy calculator (the gpu test holds DecodeAttentionResidentBlocks
// to it).
LaunchResult DecodeAttentionResidentBlocks(const DecodeAttentionArgs& args, int* blocks_per_sm);
}  // namespace gpu::internal

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_DECODE_ATTENTION_ARGS_H_
