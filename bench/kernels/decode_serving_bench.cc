// SPDX-License-Identifier: Apache-2.0
// DecodeAttention at the shape of a serving engine's decode step (issue #14's
// workload (a) at the full budget, as tools/bench_serving.py runs it): 14
// requests of 1K-8K tokens (log-normal around 4K, plus up to 512 generated),
// every kv head as long as its request, padded to a CUDA graph's 16 rows (two
// rows of empty streams), in a pool of `pool_gib` GiB (0: just the pages in
// use) whose pages are shuffled, as a long-running pool's are.
//
//   BM_DecodeAttentionServing  split count `splits` (0: what headpage.serving
//                              picks for a 16-row graph; -1, -2: the balanced
//                              division over one or two waves of blocks)
//   BM_DecodeStepServing       one layer's write of the step's new K/V and its
//                              attention, as headpage.serving's graph steps
//                              ran them (WriteKV, then DecodeAttention;
//                              fused 0) and run them now (DecodeAttention
//                              writing the new tokens itself; fused 1)
//   BM_ReadServingPages        the floor: the same pages only read
//                              (page_read.cu), so that the two rates say how
//                              much of the gap to the copy bandwidth is the
//                              kernel's and how much is the pages' placement
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "bench/kernels/decode_bench_util.h"
#include "bench/kernels/gpu_bench_util.h"
#include "kernels/write_kv.h"

namespace headpage::bench {
namespace {

constexpr int32_t kRequests = 14;
constexpr int32_t kGraphRows = 16;
// headpage.serving's GRAPH_SPLIT_TOKENS (headpage/_decode_buffers.py): a graph's split count is chosen for
// streams this long.
constexpr int32_t kGraphSplitTokens = 8192;

std::vector<int32_t> ServingLengths() {
  std::mt19937_64 rng(5);
  std::lognormal_distribution<double> prompt(std::log(4096.0), 0.5);
  std::uniform_int_distribution<int32_t> generated(0, 511);
  std::vector<int32_t> lens;
  for (int32_t r = 0; r < kGraphRows; ++r) {
    int32_t len = 0;
    if (r < kRequests) {
      len = static_cast<int32_t>(std::clamp(prompt(rng), 1024.0, 8192.0)) + generated(rng);
    }
    lens.insert(lens.end(), kKVHeads, len);
  }
  return lens;
}

// One pool per size, built once: an 8 GiB pool takes seconds to fill.
const BenchPool& ServingPool(int64_t pool_gib) {
  static std::map<int64_t, std::unique_ptr<BenchPool>> pools;
  std::unique_ptr<BenchPool>& pool = pools[pool_gib];
  if (pool == nullptr) {
    const std::vector<int32_t> lens = ServingLengths();
    int64_t used = 0;
    for (int32_t len : lens) used += PagesFor(len, kPageSize);
    const int64_t page_bytes = int64_t{2} * kPageSize * kHeadDim * SizeOf(kDType);
    const int64_t pages = (pool_gib << 30) / page_bytes;
    pool = std::make_unique<BenchPool>(lens, static_cast<int32_t>(std::max<int64_t>(pages - used, 0)));
  }
  return *pool;
}

void BM_DecodeAttentionServing(benchmark::State& state) {
  const BenchPool& pool = ServingPool(state.range(0));
  auto splits = static_cast<int32_t>(state.range(1));
  if (splits == 0) {
    splits = DecodeAttentionSplits(kGraphSplitTokens, kGraphRows * kKVHeads, NumSMs(),
                                   DecodeAttentionResidentBlocks(pool.view));
  }
  // Negative: the balanced division over -splits waves of resident blocks.
  const int32_t waves = splits < 0 ? -splits : 0;
  DecodeAttentionCall decode(pool, kGraphRows, splits < 0 ? 1 : splits, waves);
  TimeDecodeAttention(state, pool, decode);
  state.counters["pool_MB"] = static_cast<double>(pool.view.num_pages) * pool.view.page_elements() *
                              SizeOf(kDType) / 1e6;
}
BENCHMARK(BM_DecodeAttentionServing)
    ->ArgNames({"pool_gib", "splits"})
    ->ArgsProduct({{0, 8}, {-2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12}})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

void BM_DecodeStepServing(benchmark::State& state) {
  const BenchPool& pool = ServingPool(state.range(0));
  const bool fused = state.range(1) != 0;
  const int32_t splits = DecodeAttentionSplits(kGraphSplitTokens, kGraphRows * kKVHeads, NumSMs(),
                                               DecodeAttentionResidentBlocks(pool.view));
  DecodeAttentionCall decode(pool, kGraphRows, splits);
  // The step's token of every stream is its last (a padding row's: none).
  const size_t rows = static_cast<size_t>(kGraphRows) * kKVHeads;
  std::vector<int32_t> slots(rows, -1);
  for (size_t stream = 0; stream < rows; ++stream) {
    const int32_t len = pool.host_lens[stream];
    if (len > 0) {
      slots[stream] = static_cast<int32_t>(
          SlotOf(pool.host_page_ids.data() + pool.host_indptr[stream], len - 1, kPageSize));
    }
  }
  std::vector<uint8_t> host_rows(rows * kHeadDim * SizeOf(kDType));
  for (size_t i = 0; i < rows * kHeadDim; ++i) StoreFromFloat(host_rows.data(), i, kDType, 0.5f);
  DeviceBuffer keys(host_rows), values(host_rows), d_slots(slots),
      positions(std::vector<int32_t>(kGraphRows, 4096));
  WriteKVArgs write;
  write.cache = pool.view;
  write.num_tokens = kGraphRows;
  write.num_kv_heads = kKVHeads;
  write.keys = keys.get();
  write.values = values.get();
  write.slot_mapping = d_slots.get<int32_t>();
  write.slot_stride = kKVHeads;
  write.positions = positions.get<int32_t>();
  if (fused) {
    decode.args.new_tokens.keys = keys.get();
    decode.args.new_tokens.values = values.get();
    decode.args.new_tokens.positions = positions.get<int32_t>();
  }
  TimeWithEvents(state, [&] {
    if (!fused && !gpu::WriteKV(write, nullptr).ok()) state.SkipWithError("gpu::WriteKV failed");
    if (!decode.Run().ok()) state.SkipWithError("gpu::DecodeAttention failed");
  });
  SetKvCounters(state, pool);
  state.counters["splits"] = splits;
}
BENCHMARK(BM_DecodeStepServing)
    ->ArgNames({"pool_gib", "fused"})
    ->ArgsProduct({{0, 8}, {0, 1, 0, 1}})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

void BM_ReadServingPages(benchmark::State& state) {
  TimePageReads(state, ServingPool(state.range(0)));
}
BENCHMARK(BM_ReadServingPages)
    ->ArgNames({"pool_gib"})
    ->Arg(0)
    ->Arg(8)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace headpage::bench
