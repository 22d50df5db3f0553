// SPDX-License-Identifier: Apache-2.0
#include "core/geometry.h"

#include <string>

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

TEST_CASE("CacheGeometry: fp8 pages need f16 or bf16, and a known kv_dtype", "[core]") {
  CacheGeometry g = CacheGeometry::Llama3_8B();
  REQUIRE(g.kv_dtype == KvDType::kAuto);
  REQUIRE_FALSE(g.fp8());
  g.kv_dtype = KvDType::kFP8E4M3;
  REQUIRE(g.fp8());
  REQUIRE_OK(Validate(g));
  g.dtype = DType::kF16;
  REQUIRE_OK(Validate(g));
  g.dtype = DType::kF32;
  REQUIRE_ERROR(Validate(g), absl::StatusCode::kInvalidArgument, "fp8_e4m3 needs a model dtype");
  g.dtype = DType::kBF16;
  g.kv_dtype = static_cast<KvDType>(7);
  REQUIRE_ERROR(Validate(g), absl::StatusCode::kInvalidArgument, "unknown kv_dtype value 7");
  // f32 pages stay valid without fp8.
  g.kv_dtype = KvDType::kAuto;
  g.dtype = DType::kF32;
  REQUIRE_OK(Validate(g));
}

TEST_CASE("CacheGeometry: fp8 page bytes, scale bytes and memory per page", "[core]") {
  CacheGeometry g = CacheGeometry::Llama3_8B(DType::kBF16, 16);
  REQUIRE(g.page_scale_bytes() == 0);
  REQUIRE(g.page_memory_bytes() == g.page_bytes());
  REQUIRE(g.DebugString().find("kv_dtype") == std::string::npos);
  g.kv_dtype = KvDType::kFP8E4M3;
  REQUIRE(g.page_bytes() == 2 * 16 * 128);                 // one byte per element
  REQUIRE(g.page_scale_bytes() == 2 * 16 * sizeof(float));  // a K and a V scale per slot
  REQUIRE(g.page_memory_bytes() == 2 * 16 * 128 + 2 * 16 * 4);
  REQUIRE(g.DebugString().find("kv_dtype=fp8_e4m3") != std::string::npos);
  g.page_size = 5;
  g.head_dim = 64;
  REQUIRE(g.page_bytes() == 2 * 5 * 64);
  REQUIRE(g.page_memory_bytes() == 2 * 5 * 64 + 2 * 5 * 4);
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
