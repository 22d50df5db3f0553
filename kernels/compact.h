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

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_COMPACT_H_
