// SPDX-License-Identifier: Apache-2.0
#include "kernels/token_scores.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "core/status.h"
#include "kernels/gather_kv.h"
#include "kernels/gpu_status.h"
#include "kernels/validate_common.h"
#include "policy/scores.h"

namespace headpage {

absl::Status Validate(const TokenScoresArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(ValidatePagedKV(args.cache, "TokenScores"));
  if (args.num_streams < 0 || args.num_tokens < 0 || args.max_len < 0) {
    return absl::InvalidArgumentError(absl::StrCat("TokenScores: num_streams ", args.num_streams,
                                                   ", num_tokens ", args.num_tokens, ", max_len ",
                                                   args.max_len, " must be >= 0"));
  }
  if (args.max_len > kMaxTokenScoresLen) {
    return absl::InvalidArgumentError(absl::StrCat("TokenScores: max_len ", args.max_len,
                                                   " is over ", kMaxTokenScoresLen));
  }
  switch (args.score) {
    case TokenScore::kNone:
    case TokenScore::kPosition:
    case TokenScore::kKeyNorm:
    case TokenScore::kRandom:
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("TokenScores: unknown score kind ", static_cast<int>(args.score)));
  }
  if (args.num_streams > 0 &&
      (args.indptr == nullptr || args.lens == nullptr || args.offsets == nullptr ||
       args.positions == nullptr || (args.score != TokenScore::kNone && args.scores == nullptr))) {
    return absl::InvalidArgumentError(
        "TokenScores: indptr, lens, offsets, positions (and scores, unless kNone) must be set");
  }
  return absl::OkStatus();
}

absl::Status Validate(const MeanOverHeadsArgs& args) {
  if (args.num_groups < 0 || args.heads_per_group < 0 || args.max_len < 0 || args.num_scores < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MeanOverHeads: num_groups ", args.num_groups, ", heads_per_group ", args.heads_per_group,
        ", max_len ", args.max_len, ", num_scores ", args.num_scores, " must be >= 0"));
  }
  if (args.max_len > kMaxTokenScoresLen) {
    return absl::InvalidArgumentError(absl::StrCat("MeanOverHeads: max_len ", args.max_len,
                                                   " is over ", kMaxTokenScoresLen));
  }
  if (args.num_groups > 0 && args.heads_per_group > 0 &&
      (args.offsets == nullptr || args.lens == nullptr || args.scores == nullptr)) {
    return absl::InvalidArgumentError("MeanOverHeads: offsets, lens and scores must be set");
  }
  return absl::OkStatus();
}

