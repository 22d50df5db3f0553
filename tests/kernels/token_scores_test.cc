// SPDX-License-Identifier: Apache-2.0
// ref::TokenScores against the policy functions on the dense streams of the
// shared case generator.
#include "kernels/token_scores.h"

#include <cstring>
#include <vector>

#include "policy/scores.h"
#include "tests/kernels/paged_case.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::PagedCase;

struct Dense {
  std::vector<int32_t> offsets{0};
  std::vector<int32_t> positions;
  std::vector<float> scores;
};

Dense Run(PagedCase& c, TokenScore kind, uint64_t seed, int32_t gap = 0) {
  Dense out;
  for (int32_t len : c.lens()) out.offsets.push_back(out.offsets.back() + len + gap);
  out.positions.assign(out.offsets.back(), -5);
  out.scores.assign(out.offsets.back(), -5.0f);
  TokenScoresArgs args;
  args.cache = c.view();
  args.num_streams = c.num_streams();
  args.indptr = c.indptr().data();
  args.page_ids = c.page_ids().data();
  args.num_page_ids = static_cast<int32_t>(c.page_ids().size());
  args.lens = c.lens().data();
  args.offsets = out.offsets.data();
  args.num_tokens = out.offsets.back();
  args.max_len = *std::max_element(c.lens().begin(), c.lens().end());
  args.score = kind;
  args.seed = seed;
  args.positions = out.positions.data();
  args.scores = out.scores.data();
  REQUIRE_OK(ref::TokenScores(args));
  return out;
}

TEST_CASE("TokenScores: positions, recency, key norm and random equal the policy functions",
          "[kernels]") {
  for (const testing::PageKind page_kind : testing::kEveryPageKind) {
    const DType dtype = page_kind.dtype;
    CAPTURE(DTypeName(dtype), KvDTypeName(page_kind.kv_dtype));
    const std::vector<int32_t> lens = testing::EdgeLengths(16);
    PagedCase c({16, 64, dtype, lens, 3, 1.0f, page_kind.kv_dtype}, 41);
    for (const TokenScore kind :
         {TokenScore::kNone, TokenScore::kPosition, TokenScore::kKeyNorm, TokenScore::kRandom}) {
      CAPTURE(static_cast<int>(kind));
      const Dense out = Run(c, kind, 1000, /*gap=*/2);
      for (int32_t s = 0; s < c.num_streams(); ++s) {
        const int32_t n = lens[s];
        const int32_t at = out.offsets[s];
        std::vector<int32_t> positions(n);
        std::vector<uint8_t> keys(static_cast<size_t>(n) * 64 * SizeOf(dtype));
        for (int32_t i = 0; i < n; ++i) {
          positions[i] = c.Position(s, i);
          REQUIRE(out.positions[at + i] == positions[i]);
          for (int32_t e = 0; e < 64; ++e) {
            StoreFromFloat(keys.data(), static_cast<size_t>(i) * 64 + e, dtype, c.Key(s, i, e));
          }
        }
        // The gap after each stream is never written.
        REQUIRE(out.positions[at + n] == -5);
        REQUIRE(out.scores[at + n] == -5.0f);
        std::vector<float> expected(n, -5.0f);
        const policy::StreamKeys stream{keys.data(), positions.data(), n, 64, dtype};
        switch (kind) {
          case TokenScore::kNone: break;
          case TokenScore::kPosition: REQUIRE_OK(policy::RecencyScores(stream, absl::MakeSpan(expected))); break;
          case TokenScore::kKeyNorm: REQUIRE_OK(policy::KeyNormScores(stream, absl::MakeSpan(expected))); break;
          case TokenScore::kRandom: policy::RandomScores(1000 + s, absl::MakeSpan(expected)); break;
        }
        // Bit for bit (memcmp: -0.0 and NaN payloads count); empty streams have no data.
        REQUIRE((n == 0 || std::memcmp(expected.data(), out.scores.data() + at, sizeof(float) * n) == 0));
      }
    }
  }
}

TEST_CASE("TokenScores: bad arguments are errors", "[kernels]") {
  PagedCase c({16, 64, DType::kF32, {5, 20}, 1}, 42);
  std::vector<int32_t> offsets{0, 5, 25}, positions(25, -1);
  std::vector<float> scores(25);
  std::vector<int32_t> lens = c.lens();
  auto args = [&] {
    TokenScoresArgs a;
    a.cache = c.view();
    a.num_streams = 2;
    a.indptr = c.indptr().data();
    a.page_ids = c.page_ids().data();
    a.num_page_ids = static_cast<int32_t>(c.page_ids().size());
    a.lens = lens.data();
    a.offsets = offsets.data();
    a.num_tokens = 25;
    a.max_len = 20;
    a.score = TokenScore::kPosition;
    a.positions = positions.data();
    a.scores = scores.data();
    return a;
  };
  REQUIRE_OK(ref::TokenScores(args()));
  TokenScoresArgs a = args();
  a.scores = nullptr;
  REQUIRE_ERROR(ref::TokenScores(a), absl::StatusCode::kInvalidArgument, "must be set");
  a = args();
  a.score = static_cast<TokenScore>(9);
  REQUIRE_ERROR(ref::TokenScores(a), absl::StatusCode::kInvalidArgument, "unknown score kind 9");
  a = args();
  a.num_tokens = 24;  // the last stream runs past the end
  REQUIRE_ERROR(ref::TokenScores(a), absl::StatusCode::kInvalidArgument, "stream 1");
  a = args();
  a.max_len = 19;
  REQUIRE_ERROR(ref::TokenScores(a), absl::StatusCode::kInvalidArgument, "max_len 19");
  lens[1] = 40;  // more tokens than its pages hold
  REQUIRE(ref::TokenScores(args()).code() != absl::StatusCode::kOk);
}

TEST_CASE("MeanOverHeads: one shared score per token, the heads' mean", "[kernels]") {
  // Two groups of two heads; group 1's streams are 3 tokens, with a gap after.
  std::vector<int32_t> offsets{0, 2, 4, 8, 12};
  std::vector<int32_t> lens{2, 2, 3, 3};
  std::vector<float> scores{1, 2, 3, 6, 0.5f, 1, 1.5f, -9, 1.5f, 0, 0.5f, -9};
  MeanOverHeadsArgs args{2, 2, offsets.data(), lens.data(), 3, 12, scores.data()};
  REQUIRE_OK(ref::MeanOverHeads(args));
  REQUIRE(scores == std::vector<float>{2, 4, 2, 4, 1, 0.5f, 1, -9, 1, 0.5f, 1, -9});
  lens[3] = 2;
  REQUIRE_ERROR(ref::MeanOverHeads(args), absl::StatusCode::kFailedPrecondition, "same tokens");
  lens[3] = 3;
  args.num_scores = 11;
  REQUIRE_ERROR(ref::MeanOverHeads(args), absl::StatusCode::kInvalidArgument, "stream 3");
  args.scores = nullptr;
  REQUIRE_ERROR(Validate(args), absl::StatusCode::kInvalidArgument, "must be set");
}

}  // namespace
}  // namespace headpage
