// SPDX-License-Identifier: Apache-2.0
// File: bench/blockmgr_bench.cc
//
// BlockManager's scheduler-side costs on the Llama-3-8B geometry: 32 layers x 8 kv
// heads = 256 streams a sequence, 16-token pages, so a 4096-token sequence holds
// 65536 pages. Each benchmark gets its own pool, sized to what it needs plus a
// margin; a pool costs 8 bytes of host bookkeeping per page (refcount and free
// stack entry) and BlockManager 4 more (retired_refs_), and no K/V bytes: nothing
// here needs an Arena. The largest pool (EvictBatch/32768/8, 5.1 M pages) is about
// 61 MB of host memory plus the block tables themselves.
//
// Setup that is not the operation being measured (creating and refilling
// sequences, building plans' inputs) runs with the timer paused, as each
// benchmark's comment says; BlockTableRefresh times itself with a steady clock.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "allocator/page_pool.h"
#include "benchmark/benchmark.h"
#include "blockmgr/block_manager.h"
#include "blockmgr/block_table.h"
#include "blockmgr/plans.h"
#include "core/geometry.h"
#include "core/paged_kv.h"

namespace headpage {
namespace {

using benchmark::Counter;

const CacheGeometry kGeometry = CacheGeometry::Llama3_8B();
const int64_t kStreams = kGeometry.streams_per_sequence();  // 256

// Setup failures are bugs in the benchmark: stop loudly.
void Check(const absl::Status& status, const char* what) {
  if (!status.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, status.ToString().c_str());
    std::abort();
  }
}

template <typename T>
T Unwrap(absl::StatusOr<T> value, const char* what) {
  Check(value.status(), what);
  return *std::move(value);
}

// Pages that `num_seqs` sequences of `tokens` tokens hold, plus 1% and 1024 pages.
int64_t PoolPagesFor(int64_t num_seqs, int64_t tokens) {
  const int64_t pages = num_seqs * kStreams * PagesFor(tokens, kGeometry.page_size);
  return pages + pages / 100 + 1024;
}

// A pool and a BlockManager over it, plus a slot-mapping buffer for prefills.
class Harness {
 public:
  explicit Harness(int64_t num_pages)
      : pool_(std::make_unique<PagePool>(
            Unwrap(PagePool::Create({num_pages, 0.0}), "PagePool::Create"))),
        manager_(std::make_unique<BlockManager>(
            Unwrap(BlockManager::Create(kGeometry, pool_.get()), "BlockManager::Create"))) {}

  BlockManager& manager() { return *manager_; }

  // A new sequence holding `tokens` tokens in every stream.
  SeqId Prefill(int64_t tokens) {
    const SeqId seq = manager_->AddSequence();
    prefill_slots_.resize(static_cast<size_t>(kStreams * tokens));
    Check(manager_->Reserve(seq, tokens, SlotMappingOut{prefill_slots_.data(), tokens, 0},
                            &copies_),
          "Prefill");
    copies_.clear();
    return seq;
  }

  std::vector<SeqId> PrefillBatch(int64_t num_seqs, int64_t tokens) {
    std::vector<SeqId> seqs;
    for (int64_t i = 0; i < num_seqs; ++i) seqs.push_back(Prefill(tokens));
    return seqs;
  }

  void FreeAll(std::vector<SeqId>* seqs) {
    for (const SeqId seq : *seqs) Check(manager_->Free(seq), "Free");
    seqs->clear();
  }

