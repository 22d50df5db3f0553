// SPDX-License-Identifier: Apache-2.0
#include <utility>

#include "absl/strings/str_cat.h"
#include "allocator/arena.h"
#include "core/status.h"

#if HEADPAGE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace headpage {

CudaArena::CudaArena(CudaArena&& other) noexcept
    : kv_(std::exchange(other.kv_, nullptr)),
      positions_(std::exchange(other.positions_, nullptr)),
      scales_(std::exchange(other.scales_, nullptr)),
      kv_bytes_(std::exchange(other.kv_bytes_, 0)),
      view_(std::exchange(other.view_, PagedKV{})) {}

CudaArena& CudaArena::operator=(CudaArena&& other) noexcept {
  if (this != &other) {
    Reset();
    kv_ = std::exchange(other.kv_, nullptr);
    positions_ = std::exchange(other.positions_, nullptr);
    scales_ = std::exchange(other.scales_, nullptr);
    kv_bytes_ = std::exchange(other.kv_bytes_, 0);
    view_ = std::exchange(other.view_, PagedKV{});
  }
  return *this;
}

CudaArena::~CudaArena() { Reset(); }

#if HEADPAGE_HAVE_CUDA

void CudaArena::Reset() {
  if (kv_ != nullptr) cudaFree(kv_);
  if (positions_ != nullptr) cudaFree(positions_);
  if (scales_ != nullptr) cudaFree(scales_);
  kv_ = nullptr;
  positions_ = nullptr;
  scales_ = nullptr;
}

absl::StatusOr<CudaArena> CudaArena::Create(const CacheGeometry& geometry, int64_t num_pages) {
  HEADPAGE_RETURN_IF_ERROR(ValidateArenaSize(geometry, num_pages));
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    cudaGetLastError();  // clear the sticky "no device" error
    return absl::UnavailableError("CudaArena: no CUDA device is available");
  }
  CudaArena arena;
  arena.kv_bytes_ = geometry.page_bytes() * static_cast<size_t>(num_pages);
  const size_t num_slots = static_cast<size_t>(num_pages) * geometry.page_size;
  cudaError_t err = cudaMalloc(&arena.kv_, arena.kv_bytes_);
  if (err == cudaSuccess) {
    err = cudaMalloc(reinterpret_cast<void**>(&arena.positions_), num_slots * sizeof(int32_t));
  }
  // All bytes 0xff: every position -1 (no token), like the host arena.
  if (err == cudaSuccess) err = cudaMemset(arena.positions_, 0xff, num_slots * sizeof(int32_t));
  if (err == cudaSuccess && geometry.fp8()) {
    err = cudaMalloc(reinterpret_cast<void**>(&arena.scales_), 2 * num_slots * sizeof(float));
    if (err == cudaSuccess) err = cudaMemset(arena.scales_, 0, 2 * num_slots * sizeof(float));
  }
  if (err != cudaSuccess) {
    cudaGetLastError();
    const auto code = err == cudaErrorMemoryAllocation ? absl::StatusCode::kResourceExhausted
                                                       : absl::StatusCode::kInternal;
    return absl::Status(code, absl::StrCat("CudaArena: ", cudaGetErrorName(err), " for ",
                                           arena.kv_bytes_, " bytes"));
  }
  arena.view_.data = arena.kv_;
  arena.view_.positions = arena.positions_;
  arena.view_.scales = arena.scales_;
  arena.view_.num_pages = static_cast<int32_t>(num_pages);
  arena.view_.page_size = geometry.page_size;
  arena.view_.head_dim = geometry.head_dim;
  arena.view_.dtype = geometry.dtype;
  arena.view_.kv_dtype = geometry.kv_dtype;
  arena.view_.memory = MemoryKind::kDevice;
  return arena;
}

#else  // !HEADPAGE_HAVE_CUDA

void CudaArena::Reset() {}

absl::StatusOr<CudaArena> CudaArena::Create(const CacheGeometry& geometry, int64_t num_pages) {
  HEADPAGE_RETURN_IF_ERROR(ValidateArenaSize(geometry, num_pages));
  return absl::UnimplementedError("CudaArena: headpage was built without CUDA");
}

#endif

}  // namespace headpage
