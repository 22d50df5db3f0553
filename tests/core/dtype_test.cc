// SPDX-License-Identifier: Apache-2.0
#include "core/dtype.h"

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

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

// ---- fp8 e4m3 ------------------------------------------------------------

// The correctly rounded e4m3 encoding of `x` by search over the 127
// non-negative finite encodings: the nearest, ties to the even code (the even
// mantissa), anything past 448 saturating to 448. An oracle for FromFloat.
uint8_t Fp8NearestBySearch(float x) {
  const uint8_t sign = std::signbit(x) ? 0x80 : 0;
  const double ax = std::fabs(static_cast<double>(x));
  uint8_t best = 0;
  double best_distance = std::numeric_limits<double>::infinity();
  for (uint32_t code = 0; code <= 0x7e; ++code) {
    const float value = fp8_e4m3::FromBits(static_cast<uint8_t>(code)).ToFloat();
    const double distance = std::fabs(static_cast<double>(value) - ax);
    if (distance < best_distance || (distance == best_distance && code % 2 == 0)) {
      best = static_cast<uint8_t>(code);
      best_distance = distance;
    }
  }
  return sign | best;
}

TEST_CASE("dtype: kv dtypes, names and element sizes", "[core]") {
  REQUIRE(std::string(KvDTypeName(KvDType::kAuto)) == "auto");
  REQUIRE(std::string(KvDTypeName(KvDType::kFP8E4M3)) == "fp8_e4m3");
  REQUIRE(IsKnown(KvDType::kFP8E4M3));
  REQUIRE_FALSE(IsKnown(static_cast<KvDType>(2)));
  REQUIRE(KvElementBytes(DType::kBF16, KvDType::kAuto) == 2);
  REQUIRE(KvElementBytes(DType::kF32, KvDType::kAuto) == 4);
  REQUIRE(KvElementBytes(DType::kF16, KvDType::kFP8E4M3) == 1);
}

TEST_CASE("dtype: fp8 e4m3 known encodings", "[core]") {
  REQUIRE(fp8_e4m3::FromFloat(1.0f).bits == 0x38);
  REQUIRE(fp8_e4m3::FromFloat(-2.0f).bits == 0xc0);
  REQUIRE(fp8_e4m3::FromFloat(448.0f).bits == 0x7e);
  REQUIRE(fp8_e4m3::FromFloat(-448.0f).bits == 0xfe);
  REQUIRE(fp8_e4m3::FromFloat(std::ldexp(1.0f, -6)).bits == 0x08);  // smallest normal
  REQUIRE(fp8_e4m3::FromFloat(std::ldexp(7.0f, -9)).bits == 0x07);  // largest subnormal
  REQUIRE(fp8_e4m3::FromFloat(std::ldexp(1.0f, -9)).bits == 0x01);  // smallest subnormal
  REQUIRE(fp8_e4m3::FromFloat(0.0f).bits == 0x00);
  REQUIRE(fp8_e4m3::FromFloat(-0.0f).bits == 0x80);
  REQUIRE(fp8_e4m3::FromBits(0x7e).ToFloat() == 448.0f);
  REQUIRE(fp8_e4m3::FromBits(0x01).ToFloat() == std::ldexp(1.0f, -9));
  REQUIRE(fp8_e4m3::FromBits(0x3a).ToFloat() == 1.25f);
  REQUIRE(std::signbit(fp8_e4m3::FromBits(0x80).ToFloat()));
}

