// SPDX-License-Identifier: Apache-2.0
#include "kernels/slot_scores.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "kernels/gpu_status.h"
#include "kernels/validate_common.h"

namespace headpage {

absl::Status Validate(const SlotScoresArgs& args) {
  if (args.cache.page_size < 1 || args.cache.num_pages < 1) {
    return absl::InvalidArgumentError(absl::StrCat("SlotScores: page_size ", args.cache.page_size,
                                                   " and num_pages ", args.cache.num_pages,
                                                   " must be >= 1"));
  }
  if (args.num_streams < 0 || args.max_len < 0 || args.num_dense < 0) {
    return absl::InvalidArgumentError(absl::StrCat("SlotScores: num_streams ", args.num_streams,
                                                   ", max_len ", args.max_len, " and num_dense ",
                                                   args.num_dense, " must be >= 0"));
  }
  if (args.op != SlotScoresOp::kStore && args.op != SlotScoresOp::kLoad &&
      args.op != SlotScoresOp::kAdd) {
    return absl::InvalidArgumentError(
        absl::StrCat("SlotScores: unknown op ", static_cast<int>(args.op)));
  }
  if (args.num_streams > 0 &&
      (args.indptr == nullptr || args.page_ids == nullptr || args.lens == nullptr ||
       args.offsets == nullptr || args.slot_scores == nullptr || args.dense == nullptr)) {
    return absl::InvalidArgumentError("SlotScores: a table, the store or the dense array is null");
  }
  return absl::OkStatus();
}

namespace ref {

absl::Status SlotScores(const SlotScoresArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  HEADPAGE_RETURN_IF_ERROR(
      CheckBlockTables(args.cache, args.num_streams, BlockTableOf(args), "SlotScores"));
  for (int32_t s = 0; s < args.num_streams; ++s) {
    const int32_t len = args.lens[s];
    const int64_t begin = args.offsets[s];
    if (len > args.max_len || begin < 0 || begin + len > args.offsets[s + 1] ||
        args.offsets[s + 1] > args.num_dense) {
      return absl::OutOfRangeError(absl::StrCat(
          "SlotScores: stream ", s, "'s ", len, " tokens at offset ", begin,
          " exceed max_len ", args.max_len, ", the next offset or num_dense ", args.num_dense));
    }
    if (args.scored != nullptr && (args.scored[s] < 0 || args.scored[s] > len)) {
      return absl::OutOfRangeError(absl::StrCat("SlotScores: stream ", s, " has ", args.scored[s],
                                                " scored tokens of ", len));
    }
  }
  for (int32_t s = 0; s < args.num_streams; ++s) {
    const int32_t len = args.lens[s];
    const int32_t scored = args.scored != nullptr ? args.scored[s] : len;
    const int32_t* pages = args.page_ids + args.indptr[s];
    float* dense = args.dense + args.offsets[s];
    auto stored = [&](int32_t j) -> float& {
      return args.slot_scores[SlotOf(pages, j, args.cache.page_size)];
    };
    switch (args.op) {
      case SlotScoresOp::kStore:
        for (int32_t j = 0; j < len; ++j) stored(j) = dense[j];
        break;
      case SlotScoresOp::kAdd:
        for (int32_t j = 0; j < len; ++j) {
          const float total = (j < scored ? stored(j) : 0.0f) + dense[j];
          stored(j) = total;
          dense[j] = total;
        }
        break;
      case SlotScoresOp::kLoad: {
        float lowest = 0.0f;
        for (int32_t j = 0; args.shift_to_zero && j < scored; ++j) lowest = std::min(lowest, stored(j));
        for (int32_t j = 0; j < len; ++j) dense[j] = j < scored ? stored(j) - lowest : args.unscored;
        break;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace gpu {

absl::Status SlotScores(const SlotScoresArgs& args, GpuStream stream) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  if (args.num_streams == 0 || args.max_len == 0) return absl::OkStatus();
  const LaunchResult result = internal::LaunchSlotScores(args, stream);
  if (result.ok()) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("SlotScores: ", result.cuda_message));
}

}  // namespace gpu
#endif

}  // namespace headpage
