// SPDX-License-Identifier: Apache-2.0
// File: kernels/token_scores_args.h
//
// TokenScores reads, for every stream of a CSR block table, each token's stored
// position into a dense array and, optionally, scores the token by what the
// token alone holds: its position (StreamingLLM's recency), minus its key's L2
// norm (knorm), or a counter-based random number (the random baseline). It is
// policy::RecencyScores, KeyNormScores and RandomScores (policy/scores.h) on
// every stream at once, bit for bit, straight from the pool, and it lays out the
// dense positions that Select reads beside any scorer's scores. Plain C++: .cu
// files include it.
#ifndef HEADPAGE_KERNELS_TOKEN_SCORES_ARGS_H_
#define HEADPAGE_KERNELS_TOKEN_SCORES_ARGS_H_

#include <cstdint>

#include "core/paged_kv.h"
#include "kernels/gpu_launch.h"

namespace headpage {

enum class TokenScore : uint8_t {
  kNone,      // positions only; `scores` is not written
  kPosition,  // float(position): newer is more important
  kKeyNorm,   // -||k||_2, the sum of squares accumulated in order in float
              // (fp8 pages: k dequantized and rounded to the model dtype)
  kRandom,    // splitmix64 of stream s's seed (seed + s), the j-th draw's top 24 bits / 2^24
};

// The longest stream (the GPU's grid has 65535 blocks of 256 tokens a stream).
inline constexpr int32_t kMaxTokenScoresLen = 65535 * 256;

struct TokenScoresArgs {
  PagedKV cache;
  int32_t num_streams = 0;
  // CSR block tables (BlockManager::BlockTable's layout).
  const int32_t* indptr = nullptr;    // [num_streams + 1] into page_ids
  const int32_t* page_ids = nullptr;   // [num_page_ids]
  int32_t num_page_ids = 0;            // indptr from 0, ascending, ending inside it
  const int32_t* lens = nullptr;      // [num_streams]
  // Stream s's token j goes to [offsets[s] + j]; offsets[s] + lens[s] <=
  // offsets[s + 1] <= num_tokens.
  const int32_t* offsets = nullptr;   // [num_streams + 1]
  int32_t num_tokens = 0;             // elements of positions and scores
  int32_t max_len = 0;                // host-side bound of lens: sizes the grid
  TokenScore score = TokenScore::kNone;
  uint64_t seed = 0;                  // kRandom: stream s draws from seed + s
  int32_t* positions = nullptr;       // [num_tokens]
  float* scores = nullptr;            // [num_tokens]; may be null for kNone
};

// MeanOverHeads gives every stream of a group of `heads_per_group` consecutive
// streams holding the same tokens one shared score per token: the group's
// scores for it summed in head order, then divided by heads_per_group. With
// each kv head's score the mean of its q heads' last-query attention, that is
// TOVA's score, the attention averaged over every q head of the layer
// (policy::TovaScores), for the one token set a layer keeps. In place.
struct MeanOverHeadsArgs {
  int32_t num_groups = 0;
  int32_t heads_per_group = 0;
  const int32_t* offsets = nullptr;  // [num_groups * heads_per_group + 1] into scores
  const int32_t* lens = nullptr;     // [num_groups * heads_per_group]; equal within a group
  int32_t max_len = 0;               // host-side bound of lens: sizes the grid
  int32_t num_scores = 0;
  float* scores = nullptr;           // [num_scores]
};

namespace gpu::internal {
// token_scores.cu; gpu::TokenScores and gpu::MeanOverHeads (token_scores.h)
// validate, then call them.
LaunchResult LaunchTokenScores(const TokenScoresArgs& args, GpuStream stream);
LaunchResult LaunchMeanOverHeads(const MeanOverHeadsArgs& args, GpuStream stream);
}  // namespace gpu::internal

}  // namespace headpage

#endif  // HEADPAGE_KERNELS_TOKEN_SCORES_ARGS_H_
