// SPDX-License-Identifier: Apache-2.0
#include "kernels/select.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "kernels/gpu_status.h"
#include "kernels/validate_common.h"
#include "policy/budget.h"
#include "policy/select.h"

namespace headpage {

absl::Status Validate(const SelectArgs& args) {
  if (args.num_seqs < 0 || args.num_kv_heads <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("Select: num_seqs ", args.num_seqs,
                                                   ", num_kv_heads ", args.num_kv_heads));
  }
  // score_offsets has streams + 1 entries, each an int32.
  const int64_t streams = int64_t{args.num_seqs} * args.num_kv_heads;
  if (streams >= std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("Select: ", streams, " streams overflow int32"));
  }
  switch (args.mode) {
    case SelectMode::kTopB:
      if (streams > 0 && args.kept == nullptr) {
        return absl::InvalidArgumentError("Select: kTopB needs kept, which is null");
      }
      break;
    case SelectMode::kAda:
      if (args.capacity <= 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("Select: capacity must be positive, got ", args.capacity));
      }
      if (!(args.alpha >= 0.0 && args.alpha <= 1.0)) {  // also rejects NaN
        return absl::InvalidArgumentError(
            absl::StrCat("Select: alpha must be in [0, 1], got ", args.alpha));
      }
      if (args.floor != policy::AdaFloor::kScaled && args.floor != policy::AdaFloor::kProtectTop) {
        return absl::InvalidArgumentError(
            absl::StrCat("Select: unknown Ada floor ", static_cast<int>(args.floor)));
      }
      if (args.num_kv_heads > kSelectMaxAdaHeads) {
        return absl::InvalidArgumentError(absl::StrCat("Select: num_kv_heads ", args.num_kv_heads,
                                                       " above kAda's limit ",
                                                       kSelectMaxAdaHeads));
      }
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("Select: unknown mode ", static_cast<int>(args.mode)));
  }
  if (args.ctas_per_group < 0 || args.ctas_per_group > kSelectMaxCtasPerGroup) {
    return absl::InvalidArgumentError(absl::StrCat("Select: ctas_per_group ", args.ctas_per_group,
                                                   " outside [0, ", kSelectMaxCtasPerGroup, "]"));
  }
  if (streams > 0 && (args.score_offsets == nullptr || args.scores == nullptr ||
                      args.positions == nullptr || args.keep == nullptr ||
                      args.kept_counts == nullptr)) {
    return absl::InvalidArgumentError(
        "Select: score_offsets, scores, positions, keep or kept_counts is null");
  }
  return absl::OkStatus();
}

