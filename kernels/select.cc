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
  if (SelectWorkspaceBytes(args) > 0 && !IsKernelAligned(args.workspace)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Select: workspace must be ", kKernelAlignment, "-byte aligned"));
  }
  if (SelectWorkspaceBytes(args) > 0 && args.workspace == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("Select: workspace is null, ",
                                                   SelectWorkspaceBytes(args), " bytes needed"));
  }
  return absl::OkStatus();
}

size_t SelectWorkspaceBytes(const SelectArgs& args) {
  if (args.mode != SelectMode::kAda || args.floor != policy::AdaFloor::kProtectTop) return 0;
  if (args.num_seqs <= 0 || args.num_kv_heads <= 0) return 0;
  return size_t{16} * static_cast<size_t>(args.num_seqs) * static_cast<size_t>(args.num_kv_heads);
}

namespace ref {
namespace {

// One stream, located: its tokens are [offset, offset + n) of the arrays, its
// candidates (unprotected slots) [begin, end) of its slots.
struct Stream {
  int32_t offset = 0;
  int32_t n = 0;
  int32_t begin = 0;
  int32_t end = 0;

  int32_t num_candidates() const { return end - begin; }
  int32_t num_protected() const { return n - num_candidates(); }
};

// Checks each stream's arrays and finds its candidates: the sinks (positions
// below args.sinks) are a prefix of the slots because positions ascend, the
// recent window the last args.recent slots.
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
  for (int32_t s = 0; s < num_streams; ++s) {
    Stream& stream = streams[static_cast<size_t>(s)];
    stream.offset = args.score_offsets[s];
    stream.n = args.score_offsets[s + 1] - stream.offset;
    const int32_t offset = stream.offset;
    const int32_t* positions = args.positions + offset;
    const float* scores = args.scores + offset;
    for (int32_t j = 0; j < stream.n; ++j) {
      if (j > 0 && positions[j] <= positions[j - 1]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Select: stream ", s, ": positions are not strictly ascending at slot ", j));
      }
      if (std::isnan(scores[j])) {
        return absl::InvalidArgumentError(
            absl::StrCat("Select: stream ", s, ": NaN score at slot ", j));
      }
    }
    stream.begin = 0;
    while (stream.begin < stream.n && positions[stream.begin] < args.sinks) ++stream.begin;
    stream.end = static_cast<int32_t>(
        std::clamp<int64_t>(int64_t{stream.n} - args.recent, stream.begin, stream.n));
  }
  return streams;
}

// Stream's candidate slots, best first: score descending, equal scores the
// lower slot first (-0 and +0 are equal scores).
std::vector<int32_t> RankedCandidates(const float* scores, const Stream& stream) {
  std::vector<int32_t> slots(static_cast<size_t>(stream.num_candidates()));
  std::iota(slots.begin(), slots.end(), stream.begin);
  std::stable_sort(slots.begin(), slots.end(),
                   [&](int32_t a, int32_t b) { return scores[a] > scores[b]; });
  return slots;
}

// A candidate in a sequence-wide Ada ranking.
struct Candidate {
  float score;
  int32_t head;
};

// How many of the best `k` of `pool` (laid out in (head, slot) order, which a
// stable sort by score keeps for equal scores) each head holds.
std::vector<int64_t> HitsPerHead(std::vector<Candidate> pool, int64_t k, int32_t num_heads) {
  std::stable_sort(pool.begin(), pool.end(),
                   [](const Candidate& a, const Candidate& b) { return a.score > b.score; });
  std::vector<int64_t> hits(static_cast<size_t>(num_heads), 0);
  for (int64_t i = 0; i < std::min<int64_t>(k, static_cast<int64_t>(pool.size())); ++i) {
    ++hits[static_cast<size_t>(pool[static_cast<size_t>(i)].head)];
  }
  return hits;
}

// Ada-KV's allocation for the streams of one sequence (streams[first ..
// first + num_heads)), written to kept.
void AdaKeptForSequence(const SelectArgs& args, const std::vector<Stream>& streams, int32_t first,
                        std::vector<int32_t>* kept) {
  const int32_t num_heads = args.num_kv_heads;
  std::vector<int64_t> budget(static_cast<size_t>(num_heads)), safe(budget.size(), 0);
  std::vector<Candidate> pool;
  int64_t total = 0, safe_total = 0;
  for (int32_t h = 0; h < num_heads; ++h) {
    const Stream& stream = streams[static_cast<size_t>(first + h)];
    const float* scores = args.scores + stream.offset;
    (*kept)[static_cast<size_t>(first + h)] = stream.n;
    budget[h] = int64_t{args.capacity} - stream.num_protected();  // B'_h
    if (budget[h] >= stream.num_candidates()) continue;          // covered: does not compete
    total += budget[h];
    // The candidates that enter the global ranking, in slot order (ties between
    // streams go by (head, slot)): all of them, or for kProtectTop those left
    // after the stream's own top floor(alpha B'_h).
    std::vector<int32_t> entering = RankedCandidates(scores, stream);
    if (args.floor == policy::AdaFloor::kProtectTop) {
      safe[h] = static_cast<int64_t>(std::floor(args.alpha * static_cast<double>(budget[h])));
      safe_total += safe[h];
      entering.erase(entering.begin(), entering.begin() + safe[h]);
    }
    std::sort(entering.begin(), entering.end());
    for (const int32_t slot : entering) pool.push_back({scores[slot], h});
  }
  const std::vector<int64_t> hits = HitsPerHead(std::move(pool), total - safe_total, num_heads);
  for (int32_t h = 0; h < num_heads; ++h) {
    const Stream& stream = streams[static_cast<size_t>(first + h)];
    if (budget[h] >= stream.num_candidates()) continue;
    int64_t b;
    if (args.floor == policy::AdaFloor::kScaled) {
      // Round half to even (std::nearbyint in the default rounding mode).
      const double floor_b = std::floor(args.alpha * static_cast<double>(budget[h]));
      b = static_cast<int64_t>(
          std::nearbyint(static_cast<double>(hits[h]) * (1.0 - args.alpha) + floor_b));
    } else {
      b = safe[h] + hits[h];
    }
    (*kept)[static_cast<size_t>(first + h)] =
        static_cast<int32_t>(std::min<int64_t>(b + stream.num_protected(), stream.n));
  }
}

}  // namespace

