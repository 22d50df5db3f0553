// SPDX-License-Identifier: Apache-2.0
// File: kernels/token_scores.h
//
// TokenScores: dense positions and per-token scores of paged streams; and
// MeanOverHeads, one shared score per token for a layer's streams
// (token_scores_args.h).
#ifndef HEADPAGE_KERNELS_TOKEN_SCORES_H_
#define HEADPAGE_KERNELS_TOKEN_SCORES_H_

#include "absl/status/status.h"
#include "kernels/token_scores_args.h"

namespace headpage {

// InvalidArgument for a bad cache view, negative sizes, null arrays, an unknown
// score kind, or offsets that do not fit num_tokens (the offsets are checked
// when they are host memory, by ref::).
[[nodiscard]] absl::Status Validate(const TokenScoresArgs& args);

// InvalidArgument for negative sizes, a null array, max_len over the grid's
// bound (kMaxTokenScoresLen).
[[nodiscard]] absl::Status Validate(const MeanOverHeadsArgs& args);

namespace ref {
// Host arrays and a host cache; also checks every block table and offset.
[[nodiscard]] absl::Status TokenScores(const TokenScoresArgs& args);
// Host arrays; also checks the offsets and that a group's streams are equally
// long (FailedPrecondition otherwise: they cannot share one score per token).
[[nodiscard]] absl::Status MeanOverHeads(const MeanOverHeadsArgs& args);
}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace gpu {
// Device arrays and a device cache; enqueued on `stream`.
[[nodiscard]] absl::Status TokenScores(const TokenScoresArgs& args, GpuStream stream);
// Device arrays; the caller has checked that a group's lengths are equal (the
// GPU reads the first stream's).
[[nodiscard]] absl::Status MeanOverHeads(const MeanOverHeadsArgs& args, GpuStream stream);
}  // namespace gpu
#endif

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_TOKEN_SCORES_H_
