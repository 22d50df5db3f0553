// SPDX-License-Identifier: Apache-2.0
// File: kernels/compact.h
//
// Compact: see compact_args.h.
#ifndef HEADPAGE_KERNELS_COMPACT_H_
#define HEADPAGE_KERNELS_COMPACT_H_

#include "absl/status/status.h"
#include "kernels/compact_args.h"

namespace headpage {

// Shapes and pointers; shared by both backends.
[[nodiscard]] absl::Status Validate(const CompactArgs& args);

namespace ref {
// CPU reference. Before writing anything it also checks the plan's contents
// (host pointers): page ids inside the cache, block tables long enough for their
// lengths, keep sets strictly ascending and inside [0, src_len), in-place rows
// whose destination is a prefix of their source. InvalidArgument otherwise.
[[nodiscard]] absl::Status Compact(const CompactArgs& args);
}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace gpu {
// CUDA. Device pointers; enqueued on `stream` with no host synchronization
// (CUDA-graph capturable). The plan lives on the device and is not checked on
// the host: it must satisfy what ref::Compact checks, and more, which only the
// plan's maker can know: fresh rows' destination pages are distinct and
// disjoint from every source page of the launch, and no other row of the
// launch reads an in-place row's pages (BlockManager::Evict's plans are so by
// construction: it compacts in place only streams that own their pages alone).
// Fresh rows' survivors are spread evenly over the GPU, whatever each row
// keeps; an in-place row is copied by one block in ascending chunks.
[[nodiscard]] absl::Status Compact(const CompactArgs& args, GpuStream stream);
}  // namespace gpu
#endif

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_COMPACT_H_
