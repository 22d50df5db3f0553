// SPDX-License-Identifier: Apache-2.0
// Needs a GPU (ctest label `gpu`).
#include <cuda_runtime_api.h>

#include <vector>

#include "allocator/arena.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

TEST_CASE("CudaArena: device memory of the documented size, positions -1", "[allocator][gpu]") {
  CacheGeometry g = CacheGeometry::Llama3_8B();
  auto arena = CudaArena::Create(g, 1024);
  REQUIRE_OK(arena);
  const PagedKV v = arena->view();  // a copy: the move below empties the arena's own
  REQUIRE(arena->kv_bytes() == 1024 * g.page_bytes());
  cudaPointerAttributes attrs{};
  REQUIRE(cudaPointerGetAttributes(&attrs, v.data) == cudaSuccess);
  REQUIRE(attrs.type == cudaMemoryTypeDevice);

  std::vector<int32_t> positions(static_cast<size_t>(v.num_slots()));
  REQUIRE(cudaMemcpy(positions.data(), v.positions, positions.size() * sizeof(int32_t),
                     cudaMemcpyDeviceToHost) == cudaSuccess);
  for (int32_t p : positions) REQUIRE(p == -1);

  // The last page is addressable end to end.
  std::vector<uint8_t> page(g.page_bytes(), 0xab), back(g.page_bytes(), 0);
  char* last = static_cast<char*>(v.data) + (v.num_pages - 1) * g.page_bytes();
  REQUIRE(cudaMemcpy(last, page.data(), page.size(), cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(cudaMemcpy(back.data(), last, back.size(), cudaMemcpyDeviceToHost) == cudaSuccess);
  REQUIRE(back == page);

  // Moving transfers ownership; the moved-from arena frees nothing.
  CudaArena moved = std::move(arena).value();
  REQUIRE(moved.view().data == v.data);
  REQUIRE(arena->view().data == nullptr);
}

TEST_CASE("CudaArena: fp8 pages have one-byte elements and zeroed device scales",
          "[allocator][gpu]") {
  CacheGeometry g = CacheGeometry::Llama3_8B();
  auto plain = CudaArena::Create(g, 4);
  REQUIRE_OK(plain);
  REQUIRE(plain->view().scales == nullptr);
  g.kv_dtype = KvDType::kFP8E4M3;
  auto arena = CudaArena::Create(g, 100);
  REQUIRE_OK(arena);
  const PagedKV v = arena->view();
  REQUIRE(v.kv_dtype == KvDType::kFP8E4M3);
  REQUIRE(v.memory == MemoryKind::kDevice);
  REQUIRE(arena->kv_bytes() == 100 * g.page_bytes());
  REQUIRE(g.page_bytes() == 2 * 16 * 128);
  REQUIRE(v.scales != nullptr);
  REQUIRE(reinterpret_cast<uintptr_t>(v.scales) % 16 == 0);
  cudaPointerAttributes attrs{};
  REQUIRE(cudaPointerGetAttributes(&attrs, v.scales) == cudaSuccess);
  REQUIRE(attrs.type == cudaMemoryTypeDevice);
  std::vector<float> scales(static_cast<size_t>(2 * v.num_slots()), -1.0f);
  REQUIRE(cudaMemcpy(scales.data(), v.scales, scales.size() * sizeof(float),
                     cudaMemcpyDeviceToHost) == cudaSuccess);
  for (float s : scales) REQUIRE(s == 0.0f);
  std::vector<int32_t> positions(static_cast<size_t>(v.num_slots()));
  REQUIRE(cudaMemcpy(positions.data(), v.positions, positions.size() * sizeof(int32_t),
                     cudaMemcpyDeviceToHost) == cudaSuccess);
  for (int32_t p : positions) REQUIRE(p == -1);
  // Moving hands the scales over too.
  CudaArena moved = std::move(arena).value();
  REQUIRE(moved.view().scales == v.scales);
  REQUIRE(arena->view().scales == nullptr);
}

TEST_CASE("CudaArena: an impossible size is ResourceExhausted, not a crash", "[allocator][gpu]") {
  CacheGeometry g = CacheGeometry::Llama3_8B();
  g.page_size = 1024;  // 512 KiB pages: 2^21 of them is 1 TiB
  auto arena = CudaArena::Create(g, (1 << 21) - 1);  // just inside the int32 slot range
  REQUIRE(arena.status().code() == absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace headpage
