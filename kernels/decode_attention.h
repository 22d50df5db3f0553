// SPDX-License-Identifier: Apache-2.0
// File: kernels/decode_attention.h
//
// DecodeAttention: see decode_attention_args.h. Block tables come from
// BlockManager::BlockTable(layer, seqs).
#ifndef HEADPAGE_KERNELS_DECODE_ATTENTION_H_
#define HEADPAGE_KERNELS_DECODE_ATTENTION_H_

#include "absl/status/status.h"
#include "kernels/decode_attention_args.h"

namespace headpage {

// Checks shapes, pointers, alignment and the workspace size (not the contents of
// device arrays); shared by both backends. InvalidArgument or Unimplemented
// (head_dim) with the reason.
[[nodiscard]] absl::Status Validate(const DecodeAttentionArgs& args);

namespace ref {
// CPU reference, the oracle: float accumulation, two-pass softmax, one stream at
// a time, whatever num_splits says (the workspace is not touched). Also checks
// the block tables (OutOfRange, writing nothing, for a page id outside the cache
// or a stream longer than its pages). Host pointers.
[[nodiscard]] absl::Status DecodeAttention(const DecodeAttentionArgs& args);
}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace gpu {
// CUDA. Device pointers; enqueued on `stream` with no host synchronization or
// allocation, so it can be captured in a CUDA graph. The block tables and
// lengths live on the device and are read there: a page id outside the cache is
// read as zeros, never dereferenced.
[[nodiscard]] absl::Status DecodeAttention(const DecodeAttentionArgs& args, GpuStream stream);
}  // namespace gpu
#endif

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_DECODE_ATTENTION_H_
