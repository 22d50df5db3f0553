// SPDX-License-Identifier: Apache-2.0
#include "core/dtype.h"

#include <cmath>
#include <limits>
#include <random>

#include "tests/testing/catch.h"

namespace headpage {
namespace {

// The correctly rounded 16-bit value for `x`, found by search rather than by bit
// tricks: the nearest of all finite encodings, ties to the even one, with
// overflow to infinity past max + half an ulp. An oracle for FromFloat.
template <typename T>
uint16_t NearestBySearch(float x, uint16_t max_finite, float overflow_threshold) {
  const double ax = std::fabs(static_cast<double>(x));
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  if (ax >= overflow_threshold) return sign | static_cast<uint16_t>(max_finite + 1);  // inf
  // Binary search for the largest magnitude encoding <= ax (encodings are monotone).
  uint32_t lo = 0, hi = max_finite;
  while (lo < hi) {
    const uint32_t mid = (lo + hi + 1) / 2;
    if (static_cast<double>(T::FromBits(static_cast<uint16_t>(mid)).ToFloat()) <= ax) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  if (lo == max_finite) return sign | static_cast<uint16_t>(lo);
  const double below = T::FromBits(static_cast<uint16_t>(lo)).ToFloat();
  const double above = T::FromBits(static_cast<uint16_t>(lo + 1)).ToFloat();
  uint32_t pick;
  if (ax - below < above - ax) {
    pick = lo;
  } else if (ax - below > above - ax) {
    pick = lo + 1;
  } else {
    pick = (lo % 2 == 0) ? lo : lo + 1;
  }
  return sign | static_cast<uint16_t>(pick);
}

TEST_CASE("dtype: sizes and names", "[core]") {
  REQUIRE(SizeOf(DType::kF32) == 4);
  REQUIRE(SizeOf(DType::kF16) == 2);
  REQUIRE(SizeOf(DType::kBF16) == 2);
  REQUIRE(SizeOf(static_cast<DType>(7)) == 0);
  REQUIRE(std::string(DTypeName(DType::kBF16)) == "bf16");
}

TEST_CASE("dtype: f16 known encodings", "[core]") {
  REQUIRE(f16::FromFloat(1.0f).bits == 0x3c00);
  REQUIRE(f16::FromFloat(-2.0f).bits == 0xc000);
  REQUIRE(f16::FromFloat(65504.0f).bits == 0x7bff);
  REQUIRE(f16::FromFloat(65519.0f).bits == 0x7bff);
  REQUIRE(f16::FromFloat(65520.0f).bits == 0x7c00);  // the tie rounds to even: infinity
  REQUIRE(f16::FromFloat(std::ldexp(1.0f, -24)).bits == 0x0001);  // smallest subnormal
  REQUIRE(f16::FromFloat(std::ldexp(1.0f, -25)).bits == 0x0000);  // tie to even: zero
  REQUIRE(f16::FromFloat(std::ldexp(1.5f, -25)).bits == 0x0001);
  REQUIRE(f16::FromFloat(1.0f + std::ldexp(1.0f, -11)).bits == 0x3c00);      // tie, even below
  REQUIRE(f16::FromFloat(1.0f + 3 * std::ldexp(1.0f, -11)).bits == 0x3c02);  // tie, even above
  REQUIRE(f16::FromFloat(-0.0f).bits == 0x8000);
  REQUIRE(f16::FromFloat(std::numeric_limits<float>::infinity()).bits == 0x7c00);
  REQUIRE(f16::FromFloat(std::numeric_limits<float>::quiet_NaN()).bits == 0x7fff);
  REQUIRE(f16::FromBits(0x3555).ToFloat() == Approx(0.333251953125).epsilon(0));
}

TEST_CASE("dtype: bf16 known encodings", "[core]") {
  REQUIRE(bf16::FromFloat(1.0f).bits == 0x3f80);
  REQUIRE(bf16::FromFloat(1.0f + std::ldexp(1.0f, -8)).bits == 0x3f80);
  REQUIRE(bf16::FromFloat(1.0f + 3 * std::ldexp(1.0f, -8)).bits == 0x3f82);
  REQUIRE(bf16::FromFloat(-3.0f).bits == 0xc040);
  REQUIRE(bf16::FromFloat(std::numeric_limits<float>::quiet_NaN()).bits == 0x7fff);
  REQUIRE(bf16::FromFloat(std::numeric_limits<float>::max()).bits == 0x7f80);  // rounds up to inf
}

TEST_CASE("dtype: every finite 16-bit value survives a round trip through float", "[core]") {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const auto bits = static_cast<uint16_t>(b);
    const f16 h = f16::FromBits(bits);
    if (!std::isnan(h.ToFloat())) REQUIRE(f16::FromFloat(h.ToFloat()).bits == bits);
    const bf16 g = bf16::FromBits(bits);
    if (!std::isnan(g.ToFloat())) REQUIRE(bf16::FromFloat(g.ToFloat()).bits == bits);
  }
}

TEST_CASE("dtype: FromFloat rounds to nearest even like an exhaustive search", "[core]") {
  std::mt19937 rng(1234);
  const auto f16_overflow = static_cast<float>(65520.0);
  const float bf16_overflow = std::ldexp(static_cast<float>(0x1ff), 119);  // max + half ulp
  for (int i = 0; i < 200000; ++i) {
    // Random bit patterns cover every exponent; scale some into f16's range.
    float x = BitsToFloat(rng());
    if (std::isnan(x)) continue;
    if (i % 2 == 0) x = std::ldexp(std::fmod(x, 1.0f), static_cast<int>(rng() % 48) - 30);
    CAPTURE(x);
    REQUIRE(f16::FromFloat(x).bits == NearestBySearch<f16>(x, 0x7bff, f16_overflow));
    REQUIRE(bf16::FromFloat(x).bits == NearestBySearch<bf16>(x, 0x7f7f, bf16_overflow));
  }
}

TEST_CASE("dtype: LoadAsFloat and StoreFromFloat", "[core]") {
  float f32[2];
  f16 h[2];
  bf16 b[2];
  StoreFromFloat(f32, 1, DType::kF32, 0.1f);
  StoreFromFloat(h, 1, DType::kF16, 0.1f);
  StoreFromFloat(b, 1, DType::kBF16, 0.1f);
  REQUIRE(LoadAsFloat(f32, 1, DType::kF32) == 0.1f);
  REQUIRE(LoadAsFloat(h, 1, DType::kF16) == f16::FromFloat(0.1f).ToFloat());
  REQUIRE(LoadAsFloat(b, 1, DType::kBF16) == bf16::FromFloat(0.1f).ToFloat());
}

}  // namespace
}  // namespace headpage
