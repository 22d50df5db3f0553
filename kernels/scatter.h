// SPDX-License-Identifier: Apache-2.0
// File: kernels/scatter.h
//
// ScatterInt32 (scatter_args.h): dst[index] = value for every pair.
#ifndef HEADPAGE_KERNELS_SCATTER_H_
#define HEADPAGE_KERNELS_SCATTER_H_

#include "absl/status/status.h"
#include "kernels/scatter_args.h"

namespace headpage {

// InvalidArgument for a negative count or size, or a null array.
[[nodiscard]] absl::Status Validate(const ScatterInt32Args& args);

namespace ref {
// Host arrays; also OutOfRange for an index outside dst, before writing anything.
[[nodiscard]] absl::Status ScatterInt32(const ScatterInt32Args& args);
}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace gpu {
// Device arrays, enqueued on `stream`. The caller guarantees the indices (the
// device cannot report one out of range); pairs should not repeat an index.
[[nodiscard]] absl::Status ScatterInt32(const ScatterInt32Args& args, GpuStream stream);
}  // namespace gpu
#endif

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_SCATTER_H_
