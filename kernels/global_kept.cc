// SPDX-License-Identifier: Apache-2.0
#include "kernels/global_kept.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "core/status.h"
#include "kernels/gpu_status.h"
#include "kernels/validate_common.h"
#include "policy/budget.h"
#include "policy/stream_scores.h"

namespace headpage {
namespace {

// The most events gpu:: makes room for: a stream of n tokens holds at most
// ceil(n / page_size) <= floor(n / page_size) + 1 pages. Summed over the
// streams that is at most num_scores / page_size + num_streams.
int64_t EventCapacity(const GlobalKeptArgs& args) {
  return int64_t{args.num_scores} / args.page_size + args.num_streams;
}

// The checks of the host-side sizes: what the workspace's size depends on.
absl::Status ValidateSizes(const GlobalKeptArgs& args) {
  if (args.num_streams < 0 || args.num_scores < 0) {
    return absl::InvalidArgumentError(absl::StrCat("GlobalKept: num_streams ", args.num_streams,
                                                   ", num_scores ", args.num_scores));
  }
  // score_offsets has num_streams + 1 entries, each an int32.
  if (args.num_streams == std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError("GlobalKept: num_streams + 1 overflows int32");
  }
  if (args.page_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("GlobalKept: page_size must be positive, got ", args.page_size));
  }
  if (args.pages_to_free < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("GlobalKept: pages_to_free must be >= 0, got ", args.pages_to_free));
  }
  // gpu:: sorts the events with int32 indices: one per page the scores could fill.
  if (EventCapacity(args) >= std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GlobalKept: ", args.num_scores, " scores in pages of ", args.page_size, " over ",
        args.num_streams, " streams may fill more than int32 pages"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Validate(const GlobalKeptArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(ValidateSizes(args));
  if (args.num_streams > 0 &&
      (args.score_offsets == nullptr || args.candidate_counts == nullptr ||
       args.floors == nullptr || args.kept_counts == nullptr ||
       (args.num_scores > 0 && args.scores == nullptr))) {
    return absl::InvalidArgumentError(
        "GlobalKept: score_offsets, scores, candidate_counts, floors or kept_counts is null");
  }
  return absl::OkStatus();
}

size_t GlobalKeptWorkspaceBytes(const GlobalKeptArgs& args) {
  // The sizes alone: a caller lays out the workspace before its arrays exist.
  if (!ValidateSizes(args).ok() || args.num_streams == 0) return 0;
#if HEADPAGE_HAVE_CUDA
  size_t bytes = 0;
  if (!gpu::internal::GlobalKeptWorkspaceBytesOnDevice(args, &bytes).ok()) return 0;
  return bytes;
#else
  return 0;
#endif
}

absl::Status ValidateGlobalKeptWorkspace(const GlobalKeptArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  // pages_to_free 0 runs one kernel that keeps everything and needs no workspace.
  if (args.num_streams == 0 || args.pages_to_free == 0) return absl::OkStatus();
#if HEADPAGE_HAVE_CUDA
  size_t needed = 0;
  HEADPAGE_RETURN_IF_ERROR(
      LaunchStatus(gpu::internal::GlobalKeptWorkspaceBytesOnDevice(args, &needed), "GlobalKept",
                   DType::kF32, 0));
#else
  const size_t needed = 0;
#endif
  if (args.workspace == nullptr || args.workspace_bytes < needed) {
    return absl::InvalidArgumentError(
        absl::StrCat("GlobalKept: the workspace needs ", needed, " bytes, got ",
                     args.workspace_bytes, args.workspace == nullptr ? " at null" : ""));
  }
  if (!IsKernelAligned(args.workspace)) {
    return absl::InvalidArgumentError(
        absl::StrCat("GlobalKept: the workspace must be ", kKernelAlignment, "-byte aligned"));
  }
  return absl::OkStatus();
}

namespace ref {

// The StreamScores that the policy takes for each stream: positions 0..n-1,
// with no sinks and the slots after the candidates as the recent window. The
// arrays are checked before anything is written. The policy checks the scores
// and floors itself.
absl::Status GlobalKept(const GlobalKeptArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  const int32_t num_streams = args.num_streams;
  int32_t longest = 0;
  for (int32_t s = 0; s < num_streams; ++s) {
    const int32_t begin = args.score_offsets[s], end = args.score_offsets[s + 1];
    if (begin < 0 || end < begin || end > args.num_scores) {
      return absl::InvalidArgumentError(absl::StrCat(
          "GlobalKept: score_offsets[", s, "..", s + 1, "] = ", begin, ", ", end,
          " are not non-decreasing from 0 up to num_scores ", args.num_scores));
    }
    const int32_t n = end - begin;
    if (args.candidate_counts[s] < 0 || args.candidate_counts[s] > n) {
      return absl::InvalidArgumentError(absl::StrCat("GlobalKept: stream ", s, ": candidate count ",
                                                     args.candidate_counts[s],
                                                     " outside [0, length ", n, "]"));
    }
    longest = std::max(longest, n);
  }
  std::vector<int32_t> positions(static_cast<size_t>(longest));
  std::iota(positions.begin(), positions.end(), 0);
  std::vector<policy::StreamScores> streams(static_cast<size_t>(num_streams));
  for (int32_t s = 0; s < num_streams; ++s) {
    const int32_t begin = args.score_offsets[s];
    const int32_t n = args.score_offsets[s + 1] - begin;
    streams[static_cast<size_t>(s)] = policy::StreamScores{
        absl::MakeConstSpan(args.scores + begin, static_cast<size_t>(n)),
        absl::MakeConstSpan(positions.data(), static_cast<size_t>(n)),
        policy::Protection{0, n - args.candidate_counts[s]}};
  }
  const absl::Span<const int32_t> floors =
      absl::MakeConstSpan(args.floors, static_cast<size_t>(num_streams));
  HEADPAGE_ASSIGN_OR_RETURN(
      const std::vector<int32_t> kept,
      policy::GlobalKept(streams, floors, args.page_size, args.pages_to_free));
  std::copy(kept.begin(), kept.end(), args.kept_counts);
  return absl::OkStatus();
}

}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace gpu {

absl::Status GlobalKept(const GlobalKeptArgs& args, GpuStream stream) {
  HEADPAGE_RETURN_IF_ERROR(ValidateGlobalKeptWorkspace(args));  // Validate() first
  if (args.num_streams == 0) return absl::OkStatus();
  // GlobalKept has no dtype or head_dim dispatch (scores are f32), so the only
  // errors are CUDA errors.
  return LaunchStatus(internal::LaunchGlobalKept(args, stream), "GlobalKept", DType::kF32, 0);
}

}  // namespace gpu
#endif

}  // namespace headpage
