// SPDX-License-Identifier: Apache-2.0
// File: tests/kernels/device_buffer.h
//
// Device memory for the GPU tests and benchmarks: RAII, upload/download, and
// poisoning (outputs are filled with 0xff bytes, a NaN in every float type,
// before a kernel runs, so an element it fails to write cannot pass).
#ifndef HEADPAGE_TESTS_KERNELS_DEVICE_BUFFER_H_
#define HEADPAGE_TESTS_KERNELS_DEVICE_BUFFER_H_

#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "core/paged_kv.h"

#define HEADPAGE_CUDA_OK(expr)                                                         \
  do {                                                                                 \
    const cudaError_t headpage_cuda_error_ = (expr);                                   \
    if (headpage_cuda_error_ != cudaSuccess) {                                         \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr,               \
                   cudaGetErrorString(headpage_cuda_error_));                          \
      std::abort();                                                                    \
    }                                                                                  \
  } while (0)

namespace headpage::testing {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes > 0) HEADPAGE_CUDA_OK(cudaMalloc(&ptr_, bytes));
  }
  template <typename T>
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size() * sizeof(T)) {
    Upload(host);
  }
  DeviceBuffer(DeviceBuffer&& other) noexcept : ptr_(other.ptr_), bytes_(other.bytes_) {
    other.ptr_ = nullptr;
    other.bytes_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    std::swap(ptr_, other.ptr_);
    std::swap(bytes_, other.bytes_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }

  template <typename T = void>
  T* get() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }

  template <typename T>
  void Upload(const std::vector<T>& host) {
    if (host.size() * sizeof(T) != bytes_) std::abort();
    if (bytes_ > 0) {
      HEADPAGE_CUDA_OK(cudaMemcpy(ptr_, host.data(), bytes_, cudaMemcpyHostToDevice));
    }
  }
  template <typename T>
  std::vector<T> Download() const {
    std::vector<T> host(bytes_ / sizeof(T));
    if (bytes_ > 0) {
      HEADPAGE_CUDA_OK(cudaMemcpy(host.data(), ptr_, bytes_, cudaMemcpyDeviceToHost));
    }
    return host;
  }
  void Poison() {
    if (bytes_ > 0) HEADPAGE_CUDA_OK(cudaMemset(ptr_, 0xff, bytes_));
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// A host PagedKV's bytes and positions on the device, with the view over them.
struct DevicePool {
  DeviceBuffer data;
  DeviceBuffer positions;
  DeviceBuffer scales;  // fp8 pages only (one float when none)
  PagedKV view;

  // `host_scales`: fp8 pages' [slot][2] scales; empty for 16-bit pages.
  DevicePool(const PagedKV& host, const std::vector<uint8_t>& host_data,
             const std::vector<int32_t>& host_positions,
             const std::vector<float>& host_scales = {})
      : data(host_data),
        positions(host_positions),
        scales(host_scales.empty() ? std::vector<float>{0.0f} : host_scales),
        view(host) {
    view.data = data.get();
    view.positions = positions.get<int32_t>();
    view.scales = host_scales.empty() ? nullptr : scales.get<float>();
    view.memory = MemoryKind::kDevice;
  }
};

}  // namespace headpage::testing

#endif  // HEADPAGE_TESTS_KERNELS_DEVICE_BUFFER_H_
