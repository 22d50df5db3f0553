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
// Split-KV: the GPU cuts every stream into `num_splits` contiguous, page-aligned
// ranges sized from that stream's own length (read on the device), computes a
// partial (out, lse) per range into the workspace, then merges them. The grid
// depends only on num_seqs, num_kv_heads and num_splits, so one capture in a
// CUDA graph serves every later set of lengths. Plain C++: .cu files include it.
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
  void* workspace = nullptr;          // 16-byte aligned, DecodeAttentionWorkspaceBytes(...) long
  size_t workspace_bytes = 0;
};

struct DecodeAttentionArgs : DecodeAttentionKernelArgs {
  int32_t num_page_ids = 0;  // entries of page_ids: indptr must end inside it
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

// A split count for streams of at most `max_len` tokens: enough (stream, split)
// blocks to fill `num_sms` multiprocessors a few times over, so that a few long
// streams do not leave the GPU idle, but no split shorter than a few hundred
// tokens, where the merge and each block's start would cost more than they save.
int32_t DecodeAttentionSplits(int64_t max_len, int32_t num_streams, int32_t num_sms);

namespace gpu::internal {
// decode_attention.cu; gpu::DecodeAttention (decode_attention.h) validates, then calls it.
LaunchResult LaunchDecodeAttention(const DecodeAttentionArgs& args, GpuStream stream);
}  // namespace gpu::internal

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_DECODE_ATTENTION_ARGS_H_