namespace ref {

absl::Status MeanOverHeads(const MeanOverHeadsArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  const int32_t heads = args.heads_per_group;
  for (int32_t g = 0; g < args.num_groups; ++g) {
    const int32_t first = g * heads;
    for (int32_t h = 0; h < heads; ++h) {
      const int32_t s = first + h;
      if (args.lens[s] != args.lens[first]) {
        return absl::FailedPreconditionError(absl::StrCat(
            "MeanOverHeads: group ", g, "'s streams hold ", args.lens[first], " and ", args.lens[s],
            " tokens; they must hold the same tokens to share one score per token"));
      }
      if (args.lens[s] > args.max_len || args.offsets[s] < 0 ||
          args.offsets[s] + static_cast<int64_t>(args.lens[s]) > args.offsets[s + 1] ||
          args.offsets[s + 1] > args.num_scores) {
        return absl::InvalidArgumentError(absl::StrCat("MeanOverHeads: stream ", s,
                                                       " does not fit its offsets"));
      }
    }
    for (int32_t j = 0; heads > 0 && j < args.lens[first]; ++j) {
      float sum = 0.0f;
      for (int32_t h = 0; h < heads; ++h) sum += args.scores[args.offsets[first + h] + j];
      const float mean = sum / static_cast<float>(heads);
      for (int32_t h = 0; h < heads; ++h) args.scores[args.offsets[first + h] + j] = mean;
    }
  }
  return absl::OkStatus();
}

absl::Status TokenScores(const TokenScoresArgs& args) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  const PagedKV& cache = args.cache;
  HEADPAGE_RETURN_IF_ERROR(
      CheckBlockTables(cache, args.num_streams, BlockTableOf(args), "TokenScores"));
  for (int32_t s = 0; s < args.num_streams; ++s) {
    if (args.lens[s] > args.max_len || args.offsets[s] < 0 ||
        args.offsets[s] + static_cast<int64_t>(args.lens[s]) > args.offsets[s + 1] ||
        args.offsets[s + 1] > args.num_tokens) {
      return absl::InvalidArgumentError(absl::StrCat(
          "TokenScores: stream ", s, " of ", args.lens[s], " tokens (max_len ", args.max_len,
          ") does not fit its offsets [", args.offsets[s], ", ", args.offsets[s + 1], ") of ",
          args.num_tokens));
    }
  }
  // The policy functions on each stream's gathered keys: one implementation
  // of each score, the oracle the GPU must equal bit for bit. GatherKV hands
  // them the keys in the model dtype (fp8 pages' dequantized and rounded to
  // it), as the GPU reads them.
  const size_t row = static_cast<size_t>(cache.head_dim) * SizeOf(cache.dtype);
  std::vector<char> keys;
  for (int32_t s = 0; s < args.num_streams; ++s) {
    const int32_t n = args.lens[s];
    int32_t* positions = args.positions + args.offsets[s];
    if (args.score == TokenScore::kKeyNorm) keys.resize(n * row);
    const int32_t table[] = {0, args.indptr[s + 1] - args.indptr[s]};
    GatherKVArgs gather;
    gather.cache = cache;
    gather.num_rows = 1;
    gather.indptr = table;
    gather.page_ids = args.page_ids + args.indptr[s];
    gather.num_page_ids = table[1];
    gather.lens = args.lens + s;
    gather.keys = args.score == TokenScore::kKeyNorm ? keys.data() : nullptr;
    gather.positions = positions;
    HEADPAGE_RETURN_IF_ERROR(ref::GatherKV(gather));
    if (args.score == TokenScore::kNone) continue;
    const policy::StreamKeys stream{keys.data(), positions, n, cache.head_dim, cache.dtype};
    const absl::Span<float> scores(args.scores + args.offsets[s], n);
    switch (args.score) {
      case TokenScore::kPosition:
        HEADPAGE_RETURN_IF_ERROR(policy::RecencyScores(stream, scores));
        break;
      case TokenScore::kKeyNorm:
        HEADPAGE_RETURN_IF_ERROR(policy::KeyNormScores(stream, scores));
        break;
      case TokenScore::kRandom:
        policy::RandomScores(args.seed + static_cast<uint64_t>(s), scores);
        break;
      case TokenScore::kNone:
        break;
    }
  }
  return absl::OkStatus();
}

}  // namespace ref

#if HEADPAGE_HAVE_CUDA
namespace gpu {

absl::Status TokenScores(const TokenScoresArgs& args, GpuStream stream) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  HEADPAGE_RETURN_IF_ERROR(ValidateGpuHeadDim(args.cache, "TokenScores"));
  if (args.num_streams == 0 || args.max_len == 0) return absl::OkStatus();
  return LaunchStatus(internal::LaunchTokenScores(args, stream), "TokenScores", args.cache.dtype,
                      args.cache.head_dim);
}

absl::Status MeanOverHeads(const MeanOverHeadsArgs& args, GpuStream stream) {
  HEADPAGE_RETURN_IF_ERROR(Validate(args));
  if (args.num_groups == 0 || args.heads_per_group == 0 || args.max_len == 0) {
    return absl::OkStatus();
  }
  const LaunchResult result = internal::LaunchMeanOverHeads(args, stream);
  if (result.ok()) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("MeanOverHeads: ", result.cuda_message));
}

}  // namespace gpu
#endif

}  // namespace headpage
