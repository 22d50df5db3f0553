// SPDX-License-Identifier: Apache-2.0
#include "core/geometry.h"

#include "core/paged_kv.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

TEST_CASE("CacheGeometry: Llama-3-8B is valid and sized as expected", "[core]") {
  const CacheGeometry g = CacheGeometry::Llama3_8B();
  REQUIRE_OK(Validate(g));
  REQUIRE(g.streams_per_sequence() == 256);
  REQUIRE(g.group_size() == 4);
  REQUIRE(g.page_bytes() == 2 * 16 * 128 * 2);
}

TEST_CASE("CacheGeometry: every out-of-range field gets a clear error", "[core]") {
  const CacheGeometry good = CacheGeometry::Llama3_8B();
  auto with = [&](auto mutate) {
    CacheGeometry g = good;
    mutate(g);
    return Validate(g);
  };
  REQUIRE_ERROR(with([](CacheGeometry& g) { g.num_layers = 0; }),
                absl::StatusCode::kInvalidArgument, "num_layers");
  REQUIRE_ERROR(with([](CacheGeometry& g) { g.num_kv_heads = -1; }),
                absl::StatusCode::kInvalidArgument, "num_kv_heads");
  REQUIRE_ERROR(with([](CacheGeometry& g) { g.num_q_heads = 12; g.num_kv_heads = 8; }),
                absl::StatusCode::kInvalidArgument, "multiple of num_kv_heads");
  REQUIRE_ERROR(with([](CacheGeometry& g) { g.head_dim = 0; }),
                absl::StatusCode::kInvalidArgument, "head_dim");
  REQUIRE_ERROR(with([](CacheGeometry& g) { g.page_size = 0; }),
                absl::StatusCode::kInvalidArgument, "page_size");
  REQUIRE_ERROR(with([](CacheGeometry& g) { g.dtype = static_cast<DType>(9); }),
                absl::StatusCode::kInvalidArgument, "dtype");
}

TEST_CASE("PagedKV: offsets follow the documented page layout", "[core]") {
  PagedKV kv;
  kv.num_pages = 10;
  kv.page_size = 4;
  kv.head_dim = 8;
  // page 2, offset 3: K at 2 * (2*4*8) + 3*8, V one K block further.
  REQUIRE(kv.KeyOffset(2 * 4 + 3) == 2 * 64 + 24);
  REQUIRE(kv.ValueOffset(2 * 4 + 3) == 2 * 64 + 32 + 24);
  const int32_t pages[] = {7, 1, 5};
  REQUIRE(SlotOf(pages, 0, 4) == 28);
  REQUIRE(SlotOf(pages, 5, 4) == 5);
  REQUIRE(SlotOf(pages, 11, 4) == 23);
  REQUIRE(PagesFor(0, 4) == 0);
  REQUIRE(PagesFor(4, 4) == 1);
  REQUIRE(PagesFor(5, 4) == 2);
}

}  // namespace
}  // namespace headpage
