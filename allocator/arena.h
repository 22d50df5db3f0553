// SPDX-License-Identifier: Apache-2.0
// File: allocator/arena.h
//
// An Arena owns the bytes behind a PagePool's ids: one block of
// num_pages * page_bytes for K/V plus the int32 position of every slot (and, for
// fp8 pages, the K and V scales of every slot), laid out as core/paged_kv.h
// describes. HostArena lives in (aligned) host memory and backs
// the CPU kernels; CudaArena is one cudaMalloc and backs the CUDA kernels. Both hand
// out the same PagedKV view, so one plan runs on either.
#ifndef HEADPAGE_ALLOCATOR_ARENA_H_
#define HEADPAGE_ALLOCATOR_ARENA_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "core/geometry.h"
#include "core/paged_kv.h"

namespace headpage {

class HostArena {
 public:
  // Alignment of the K/V block; a page starts on it when page_bytes is a multiple.
  static constexpr size_t kAlignment = 256;

  // InvalidArgument for a bad geometry or num_pages outside [1, 2^31 - 1], or when
  // num_pages * page_size slot ids do not fit in int32; ResourceExhausted when the
  // host has no memory for it. Positions start at -1 (no token).
  [[nodiscard]] static absl::StatusOr<HostArena> Create(const CacheGeometry& geometry,
                                                        int64_t num_pages);

  const PagedKV& view() const { return view_; }
  size_t kv_bytes() const { return kv_bytes_; }

  // The start of page `page`'s K rows and V rows. REQUIRES: page < num_pages.
  void* KeyPage(PageId page) const;
  void* ValuePage(PageId page) const;

 private:
  struct FreeDeleter {
    void operator()(void* p) const;
  };
  HostArena() = default;

  std::unique_ptr<void, FreeDeleter> kv_;
  std::unique_ptr<int32_t[]> positions_;
  std::unique_ptr<float[]> scales_;  // fp8 only, zeroed
  size_t kv_bytes_ = 0;
  size_t page_bytes_ = 0;
  PagedKV view_;
};

// Device memory for the pool. Available only in CUDA builds on a machine with a
// GPU: Create() returns Unimplemented in builds without CUDA and Unavailable when
// no device can be used.
class CudaArena {
 public:
  [[nodiscard]] static absl::StatusOr<CudaArena> Create(const CacheGeometry& geometry,
                                                        int64_t num_pages);
  CudaArena(CudaArena&& other) noexcept;
  CudaArena& operator=(CudaArena&& other) noexcept;
  CudaArena(const CudaArena&) = delete;
  CudaArena& operator=(const CudaArena&) = delete;
  ~CudaArena();

  // Device pointers.
  const PagedKV& view() const { return view_; }
  size_t kv_bytes() const { return kv_bytes_; }

 private:
  CudaArena() = default;
  void Reset();

  void* kv_ = nullptr;         // cudaMalloc'd
  int32_t* positions_ = nullptr;  // cudaMalloc'd
  float* scales_ = nullptr;       // cudaMalloc'd, fp8 only, zeroed
  size_t kv_bytes_ = 0;
  PagedKV view_;
};

// Shared by both arenas: InvalidArgument unless the geometry is valid and a pool
// of num_pages of it can be addressed with int32 page and slot ids.
[[nodiscard]] absl::Status ValidateArenaSize(const CacheGeometry& geometry, int64_t num_pages);

}  // namespace headpage

#endif  // HEADPAGE_ALLOCATOR_ARENA_H_
