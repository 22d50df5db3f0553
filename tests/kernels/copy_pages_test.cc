// SPDX-License-Identifier: Apache-2.0
#include "kernels/copy_pages.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/kv_rows.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels/paged_case.h"
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

TEST_CASE("CopyPages: fp8 pages bring their scales along", "[kernels]") {
  testing::PagedCase c({4, 64, DType::kF16, {8, 3}, 4, 1.0f, KvDType::kFP8E4M3}, 61);
  testing::PagedCase before = c;
  // Stream 0's second page and stream 1's partly filled page, onto spare pages.
  const std::vector<int32_t> src = {c.page_ids()[1], c.page_ids()[2]};
  std::vector<int32_t> dst;
  for (int32_t p = 0; p < c.num_pages() && dst.size() < 2; ++p) {
    if (std::find(c.page_ids().begin(), c.page_ids().end(), p) == c.page_ids().end()) {
      dst.push_back(p);
    }
  }
  REQUIRE_OK(ref::CopyPages({c.view(), 2, src.data(), dst.data()}));
  const size_t page_bytes = 2 * 4 * 64;
  for (size_t i = 0; i < 2; ++i) {
    CAPTURE(i);
    REQUIRE(std::memcmp(c.data().data() + dst[i] * page_bytes,
                        before.data().data() + src[i] * page_bytes, page_bytes) == 0);
    for (int32_t o = 0; o < 4; ++o) {
      const int64_t from = int64_t{src[i]} * 4 + o, to = int64_t{dst[i]} * 4 + o;
      REQUIRE(c.positions()[to] == before.positions()[from]);
      // memcmp: the partly filled page's empty slots carry NaN scales over.
      REQUIRE(std::memcmp(&c.scales()[2 * to], &before.scales()[2 * from], 2 * sizeof(float)) == 0);
    }
  }
  // The dense view of the copied tokens reads the same through the new pages.
  REQUIRE(c.Key(1, 2, 5) == LoadKvElement(c.view(), int64_t{dst[1]} * 4 + 2, KvPart::kKey, 5));
  // Nothing else changed.
  for (int32_t p = 0; p < c.num_pages(); ++p) {
    if (p == dst[0] || p == dst[1]) continue;
    REQUIRE(std::memcmp(c.data().data() + p * page_bytes, before.data().data() + p * page_bytes,
                        page_bytes) == 0);
    REQUIRE(std::memcmp(&c.scales()[8 * p], &before.scales()[8 * p], 8 * sizeof(float)) == 0);
  }
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