TEST_CASE("dtype: fp8 rounds ties to even, normal and subnormal", "[core]") {
  REQUIRE(fp8_e4m3::FromFloat(1.0625f).bits == 0x38);  // between 1 and 1.125: even below
  REQUIRE(fp8_e4m3::FromFloat(1.1875f).bits == 0x3a);  // between 1.125 and 1.25: even above
  REQUIRE(fp8_e4m3::FromFloat(std::nextafter(1.0625f, 2.0f)).bits == 0x39);
  REQUIRE(fp8_e4m3::FromFloat(-1.1875f).bits == 0xba);
  REQUIRE(fp8_e4m3::FromFloat(std::ldexp(1.0f, -10)).bits == 0x00);  // half the smallest: 0
  REQUIRE(fp8_e4m3::FromFloat(std::nextafter(std::ldexp(1.0f, -10), 1.0f)).bits == 0x01);
  REQUIRE(fp8_e4m3::FromFloat(std::ldexp(1.5f, -9)).bits == 0x02);
  REQUIRE(fp8_e4m3::FromFloat(std::ldexp(2.5f, -9)).bits == 0x02);
  REQUIRE(fp8_e4m3::FromFloat(std::ldexp(7.5f, -9)).bits == 0x08);  // subnormal to normal
  REQUIRE(fp8_e4m3::FromFloat(std::ldexp(1.0f, -30)).bits == 0x00);
  REQUIRE(fp8_e4m3::FromFloat(-std::ldexp(1.0f, -30)).bits == 0x80);
  REQUIRE(fp8_e4m3::FromFloat(std::numeric_limits<float>::denorm_min()).bits == 0x00);
}

TEST_CASE("dtype: fp8 saturates at 448, NaN is 0x7f", "[core]") {
  const float inf = std::numeric_limits<float>::infinity();
  REQUIRE(fp8_e4m3::FromFloat(416.0f).bits == 0x7d);
  REQUIRE(fp8_e4m3::FromFloat(464.0f).bits == 0x7e);  // the tie with 480 (no such value)
  REQUIRE(fp8_e4m3::FromFloat(470.0f).bits == 0x7e);  // rounds to 480: saturated
  REQUIRE(fp8_e4m3::FromFloat(1e6f).bits == 0x7e);
  REQUIRE(fp8_e4m3::FromFloat(std::numeric_limits<float>::max()).bits == 0x7e);
  REQUIRE(fp8_e4m3::FromFloat(inf).bits == 0x7e);
  REQUIRE(fp8_e4m3::FromFloat(-inf).bits == 0xfe);
  REQUIRE(fp8_e4m3::FromFloat(std::numeric_limits<float>::quiet_NaN()).bits == 0x7f);
  REQUIRE(fp8_e4m3::FromFloat(-std::numeric_limits<float>::quiet_NaN()).bits == 0x7f);
  REQUIRE(std::isnan(fp8_e4m3::FromBits(0x7f).ToFloat()));
  REQUIRE(std::isnan(fp8_e4m3::FromBits(0xff).ToFloat()));
}

TEST_CASE("dtype: every finite fp8 value survives a round trip through float", "[core]") {
  int finite = 0;
  for (uint32_t b = 0; b < 0x100; ++b) {
    const auto bits = static_cast<uint8_t>(b);
    const float f = fp8_e4m3::FromBits(bits).ToFloat();
    if (std::isnan(f)) {
      REQUIRE((bits & 0x7f) == 0x7f);
      continue;
    }
    ++finite;
    CAPTURE(b, f);
    REQUIRE(fp8_e4m3::FromFloat(f).bits == bits);
    REQUIRE(std::fabs(f) <= fp8_e4m3::kMax);
  }
  REQUIRE(finite == 254);
}

TEST_CASE("dtype: fp8 FromFloat rounds to nearest even like an exhaustive search", "[core]") {
  std::mt19937 rng(4321);
  for (int i = 0; i < 200000; ++i) {
    float x = BitsToFloat(rng());
    if (std::isnan(x)) continue;
    // Most draws scaled into e4m3's range (subnormals to just past 448).
    if (i % 4 != 0) x = std::ldexp(std::fmod(x, 1.0f), static_cast<int>(rng() % 22) - 12);
    CAPTURE(x);
    REQUIRE(fp8_e4m3::FromFloat(x).bits == Fp8NearestBySearch(x));
  }
}

