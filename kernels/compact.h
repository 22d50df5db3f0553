// SPDX-License-Identifier: Apache-2.0
// File: kernels/compact.h
//
// Compact: see compact_args.h.
#ifndef HEADPAGE_KERNELS_COMPACT_H_
#define HEADPAGE_KERNELS_COMPACT_H_

#include "absl/status/status.h"
#include "kernels/compact_args.h"
#include "kernels/table_checks.h"

namespace headpage {

// Shapes, pointers and array lengths; shared by both backends.
[[nodiscard]] absl::Status Validate(const CompactArgs& args);

// The OutOfRange status of a plan fault (ref::Compact's, or one that
// gpu::ReadTableFault read back after a checked gpu::Compact).
[[nodiscard]] absl::Status TableFaultStatus(const CompactArgs& args, const TableFault& fault);

namespace ref {
// CPU reference. Before writing anything it also checks the plan's contents
// (host pointers; table_checks.h): every indptr from 0, ascending and inside
// its array, page ids inside the cache, block tables long enough for their
// lengths, keep sets strictly ascending and inside [0, src_len), in-place rows
// whose destination is a prefix of their source. OutOfRange otherwise.
[[nodiscard]] absl::Status Compact(const CompactArgs& args);
}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace gpu {
// CUDA. Device pointers; enqueued on `stream` with no host synchronization
// (CUDA-graph capturable). The plan lives on the device. With args.fault set,
// it is checked there first, as ref::Compact checks it, and a fault moves
// nothing (the caller reads it with gpu::ReadTableFault); without, it is
// trusted. Either way it must satisfy more, which only the
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