namespace ref {
namespace {

// One stream of the arrays, with what its policy protects.
struct Stream {
  int32_t offset = 0;
  policy::StreamScores scores;
  int32_t n() const { return scores.num_tokens(); }
};

// Checks each stream's arrays (all before anything is written) and views it as
// the policy functions take it: the sinks are positions below args.sinks, the
// recent window the last args.recent slots (none when recent <= 0).
absl::StatusOr<std::vector<Stream>> InspectStreams(const SelectArgs& args) {
  const int32_t num_streams = args.num_streams();
  std::vector<Stream> streams(static_cast<size_t>(num_streams));
  for (int32_t s = 0; s < num_streams; ++s) {
    const int32_t offset = args.score_offsets[s], next = args.score_offsets[s + 1];
    if (offset < 0 || next < offset) {
      return absl::InvalidArgumentError(absl::StrCat("Select: score_offsets[", s, "..", s + 1,
                                                     "] = ", offset, ", ", next,
                                                     " are not non-decreasing from 0"));
    }
  }
  const policy::Protection protection{args.sinks, std::max(args.recent, 0)};
  for (int32_t s = 0; s < num_streams; ++s) {
    Stream& stream = streams[static_cast<size_t>(s)];
    stream.offset = args.score_offsets[s];
    const int32_t n = args.score_offsets[s + 1] - stream.offset;
    const int32_t* positions = args.positions + stream.offset;
    const float* scores = args.scores + stream.offset;
    for (int32_t j = 0; j < n; ++j) {
      if (j > 0 && positions[j] <= positions[j - 1]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Select: stream ", s, ": positions are not strictly ascending at slot ", j));
      }
      if (std::isnan(scores[j])) {
        return absl::InvalidArgumentError(
            absl::StrCat("Select: stream ", s, ": NaN score at slot ", j));
      }
    }
    stream.scores = policy::StreamScores{absl::MakeConstSpan(scores, n),
                                         absl::MakeConstSpan(positions, n), protection};
  }
  return streams;
}

}  // namespace

// The policy functions on every stream: SelectKeepSet for the keep sets, and
// for kAda AdaKept on each sequence's streams. ref:: only checks the arrays and
// lays the results out where the GPU writes them.
absl::Status Select(const SelectArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  const int32_t num_streams = args.num_streams();
  absl::StatusOr<std::vector<Stream>> streams = InspectStreams(args);
  if (!streams.ok()) return streams.status();

  std::vector<int32_t> kept(static_cast<size_t>(num_streams));
  if (args.mode == SelectMode::kTopB) {
    for (int32_t s = 0; s < num_streams; ++s) {
      const Stream& stream = (*streams)[static_cast<size_t>(s)];
      const int32_t protect = stream.scores.NumProtected();
      if (args.kept[s] < protect || args.kept[s] > stream.n()) {
        return absl::InvalidArgumentError(absl::StrCat("Select: stream ", s, ": kept ", args.kept[s],
                                                       " outside [protected ", protect,
                                                       ", num_tokens ", stream.n(), "]"));
      }
      kept[static_cast<size_t>(s)] = args.kept[s];
    }
  } else {
    for (int32_t s = 0; s < num_streams; ++s) {
      const int32_t protect = (*streams)[static_cast<size_t>(s)].scores.NumProtected();
      if (args.capacity < protect) {
        return absl::InvalidArgumentError(absl::StrCat("Select: capacity ", args.capacity,
                                                       " is smaller than stream ", s, "'s ",
                                                       protect, " protected tokens"));
      }
    }
    const policy::AdaOptions options{args.alpha, args.floor};
    std::vector<policy::StreamScores> group(static_cast<size_t>(args.num_kv_heads));
    for (int32_t seq = 0; seq < args.num_seqs; ++seq) {
      for (int32_t h = 0; h < args.num_kv_heads; ++h) {
        group[static_cast<size_t>(h)] =
            (*streams)[static_cast<size_t>(seq * args.num_kv_heads + h)].scores;
      }
      HEADPAGE_ASSIGN_OR_RETURN(const std::vector<int32_t> ada,
                                policy::AdaKept(group, args.capacity, options));
      std::copy(ada.begin(), ada.end(), kept.begin() + seq * args.num_kv_heads);
    }
  }

  // Keep sets: the protected slots and the best (kept - protected) candidates.
  std::vector<int32_t> keep;
  for (int32_t s = 0; s < num_streams; ++s) {
    const Stream& stream = (*streams)[static_cast<size_t>(s)];
    HEADPAGE_RETURN_IF_ERROR(
        policy::SelectKeepSet(stream.scores, kept[static_cast<size_t>(s)], &keep));
    std::copy(keep.begin(), keep.end(), args.keep + stream.offset);
    args.kept_counts[s] = kept[static_cast<size_t>(s)];
  }
  return absl::OkStatus();
}

}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace gpu {

absl::Status Select(const SelectArgs& args, GpuStream stream) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  if (args.num_streams() == 0) return absl::OkStatus();
  // Select has no dtype or head_dim dispatch (scores are f32): only CUDA errors.
  return LaunchStatus(internal::LaunchSelect(args, stream), "Select", DType::kF32, 0);
}

}  // namespace gpu
#endif

}  // namespace headpage
