// SPDX-License-Identifier: Apache-2.0
#include "kernels/window_scores.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "core/kv_rows.h"
#include "core/status.h"
#include "kernels/gpu_status.h"
#include "kernels/validate_common.h"
#include "policy/scores.h"

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
  if (args.max_len < 0 || args.num_scores < 0 || args.plan_streams < 0 ||
      args.plan_max_len < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "WindowScores: max_len ", args.max_len, ", num_scores ", args.num_scores,
        ", plan_streams ", args.plan_streams, ", plan_max_len ", args.plan_max_len));
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
  HEADPAGE_RETURN_IF_ERROR(
      CheckBlockTables(args.cache, streams, BlockTableOf(args), "WindowScores"));
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

}  // namespace

// policy::SnapKVScores on every stream's gathered keys: the one CPU
// implementation of SnapKV's scoring. The policy divides q . k by sqrt(d); a
// caller's other sm_scale is folded into the queries, widened to f32. SnapKV's
// own scale, 1 / sqrt(d), gives a factor within rounding of 1, taken as
// exactly 1 so that the queries pass unchanged.
absl::Status WindowScores(const WindowScoresArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  HEADPAGE_RETURN_IF_ERROR(CheckContents(args));
  const PagedKV& cache = args.cache;
  const int32_t d = cache.head_dim;
  const int32_t w_rows = args.window;
  const int32_t group = args.num_q_heads / args.num_kv_heads;
  float factor = args.sm_scale * std::sqrt(static_cast<float>(d));
  if (std::abs(factor - 1.0f) <= 4 * std::numeric_limits<float>::epsilon()) factor = 1.0f;
  policy::SnapKVOptions options;
  options.kernel_size = args.kernel_size;
  options.pooling = args.pooling;
  options.reduce = args.reduce;

  // fp8 keys are read dequantized and rounded to the model dtype: what the
  // GPU's tensor cores multiply.
  const size_t row = static_cast<size_t>(d) * SizeOf(cache.dtype);
  std::vector<char> keys;
  std::vector<int32_t> positions;
  std::vector<float> queries, fresh;
  for (int32_t s = 0; s < args.num_seqs; ++s) {
    const int32_t* qpos = args.query_positions + static_cast<size_t>(s) * w_rows;
    for (int32_t h = 0; h < args.num_kv_heads; ++h) {
      const int32_t stream = s * args.num_kv_heads + h;
      const int32_t n = args.lens[stream];
      const int32_t* pages = args.page_ids + args.indptr[stream];
      // The stream's keys and positions, dense, in slot order.
      keys.resize(static_cast<size_t>(n) * row);
      positions.resize(n);
      for (int32_t j = 0; j < n; ++j) {
        const int64_t slot = SlotOf(pages, j, cache.page_size);
        LoadKvRowInModelDtype(cache, slot, KvPart::kKey, keys.data() + j * row);
        positions[j] = cache.positions[slot];
      }
      // The group's queries, [group][window][d], scaled to the policy's 1/sqrt(d).
      const size_t first = (static_cast<size_t>(s) * args.num_q_heads + static_cast<size_t>(h) * group) *
                           w_rows * d;
      queries.resize(static_cast<size_t>(group) * w_rows * d);
      for (size_t i = 0; i < queries.size(); ++i) {
        queries[i] = LoadAsFloat(args.queries, first + i, cache.dtype) * factor;
      }
      const policy::StreamKeys stream_keys{keys.data(), positions.data(), n, d, cache.dtype};
      const policy::GroupQueries window{queries.data(), qpos, group, w_rows, d, DType::kF32};
      float* out = args.scores + args.score_offsets[stream];
      if (!args.accumulate) {
        HEADPAGE_RETURN_IF_ERROR(
            policy::SnapKVScores(stream_keys, window, options, absl::MakeSpan(out, n)));
        continue;
      }
      fresh.resize(n);
      HEADPAGE_RETURN_IF_ERROR(
          policy::SnapKVScores(stream_keys, window, options, absl::MakeSpan(fresh)));
      for (int32_t j = 0; j < n; ++j) out[j] += fresh[j];
    }
  }
  return absl::OkStatus();
}

}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace gpu {

absl::Status WindowScores(const WindowScoresArgs& args, GpuStream stream) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  // The one place that decides the backend: the launcher runs the warpgroup
  // MMA exactly when it gets kWarpgroupMma.
  WindowScoresArgs resolved = args;
  const bool sixteen_bit = args.cache.dtype == DType::kF16 || args.cache.dtype == DType::kBF16;
  switch (args.backend) {
    case WindowScoresBackend::kAuto:
    case WindowScoresBackend::kWarpMma:
      resolved.backend = WindowScoresBackend::kWarpMma;
      break;
    case WindowScoresBackend::kWarpgroupMma: {
      if (!sixteen_bit) {
        return absl::InvalidArgumentError(
            "WindowScores: the warpgroup MMA backend takes f16 or bf16 keys, not f32");
      }
      HEADPAGE_ASSIGN_OR_RETURN(const bool runs, WindowScoresWarpgroupMmaRuns());
      if (!runs) {
        return absl::FailedPreconditionError(
            "WindowScores: the warpgroup MMA backend needs a build for sm_90a (90 among "
            "CMAKE_CUDA_ARCHITECTURES) and a GPU of compute capability 9.0");
      }
      break;
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat("WindowScores: unknown backend value ",
                                                     static_cast<int>(args.backend)));
  }
  HEADPAGE_RETURN_IF_ERROR(ValidateGpuHeadDim(args.cache, "WindowScores"));
  HEADPAGE_RETURN_IF_ERROR(ValidateWindowScoresWorkspace(args));
  if (args.num_seqs == 0 || args.max_len == 0) return absl::OkStatus();
  if (args.backend == WindowScoresBackend::kAuto && sixteen_bit) {
    HEADPAGE_ASSIGN_OR_RETURN(const bool runs, WindowScoresWarpgroupMmaRuns());
    if (runs) resolved.backend = WindowScoresBackend::kWarpgroupMma;
  }
  return LaunchStatus(internal::LaunchWindowScores(resolved, stream), "WindowScores",
                      args.cache.dtype, args.cache.head_dim);
}

absl::StatusOr<bool> WindowScoresWarpgroupMmaRuns() {
  bool runs = false;
  const LaunchResult result = internal::WarpgroupMmaRuns(&runs);
  if (!result.ok()) return LaunchStatus(result, "WindowScores", DType::kBF16, 128);
  return runs;
}

}  // namespace gpu
#endif

}  // namespace headpage
