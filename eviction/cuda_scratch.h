// SPDX-License-Identifier: Apache-2.0
// File: eviction/cuda_scratch.h
//
// Internal to the CUDA executor (CUDA builds only): error conversion and the
// growing scratch memory its steps lay their arrays out in.
#ifndef HEADPAGE_EVICTION_CUDA_SCRATCH_H_
#define HEADPAGE_EVICTION_CUDA_SCRATCH_H_

#include <cuda_runtime_api.h>

#include <cstddef>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace headpage::cuda_executor {

// A runtime call's error as a Status. A failed call also leaves its error as
// the thread's last error; it is cleared here, where it is reported, so that a
// later launch's check does not report it again as its own (a sticky error, a
// fault in a kernel, stays), as the kernels' CudaErrorResult does.
inline absl::Status CudaStatus(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();
  const auto code = error == cudaErrorMemoryAllocation ? absl::StatusCode::kResourceExhausted
                                                       : absl::StatusCode::kInternal;
  return absl::Status(code, absl::StrCat("CudaExecutor: ", what, ": ", cudaGetErrorName(error),
                                         " (", cudaGetErrorString(error), ")"));
}

// Memory that only grows: device (cudaMalloc) or pinned host (cudaMallocHost,
// so that copies from and to it are truly asynchronous).
template <bool kPinned>
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { Free(); }

  // Makes room for `bytes`. The old contents are lost; the caller has
  // synchronized the stream so that nothing in flight still uses them.
  absl::Status Reserve(size_t bytes) {
    if (bytes <= bytes_) return absl::OkStatus();
    Free();
    const cudaError_t error = kPinned ? cudaMallocHost(&data_, bytes) : cudaMalloc(&data_, bytes);
    if (error != cudaSuccess) {
      data_ = nullptr;
      return CudaStatus(error, kPinned ? "pinned host scratch" : "device scratch");
    }
    bytes_ = bytes;
    return absl::OkStatus();
  }
  char* data() const { return static_cast<char*>(data_); }
  size_t bytes() const { return bytes_; }

 private:
  void Free() {
    if (data_ != nullptr) kPinned ? cudaFreeHost(data_) : cudaFree(data_);
    data_ = nullptr;
    bytes_ = 0;
  }
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Sections of one scratch buffer, each 256-byte aligned.
class Layout {
 public:
  size_t Add(size_t bytes) {
    const size_t at = total_;
    total_ += (bytes + 255) / 256 * 256;
    return at;
  }
  size_t total() const { return total_; }

 private:
  size_t total_ = 0;
};

template <typename T>
T* At(char* base, size_t offset) {
  return reinterpret_cast<T*>(base + offset);
}

}  // namespace headpage::cuda_executor

#endif  // HEADPAGE_EVICTION_CUDA_SCRATCH_H_
