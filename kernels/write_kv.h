// SPDX-License-Identifier: Apache-2.0
// File: kernels/write_kv.h
//
// WriteKV: see write_kv_args.h. Slot mappings come from BlockManager::Reserve, whose
// layout [token][layer][kv_head] gives one layer's slots with a token stride.
#ifndef HEADPAGE_KERNELS_WRITE_KV_H_
#define HEADPAGE_KERNELS_WRITE_KV_H_

#include "absl/status/status.h"
#include "kernels/write_kv_args.h"

namespace headpage {

// Checks shapes and pointers (not the contents of device arrays); shared by
// both backends. InvalidArgument or Unimplemented (head_dim) with the reason.
[[nodiscard]] absl::Status Validate(const WriteKVArgs& args);

namespace ref {
// CPU reference. Also checks every slot id is -1 or inside the cache (OutOfRange,
// writing nothing, otherwise). Host pointers.
[[nodiscard]] absl::Status WriteKV(const WriteKVArgs& args);
}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace gpu {
// CUDA. Device pointers; enqueued on `stream` with no host synchronization, so
// it can be captured in a CUDA graph. The slot ids live on the device and are
// not checked on the host: one outside [-1, num_slots) is skipped, never
// written through. Slots must be distinct (BlockManager's are): two tokens
// written to one slot would interleave their 16-byte pieces, where ref:: keeps
// the last.
[[nodiscard]] absl::Status WriteKV(const WriteKVArgs& args, GpuStream stream);
}  // namespace gpu
#endif

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_WRITE_KV_H_
