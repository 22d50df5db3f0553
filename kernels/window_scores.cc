// SPDX-License-Identifier: Apache-2.0
#include "kernels/window_scores.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "kernels/gpu_status.h"
#include "kernels/validate_common.h"

namespace headpage {
namespace {

bool KnownPooling(policy::Pooling pooling) {
  switch (pooling) {
    case policy::Pooling::kNone:
    case policy::Pooling::kAvg:
    case policy::Pooling::kMax:
      return true;
  }
  return false;
}

bool KnownReduce(policy::GroupReduce reduce) {
  switch (reduce) {
    case policy::GroupReduce::kMean:
    case policy::GroupReduce::kMax:
      return true;
  }
  return false;
}

}  // namespace

absl::Status Validate(const WindowScoresArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(ValidatePagedKV(args.cache, "WindowScores"));
  if (args.num_seqs < 0 || args.num_kv_heads <= 0 || args.num_q_heads <= 0 ||
      args.num_q_heads % args.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "WindowScores: num_seqs ", args.num_seqs, ", num_q_heads ", args.num_q_heads,
        ", num_kv_heads ", args.num_kv_heads, " (q heads must be a multiple of kv heads)"));
  }
  if (args.window < 1 || args.window > kMaxScoreWindow) {
    return absl::InvalidArgumentError(absl::StrCat("WindowScores: window ", args.window,
                                                   " is outside [1, ", kMaxScoreWindow, "]"));
  }
  if (args.kernel_size < 1 || args.kernel_size % 2 == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "WindowScores: kernel_size must be odd and positive (1 disables pooling), got ",
        args.kernel_size));
  }
  if (!KnownPooling(args.pooling) || !KnownReduce(args.reduce)) {
    return absl::InvalidArgumentError(
        absl::StrCat("WindowScores: unknown pooling value ", static_cast<int>(args.pooling),
                     " or group reduce value ", static_cast<int>(args.reduce)));
  }
  // Positive: the CUDA kernel takes each row's maximum before scaling.
  if (!(args.sm_scale > 0.0f) || !std::isfinite(args.sm_scale)) {
    return absl::InvalidArgumentError(
        absl::StrCat("WindowScores: sm_scale must be positive and finite, got ", args.sm_scale));
  }
  if (args.max_len < 0 || args.num_scores < 0) {
    return absl::InvalidArgumentError(absl::StrCat("WindowScores: max_len ", args.max_len,
                                                   ", num_scores ", args.num_scores));
  }
  if (args.num_seqs > 0 &&
      (args.queries == nullptr || args.query_positions == nullptr || args.indptr == nullptr ||
       args.lens == nullptr || args.score_offsets == nullptr)) {
    return absl::InvalidArgumentError(
        "WindowScores: queries, query_positions, indptr, lens or score_offsets is null");
  }
  if (!IsKernelAligned(args.queries)) {
    return absl::InvalidArgumentError(
        absl::StrCat("WindowScores: queries must be ", kKernelAlignment, "-byte aligned"));
  }
  if (args.num_seqs > 0 && args.max_len > 0 && args.page_ids == nullptr) {
    return absl::InvalidArgumentError("WindowScores: page_ids is null with max_len > 0");
  }
  if (args.num_scores > 0 && args.scores == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("WindowScores: scores is null for num_scores ", args.num_scores));
  }
  return absl::OkStatus();
}

absl::Status ValidateWindowScoresWorkspace(const WindowScoresArgs& args) {
  const size_t needed = WindowScoresWorkspaceBytes(args);
  if (needed > 0 && !IsKernelAligned(args.workspace)) {
    return absl::InvalidArgumentError(
        absl::StrCat("WindowScores: workspace must be ", kKernelAlignment, "-byte aligned"));
  }
  if (needed > 0 && (args.workspace == nullptr || args.workspace_bytes < needed)) {
    return absl::InvalidArgumentError(
        absl::StrCat("WindowScores: workspace of ", args.workspace_bytes, " bytes",
                     args.workspace == nullptr ? " (null)" : "", ", needs ", needed,
                     " (WindowScoresWorkspaceBytes)"));
  }
  return absl::OkStatus();
}

