// SPDX-License-Identifier: Apache-2.0
// File: kernels/dbudget_cut.h
//
// DBudgetCut: see dbudget_cut_args.h. Step 2 of the DBudgetKV policy
// (DESIGN.md, "Eviction") for one layer of a batch, on the device: its kept
// counts are Select's kTopB budgets.
//
// Semantics, exactly those of policy::DBudgetKept applied to each sequence's
// streams as one layer: the streams of a sequence must have equally many
// candidates, n; each stream's candidates are ordered least important first
// (score ascending, equal scores the higher slot first, the reverse of
// Select's tie rule; by_position: oldest first); with a the rows of the
// stream's q heads,
//   kept_sum[k] = sum over the sequence's (stream, q head) of
//                 sqrt(sum of a^2 over all but its k least important candidates),
//   base = kept_sum[0] / (num_kv_heads * group_size),
// the cut is the largest k in 1..n with (base - kept_sum[k] / heads) / base
// <= threshold, else 0, and kept[s] = n_s - cut. threshold 0, n == 0 or base
// <= 0 keep everything.
#ifndef HEADPAGE_KERNELS_DBUDGET_CUT_H_
#define HEADPAGE_KERNELS_DBUDGET_CUT_H_

#include "absl/status/status.h"
#include "kernels/dbudget_cut_args.h"

namespace headpage {

// Checks what the host can see: counts, group_size, num_tokens, threshold,
// pointers (not the contents of device arrays, nor the workspace, which only
// gpu:: needs); shared by both backends. InvalidArgument with the reason.
[[nodiscard]] absl::Status Validate(const DBudgetCutArgs& args);

namespace ref {
// CPU reference: policy::DBudgetKept on each sequence's streams. Host
// pointers. Also checks the arrays' contents, writing nothing on error:
// score_offsets non-decreasing from >= 0 up to num_tokens (else OutOfRange),
// and whatever the policy rejects (InvalidArgument naming the sequence):
// positions not strictly ascending, a NaN score, a non-finite attention value,
// streams of one sequence with different candidate counts.
[[nodiscard]] absl::Status DBudgetCut(const DBudgetCutArgs& args);
}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace gpu {
// CUDA. Device pointers; enqueued on `stream` with no host synchronization
// and no allocation, so it can be captured in a CUDA graph: four kernels and
// CUB's segmented radix sort (by_position: no sort; threshold 0: two small
// kernels, which only write the lengths).
// The sums are added in another order than the CPU's (fixed, so the result is
// deterministic): the cut equals the reference's except where a ratio lies
// within rounding of the threshold. Also checks the workspace
// (InvalidArgument). Array contents are not checked; bad ones give
// well-formed, memory-safe output with kept[s] in [protected, n_s]: offsets
// outside [0, num_tokens] are clamped to it and decreasing ones give empty
// streams; a sequence whose streams have different candidate counts keeps
// everything (the reference's error); positions that do not ascend give some
// split into sinks and candidates; a NaN score is ranked by its bits (sign
// clear: above +inf; set: below -inf); non-finite attention gives some cut.
[[nodiscard]] absl::Status DBudgetCut(const DBudgetCutArgs& args, GpuStream stream);
}  // namespace gpu
#endif

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_DBUDGET_CUT_H_