TEST_CASE("dtype: QuantizeRowFp8 scales each row by its amax", "[core]") {
  fp8_e4m3 q[4];
  const float zeros[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  REQUIRE(QuantizeRowFp8(zeros, 4, q) == 0.0f);
  for (const fp8_e4m3 e : q) REQUIRE(e.bits == 0x00);

  // amax 448: inv 1, every element representable is stored exactly, scale 1.
  const float exact[4] = {448.0f, -224.0f, 1.0f, -0.0f};
  REQUIRE(QuantizeRowFp8(exact, 4, q) == 1.0f);
  REQUIRE(q[0].bits == 0x7e);
  REQUIRE(q[1].bits == fp8_e4m3::FromFloat(-224.0f).bits);
  REQUIRE(q[2].bits == 0x38);
  REQUIRE(q[3].bits == 0x80);

  // amax 2 (the negative element): the row is stored times 224.
  const float twos[4] = {1.0f, -2.0f, 0.5f, 0.25f};
  REQUIRE(QuantizeRowFp8(twos, 4, q) == 2.0f / 448.0f);
  REQUIRE(q[0].bits == fp8_e4m3::FromFloat(224.0f).bits);
  REQUIRE(q[1].bits == 0xfe);
  REQUIRE(q[2].bits == fp8_e4m3::FromFloat(112.0f).bits);
  REQUIRE(q[3].bits == fp8_e4m3::FromFloat(56.0f).bits);

  // A NaN element is stored as NaN and does not take part in the amax.
  const float with_nan[4] = {0.5f, std::numeric_limits<float>::quiet_NaN(), -1.0f, 0.0f};
  REQUIRE(QuantizeRowFp8(with_nan, 4, q) == 1.0f / 448.0f);
  REQUIRE(q[1].bits == 0x7f);
  REQUIRE(q[2].bits == 0xfe);

  // A row so small that 448 / amax overflows (a subnormal bf16 value): the
  // multiplier stops at FLT_MAX, so its zeros stay zero (0 * inf would be NaN).
  const float tiny[4] = {1e-39f, 0.0f, -0.0f, -5e-40f};
  const float tiny_scale = QuantizeRowFp8(tiny, 4, q);
  REQUIRE(tiny_scale == 1e-39f / 448.0f);
  REQUIRE(q[0].bits == fp8_e4m3::FromFloat(1e-39f * std::numeric_limits<float>::max()).bits);
  REQUIRE(q[1].bits == 0x00);
  REQUIRE(q[2].bits == 0x80);
  for (const fp8_e4m3 e : q) REQUIRE(std::isfinite(e.ToFloat()));
}

TEST_CASE("dtype: QuantizeRowFp8 maps the amax to 448 and reads back within an ulp", "[core]") {
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  std::vector<float> row(128);
  std::vector<fp8_e4m3> q(row.size());
  for (int trial = 0; trial < 200; ++trial) {
    const float magnitude = std::ldexp(1.0f, trial % 40 - 20);
    size_t arg_max = 0;
    for (size_t i = 0; i < row.size(); ++i) {
      row[i] = value(rng) * magnitude;
      if (std::fabs(row[i]) > std::fabs(row[arg_max])) arg_max = i;
    }
    const float scale = QuantizeRowFp8(row.data(), row.size(), q.data());
    REQUIRE(scale == std::fabs(row[arg_max]) / 448.0f);
    REQUIRE((q[arg_max].bits & 0x7f) == 0x7e);
    for (size_t i = 0; i < row.size(); ++i) {
      CAPTURE(trial, i, row[i]);
      // e4m3 keeps 3 mantissa bits: a normal is within 2^-4 relative, a
      // subnormal within half of 2^-9 of the scaled value.
      const float back = q[i].ToFloat() * scale;
      REQUIRE(std::fabs(back - row[i]) <=
              std::max(std::fabs(row[i]) * 0.0625f, scale * std::ldexp(1.0f, -10)) * 1.0001f);
    }
  }
}

}  // namespace
}  // namespace headpage
