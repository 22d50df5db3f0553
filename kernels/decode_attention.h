// SPDX-License-Identifier: Apache-2.0
// File: kernels/decode_attention.h
//
// DecodeAttention: see decode_attention_args.h. Block tables come from
// BlockManager::BlockTable(layer, seqs).
#ifndef HEADPAGE_KERNELS_DECODE_ATTENTION_H_
#define HEADPAGE_KERNELS_DECODE_ATTENTION_H_

#include "absl/status/status.h"
#include "kernels/decode_attention_args.h"
#include "kernels/table_checks.h"

namespace headpage {

// Checks shapes, pointers, lengths, alignment and the workspace size (not the
// contents of the arrays); shared by both backends. InvalidArgument or
// Unimplemented (head_dim) with the reason.
[[nodiscard]] absl::Status Validate(const DecodeAttentionArgs& args);

// The OutOfRange status of a block-table fault (ref::DecodeAttention's, or one
// that gpu::ReadTableFault read back after a checked gpu::DecodeAttention).
[[nodiscard]] absl::Status TableFaultStatus(const DecodeAttentionArgs& args,
                                            const TableFault& fault);

// With args.new_tokens (DecodeNewTokens, decode_attention_args.h) both
// backends first write the step's tokens into the cache, as WriteKV would.

namespace ref {
// CPU reference, the oracle: float accumulation, two-pass softmax, one stream at
// a time, whatever num_splits says (the workspace is not touched). Also checks
// the block tables (table_checks.h; OutOfRange, writing nothing, for an indptr
// past page_ids, a page id outside the cache or a stream longer than its
// pages). Host pointers.
[[nodiscard]] absl::Status DecodeAttention(const DecodeAttentionArgs& args);
}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace gpu {
// CUDA. Device pointers; enqueued on `stream` with no host synchronization or
// allocation, so it can be captured in a CUDA graph. The block tables and
// lengths live on the device and are read there. With args.fault set, they
// are checked there first, as the CPU reference checks them, and a fault
// leaves out and lse (and, with new tokens, the pool) unwritten (the caller
// reads it with gpu::ReadTableFault); without, they are trusted.
[[nodiscard]] absl::Status DecodeAttention(const DecodeAttentionArgs& args, GpuStream stream);
}  // namespace gpu
#endif

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_DECODE_ATTENTION_H_
