// SPDX-License-Identifier: Apache-2.0
// File: bench/kernels/gpu_bench_util.h
//
// What the kernel benchmarks share: the geometry and shapes, a device
// pool filled fast with random K/V behind shuffled page ids, and timing with
// CUDA events (Google Benchmark's manual time), so that only GPU time counts.
#ifndef HEADPAGE_BENCH_KERNELS_GPU_BENCH_UTIL_H_
#define HEADPAGE_BENCH_KERNELS_GPU_BENCH_UTIL_H_

#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string_view>
#include <vector>

#include "bench/kernels/launch_ahead.h"
#include "core/dtype.h"
#include "core/paged_kv.h"
#include "tests/kernels/device_buffer.h"

namespace headpage::bench {

using testing::DeviceBuffer;

// The geometry: Llama-3-8B-like attention, bf16, page 16.
inline constexpr int32_t kQHeads = 32;
inline constexpr int32_t kKVHeads = 8;
inline constexpr int32_t kHeadDim = 128;
inline constexpr int32_t kPageSize = 16;
inline constexpr DType kDType = DType::kBF16;

// batch x context length; the args of every kernel benchmark.
inline void BatchLengthShapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"batch", "len"});
  for (auto [batch, len] : std::vector<std::pair<int, int>>{
           {1, 32768}, {8, 8192}, {32, 4096}, {8, 32768}, {1, 131072}}) {
    b->Args({batch, len});
  }
}

// Per-stream lengths for a head-wise budget: `fraction` of `len` on average,
// varying `spread`-fold between the shortest and the longest stream (evenly
// spaced, then shuffled), the shape Ada-KV's allocation leaves behind.
inline std::vector<int32_t> SkewedLengths(int32_t num_streams, int32_t len, double fraction,
                                          double spread, uint64_t seed) {
  std::vector<int32_t> lens(static_cast<size_t>(num_streams));
  const double low = 2.0 * fraction * len / (1.0 + spread);  // mean of low..spread*low = fraction*len
  for (int32_t s = 0; s < num_streams; ++s) {
    const double t = num_streams == 1 ? 0.5 : static_cast<double>(s) / (num_streams - 1);
    lens[s] = std::max<int32_t>(1, static_cast<int32_t>(low * (1.0 + t * (spread - 1.0))));
  }
  std::mt19937_64 rng(seed);
  std::shuffle(lens.begin(), lens.end(), rng);
  return lens;
}

// A device pool whose streams have the given lengths (CSR block tables over
// shuffled page ids, as a long-running pool has) and random K/V in [-1, 1].
struct BenchPool {
  DeviceBuffer data, positions, scales, indptr, page_ids, lens;
  PagedKV view;
  std::vector<int32_t> host_indptr, host_page_ids, host_lens;
  int64_t total_tokens = 0;

  BenchPool(const std::vector<int32_t>& stream_lens, int32_t spare_pages = 0,
            int32_t head_dim = kHeadDim, DType dtype = kDType, int32_t page_size = kPageSize,
            uint64_t seed = 1, KvDType kv_dtype = KvDType::kAuto)
      : host_lens(stream_lens) {
    host_indptr.push_back(0);
    for (int32_t len : stream_lens) {
      host_indptr.push_back(host_indptr.back() + static_cast<int32_t>(PagesFor(len, page_size)));
      total_tokens += len;
    }
    const int32_t num_pages = host_indptr.back() + spare_pages;
    std::vector<int32_t> ids(static_cast<size_t>(num_pages));
    std::iota(ids.begin(), ids.end(), 0);
    std::mt19937_64 rng(seed);
    std::shuffle(ids.begin(), ids.end(), rng);
    host_page_ids.assign(ids.begin(), ids.begin() + host_indptr.back());

    view.num_pages = num_pages;
    view.page_size = page_size;
    view.head_dim = head_dim;
    view.dtype = dtype;
    view.kv_dtype = kv_dtype;
    const size_t element_bytes = KvElementBytes(dtype, kv_dtype);
    const size_t bytes = static_cast<size_t>(num_pages) * 2 * page_size * head_dim * element_bytes;
    data = DeviceBuffer(bytes);
    // Tile a 16 MiB random block: generating a gigabyte on the host would
    // dominate the benchmark's start-up.
    const size_t block_bytes = std::min<size_t>(bytes, size_t{16} << 20);
    std::vector<uint8_t> block(block_bytes);
    std::uniform_real_distribution<float> value(-1.0f, 1.0f);
    for (size_t i = 0; i < block_bytes / element_bytes; ++i) {
      if (view.fp8()) {
        block[i] = fp8_e4m3::FromFloat(fp8_e4m3::kMax * value(rng)).bits;
      } else {
        StoreFromFloat(block.data(), i, dtype, value(rng));
      }
    }
    for (size_t at = 0; at < bytes; at += block_bytes) {
      HEADPAGE_CUDA_OK(cudaMemcpy(data.get<char>() + at, block.data(),
                                  std::min(block_bytes, bytes - at), cudaMemcpyHostToDevice));
    }
    std::vector<int32_t> host_positions(static_cast<size_t>(num_pages) * page_size, -1);
    for (size_t s = 0; s < stream_lens.size(); ++s) {
      for (int32_t i = 0; i < stream_lens[s]; ++i) {
        host_positions[static_cast<size_t>(
            SlotOf(host_page_ids.data() + host_indptr[s], i, page_size))] = i;
      }
    }
    positions = DeviceBuffer(host_positions);
    indptr = DeviceBuffer(host_indptr);
    page_ids = DeviceBuffer(host_page_ids);
    lens = DeviceBuffer(host_lens);
    view.data = data.get();
    view.positions = positions.get<int32_t>();
    if (view.fp8()) {
      // Each row's scale as if its largest element were near 1.
      std::vector<float> host_scales(2 * host_positions.size());
      for (float& scale : host_scales) scale = (0.5f + 0.5f * std::abs(value(rng))) / fp8_e4m3::kMax;
      scales = DeviceBuffer(host_scales);
      view.scales = scales.get<float>();
    }
  }

