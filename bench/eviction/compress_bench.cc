// SPDX-License-Identifier: Apache-2.0
// EvictionEngine::Compress on a CUDA pool, end to end: the Llama-3-8B geometry
// (32 layers, 8 KV heads, 32 q heads, head_dim 128, bf16, page 16), prompts of
// 32K tokens compressed to 20% — scores, selection, the kept counts' round
// trip, the plan, the compaction and the release, timed with CUDA events on
// the engine's stream, for every named policy; and the pool-wide budget over
// the device score store. Beside them, the host-staged path the CUDA executor
// replaces: the pool copied to a host mirror, compressed by the host executor,
// copied back (what headpage.hf.Cache did before), timed on the wall clock.
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "allocator/arena.h"
#include "allocator/page_pool.h"
#include "blockmgr/block_manager.h"
#include "eviction/engine.h"
#include "bench/device_fill.h"
#include "tests/kernels/device_buffer.h"

namespace headpage::bench {
namespace {

using testing::DeviceBuffer;

constexpr int32_t kLayers = 32, kKVHeads = 8, kQHeads = 32, kHeadDim = 128, kPageSize = 16;
constexpr int32_t kWindow = 32;

CacheGeometry Llama3Geometry() {
  CacheGeometry g;
  g.num_layers = kLayers;
  g.num_kv_heads = kKVHeads;
  g.num_q_heads = kQHeads;
  g.head_dim = kHeadDim;
  g.dtype = DType::kBF16;
  g.page_size = kPageSize;
  return g;
}

// A CUDA pool for `seqs` prompts of `len` tokens, with a quarter more pages
// than they fill (the compaction's fresh pages), random bf16 K/V everywhere,
// and the last `rows` prompt queries of every layer (the observation window;
// H2O observes every prompt query).
class CompressBench {
 public:
  CompressBench(int32_t seqs, int32_t len, int32_t rows = kWindow)
      : seqs_(seqs), len_(len), geometry_(Llama3Geometry()) {
    const int64_t used = int64_t{seqs} * kLayers * kKVHeads * PagesFor(len, kPageSize);
    num_pages_ = used + used / 4;
    pool_ = std::make_unique<PagePool>(PagePool::Create({num_pages_, 0.0}).value());
    manager_ = std::make_unique<BlockManager>(BlockManager::Create(geometry_, pool_.get()).value());
    arena_ = std::make_unique<CudaArena>(CudaArena::Create(geometry_, num_pages_).value());
    HEADPAGE_CUDA_OK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    engine_ = std::make_unique<EvictionEngine>(
        EvictionEngine::Create(manager_.get(), arena_->view(), stream_).value());
    FillRandomBf16(arena_->view().data, arena_->kv_bytes(), 7);
    queries_ = DeviceBuffer(size_t{kLayers} * kQHeads * rows * kHeadDim * 2);
    FillRandomBf16(queries_.get(), queries_.bytes(), 7);
    std::vector<int32_t> positions(rows);
    for (int32_t r = 0; r < rows; ++r) positions[r] = len - rows + r;
    query_positions_ = DeviceBuffer(positions);
    const size_t layer_bytes = size_t{kQHeads} * rows * kHeadDim * 2;
    for (int32_t l = 0; l < kLayers; ++l) {
      layer_queries_.push_back({queries_.get<char>() + static_cast<size_t>(l) * layer_bytes,
                                query_positions_.get<int32_t>(), rows, DType::kBF16,
                                MemoryKind::kDevice, {}});
    }
  }
  // The engine waits for its stream when it goes: before the stream does.
  ~CompressBench() {
    engine_.reset();
    cudaStreamDestroy(stream_);
  }

  // Frees every sequence and prefills `seqs` fresh prompts: the slots' positions
  // are written; the K/V bytes are whatever random bf16 the pages hold.
  void Prefill() {
    for (SeqId seq : live_) manager_->Free(seq).IgnoreError();
    live_.clear();
    std::vector<int32_t> positions(static_cast<size_t>(num_pages_) * kPageSize, -1);
    for (int32_t s = 0; s < seqs_; ++s) {
      const SeqId seq = manager_->AddSequence();
      const ReservePlan plan = manager_->Reserve(seq, len_).value();
      for (int32_t t = 0; t < len_; ++t) {
        for (int32_t i = 0; i < kLayers * kKVHeads; ++i) {
          positions[plan.slot_mapping[static_cast<size_t>(t) * kLayers * kKVHeads + i]] = t;
        }
      }
      live_.push_back(seq);
    }
    HEADPAGE_CUDA_OK(cudaMemcpy(arena_->view().positions, positions.data(),
                                sizeof(int32_t) * positions.size(), cudaMemcpyHostToDevice));
  }

  EvictionEngine& engine() { return *engine_; }
  BlockManager& manager() { return *manager_; }
  CudaArena& arena() { return *arena_; }
  cudaStream_t stream() const { return stream_; }
  const std::vector<SeqId>& live() const { return live_; }
  const std::vector<LayerQueries>& queries() const { return layer_queries_; }
  int64_t num_pages() const { return num_pages_; }
  const CacheGeometry& geometry() const { return geometry_; }

