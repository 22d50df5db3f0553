// SPDX-License-Identifier: Apache-2.0
// Needs a GPU (ctest label `gpu`): the host f16/bf16/fp8 of core/dtype.h
// against CUDA's own conversions, bit for bit.
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/dtype.h"
#include "tests/core/dtype_gpu_convert.h"
#include "tests/testing/catch.h"

namespace headpage {
namespace {

TEST_CASE("dtype: host conversions equal CUDA's __float2half_rn and __float2bfloat16_rn", "[core][gpu]") {
  // Every 32nd bit pattern (2^27 floats: every exponent, sign, NaN and inf, and
  // the tie cases, whose low bits are multiples of 32), at two offsets.
  const uint32_t stride = 32;
  const uint64_t count = (uint64_t{1} << 32) / stride;
  for (const uint32_t offset : {0u, 17u}) {
    CAPTURE(offset);
    std::vector<uint16_t> f16_bits(count), bf16_bits(count);
    REQUIRE(testing::ConvertOnDevice(offset, stride, count, f16_bits.data(), bf16_bits.data()) ==
            cudaSuccess);
    uint64_t f16_mismatch = 0, bf16_mismatch = 0, first_bad = 0;
    for (uint64_t i = 0; i < count; ++i) {
      const auto bits = static_cast<uint32_t>(offset + i * stride);
      const float x = BitsToFloat(bits);
      if (f16::FromFloat(x).bits != f16_bits[i]) {
        if (f16_mismatch++ == 0) first_bad = bits;
      }
      if (bf16::FromFloat(x).bits != bf16_bits[i]) {
        if (bf16_mismatch++ == 0 && f16_mismatch == 0) first_bad = bits;
      }
    }
    CAPTURE(first_bad);
    REQUIRE(f16_mismatch == 0);
    REQUIRE(bf16_mismatch == 0);
  }
}

TEST_CASE("dtype: host fp8 e4m3 equals CUDA's satfinite __nv_cvt_float_to_fp8 and its x2 form",
          "[core][gpu]") {
  // The same sample as above: every exponent, both signs, NaN, inf, the ties
  // (low bits multiples of 32) and everything past 448, at two offsets. The
  // pair conversion sees each float beside another (its bits rotated by 16).
  const uint32_t stride = 32;
  const uint64_t count = (uint64_t{1} << 32) / stride;
  for (const uint32_t offset : {0u, 17u}) {
    CAPTURE(offset);
    std::vector<uint8_t> fp8_bits(count);
    std::vector<uint16_t> fp8x2_bits(count);
    REQUIRE(testing::ConvertFp8OnDevice(offset, stride, count, fp8_bits.data(),
                                        fp8x2_bits.data()) == cudaSuccess);
    uint64_t mismatch = 0, x2_mismatch = 0;
    uint32_t first_bad = 0, first_bad_x2 = 0;
    for (uint64_t i = 0; i < count; ++i) {
      const auto bits = static_cast<uint32_t>(offset + i * stride);
      const uint8_t x = fp8_e4m3::FromFloat(BitsToFloat(bits)).bits;
      const uint8_t y = fp8_e4m3::FromFloat(BitsToFloat(testing::PartnerBits(bits))).bits;
      if (x != fp8_bits[i] && mismatch++ == 0) first_bad = bits;
      if ((x | (y << 8)) != fp8x2_bits[i] && x2_mismatch++ == 0) first_bad_x2 = bits;
    }
    CAPTURE(first_bad, first_bad_x2);
    REQUIRE(mismatch == 0);
    REQUIRE(x2_mismatch == 0);
  }
}

TEST_CASE("dtype: host fp8 e4m3 ToFloat equals the device's, every byte", "[core][gpu]") {
  std::vector<float> device(256);
  REQUIRE(testing::Fp8ToFloatOnDevice(device.data()) == cudaSuccess);
  for (uint32_t b = 0; b < 256; ++b) {
    CAPTURE(b);
    const float host = fp8_e4m3::FromBits(static_cast<uint8_t>(b)).ToFloat();
    if (std::isnan(host)) {
      REQUIRE(std::isnan(device[b]));  // 0x7f and 0xff; the payload may differ
    } else {
      REQUIRE(FloatBits(host) == FloatBits(device[b]));
    }
  }
}

}  // namespace
}  // namespace headpage