  // The page ids no stream holds (the spare_pages), ascending: destinations
  // for the kernels that move tokens to fresh pages.
  std::vector<int32_t> SparePages() const {
    std::vector<uint8_t> used(static_cast<size_t>(view.num_pages), 0);
    for (int32_t p : host_page_ids) used[static_cast<size_t>(p)] = 1;
    std::vector<int32_t> spare;
    for (int32_t p = 0; p < view.num_pages; ++p) {
      if (!used[static_cast<size_t>(p)]) spare.push_back(p);
    }
    return spare;
  }

  // K and V bytes of every stream's tokens (fp8 pages: their scales too).
  double kv_bytes() const {
    const double row = static_cast<double>(view.head_dim) *
                           static_cast<double>(KvElementBytes(view.dtype, view.kv_dtype)) +
                       (view.fp8() ? sizeof(float) : 0);
    return static_cast<double>(total_tokens) * 2 * row;
  }
};

// Whether TimeWithEvents leaves out the hold that hides the host's launch
// latency: HEADPAGE_BENCH_HOST_LATENCY=1 in the environment, for figures
// comparable with those measured before 2026-12-06, which included it.
inline bool TimeHostLatency() {
  static const bool host = [] {
    const char* value = std::getenv("HEADPAGE_BENCH_HOST_LATENCY");
    return value != nullptr && std::string_view(value) == "1";
  }();
  return host;
}

// How long each iteration holds the GPU before its start event: longer than
// the host takes to validate and launch what one iteration times (a few
// launches, about 5-15 us).
inline constexpr int64_t kHoldNanoseconds = 50'000;

// Times `launch` (which enqueues work on the default stream) with CUDA events,
// one event pair per iteration, after two warm-up calls. Each iteration first
// queues HoldStream, so that the GPU reaches the start event with `launch`'s
// work already queued: the time is the GPU's alone, as a server replaying
// CUDA graphs sees it and as BM_CopyBandwidth, the yardstick, is measured
// (a 1 GiB copy hides its own launch). Without the hold, the host's
// validation and launch calls (about 5 us) counted too.
// kCold: before each iteration's hold, EvictL2, so that the timed work finds
// none of its data in L2, as a serving step's layer finds its K/V (read last
// one step ago, every other layer's since). The yardsticks stay warm.
enum class L2 { kWarm, kCold };

template <typename Launch>
void TimeWithEvents(benchmark::State& state, Launch&& launch, L2 l2 = L2::kWarm) {
  cudaEvent_t start, stop;
  HEADPAGE_CUDA_OK(cudaEventCreate(&start));
  HEADPAGE_CUDA_OK(cudaEventCreate(&stop));
  for (int i = 0; i < 2; ++i) launch();
  HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
  const bool hold = !TimeHostLatency();
  for (auto _ : state) {
    if (l2 == L2::kCold) HEADPAGE_CUDA_OK(EvictL2(nullptr));
    if (hold) HEADPAGE_CUDA_OK(HoldStream(kHoldNanoseconds, nullptr));
    HEADPAGE_CUDA_OK(cudaEventRecord(start));
    launch();
    HEADPAGE_CUDA_OK(cudaEventRecord(stop));
    HEADPAGE_CUDA_OK(cudaEventSynchronize(stop));
    float ms = 0;
    HEADPAGE_CUDA_OK(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(ms / 1e3);
  }
  HEADPAGE_CUDA_OK(cudaEventDestroy(start));
  HEADPAGE_CUDA_OK(cudaEventDestroy(stop));
}

// Bytes per second as a counter (Google Benchmark divides by the manual time).
inline void SetBytesPerSecond(benchmark::State& state, const char* name, double bytes) {
  state.counters[name] = benchmark::Counter(bytes * static_cast<double>(state.iterations()),
                                            benchmark::Counter::kIsRate);
}

}  // namespace headpage::bench

#endif  // HEADPAGE_BENCH_KERNELS_GPU_BENCH_UTIL_H_