 private:
  std::unique_ptr<PagePool> pool_;  // the manager points to it
  std::unique_ptr<BlockManager> manager_;
  std::vector<int32_t> prefill_slots_;
  PageCopies copies_;
};

// One decode step: one token in every stream of every sequence, into one batch
// slot mapping [batch][streams] (row i is sequence i). False on error.
bool DecodeStep(BlockManager& manager, absl::Span<const SeqId> seqs, std::vector<int32_t>* slots,
                PageCopies* copies) {
  const auto batch = static_cast<int64_t>(seqs.size());
  for (int64_t i = 0; i < batch; ++i) {
    if (!manager.Reserve(seqs[i], 1, SlotMappingOut{slots->data(), batch, i}, copies).ok()) {
      return false;
    }
  }
  return true;
}

// ---------------------------------------------------------------------------
// Reserve

// Reserve(seq, n) for a fresh sequence: the bookkeeping of a prefill of n tokens,
// which writes n * 256 slot ids into a preallocated buffer (33.5 MB at n = 32768:
// writing it is part of Reserve's work, allocating it is not). AddSequence and
// Free run with the timer paused.
void BM_BlockManager_PrefillReserve(benchmark::State& state) {
  const int64_t tokens = state.range(0);
  Harness harness(PoolPagesFor(1, tokens));
  BlockManager& manager = harness.manager();
  std::vector<int32_t> slots(static_cast<size_t>(kStreams * tokens));
  PageCopies copies;
  for (auto _ : state) {
    state.PauseTiming();
    const SeqId seq = manager.AddSequence();
    state.ResumeTiming();
    if (!manager.Reserve(seq, tokens, SlotMappingOut{slots.data(), tokens, 0}, &copies).ok()) {
      state.SkipWithError("Reserve failed");
      break;
    }
    benchmark::DoNotOptimize(slots.data());
    benchmark::ClobberMemory();
    state.PauseTiming();
    Check(manager.Free(seq), "Free");
    state.ResumeTiming();
  }
  const int64_t pages = kStreams * PagesFor(tokens, kGeometry.page_size);
  state.SetItemsProcessed(state.iterations() * tokens);
  state.counters["per_page"] = Counter(static_cast<double>(pages),
                                       Counter::kIsIterationInvariantRate | Counter::kInvert);
  state.counters["per_slot"] = Counter(static_cast<double>(kStreams * tokens),
                                       Counter::kIsIterationInvariantRate | Counter::kInvert);
}
BENCHMARK(BM_BlockManager_PrefillReserve)->Arg(32768)->Unit(benchmark::kMicrosecond);

// One decode step of a batch: Reserve(seq, 1) for each of `batch` sequences that
// start at 4096 tokens, into one [batch][256] slot mapping. Every 16th step takes
// a fresh page in every stream; the sequences grow for kRefillSteps steps (a
// multiple of 16, so the average has the page allocations in their true
// proportion) and are then freed and prefilled again with the timer paused.
//
// NOTE: a prefill of 4096 tokens leaves each stream's page vector full (256 of
// 256), so the first page step after every refill reallocates all batch * 256 of
// them: once per 256 steps here, against once per 256 pages (4096 steps) for a
// sequence that simply grows. The counters separate the three kinds of step,
// each timed with steady_clock besides the framework's timer: plain_us (no new
// page), page_us (a new page per stream), realloc_us (the first page step after a
// refill). The reported time averages them as they occur here, realloc step
// included; docs/performance.md also gives the average without it.
constexpr int64_t kContext = 4096;
constexpr int64_t kRefillSteps = 256;

void BM_BlockManager_DecodeReserve(benchmark::State& state) {
  const int64_t batch = state.range(0);
  Harness harness(PoolPagesFor(batch, kContext + kRefillSteps));
  BlockManager& manager = harness.manager();
  std::vector<SeqId> seqs = harness.PrefillBatch(batch, kContext);
  std::vector<int32_t> slots(static_cast<size_t>(kStreams * batch));
  PageCopies copies;
  int64_t step = 0;
  double seconds[3] = {0.0, 0.0, 0.0};  // plain, page, realloc steps
  int64_t steps[3] = {0, 0, 0};
  for (auto _ : state) {
    if (step == kRefillSteps) {
      state.PauseTiming();
      harness.FreeAll(&seqs);
      seqs = harness.PrefillBatch(batch, kContext);
      step = 0;
      state.ResumeTiming();
    }
    const auto start = std::chrono::steady_clock::now();
    if (!DecodeStep(manager, seqs, &slots, &copies)) {
      state.SkipWithError("Reserve failed");
      break;
    }
    benchmark::DoNotOptimize(slots.data());
    benchmark::ClobberMemory();
    const auto stop = std::chrono::steady_clock::now();
    const int kind = step == 0 ? 2 : step % 16 == 0 ? 1 : 0;
    seconds[kind] += std::chrono::duration<double>(stop - start).count();
    ++steps[kind];
    ++step;
  }
  state.SetItemsProcessed(state.iterations() * batch * kStreams);  // stream appends
  state.counters["per_seq"] =
      Counter(static_cast<double>(batch), Counter::kIsIterationInvariantRate | Counter::kInvert);
  state.counters["per_stream"] = Counter(static_cast<double>(batch * kStreams),
                                         Counter::kIsIterationInvariantRate | Counter::kInvert);
  const char* names[3] = {"plain_us", "page_us", "realloc_us"};
  for (int kind = 0; kind < 3; ++kind) {
    state.counters[names[kind]] =
        steps[kind] > 0 ? 1e6 * seconds[kind] / static_cast<double>(steps[kind]) : 0.0;
  }
}
BENCHMARK(BM_BlockManager_DecodeReserve)->Arg(64)->Unit(benchmark::kMicrosecond);

// ---------------------------------------------------------------------------
// Fork, Free

// Fork a 4096-token sequence (65536 pages, one Share each) and Free the child
// (one Release each); both are timed. Items are the parent's pages.
void BM_BlockManager_Fork(benchmark::State& state) {
  Harness harness(PoolPagesFor(1, kContext));
  BlockManager& manager = harness.manager();
  const SeqId parent = harness.Prefill(kContext);
  for (auto _ : state) {
    absl::StatusOr<SeqId> child = manager.Fork(parent);
    if (!child.ok() || !manager.Free(*child).ok()) {
      state.SkipWithError("Fork or Free failed");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations() * kStreams *
                          PagesFor(kContext, kGeometry.page_size));
}
BENCHMARK(BM_BlockManager_Fork)->Unit(benchmark::kMicrosecond);

// ---------------------------------------------------------------------------
// Evict

// Fractions of the context that the 8 kv heads of a layer keep: skewed as Ada-KV's
// head-wise budgets are, averaging 20% (they sum to 1.6). Layer l rotates them by
// l, so every layer has a different head order.
constexpr double kKeepFractions[8] = {0.02, 0.05, 0.08, 0.12, 0.18, 0.25, 0.38, 0.52};

// kKeepFractions of `tokens`, per layer and kv head: [layer][kv_head]. Adds the
// total to *kept_tokens.
std::vector<std::vector<int32_t>> KeptCounts(int64_t tokens, int64_t* kept_tokens) {
  std::vector<std::vector<int32_t>> kept(static_cast<size_t>(kGeometry.num_layers));
  for (int32_t layer = 0; layer < kGeometry.num_layers; ++layer) {
    for (int32_t h = 0; h < kGeometry.num_kv_heads; ++h) {
      const double fraction = kKeepFractions[(h + layer) % 8];
      kept[layer].push_back(static_cast<int32_t>(fraction * static_cast<double>(tokens) + 0.5));
      *kept_tokens += kept[layer].back();
    }
  }
  return kept;
}

// Pages for `num_seqs` sequences of `tokens` tokens and the fresh pages their
// eviction to `kept_tokens` (per sequence) takes: 20% and a partial page per stream.
int64_t EvictPoolPages(int64_t num_seqs, int64_t tokens, int64_t kept_tokens) {
  return PoolPagesFor(num_seqs, tokens) +
         num_seqs * (PagesFor(kept_tokens, kGeometry.page_size) + kStreams);
}

// Evict() of every layer of `seq` into `plan`, as the CUDA executor calls it.
bool EvictAllLayers(BlockManager& manager, SeqId seq,
                    const std::vector<std::vector<int32_t>>& kept, CompactionPlan* plan) {
  for (int32_t layer = 0; layer < kGeometry.num_layers; ++layer) {
    if (!manager.Evict(seq, layer, kept[layer], plan).ok()) return false;
  }
  return true;
}

// Evict every layer of one sequence of n tokens to 20% (kKeepFractions) into one
// CompactionPlan, then ReleaseRetiredPages(): the host side of compressing a
// prompt. The pool has room for fresh pages, so every stream compacts into new
// pages (the default path, not in place). Freeing the old sequence, prefilling a
// new one and clearing the plan run with the timer paused; Clear() keeps the
// plan's memory, so after the first iteration the plan is warm, as the CUDA
// executor's reused plan is.
void BM_BlockManager_Evict(benchmark::State& state) {
  const int64_t tokens = state.range(0);
  int64_t kept_tokens = 0;
  const std::vector<std::vector<int32_t>> kept = KeptCounts(tokens, &kept_tokens);
  Harness harness(EvictPoolPages(1, tokens, kept_tokens));
  BlockManager& manager = harness.manager();
  SeqId seq = harness.Prefill(tokens);
  bool first = true;
  CompactionPlan plan;
  for (auto _ : state) {
    if (!first) {
      state.PauseTiming();
      Check(manager.Free(seq), "Free");
      seq = harness.Prefill(tokens);
      plan.Clear();
      state.ResumeTiming();
    }
    first = false;
    if (!EvictAllLayers(manager, seq, kept, &plan)) {
      state.SkipWithError("Evict failed");
      break;
    }
    manager.ReleaseRetiredPages();
    benchmark::DoNotOptimize(plan.dst_page_ids.data());
  }
  state.SetItemsProcessed(state.iterations() * kStreams);  // streams compacted
  state.counters["per_stream"] =
      Counter(static_cast<double>(kStreams), Counter::kIsIterationInvariantRate | Counter::kInvert);
  state.counters["kept_frac"] =
      static_cast<double>(kept_tokens) / static_cast<double>(kStreams * tokens);
}
BENCHMARK(BM_BlockManager_Evict)->Arg(8192)->Arg(32768)->Unit(benchmark::kMicrosecond);

// The release step of BM_BlockManager_Evict alone: ReleaseRetiredPages() after
// every layer of one n-token sequence was evicted to 20% (524,288 retired pages
// at n = 32768). Manual time: only the release is timed (steady_clock); the
// eviction before it and the refill are not.
void BM_BlockManager_ReleaseRetired(benchmark::State& state) {
  const int64_t tokens = state.range(0);
  int64_t kept_tokens = 0;
  const std::vector<std::vector<int32_t>> kept = KeptCounts(tokens, &kept_tokens);
  Harness harness(EvictPoolPages(1, tokens, kept_tokens));
  BlockManager& manager = harness.manager();
  SeqId seq = harness.Prefill(tokens);
  bool first = true;
  CompactionPlan plan;
  for (auto _ : state) {
    if (!first) {
      Check(manager.Free(seq), "Free");
      seq = harness.Prefill(tokens);
      plan.Clear();
    }
    first = false;
    if (!EvictAllLayers(manager, seq, kept, &plan)) {
      state.SkipWithError("Evict failed");
      break;
    }
    const auto start = std::chrono::steady_clock::now();
    manager.ReleaseRetiredPages();
    const auto stop = std::chrono::steady_clock::now();
    state.SetIterationTime(std::chrono::duration<double>(stop - start).count());
  }
  state.SetItemsProcessed(state.iterations() * kStreams * PagesFor(tokens, kGeometry.page_size));
}
BENCHMARK(BM_BlockManager_ReleaseRetired)
    ->Arg(32768)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// BM_BlockManager_Evict for a batch: `batch` sequences of n tokens share the pool
// (8 x 32K: 4.2 M pages, so the pool's and the manager's per-page arrays no
// longer fit in the caches) and are compressed one after another, each into the
// one reused plan and released, as the CUDA executor's CompressBatch does. The
// time is the batch's; evict_us and release_us split it per sequence.
void BM_BlockManager_EvictBatch(benchmark::State& state) {
  const int64_t tokens = state.range(0);
  const int64_t batch = state.range(1);
  int64_t kept_tokens = 0;
  const std::vector<std::vector<int32_t>> kept = KeptCounts(tokens, &kept_tokens);
  Harness harness(EvictPoolPages(batch, tokens, kept_tokens));
  BlockManager& manager = harness.manager();
  std::vector<SeqId> seqs = harness.PrefillBatch(batch, tokens);
  bool first = true;
  CompactionPlan plan;
  double evict_s = 0.0, release_s = 0.0;
  for (auto _ : state) {
    if (!first) {
      state.PauseTiming();
      harness.FreeAll(&seqs);
      seqs = harness.PrefillBatch(batch, tokens);
      state.ResumeTiming();
    }
    first = false;
    bool ok = true;
    for (const SeqId seq : seqs) {
      const auto start = std::chrono::steady_clock::now();
      plan.Clear();
      ok = EvictAllLayers(manager, seq, kept, &plan);
      const auto evicted = std::chrono::steady_clock::now();
      manager.ReleaseRetiredPages();
      const auto stop = std::chrono::steady_clock::now();
      evict_s += std::chrono::duration<double>(evicted - start).count();
      release_s += std::chrono::duration<double>(stop - evicted).count();
      if (!ok) break;
      benchmark::DoNotOptimize(plan.dst_page_ids.data());
    }
    if (!ok) {
      state.SkipWithError("Evict failed");
      break;
    }
  }
  const auto seqs_done = static_cast<double>(state.iterations() * batch);
  state.SetItemsProcessed(state.iterations() * batch);  // sequences compressed
  state.counters["evict_us"] = 1e6 * evict_s / seqs_done;
  state.counters["release_us"] = 1e6 * release_s / seqs_done;
}
BENCHMARK(BM_BlockManager_EvictBatch)->Args({32768, 8})->Unit(benchmark::kMicrosecond);

// ---------------------------------------------------------------------------
// Block tables

// A full build of one layer's BlockTableCsr for `batch` sequences of 4096 tokens:
// batch * 8 rows of 256 pages (plus the default 8 pages of headroom each). The
// table is created and destroyed inside the timing, as BlockTable() returns a new one.
void BM_BlockManager_BlockTable(benchmark::State& state) {
  const int64_t batch = state.range(0);
  Harness harness(PoolPagesFor(batch, kContext));
  BlockManager& manager = harness.manager();
  const std::vector<SeqId> seqs = harness.PrefillBatch(batch, kContext);
  for (auto _ : state) {
    absl::StatusOr<BlockTableCsr> table = manager.BlockTable(0, seqs);
    if (!table.ok()) {
      state.SkipWithError("BlockTable failed");
      break;
    }
    benchmark::DoNotOptimize(table->page_ids().data());
  }
  const int64_t entries = batch * kGeometry.num_kv_heads * PagesFor(kContext, kGeometry.page_size);
  state.SetItemsProcessed(state.iterations() * entries);  // page entries
}
BENCHMARK(BM_BlockManager_BlockTable)->Arg(64)->Unit(benchmark::kMicrosecond);

// RefreshBlockTable(&table) after one decode step of `batch` sequences: the
// per-step host cost of keeping one layer's device table current. Only the
// refresh is timed (manual time, steady_clock around the call); the decode step
// itself, and refilling the sequences every kRefreshSteps steps, are not.
//
// A row has 8 pages of headroom, so once its sequence has grown 9 pages (144
// steps) past the last build the whole table is rebuilt. kRefreshSteps = 288
// covers exactly the steady state of one rebuild per 144 steps (the first comes
// after 128, since the initial build is at a page boundary), and the reported
// time is the average with those rebuilds amortized. The counters split it:
// append_ns is the mean of the refreshes that only appended, rebuild_ns of those
// that rebuilt, rebuilds the fraction of steps that rebuilt. The CPU column
// covers the untimed decode steps too; ignore it.
constexpr int64_t kRefreshSteps = 288;

void BM_BlockManager_BlockTableRefresh(benchmark::State& state) {
  const int64_t batch = state.range(0);
  Harness harness(PoolPagesFor(batch, kContext + kRefreshSteps));
  BlockManager& manager = harness.manager();
  std::vector<SeqId> seqs = harness.PrefillBatch(batch, kContext);
  BlockTableCsr table = Unwrap(manager.BlockTable(0, seqs), "BlockTable");
  std::vector<int32_t> slots(static_cast<size_t>(kStreams * batch));
  PageCopies copies;
  int64_t step = 0;
  double append_s = 0.0, rebuild_s = 0.0;
  int64_t appends = 0, rebuilds = 0, changed = 0;
  for (auto _ : state) {
    if (step == kRefreshSteps) {
      harness.FreeAll(&seqs);
      seqs = harness.PrefillBatch(batch, kContext);
      table = Unwrap(manager.BlockTable(0, seqs), "BlockTable");
      step = 0;
    }
    if (!DecodeStep(manager, seqs, &slots, &copies)) {
      state.SkipWithError("Reserve failed");
      break;
    }
    const auto start = std::chrono::steady_clock::now();
    const absl::Status status = manager.RefreshBlockTable(&table);
    const auto stop = std::chrono::steady_clock::now();
    if (!status.ok()) {
      state.SkipWithError("RefreshBlockTable failed");
      break;
    }
    const double seconds = std::chrono::duration<double>(stop - start).count();
    state.SetIterationTime(seconds);
    if (table.rebuilt()) {
      rebuild_s += seconds;
      ++rebuilds;
    } else {
      append_s += seconds;
      ++appends;
    }
    changed += static_cast<int64_t>(table.changed_entries().size());
    ++step;
  }
  const auto iterations = static_cast<double>(state.iterations());
  state.SetItemsProcessed(state.iterations() * batch * kGeometry.num_kv_heads);  // rows
  state.counters["append_ns"] = appends > 0 ? 1e9 * append_s / static_cast<double>(appends) : 0.0;
  state.counters["rebuild_ns"] =
      rebuilds > 0 ? 1e9 * rebuild_s / static_cast<double>(rebuilds) : 0.0;
  state.counters["rebuilds"] = static_cast<double>(rebuilds) / iterations;
  state.counters["changed"] = static_cast<double>(changed) / iterations;  // entries a step
}
BENCHMARK(BM_BlockManager_BlockTableRefresh)
    ->Arg(64)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace headpage

BENCHMARK_MAIN();
