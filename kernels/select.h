// SPDX-License-Identifier: Apache-2.0
// File: kernels/select.h
//
// Select: see select_args.h. Step 3 of an eviction policy (DESIGN.md,
// "Eviction") for one layer of a batch, on the device: the keep sets feed
// Compact, the kept counts go to BlockManager::Evict.
//
// Semantics, exactly those of policy::SelectKeepSet and policy::AdaKept:
//  - a stream's candidates are its unprotected slots; positions ascend, so the
//    sinks are a prefix and the recent window a suffix, and the candidates one
//    contiguous range;
//  - kTopB keeps the protected slots and the kept[s] - protected highest
//    candidates, ties to the lower slot;
//  - kAda, per sequence: B'_h = capacity - protected_h; the streams with
//    B'_h < candidates compete; kScaled ranks their candidates together
//    (ties by (stream, slot)), takes the top sum B'_h, and with c_h hits
//    keeps min(round_half_even(c_h (1 - alpha) + floor(alpha B'_h)) +
//    protected_h, length_h) (in double); kProtectTop keeps each stream's top
//    floor(alpha B'_h), then the top sum (B'_h - floor(alpha B'_h)) of what
//    remains; the others keep everything. Then each stream's keep set is its
//    top (kept - protected) candidates as in kTopB.
#ifndef HEADPAGE_KERNELS_SELECT_H_
#define HEADPAGE_KERNELS_SELECT_H_

#include <cstddef>

#include "absl/status/status.h"
#include "kernels/select_args.h"

namespace headpage {

// Checks what the host can see: counts, pointers, mode, alpha, capacity,
// ctas_per_group (not the contents of device arrays); shared by both
// backends. InvalidArgument with the reason.
[[nodiscard]] absl::Status Validate(const SelectArgs& args);

namespace ref {
// CPU reference, written for clarity (it sorts). Host pointers. Also checks
// the arrays' contents, as the policy functions do (InvalidArgument, writing
// nothing): score_offsets non-decreasing from >= 0, positions strictly
// ascending, no NaN score, kTopB kept in [protected, length], kAda capacity at
// least every stream's protected count.
[[nodiscard]] absl::Status Select(const SelectArgs& args);
}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace gpu {
// CUDA. Device pointers; enqueued on `stream` with no host synchronization, so
// it can be captured in a CUDA graph; one kernel (kTopB: a cluster per
// stream; kAda: a cluster per sequence, the allocation and the keep sets).
// Array contents are not checked; bad ones give well-formed, memory-safe
// output: kTopB kept and the allocated counts are clamped to [protected,
// length], a capacity below a stream's protected count counts as B'_h = 0,
// offsets that decrease give empty streams (and overlapping ones that add up
// to more than 2^31 kAda candidates in a sequence keep the streams past that
// whole), positions that do not ascend give some split into sinks and
// candidates. A NaN score is ranked by its bits (sign clear: above +inf; set:
// below -inf), where the reference rejects it.
[[nodiscard]] absl::Status Select(const SelectArgs& args, GpuStream stream);
}  // namespace gpu
#endif

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_SELECT_H_
