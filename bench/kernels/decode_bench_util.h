// SPDX-License-Identifier: Apache-2.0
// File: bench/kernels/decode_bench_util.h
//
// What the benchmarks of gpu::DecodeAttention share: decode_attention_bench.cc
// times it, and flashinfer_decode_bench.cc times it again as the baseline and
// checks FlashInfer's output against its own, so both must set it up the same
// way, with the same queries and arguments.
#ifndef HEADPAGE_BENCH_KERNELS_DECODE_BENCH_UTIL_H_
#define HEADPAGE_BENCH_KERNELS_DECODE_BENCH_UTIL_H_

#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "bench/kernels/gpu_bench_util.h"
#include "bench/kernels/page_read.h"
#include "kernels/decode_attention.h"

namespace headpage::bench {

// The current device's SMs, which DecodeAttentionSplits fills.
inline int32_t NumSMs() {
  int device = 0, sms = 0;
  HEADPAGE_CUDA_OK(cudaGetDevice(&device));
  HEADPAGE_CUDA_OK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

// One gpu::DecodeAttention call over `pool` (batch sequences, each of kQHeads
// query heads over kKVHeads streams), with the buffers its arguments point
// into: queries uniform in [-1, 1] from seed 3, lse written, `num_splits` KV
// splits (0: the split heuristic's count) or, with `waves` > 0, the balanced
// division over that many waves of resident blocks (num_splits not read), the
// block tables trusted (set args.fault to check them).
struct DecodeAttentionCall {
  DeviceBuffer q, out, lse, workspace;
  DecodeAttentionArgs args;

  DecodeAttentionCall(const BenchPool& pool, int32_t batch, int32_t num_splits = 0,
                      int32_t waves = 0) {
    const std::vector<int32_t>& lens = pool.host_lens;
    if (waves > 0) {
      num_splits = 1;
      args.balanced_blocks =
          std::min(waves * DecodeAttentionBalancedBlocks(pool.view, NumSMs()), kDecodeMaxSplits);
    } else if (num_splits == 0) {
      const auto [min_len, max_len] = std::minmax_element(lens.begin(), lens.end());
      num_splits = DecodeAttentionSplits(*max_len, static_cast<int32_t>(lens.size()), NumSMs(),
                                         DecodeAttentionResidentBlocks(pool.view), *min_len);
    }
    const size_t rows = static_cast<size_t>(batch) * kQHeads;
    std::mt19937_64 rng(3);
    std::vector<uint8_t> host_q(rows * kHeadDim * SizeOf(kDType));
    std::uniform_real_distribution<float> value(-1.0f, 1.0f);
    for (size_t i = 0; i < rows * kHeadDim; ++i) {
      StoreFromFloat(host_q.data(), i, kDType, value(rng));
    }
    q = DeviceBuffer(host_q);
    out = DeviceBuffer(host_q.size());
    lse = DeviceBuffer(rows * sizeof(float));
    args.cache = pool.view;
    args.num_seqs = batch;
    args.num_q_heads = kQHeads;
    args.num_kv_heads = kKVHeads;
    args.q = q.get();
    args.indptr = pool.indptr.get<int32_t>();
    args.page_ids = pool.page_ids.get<int32_t>();
    args.num_page_ids = static_cast<int32_t>(pool.host_page_ids.size());
    args.lens = pool.lens.get<int32_t>();
    args.sm_scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
    args.out = out.get();
    args.lse = lse.get<float>();
    args.num_splits = num_splits;
    workspace = DeviceBuffer(DecodeAttentionWorkspaceBytes(args));
    args.workspace = workspace.get();
    args.workspace_bytes = workspace.bytes();
  }

  // Enqueued on the default stream, which TimeWithEvents times.
  absl::Status Run() const { return gpu::DecodeAttention(args, nullptr); }
};

// The counters every decode benchmark reports: K/V bytes of every stream's
// tokens read per second, and their size.
inline void SetKvCounters(benchmark::State& state, const BenchPool& pool) {
  SetBytesPerSecond(state, "kv_read_Bps", pool.kv_bytes());
  state.counters["kv_MB"] = pool.kv_bytes() / 1e6;
}

// Times `decode` over `pool` and reports its counters.
inline void TimeDecodeAttention(benchmark::State& state, const BenchPool& pool,
                                const DecodeAttentionCall& decode, L2 l2 = L2::kWarm) {
  TimeWithEvents(
      state,
      [&] {
        if (!decode.Run().ok()) state.SkipWithError("gpu::DecodeAttention failed");
      },
      l2);
  SetKvCounters(state, pool);
  state.counters["splits"] = decode.args.num_splits;
  state.counters["blocks"] = decode.args.balanced_blocks;
}

// Times reading every page of `pool`'s streams whole (page_read.cu): the floor
// under DecodeAttention over the same pages where they lie.
inline void TimePageReads(benchmark::State& state, const BenchPool& pool, L2 l2 = L2::kWarm) {
  const auto num_page_ids = static_cast<int32_t>(pool.host_page_ids.size());
  DeviceBuffer sink((num_page_ids / kReadPagesPerBlock + 1) * sizeof(uint32_t));
  const int64_t page_bytes = pool.view.page_elements() * SizeOf(kDType);
  TimeWithEvents(
      state,
      [&] {
        HEADPAGE_CUDA_OK(ReadPages(pool.view.data, page_bytes, pool.page_ids.get<int32_t>(),
                                   num_page_ids, sink.get<uint32_t>(), nullptr));
      },
      l2);
  // Whole pages: a stream's last page is read to its end.
  SetBytesPerSecond(state, "kv_read_Bps", static_cast<double>(num_page_ids) * page_bytes);
  state.counters["kv_MB"] = static_cast<double>(num_page_ids) * page_bytes / 1e6;
}

}  // namespace headpage::bench

#endif  // HEADPAGE_BENCH_KERNELS_DECODE_BENCH_UTIL_H_
