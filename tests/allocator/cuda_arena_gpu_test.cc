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

TEST_CASE("CudaArena: an impossible size is ResourceExhausted, not a crash", "[allocator][gpu]") {
  CacheGeometry g = CacheGeometry::Llama3_8B();
  g.page_size = 1024;  // 512 KiB pages: 2^21 of them is 1 TiB
  auto arena = CudaArena::Create(g, (1 << 21) - 1);  // just inside the int32 slot range
  REQUIRE(arena.status().code() == absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace headpage
