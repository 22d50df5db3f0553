// SPDX-License-Identifier: Apache-2.0
#include "kernels/copy_pages.h"

#include <vector>

#include "tests/kernels/kernel_test_util.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::HostCache;

TEST_CASE("CopyPages: copies K, V and positions of whole pages", "[kernels]") {
  HostCache cache(6, 4, 64);
  for (int32_t i = 0; i < 4; ++i) cache.Put(1 * 4 + i, 10 + i);
  for (int32_t i = 0; i < 3; ++i) cache.Put(2 * 4 + i, 20 + i);  // partly filled page
  const std::vector<int32_t> src = {1, 2}, dst = {4, 5};
  REQUIRE_OK(ref::CopyPages({cache.view, 2, src.data(), dst.data()}));
  for (int32_t i = 0; i < 4; ++i) REQUIRE(cache.Holds(4 * 4 + i, 10 + i));
  for (int32_t i = 0; i < 3; ++i) REQUIRE(cache.Holds(5 * 4 + i, 20 + i));
  REQUIRE(cache.positions[5 * 4 + 3] == -1);  // the empty slot's position came along
}

TEST_CASE("CopyPages: conflicting or out-of-range copies are rejected", "[kernels]") {
  HostCache cache(6, 4, 64);
  cache.Put(0, 7);
  auto check = [&](std::vector<int32_t> src, std::vector<int32_t> dst, const char* what) {
    const std::vector<float> before(cache.data);
    REQUIRE_ERROR(ref::CopyPages({cache.view, static_cast<int32_t>(src.size()), src.data(),
                                  dst.data()}),
                  absl::StatusCode::kInvalidArgument, what);
    REQUIRE(cache.data == before);
  };
  check({0, 1}, {3, 3}, "reuses a destination");
  check({0, 3}, {3, 4}, "also written");
  check({3, 0}, {0, 4}, "also written");
  check({0}, {6}, "outside the cache");
  check({-1}, {2}, "outside the cache");
  REQUIRE_ERROR(Validate(CopyPagesArgs{cache.view, 1, nullptr, nullptr}),
                absl::StatusCode::kInvalidArgument, "null");
  REQUIRE_ERROR(Validate(CopyPagesArgs{cache.view, -1, nullptr, nullptr}),
                absl::StatusCode::kInvalidArgument, "num_copies");
}

}  // namespace
}  // namespace headpage
