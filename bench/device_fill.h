// SPDX-License-Identifier: Apache-2.0
// File: bench/device_fill.h
//
// Fills gigabytes of device memory with random bf16 quickly, for the GPU
// benchmarks whose pools must hold valid numbers (no NaN) but whose exact
// values do not matter: a 16 MiB random block from the host, then doubled by
// device-to-device copies.
#ifndef HEADPAGE_BENCH_DEVICE_FILL_H_
#define HEADPAGE_BENCH_DEVICE_FILL_H_

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "tests/kernels/device_buffer.h"

namespace headpage::bench {

// bf16 values uniform in [-1, 1) over `bytes` bytes of device memory.
inline void FillRandomBf16(void* data, size_t bytes, uint64_t seed) {
  const size_t block = std::min<size_t>(bytes, size_t{16} << 20);
  std::vector<uint8_t> host(block);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  for (size_t i = 0; i < block / 2; ++i) StoreFromFloat(host.data(), i, DType::kBF16, value(rng));
  auto* out = static_cast<char*>(data);
  HEADPAGE_CUDA_OK(cudaMemcpy(out, host.data(), block, cudaMemcpyHostToDevice));
  for (size_t done = block; done < bytes; done *= 2) {
    HEADPAGE_CUDA_OK(
        cudaMemcpy(out + done, out, std::min(done, bytes - done), cudaMemcpyDeviceToDevice));
  }
}

}  // namespace headpage::bench

#endif  // HEADPAGE_BENCH_DEVICE_FILL_H_
