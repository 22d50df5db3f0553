// SPDX-License-Identifier: Apache-2.0
#include "kernels/dbudget_cut.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "core/status.h"
#include "kernels/gpu_status.h"
#include "kernels/validate_common.h"
#include "policy/budget.h"

namespace headpage {

absl::Status Validate(const DBudgetCutArgs& args) {
  if (args.num_seqs < 0 || args.num_kv_heads <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("DBudgetCut: num_seqs ", args.num_seqs, ", num_kv_heads ", args.num_kv_heads));
  }
  if (args.group_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("DBudgetCut: group_size must be >= 1, got ", args.group_size));
  }
  // score_offsets has streams + 1 int32 entries, and the GPU runs one block
  // per attention row (stream, q head), an int32 grid dimension.
  const int64_t streams = int64_t{args.num_seqs} * args.num_kv_heads;
  if (streams * args.group_size >= std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DBudgetCut: ", streams, " streams x group_size ", args.group_size, " overflow int32"));
  }
  if (args.num_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("DBudgetCut: num_tokens must be >= 0, got ", args.num_tokens));
  }
  if (!(args.threshold >= 0.0)) {  // also rejects NaN, as the policy does
    return absl::InvalidArgumentError(
        absl::StrCat("DBudgetCut: threshold must be >= 0, got ", args.threshold));
  }
  if (streams > 0 && (args.score_offsets == nullptr || args.kept == nullptr)) {
    return absl::InvalidArgumentError("DBudgetCut: score_offsets or kept is null");
  }
  if (streams > 0 && args.num_tokens > 0 &&
      (args.scores == nullptr || args.positions == nullptr || args.attention == nullptr)) {
    return absl::InvalidArgumentError("DBudgetCut: scores, positions or attention is null");
  }
  return absl::OkStatus();
}

namespace ref {

// policy::DBudgetKept on each sequence's streams: the one CPU implementation
// of the rule. ref:: only checks the offsets, views the arrays as the policy
// takes them, and writes the counts once every sequence has succeeded.
absl::Status DBudgetCut(const DBudgetCutArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  const int32_t num_streams = args.num_streams();
  for (int32_t s = 0; s < num_streams; ++s) {
    const int32_t offset = args.score_offsets[s], next = args.score_offsets[s + 1];
    if (offset < 0 || next < offset || next > args.num_tokens) {
      return absl::OutOfRangeError(
          absl::StrCat("DBudgetCut: score_offsets[", s, "..", s + 1, "] = ", offset, ", ", next,
                       " are not non-decreasing from 0 up to num_tokens ", args.num_tokens));
    }
  }
  const int32_t heads = args.num_kv_heads;
  const policy::Protection protection{args.sinks, args.recent};
  std::vector<int32_t> kept(static_cast<size_t>(num_streams));
  std::vector<policy::StreamScores> streams(static_cast<size_t>(heads));
  std::vector<absl::Span<const float>> rows(static_cast<size_t>(heads));
  for (int32_t seq = 0; seq < args.num_seqs; ++seq) {
    for (int32_t h = 0; h < heads; ++h) {
      const int32_t s = seq * heads + h;
      const int32_t first = args.score_offsets[s];
      const size_t n = static_cast<size_t>(args.score_offsets[s + 1] - first);
      streams[static_cast<size_t>(h)] =
          policy::StreamScores{absl::MakeConstSpan(args.scores + first, n),
                               absl::MakeConstSpan(args.positions + first, n), protection};
      rows[static_cast<size_t>(h)] =
          absl::MakeConstSpan(args.attention + int64_t{args.group_size} * first,
                              static_cast<size_t>(args.group_size) * n);
    }
    const absl::StatusOr<std::vector<int32_t>> seq_kept =
        policy::DBudgetKept(streams, rows, args.group_size, args.threshold, args.by_position);
    if (!seq_kept.ok()) {
      return absl::Status(seq_kept.status().code(), absl::StrCat("DBudgetCut: sequence ", seq, ": ",
                                                                 seq_kept.status().message()));
    }
    std::copy(seq_kept->begin(), seq_kept->end(), kept.begin() + int64_t{seq} * heads);
  }
  std::copy(kept.begin(), kept.end(), args.kept);
  return absl::OkStatus();
}

}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace {

// What only gpu:: needs: a workspace as large as PlanDBudgetCut says, aligned
// for the 16-byte spans it holds.
absl::Status ValidateWorkspace(const DBudgetCutArgs& args) {
  const size_t needed = DBudgetCutWorkspaceBytes(args);
  if (needed > 0 && !IsKernelAligned(args.workspace)) {
    return absl::InvalidArgumentError(
        absl::StrCat("DBudgetCut: workspace must be ", kKernelAlignment, "-byte aligned"));
  }
  if (needed > 0 && (args.workspace == nullptr || args.workspace_bytes < needed)) {
    return absl::InvalidArgumentError(
        absl::StrCat("DBudgetCut: workspace of ", args.workspace_bytes, " bytes",
                     args.workspace == nullptr ? " (null)" : "", ", needs ", needed,
                     " (DBudgetCutWorkspaceBytes)"));
  }
  return absl::OkStatus();
}

}  // namespace

namespace gpu {

absl::Status DBudgetCut(const DBudgetCutArgs& args, GpuStream stream) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  HEADPAGE_RETURN_IF_ERROR(ValidateWorkspace(args));
  if (args.num_streams() == 0) return absl::OkStatus();
  // No dtype or head_dim dispatch (scores and attention are f32): only CUDA errors.
  return LaunchStatus(internal::LaunchDBudgetCut(args, stream), "DBudgetCut", DType::kF32, 0);
}

}  // namespace gpu
#endif

}  // namespace headpage