 private:
  int32_t seqs_, len_;
  CacheGeometry geometry_;
  int64_t num_pages_ = 0;
  std::unique_ptr<PagePool> pool_;
  std::unique_ptr<BlockManager> manager_;
  std::unique_ptr<CudaArena> arena_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<EvictionEngine> engine_;
  DeviceBuffer queries_, query_positions_;
  std::vector<LayerQueries> layer_queries_;
  std::vector<SeqId> live_;
};

void Report(benchmark::State& state, int64_t tokens_before, int64_t tokens_after, int64_t freed) {
  state.counters["tokens_before"] = static_cast<double>(tokens_before);
  state.counters["kept_pct"] = 100.0 * static_cast<double>(tokens_after) / tokens_before;
  state.counters["pages_freed"] = static_cast<double>(freed);
}

// The CUDA executor: every policy it runs, by name (range(0) indexes kPolicies).
const char* const kPolicies[] = {"ada-snapkv", "uniform-snapkv", "pyramid", "ada-pyramid",
                                 "streamingllm", "knorm", "random", "tova", "dbudget", "h2o"};

void BM_Compress(benchmark::State& state) {
  const char* name = kPolicies[state.range(0)];
  const auto seqs = static_cast<int32_t>(state.range(1));
  const auto len = static_cast<int32_t>(state.range(2));
  const bool batched = state.range(3) != 0;
  state.SetLabel(absl::StrCat(name, batched ? " batch" : " one by one"));
  const PolicyConfig config = PolicyByName(name).value();
  // The queries the policy observes: its window (at least one), or every
  // prompt query (H2O).
  CompressBench bench(seqs, len, config.ObservedQueries(len));
  const Budget budget = Budget::Fraction(0.2);
  cudaEvent_t start, stop;
  HEADPAGE_CUDA_OK(cudaEventCreate(&start));
  HEADPAGE_CUDA_OK(cudaEventCreate(&stop));
  int64_t before = 0, after = 0, freed = 0;
  for (auto _ : state) {
    state.PauseTiming();
    bench.Prefill();
    HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
    state.ResumeTiming();
    before = after = freed = 0;
    HEADPAGE_CUDA_OK(cudaEventRecord(start, bench.stream()));
    if (batched) {
      // What an engine does when several prefills end in one step.
      const std::vector<absl::Span<const LayerQueries>> queries(bench.live().size(),
                                                                bench.queries());
      auto results = bench.engine().CompressBatch(bench.live(), config, budget, queries);
      if (!results.ok()) {
        state.SkipWithError(results.status().ToString().c_str());
        break;
      }
      for (const CompressResult& r : *results) {
        before += r.tokens_before;
        after += r.tokens_after;
        freed += r.pages_freed;
      }
    } else {
      for (const SeqId seq : bench.live()) {
        auto result = bench.engine().Compress(seq, config, budget, bench.queries());
        if (!result.ok()) {
          state.SkipWithError(result.status().ToString().c_str());
          break;
        }
        before += result->tokens_before;
        after += result->tokens_after;
        freed += result->pages_freed;
      }
    }
    HEADPAGE_CUDA_OK(cudaEventRecord(stop, bench.stream()));
    HEADPAGE_CUDA_OK(cudaEventSynchronize(stop));
    float ms = 0;
    HEADPAGE_CUDA_OK(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(ms / 1e3);
  }
  Report(state, before, after, freed);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}
// ada-snapkv (the target) at 1 x 32K and 8 x 32K, the 8 both in one
// CompressBatch and one Compress each; every policy at 8 x 32K in a batch.
BENCHMARK(BM_Compress)
    ->ArgNames({"policy", "seqs", "len", "batch"})
    ->Args({0, 1, 32768, 0})
    ->Args({0, 8, 32768, 1})
    ->Args({0, 8, 32768, 0})
    ->Args({1, 8, 32768, 1})
    ->Args({2, 8, 32768, 1})
    ->Args({3, 8, 32768, 1})
    ->Args({4, 8, 32768, 1})
    ->Args({5, 8, 32768, 1})
    ->Args({6, 8, 32768, 1})
    ->Args({7, 8, 32768, 1})
    ->Args({8, 8, 32768, 1})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(5);
// H2O scores every prompt query against every key (the prefill's attention
// over again, on tensor cores): seconds per batch, so fewer iterations.
BENCHMARK(BM_Compress)
    ->ArgNames({"policy", "seqs", "len", "batch"})
    ->Args({9, 1, 32768, 0})
    ->Args({9, 8, 32768, 1})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(2);

// EnforcePoolBudget freeing 10% of the pages of a pool holding 64 sequences
// of 4K tokens, every token scored (each prompt compressed by ada-snapkv at a
// budget of 100%, which keeps everything and stores the scores).
void BM_EnforcePoolBudget(benchmark::State& state) {
  const auto seqs = static_cast<int32_t>(state.range(0));
  const auto len = static_cast<int32_t>(state.range(1));
  CompressBench bench(seqs, len);
  const PolicyConfig config = PolicyByName("ada-snapkv").value();
  cudaEvent_t start, stop;
  HEADPAGE_CUDA_OK(cudaEventCreate(&start));
  HEADPAGE_CUDA_OK(cudaEventCreate(&stop));
  int64_t target = 0, freed = 0;
  for (auto _ : state) {
    state.PauseTiming();
    bench.Prefill();
    const std::vector<absl::Span<const LayerQueries>> queries(bench.live().size(), bench.queries());
    if (const auto scored = bench.engine().CompressBatch(bench.live(), config, Budget::Fraction(1.0),
                                                         queries);
        !scored.ok()) {
      state.SkipWithError(scored.status().ToString().c_str());
      break;
    }
    target = bench.manager().pool().used_pages() / 10;
    HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
    state.ResumeTiming();
    HEADPAGE_CUDA_OK(cudaEventRecord(start, bench.stream()));
    const auto result = bench.engine().EnforcePoolBudget(target, /*floor_tokens=*/32,
                                                         /*protect_recent=*/32);
    if (!result.ok()) {
      state.SkipWithError(result.status().ToString().c_str());
      break;
    }
    freed = *result;
    HEADPAGE_CUDA_OK(cudaEventRecord(stop, bench.stream()));
    HEADPAGE_CUDA_OK(cudaEventSynchronize(stop));
    float ms = 0;
    HEADPAGE_CUDA_OK(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(ms / 1e3);
  }
  state.counters["pages_target"] = static_cast<double>(target);
  state.counters["pages_freed"] = static_cast<double>(freed);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}
BENCHMARK(BM_EnforcePoolBudget)
    ->ArgNames({"seqs", "len"})
    ->Args({64, 4096})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(3);

// The host-staged path: the pool's bytes to a host mirror, the host executor,
// and the bytes back. Wall clock, one sequence.
void BM_Compress_HostStaged(benchmark::State& state) {
  const char* name = kPolicies[state.range(0)];
  const auto len = static_cast<int32_t>(state.range(1));
  state.SetLabel(name);
  CompressBench bench(1, len);
  auto mirror = HostArena::Create(bench.geometry(), bench.num_pages());
  if (!mirror.ok()) {
    state.SkipWithError(mirror.status().ToString().c_str());
    return;
  }
  auto host_engine = EvictionEngine::Create(&bench.manager(), mirror->view());
  const PolicyConfig config = PolicyByName(name).value();
  const size_t query_bytes = size_t{kQHeads} * kWindow * kHeadDim * 2;
  std::vector<std::vector<uint8_t>> query_data(kLayers, std::vector<uint8_t>(query_bytes));
  std::vector<int32_t> query_positions(kWindow);
  const PagedKV& device = bench.arena().view();
  const PagedKV& host = mirror->view();
  int64_t before = 0, after = 0, freed = 0;
  for (auto _ : state) {
    state.PauseTiming();
    bench.Prefill();
    HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
    state.ResumeTiming();
    const auto t0 = std::chrono::steady_clock::now();
    HEADPAGE_CUDA_OK(cudaMemcpy(host.data, device.data, mirror->kv_bytes(), cudaMemcpyDeviceToHost));
    HEADPAGE_CUDA_OK(cudaMemcpy(host.positions, device.positions, sizeof(int32_t) * host.num_slots(),
                                cudaMemcpyDeviceToHost));
    std::vector<LayerQueries> queries;
    for (int32_t l = 0; l < kLayers; ++l) {
      HEADPAGE_CUDA_OK(cudaMemcpy(query_data[l].data(), bench.queries()[l].data, query_bytes,
                                  cudaMemcpyDeviceToHost));
      queries.push_back({query_data[l].data(), query_positions.data(), kWindow, DType::kBF16,
                       MemoryKind::kHost, {}});
    }
    HEADPAGE_CUDA_OK(cudaMemcpy(query_positions.data(), bench.queries()[0].positions,
                                sizeof(int32_t) * kWindow, cudaMemcpyDeviceToHost));
    auto result = host_engine->Compress(bench.live()[0], config, Budget::Fraction(0.2), queries);
    if (!result.ok()) {
      state.SkipWithError(result.status().ToString().c_str());
      break;
    }
    HEADPAGE_CUDA_OK(cudaMemcpy(device.data, host.data, mirror->kv_bytes(), cudaMemcpyHostToDevice));
    HEADPAGE_CUDA_OK(cudaMemcpy(device.positions, host.positions, sizeof(int32_t) * host.num_slots(),
                                cudaMemcpyHostToDevice));
    state.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    before = result->tokens_before;
    after = result->tokens_after;
    freed = result->pages_freed;
  }
  Report(state, before, after, freed);
}
BENCHMARK(BM_Compress_HostStaged)
    ->ArgNames({"policy", "len"})
    ->Args({0, 32768})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(1);

}  // namespace
}  // namespace headpage::bench

BENCHMARK_MAIN();
