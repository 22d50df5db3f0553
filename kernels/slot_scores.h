// SPDX-License-Identifier: Apache-2.0
// File: kernels/slot_scores.h
//
// SlotScores: per-token scores between the per-slot store and dense arrays
// (slot_scores_args.h).
#ifndef HEADPAGE_KERNELS_SLOT_SCORES_H_
#define HEADPAGE_KERNELS_SLOT_SCORES_H_

#include "absl/status/status.h"
#include "kernels/slot_scores_args.h"

namespace headpage {

// InvalidArgument for negative sizes, a page_size or num_pages below 1, an
// unknown op, or a null array the op reads or writes (scored may be null).
[[nodiscard]] absl::Status Validate(const SlotScoresArgs& args);

namespace ref {
// Host arrays. Also checks, before writing anything, the block tables (page ids
// inside the pool, enough pages for each length), the lengths against max_len,
// the offsets against num_dense and scored against [0, length] (OutOfRange).
[[nodiscard]] absl::Status SlotScores(const SlotScoresArgs& args);
}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace gpu {
// Device arrays; enqueued on `stream` with no host synchronization. The
// contents are not checked: a length longer than its block table is clamped
// to it, and a scored count outside [0, length] is clamped into it.
[[nodiscard]] absl::Status SlotScores(const SlotScoresArgs& args, GpuStream stream);
}  // namespace gpu
#endif

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_SLOT_SCORES_H_
