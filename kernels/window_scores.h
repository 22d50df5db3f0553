// SPDX-License-Identifier: Apache-2.0
// File: kernels/window_scores.h
//
// WindowScores: SnapKV scores of every key of every stream of one layer, read
// straight from the pool; see window_scores_args.h for the definition. A query
// row that sees no key contributes nothing; a stream of length 0 gets no score.
#ifndef HEADPAGE_KERNELS_WINDOW_SCORES_H_
#define HEADPAGE_KERNELS_WINDOW_SCORES_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/window_scores_args.h"

namespace headpage {

// Checks shapes, options and pointers (not the contents of device arrays);
// shared by both backends. InvalidArgument, or Unimplemented (head_dim), with
// the reason. Ignores the workspace, which only gpu:: uses.
[[nodiscard]] absl::Status Validate(const WindowScoresArgs& args);

// InvalidArgument when the workspace is null or smaller than
// WindowScoresWorkspaceBytes(args) while there is work to do. gpu:: checks it
// after Validate().
[[nodiscard]] absl::Status ValidateWindowScoresWorkspace(const WindowScoresArgs& args);

namespace ref {
// CPU reference, in double precision (the result rounded to float once). Also
// checks the block tables, lengths and score offsets (OutOfRange, writing
// nothing, otherwise). Host pointers.
[[nodiscard]] absl::Status WindowScores(const WindowScoresArgs& args);
}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace gpu {
// CUDA. Device pointers; four launches on `stream` (row statistics per key
// chunk, their merge, the scores, the pooling), no host synchronization, so it
// can be captured in a CUDA graph. The device arrays are not checked: lengths
// above max_len are cut there, and block tables must be valid. With backend
// kWarpgroupMma: InvalidArgument for f32 keys, FailedPrecondition where
// WindowScoresWarpgroupMmaRuns() is false (even with nothing to do).
[[nodiscard]] absl::Status WindowScores(const WindowScoresArgs& args, GpuStream stream);

// Whether WindowScoresBackend::kWarpgroupMma runs on the current device: this
// library has the warpgroup MMA's instances (90 among its CUDA architectures)
// and the device is of compute capability 9.0. Internal when the device cannot
// be queried.
[[nodiscard]] absl::StatusOr<bool> WindowScoresWarpgroupMmaRuns();
}  // namespace gpu
#endif

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_WINDOW_SCORES_H_
