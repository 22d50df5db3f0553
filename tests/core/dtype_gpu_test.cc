// SPDX-License-Identifier: Apache-2.0
// Needs a GPU (ctest label `gpu`): the host f16/bf16 of core/dtype.h against
// CUDA's own conversions, bit for bit.
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

}  // namespace
}  // namespace headpage
