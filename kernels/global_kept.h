// SPDX-License-Identifier: Apache-2.0
// File: kernels/global_kept.h
//
// GlobalKept: see global_kept_args.h. It is step 2 of an eviction policy
// (DESIGN.md, "Eviction") for the whole pool: the global allocator, used when
// the pool runs short of pages.
//
// The semantics are exactly those of policy::GlobalKept applied to
// StreamScores{the stream's scores, positions 0..n-1, Protection{sinks 0,
// recent n - candidate_counts[s]}}:
//  - each stream has a minimum, min_kept = max(protected, min(floor, n));
//  - when pages_to_free is 0, every stream keeps all n tokens;
//  - when the freeable pages, sum of P(n) - P(min_kept), are fewer than
//    pages_to_free, every stream drops to min_kept;
//  - otherwise tokens are evicted in one global order, stopping at the
//    shortest prefix of that order that frees pages_to_free pages
//    (P(t) = ceil(t / page_size)). The order is by lowest share first, where
//    share = score / (the sum of the stream's candidate scores, summed in
//    double). A stream whose candidates sum to 0 counts as uniform,
//    1 / candidates each. Equal shares go higher stream index first. A stream
//    stops being evicted once it reaches its min_kept.
#ifndef HEADPAGE_KERNELS_GLOBAL_KEPT_H_
#define HEADPAGE_KERNELS_GLOBAL_KEPT_H_

#include <cstddef>

#include "absl/status/status.h"
#include "kernels/global_kept_args.h"

namespace headpage {

// Checks what the host can see: the counts, page_size, pages_to_free and the
// pointers. It does not check the contents of the arrays. Both backends use
// it. It ignores the workspace, which only gpu:: uses. Returns
// InvalidArgument with the reason.
[[nodiscard]] absl::Status Validate(const GlobalKeptArgs& args);

// The device workspace that gpu::GlobalKept needs for these host-side sizes
// (num_streams, num_scores, page_size; not pages_to_free, so one workspace
// serves every target). This is about 8 bytes per score (the sorted scores
// and the sort's alternate buffer), plus 24 bytes per page the scores could
// fill (the page-freeing events, double-buffered for their sort), plus some
// bytes per stream. The answer depends on the current device because it
// includes CUB's scratch space. Returns 0 when there are no streams, when the
// sizes fail Validate() (the pointers need not be set yet, so a caller can lay
// out the workspace before its arrays exist), in a build without CUDA, or when CUDA cannot
// answer; in that last case ValidateGlobalKeptWorkspace reports CUDA's error.
size_t GlobalKeptWorkspaceBytes(const GlobalKeptArgs& args);

// Validate(), then the workspace, which only gpu:: needs and checks.
// Returns InvalidArgument when the workspace is null, misaligned, or smaller
// than GlobalKeptWorkspaceBytes(args), unless pages_to_free is 0 or there are
// no streams, where no workspace is needed. Returns Internal when CUDA cannot
// size the workspace.
[[nodiscard]] absl::Status ValidateGlobalKeptWorkspace(const GlobalKeptArgs& args);

namespace ref {
// The CPU reference: a thin adapter over policy::GlobalKept. Takes host
// pointers. Like the policy, it also checks the arrays' contents and writes
// nothing when they are wrong, returning InvalidArgument. Rejected contents:
// score_offsets that are not non-decreasing from >= 0 up to num_scores, a
// candidate count outside [0, length], a negative floor, a NaN score, and a
// negative or infinite candidate score.
[[nodiscard]] absl::Status GlobalKept(const GlobalKeptArgs& args);
}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace gpu {
// The CUDA version. Takes device pointers. Everything is enqueued on `stream`
// with no host synchronization, so it can be captured in a CUDA graph:
// - one kernel and a CUB scan that clamp the offsets;
// - one kernel that plans each stream and sums its candidate mass;
// - CUB's segmented radix sort of each evicting stream's candidates;
// - an exclusive scan;
// - one kernel that emits an event for each token that frees a page, and one
//   that pads the event list;
// - CUB's radix sort of the events;
// - two small kernels that find the threshold and apply it.
// When pages_to_free is 0, it is a single kernel instead.
//
// The mass is summed in slot order, as the policy does, and each share is the
// same IEEE double division. So the counts equal ref::'s bit for bit, ties
// included.
//
// It does not check the contents of the arrays. Bad contents still give
// in-bounds, well-formed counts:
// - offsets are clamped to [0, num_scores] and raised to the running
//   maximum of those before them, so that streams never overlap (a
//   decreasing pair gives an empty stream; with pages_to_free 0 each stream
//   just keeps its clamped length);
// - candidate counts are clamped to [0, length];
// - a negative floor counts as 0;
// - a NaN, negative or infinite score produces some order.
[[nodiscard]] absl::Status GlobalKept(const GlobalKeptArgs& args, GpuStream stream);
}  // namespace gpu
#endif

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_GLOBAL_KEPT_H_