absl::Status Select(const SelectArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  const int32_t num_streams = args.num_streams();
  absl::StatusOr<std::vector<Stream>> streams = InspectStreams(args);
  if (!streams.ok()) return streams.status();

  std::vector<int32_t> kept(static_cast<size_t>(num_streams));
  if (args.mode == SelectMode::kTopB) {
    for (int32_t s = 0; s < num_streams; ++s) {
      const Stream& stream = (*streams)[static_cast<size_t>(s)];
      if (args.kept[s] < stream.num_protected() || args.kept[s] > stream.n) {
        return absl::InvalidArgumentError(
            absl::StrCat("Select: stream ", s, ": kept ", args.kept[s], " outside [protected ",
                         stream.num_protected(), ", num_tokens ", stream.n, "]"));
      }
      kept[static_cast<size_t>(s)] = args.kept[s];
    }
  } else {
    for (int32_t s = 0; s < num_streams; ++s) {
      const Stream& stream = (*streams)[static_cast<size_t>(s)];
      if (args.capacity < stream.num_protected()) {
        return absl::InvalidArgumentError(
            absl::StrCat("Select: capacity ", args.capacity, " is smaller than stream ", s, "'s ",
                         stream.num_protected(), " protected tokens"));
      }
    }
    for (int32_t seq = 0; seq < args.num_seqs; ++seq) {
      AdaKeptForSequence(args, *streams, seq * args.num_kv_heads, &kept);
    }
  }

  // Keep sets: the protected slots and the best (kept - protected) candidates.
  for (int32_t s = 0; s < num_streams; ++s) {
    const Stream& stream = (*streams)[static_cast<size_t>(s)];
    std::vector<int32_t> keep;
    for (int32_t j = 0; j < stream.n; ++j) {
      if (j < stream.begin || j >= stream.end) keep.push_back(j);
    }
    const std::vector<int32_t> ranked = RankedCandidates(args.scores + stream.offset, stream);
    const int32_t take = kept[static_cast<size_t>(s)] - stream.num_protected();
    keep.insert(keep.end(), ranked.begin(), ranked.begin() + take);
    std::sort(keep.begin(), keep.end());
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
