// SPDX-License-Identifier: Apache-2.0
#include <cstdint>

#include "allocator/arena.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

CacheGeometry SmallGeometry() {
  CacheGeometry g;
  g.num_layers = 2;
  g.num_kv_heads = 2;
  g.num_q_heads = 4;
  g.head_dim = 64;
  g.dtype = DType::kBF16;
  g.page_size = 4;
  return g;
}

TEST_CASE("HostArena: the view describes aligned pages and -1 positions", "[allocator]") {
  auto arena = HostArena::Create(SmallGeometry(), 10);
  REQUIRE_OK(arena);
  const PagedKV& v = arena->view();
  REQUIRE(v.num_pages == 10);
  REQUIRE(v.page_size == 4);
  REQUIRE(v.head_dim == 64);
  REQUIRE(v.dtype == DType::kBF16);
  REQUIRE(reinterpret_cast<uintptr_t>(v.data) % HostArena::kAlignment == 0);
  REQUIRE(arena->kv_bytes() == 10 * SmallGeometry().page_bytes());
  for (int64_t s = 0; s < v.num_slots(); ++s) REQUIRE(v.positions[s] == -1);
  // KeyPage/ValuePage agree with the shared index math.
  auto* base = static_cast<char*>(v.data);
  REQUIRE(static_cast<char*>(arena->KeyPage(3)) == base + v.KeyOffset(3 * 4) * 2);
  REQUIRE(static_cast<char*>(arena->ValuePage(3)) == base + v.ValueOffset(3 * 4) * 2);
}

TEST_CASE("HostArena: fp8 pages have one-byte elements and zeroed, aligned scales", "[allocator]") {
  CacheGeometry g = SmallGeometry();
  REQUIRE(HostArena::Create(g, 3)->view().scales == nullptr);  // kAuto: no scales
  g.kv_dtype = KvDType::kFP8E4M3;
  auto arena = HostArena::Create(g, 10);
  REQUIRE_OK(arena);
  const PagedKV& v = arena->view();
  REQUIRE(v.kv_dtype == KvDType::kFP8E4M3);
  REQUIRE(v.fp8());
  REQUIRE(v.dtype == DType::kBF16);
  REQUIRE(arena->kv_bytes() == 10 * g.page_bytes());
  REQUIRE(g.page_bytes() == 2 * 4 * 64);
  REQUIRE(v.scales != nullptr);
  REQUIRE(reinterpret_cast<uintptr_t>(v.scales) % 16 == 0);  // ValidatePagedKV's alignment
  for (int64_t s = 0; s < 2 * v.num_slots(); ++s) REQUIRE(v.scales[s] == 0.0f);
  for (int64_t s = 0; s < v.num_slots(); ++s) REQUIRE(v.positions[s] == -1);
  // Offsets count bytes: page 3's V rows start half a page in.
  auto* base = static_cast<char*>(v.data);
  REQUIRE(static_cast<char*>(arena->KeyPage(3)) == base + v.KeyOffset(3 * 4));
  REQUIRE(static_cast<char*>(arena->ValuePage(3)) == base + v.ValueOffset(3 * 4));
  // fp8 over f32 is not a geometry.
  g.dtype = DType::kF32;
  REQUIRE_ERROR(HostArena::Create(g, 2), absl::StatusCode::kInvalidArgument, "fp8_e4m3");
}

TEST_CASE("HostArena: bad sizes get clear errors", "[allocator]") {
  REQUIRE_ERROR(HostArena::Create(SmallGeometry(), 0), absl::StatusCode::kInvalidArgument,
                "num_pages");
  CacheGeometry big_pages = SmallGeometry();
  big_pages.page_size = 1 << 16;
  REQUIRE_ERROR(HostArena::Create(big_pages, 1 << 16), absl::StatusCode::kInvalidArgument,
                "int32 slot id");
  CacheGeometry bad = SmallGeometry();
  bad.num_q_heads = 3;
  REQUIRE_ERROR(HostArena::Create(bad, 4), absl::StatusCode::kInvalidArgument, "multiple");
}

TEST_CASE("CudaArena: validates its arguments before it looks for a device", "[allocator]") {
  REQUIRE_ERROR(CudaArena::Create(SmallGeometry(), 0), absl::StatusCode::kInvalidArgument,
                "num_pages");
  // Without a GPU (CI) or without CUDA compiled in, a clear refusal; with one, memory.
  auto arena = CudaArena::Create(SmallGeometry(), 4);
  if (!arena.ok()) {
    REQUIRE((arena.status().code() == absl::StatusCode::kUnavailable ||
             arena.status().code() == absl::StatusCode::kUnimplemented));
  }
}

}  // namespace
}  // namespace headpage
