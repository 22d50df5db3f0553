// SPDX-License-Identifier: Apache-2.0
// The device's copy bandwidth, the yardstick of every memory-bound kernel:
// cudaMemcpy device to device of 1 GiB, counted as bytes read + written.
#include "bench/kernels/gpu_bench_util.h"

namespace headpage::bench {
namespace {

void BM_CopyBandwidth(benchmark::State& state) {
  const size_t bytes = size_t{1} << 30;
  DeviceBuffer src(bytes), dst(bytes);
  HEADPAGE_CUDA_OK(cudaMemset(src.get(), 1, bytes));
  TimeWithEvents(state, [&] {
    HEADPAGE_CUDA_OK(cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice));
  });
  SetBytesPerSecond(state, "read_write_Bps", 2.0 * bytes);
}
BENCHMARK(BM_CopyBandwidth)->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace headpage::bench
