// SPDX-License-Identifier: Apache-2.0
// CriticalKV's projected value norms and two-stage selection, by hand and
// against a dense oracle.
#include "policy/critical.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "policy/select.h"
#include "tests/policy/scores_test_util.h"
#include "tests/testing/status_matchers.h"

namespace headpage::policy::testing {
namespace {

using absl::StatusCode;

OutputProjection Projection(const std::vector<float>& w, int32_t hidden, int32_t q_heads,
                            int32_t head_dim) {
  return OutputProjection{w.data(), hidden, q_heads, head_dim, DType::kF32};
}

// 2 kv heads, 4 q heads (groups of 2), head_dim 2, hidden 3. W_o is
// [hidden][q_heads * head_dim]; kv head 1 reads q heads 2 and 3, columns 4..7.
TEST_CASE("ProjectedValueNorms: the L1 norm of v W_o^h, averaged over the group",
          "[policy][critical]") {
  // clang-format off
  const std::vector<float> w = {
      9, 9, 9, 9,  1, 0,  2, 1,    // output 0
      9, 9, 9, 9,  0, 1, -1, 0,    // output 1
      9, 9, 9, 9,  1, 1,  0, -3};  // output 2
  // clang-format on
  const std::vector<float> v = {1, 2, 0, -1};  // two tokens
  // token 0: head 2 -> (1, 2, 3), |.|_1 = 6; head 3 -> (4, -1, -6), 11; mean 8.5
  // token 1: head 2 -> (0, -1, -1), 2;       head 3 -> (-1, 0, 3), 4;    mean 3
  std::vector<float> norms(2, -1.0f);
  REQUIRE_OK(ProjectedValueNorms(StreamValues{v.data(), 2, 2, DType::kF32},
                                 Projection(w, 3, 4, 2), 2, 1, absl::MakeSpan(norms)));
  RequireNear(norms, {8.5f, 3.0f});

  SECTION("errors write nothing") {
    std::vector<float> out(2, -1.0f);
    CHECK(ProjectedValueNorms(StreamValues{v.data(), 2, 2, DType::kF32}, Projection(w, 3, 4, 2),
                              2, 2, absl::MakeSpan(out))
              .code() == StatusCode::kInvalidArgument);  // kv head out of range
    CHECK(ProjectedValueNorms(StreamValues{v.data(), 2, 2, DType::kF32}, Projection(w, 3, 4, 2),
                              3, 0, absl::MakeSpan(out))
              .code() == StatusCode::kInvalidArgument);  // 4 q heads over 3 kv heads
    CHECK(ProjectedValueNorms(StreamValues{v.data(), 2, 2, DType::kF32}, Projection(w, 3, 4, 4),
                              2, 0, absl::MakeSpan(out))
              .code() == StatusCode::kInvalidArgument);  // head_dim mismatch
    CHECK(ProjectedValueNorms(StreamValues{v.data(), 2, 2, DType::kF32},
                              OutputProjection{nullptr, 3, 4, 2, DType::kF32}, 2, 0,
                              absl::MakeSpan(out))
              .code() == StatusCode::kInvalidArgument);
    CHECK(ProjectedValueNorms(StreamValues{v.data(), 2, 2, DType::kF32}, Projection(w, 3, 4, 2),
                              2, 0, absl::MakeSpan(out).subspan(1))
              .code() == StatusCode::kInvalidArgument);
    RequireNear(out, {-1.0f, -1.0f});
  }
}

TEST_CASE("ProjectedValueNorms: bf16 values and projection against a dense double oracle",
          "[policy][critical]") {
  // A hidden size that is not a multiple of the vector width, and a token
  // count that is not a multiple of the token block.
  const int32_t kv_heads = 3, q_heads = 9, d = 64, hidden = 101, n = 7;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  std::vector<bf16> v(static_cast<size_t>(n) * d), w(static_cast<size_t>(hidden) * q_heads * d);
  for (bf16& x : v) x = bf16::FromFloat(normal(rng));
  for (bf16& x : w) x = bf16::FromFloat(0.1f * normal(rng));
  for (int32_t kv = 0; kv < kv_heads; ++kv) {
    std::vector<float> norms(n);
    REQUIRE_OK(ProjectedValueNorms(StreamValues{v.data(), n, d, DType::kBF16},
                                   OutputProjection{w.data(), hidden, q_heads, d, DType::kBF16},
                                   kv_heads, kv, absl::MakeSpan(norms)));
    const int32_t group = q_heads / kv_heads;
    for (int32_t i = 0; i < n; ++i) {
      double expected = 0;
      for (int32_t g = 0; g < group; ++g) {
        const int32_t head = kv * group + g;
        for (int32_t o = 0; o < hidden; ++o) {
          double y = 0;
          for (int32_t e = 0; e < d; ++e) {
            y += double(v[i * d + e].ToFloat()) *
                 double(w[static_cast<size_t>(o) * q_heads * d + head * d + e].ToFloat());
          }
          expected += std::fabs(y);
        }
      }
      expected /= group;
      INFO("kv " << kv << " token " << i);
      CHECK(norms[i] == Approx(expected).epsilon(1e-5));
    }
  }
}

// 8 tokens, the last 2 protected (the window), keeping 6: stage 1 takes
// floor(6 * 0.5) = 3 by attention, the window counting, so one candidate
// (slot 1, the highest score); the other 3 go by (score + 1e-4) x norm.
TEST_CASE("CriticalScores: stage one by attention, stage two by attention x value norm",
          "[policy][critical]") {
  const std::vector<float> scores = {0.1f, 0.5f, 0.2f, 0.05f, 0.3f, 0.4f, 0.9f, 0.9f};
  const std::vector<int32_t> positions = {0, 1, 2, 3, 4, 5, 6, 7};
  const std::vector<float> norms = {10, 0.1f, 1, 100, 1, 1, 1, 1};
  const StreamScores stream{scores, positions, Protection{0, 2}};
  std::vector<float> out(8);
  REQUIRE_OK(CriticalScores(stream, norms, 6, CriticalOptions{}, absl::MakeSpan(out)));
  constexpr float kMax = std::numeric_limits<float>::max();
  RequireNear(out, {0.1001f * 10, kMax, 0.2001f, 0.0501f * 100, 0.3001f, 0.4001f, kMax, kMax});

  std::vector<int32_t> keep;
  REQUIRE_OK(SelectKeepSet(StreamScores{out, positions, Protection{0, 2}}, 6, &keep));
  CHECK(keep == std::vector<int32_t>{0, 1, 3, 5, 6, 7});
  // SnapKV alone would keep 1, 2, 4, 5 besides the window.
  REQUIRE_OK(SelectKeepSet(stream, 6, &keep));
  CHECK(keep == std::vector<int32_t>{1, 2, 4, 5, 6, 7});

  SECTION("first stage 1 keeps by attention alone; 0 by the product alone") {
    REQUIRE_OK(CriticalScores(stream, norms, 6, CriticalOptions{1.0, 1e-4f}, absl::MakeSpan(out)));
    REQUIRE_OK(SelectKeepSet(StreamScores{out, positions, Protection{0, 2}}, 6, &keep));
    CHECK(keep == std::vector<int32_t>{1, 2, 4, 5, 6, 7});
    REQUIRE_OK(CriticalScores(stream, norms, 6, CriticalOptions{0.0, 1e-4f}, absl::MakeSpan(out)));
    REQUIRE_OK(SelectKeepSet(StreamScores{out, positions, Protection{0, 2}}, 6, &keep));
    CHECK(keep == std::vector<int32_t>{0, 3, 4, 5, 6, 7});
  }
  SECTION("the Ada safeguard's secured tokens stay in stage 1") {
    // secured 5 (the window's 2 and 3 candidates): stage 1 takes the top 3
    // candidates by attention (slots 1, 5, 4), stage 2 one more by the product.
    REQUIRE_OK(CriticalScores(stream, norms, 6, CriticalOptions{}, absl::MakeSpan(out), 5));
    REQUIRE_OK(SelectKeepSet(StreamScores{out, positions, Protection{0, 2}}, 6, &keep));
    CHECK(keep == std::vector<int32_t>{1, 3, 4, 5, 6, 7});
  }
  SECTION("bad input is refused and writes nothing") {
    std::vector<float> untouched(8, -1.0f);
    const std::vector<float> negative = {10, 1, 1, -1, 1, 1, 1, 1};
    CHECK(CriticalScores(stream, negative, 6, CriticalOptions{}, absl::MakeSpan(untouched)).code() ==
          StatusCode::kInvalidArgument);
    CHECK(CriticalScores(stream, norms, 1, CriticalOptions{}, absl::MakeSpan(untouched)).code() ==
          StatusCode::kInvalidArgument);  // fewer than the protected
    CHECK(CriticalScores(stream, norms, 6, CriticalOptions{1.5, 1e-4f}, absl::MakeSpan(untouched))
              .code() == StatusCode::kInvalidArgument);
    CHECK(untouched == std::vector<float>(8, -1.0f));
  }
}

}  // namespace
}  // namespace headpage::policy::testing
