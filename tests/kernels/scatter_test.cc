// SPDX-License-Identifier: Apache-2.0
// ref::ScatterInt32: hand cases and errors (the GPU path runs in
// tests/runtime/device_block_tables_gpu_test.cc, through DeviceBlockTables).
#include "kernels/scatter.h"

#include <cstdint>
#include <vector>

#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

TEST_CASE("ScatterInt32: every pair lands, nothing else changes", "[kernels]") {
  std::vector<int32_t> dst(6, -1);
  alignas(8) int32_t pairs[] = {4, 40, 0, 7, 5, -3};
  REQUIRE_OK(ref::ScatterInt32({dst.data(), 6, pairs, 3}));
  REQUIRE(dst == std::vector<int32_t>{7, -1, -1, -1, 40, -3});
  REQUIRE_OK(ref::ScatterInt32({dst.data(), 6, pairs, 0}));
}

TEST_CASE("ScatterInt32: bad arguments write nothing", "[kernels]") {
  std::vector<int32_t> dst(4, 1);
  alignas(8) int32_t pairs[] = {1, 9, 4, 9};
  REQUIRE_ERROR(ref::ScatterInt32({dst.data(), 4, pairs, 2}), absl::StatusCode::kOutOfRange,
                "pair 1's index 4");
  REQUIRE(dst == std::vector<int32_t>(4, 1));
  REQUIRE_ERROR(Validate(ScatterInt32Args{dst.data(), 4, nullptr, 1}),
                absl::StatusCode::kInvalidArgument, "null");
  REQUIRE_ERROR(Validate(ScatterInt32Args{dst.data(), 4, pairs, -1}),
                absl::StatusCode::kInvalidArgument, "count -1");
  REQUIRE_ERROR(Validate(ScatterInt32Args{dst.data(), 4, pairs + 1, 1}),
                absl::StatusCode::kInvalidArgument, "8-byte aligned");
}

}  // namespace
}  // namespace headpage
