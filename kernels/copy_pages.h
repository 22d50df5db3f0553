// SPDX-License-Identifier: Apache-2.0
// File: kernels/copy_pages.h
//
// CopyPages: see copy_pages_args.h.
#ifndef HEADPAGE_KERNELS_COPY_PAGES_H_
#define HEADPAGE_KERNELS_COPY_PAGES_H_

#include "absl/status/status.h"
#include "kernels/copy_pages_args.h"

namespace headpage {

[[nodiscard]] absl::Status Validate(const CopyPagesArgs& args);

namespace ref {
// CPU reference. Also checks (host pointers) that every id is inside the cache,
// that destinations are distinct and that no destination is also a source
// (InvalidArgument, copying nothing, otherwise).
[[nodiscard]] absl::Status CopyPages(const CopyPagesArgs& args);
}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace gpu {
// CUDA. Device pointers; enqueued on `stream` with no host synchronization.
// The page ids live on the device and are not checked on the host: a copy
// naming a page outside the cache is skipped, never written through; the
// caller guarantees what ref::CopyPages checks (BlockManager's plans do).
[[nodiscard]] absl::Status CopyPages(const CopyPagesArgs& args, GpuStream stream);
}  // namespace gpu
#endif

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_COPY_PAGES_H_