namespace ref {
namespace {

// The checks of what the host arrays hold, all before anything is written.
absl::Status CheckContents(const WindowScoresArgs& args) {
  const int32_t streams = args.num_seqs * args.num_kv_heads;
  HEADPAGE_RETURN_IF_ERROR(CheckBlockTables(args.cache, streams, args.indptr, args.page_ids,
                                            args.lens, "WindowScores"));
  for (int32_t i = 0; i < streams; ++i) {
    const int32_t len = args.lens[i];
    if (len > args.max_len) {
      return absl::OutOfRangeError(absl::StrCat("WindowScores: stream ", i, " has ", len,
                                                " tokens, above max_len ", args.max_len));
    }
    const int64_t begin = args.score_offsets[i];
    if (begin < 0 || begin + len > args.score_offsets[i + 1] ||
        args.score_offsets[i + 1] > args.num_scores) {
      return absl::OutOfRangeError(absl::StrCat(
          "WindowScores: stream ", i, "'s ", len, " scores at offset ", begin,
          " do not fit before the next offset ", args.score_offsets[i + 1], " and num_scores ",
          args.num_scores));
    }
  }
  return absl::OkStatus();
}

// out[j] for the keys before the window (in_prefix[j]): the pool over the
// kernel's neighbours, where a neighbour outside the stream or at/after the
// window start is padding (avg: a zero still counted in the divisor; max: never
// chosen). Keys of the window keep their value.
void PoolPrefix(const std::vector<double>& in, const std::vector<bool>& in_prefix,
                int32_t kernel_size, policy::Pooling pooling, std::vector<double>* out) {
  const int64_t n = static_cast<int64_t>(in.size());
  const int64_t half = kernel_size / 2;
  out->assign(in.begin(), in.end());
  if (pooling == policy::Pooling::kNone) return;
  for (int64_t j = 0; j < n; ++j) {
    if (!in_prefix[j]) continue;
    double sum = 0.0;
    double max = -std::numeric_limits<double>::infinity();
    for (int64_t i = j - half; i <= j + half; ++i) {
      if (i < 0 || i >= n || !in_prefix[i]) continue;
      sum += in[i];
      max = std::max(max, in[i]);
    }
    (*out)[j] = pooling == policy::Pooling::kAvg ? sum / kernel_size : max;
  }
}

}  // namespace

absl::Status WindowScores(const WindowScoresArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  HEADPAGE_RETURN_IF_ERROR(CheckContents(args));
  const PagedKV& cache = args.cache;
  const int32_t d = cache.head_dim;
  const int32_t w_rows = args.window;
  const int32_t group = args.num_q_heads / args.num_kv_heads;

  std::vector<double> keys, q, reduced, head_sum, logits, pooled;
  std::vector<int32_t> positions;
  std::vector<bool> in_prefix;
  for (int32_t s = 0; s < args.num_seqs; ++s) {
    const int32_t* qpos = args.query_positions + static_cast<size_t>(s) * w_rows;
    const int32_t window_start = *std::min_element(qpos, qpos + w_rows);
    for (int32_t h = 0; h < args.num_kv_heads; ++h) {
      const int32_t stream = s * args.num_kv_heads + h;
      const int32_t n = args.lens[stream];
      const int32_t* pages = args.page_ids + args.indptr[stream];
      // The stream's keys, dense, widened to double (exact).
      keys.resize(static_cast<size_t>(n) * d);
      positions.resize(n);
      for (int32_t j = 0; j < n; ++j) {
        const int64_t slot = SlotOf(pages, j, cache.page_size);
        for (int32_t e = 0; e < d; ++e) {
          keys[static_cast<size_t>(j) * d + e] =
              LoadAsFloat(cache.data, static_cast<size_t>(cache.KeyOffset(slot) + e), cache.dtype);
        }
        positions[j] = cache.positions[slot];
      }
      reduced.assign(n, 0.0);
      for (int32_t g = 0; g < group; ++g) {
        head_sum.assign(n, 0.0);
        const size_t q_head = static_cast<size_t>(s) * args.num_q_heads + h * group + g;
        for (int32_t r = 0; r < w_rows; ++r) {
          const size_t row = (q_head * w_rows + r) * d;
          q.resize(d);
          for (int32_t e = 0; e < d; ++e) q[e] = LoadAsFloat(args.queries, row + e, cache.dtype);
          // Softmax over the keys this row sees; a row that sees none adds nothing.
          logits.assign(n, 0.0);
          double max = -std::numeric_limits<double>::infinity();
          for (int32_t j = 0; j < n; ++j) {
            if (positions[j] > qpos[r]) continue;
            double dot = 0.0;
            for (int32_t e = 0; e < d; ++e) dot += q[e] * keys[static_cast<size_t>(j) * d + e];
            logits[j] = dot * static_cast<double>(args.sm_scale);
            max = std::max(max, logits[j]);
          }
          if (max == -std::numeric_limits<double>::infinity()) continue;
          double sum = 0.0;
          for (int32_t j = 0; j < n; ++j) {
            if (positions[j] <= qpos[r]) sum += std::exp(logits[j] - max);
          }
          for (int32_t j = 0; j < n; ++j) {
            if (positions[j] <= qpos[r]) head_sum[j] += std::exp(logits[j] - max) / sum;
          }
        }
        for (int32_t j = 0; j < n; ++j) {
          reduced[j] = args.reduce == policy::GroupReduce::kMax ? std::max(reduced[j], head_sum[j])
                                                             : reduced[j] + head_sum[j];
        }
      }
      if (args.reduce == policy::GroupReduce::kMean) {
        for (double& v : reduced) v /= group;
      }
      in_prefix.resize(n);
      for (int32_t j = 0; j < n; ++j) in_prefix[j] = positions[j] < window_start;
      PoolPrefix(reduced, in_prefix, args.kernel_size, args.pooling, &pooled);
      float* out = args.scores + args.score_offsets[stream];
      for (int32_t j = 0; j < n; ++j) out[j] = static_cast<float>(pooled[j]);
    }
  }
  return absl::OkStatus();
}

}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace gpu {

absl::Status WindowScores(const WindowScoresArgs& args, GpuStream stream) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  HEADPAGE_RETURN_IF_ERROR(ValidateWindowScoresWorkspace(args));
  if (args.num_seqs == 0 || args.max_len == 0) return absl::OkStatus();
  return LaunchStatus(internal::LaunchWindowScores(args, stream), "WindowScores",
                      args.cache.dtype, args.cache.head_dim);
}

}  // namespace gpu
#endif

}  // namespace headpage
