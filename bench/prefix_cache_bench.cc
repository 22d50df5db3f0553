// SPDX-License-Identifier: Apache-2.0
// File: bench/prefix_cache_bench.cc
//
// The prefix cache's scheduler-side costs on the Llama-3-8B geometry (256
// streams, 16-token pages): a 4096-token prompt is 256 blocks of 256 pages.
// Side by side in one program: what admitting a request costs when its prompt
// is a miss (Reserve of every token, slot ids included) and when all but its
// last page is a hit (AddSequenceWithPrefix, then Reserve of the rest); what
// offering a prompt's blocks costs (CachePrefix), freeing a request whose blocks
// stay cached, and reclaiming them. Setup runs with the timer paused.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "allocator/page_pool.h"
#include "benchmark/benchmark.h"
#include "blockmgr/block_manager.h"
#include "core/geometry.h"

namespace headpage {
namespace {

const CacheGeometry kGeometry = CacheGeometry::Llama3_8B();
const int64_t kStreams = kGeometry.streams_per_sequence();

void Check(const absl::Status& status, const char* what) {
  if (!status.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, status.ToString().c_str());
    std::abort();
  }
}

// A pool for a few prompts of `tokens` tokens, a manager, token ids and a slot
// mapping buffer.
struct Setup {
  explicit Setup(int64_t tokens) : ids(static_cast<size_t>(tokens)) {
    const int64_t pages = 4 * kStreams * PagesFor(tokens, kGeometry.page_size) + 1024;
    auto p = PagePool::Create({pages, 0.0});
    Check(p.status(), "PagePool::Create");
    pool = std::make_unique<PagePool>(std::move(p).value());
    auto m = BlockManager::Create(kGeometry, pool.get());
    Check(m.status(), "BlockManager::Create");
    manager = std::make_unique<BlockManager>(std::move(m).value());
    std::iota(ids.begin(), ids.end(), 1000);
    slots.resize(static_cast<size_t>(kStreams * tokens));
  }
  // A request holding every prompt token, as its prefill leaves it.
  SeqId Prefilled() {
    const SeqId seq = manager->AddSequence();
    const auto n = static_cast<int64_t>(ids.size());
    Check(manager->Reserve(seq, n, SlotMappingOut{slots.data(), n, 0}, &copies), "Reserve");
    return seq;
  }
  // Admits a request: what a cache hit spares, then Reserve of what is left.
  SeqId Admit(bool use_cache) {
    const auto n = static_cast<int64_t>(ids.size());
    SeqId seq = 0;
    int64_t cached = 0;
    if (use_cache) {
      const BlockManager::PrefixHit hit =
          manager->AddSequenceWithPrefix(absl::MakeConstSpan(ids).first(ids.size() - 1), 0);
      seq = hit.seq;
      cached = hit.cached_tokens;
    } else {
      seq = manager->AddSequence();
    }
    Check(manager->Reserve(seq, n - cached, SlotMappingOut{slots.data(), n - cached, 0}, &copies),
          "Reserve");
    return seq;
  }

  std::unique_ptr<PagePool> pool;
  std::unique_ptr<BlockManager> manager;
  std::vector<int32_t> ids;
  std::vector<int32_t> slots;
  PageCopies copies;
};

// Admitting a request of state.range(0) prompt tokens: arg 1 = 0 a miss (no
// cache), 1 a hit on every full block but the last token's.
void BM_PrefixCache_Admit(benchmark::State& state) {
  Setup setup(state.range(0));
  const bool hit = state.range(1) != 0;
  if (hit) {
    const SeqId donor = setup.Prefilled();
    Check(setup.manager->CachePrefix(donor, setup.ids, 0).status(), "CachePrefix");
  }
  for (auto _ : state) {
    const SeqId seq = setup.Admit(hit);
    benchmark::DoNotOptimize(setup.slots.data());
    state.PauseTiming();
    Check(setup.manager->Free(seq), "Free");
    setup.copies.clear();
    state.ResumeTiming();
  }
  state.SetLabel(hit ? "hit" : "miss");
}
BENCHMARK(BM_PrefixCache_Admit)
    ->Args({4096, 0})
    ->Args({4096, 1})
    ->Unit(benchmark::kMicrosecond);

// CachePrefix of a prefilled 4096-token request whose blocks are new: 256 blocks
// of 256 pages. Reclaiming them runs paused.
void BM_PrefixCache_Offer(benchmark::State& state) {
  Setup setup(state.range(0));
  for (auto _ : state) {
    state.PauseTiming();
    const SeqId seq = setup.Prefilled();
    state.ResumeTiming();
    Check(setup.manager->CachePrefix(seq, setup.ids, 0).status(), "CachePrefix");
    state.PauseTiming();
    Check(setup.manager->Free(seq), "Free");
    setup.manager->ReclaimCachedPages(setup.pool->num_pages());
    state.ResumeTiming();
  }
}
BENCHMARK(BM_PrefixCache_Offer)->Arg(4096)->Unit(benchmark::kMicrosecond);

// Free of a request whose 4096 tokens are cached (its blocks join the unused
// list), then reclaiming them all: arg 1 says which is timed (0 Free, 1 reclaim).
void BM_PrefixCache_FreeAndReclaim(benchmark::State& state) {
  Setup setup(state.range(0));
  const bool time_reclaim = state.range(1) != 0;
  for (auto _ : state) {
    state.PauseTiming();
    const SeqId seq = setup.Prefilled();
    Check(setup.manager->CachePrefix(seq, setup.ids, 0).status(), "CachePrefix");
    if (!time_reclaim) state.ResumeTiming();
    Check(setup.manager->Free(seq), "Free");
    if (!time_reclaim) state.PauseTiming();
    if (time_reclaim) state.ResumeTiming();
    benchmark::DoNotOptimize(setup.manager->ReclaimCachedPages(setup.pool->num_pages()));
    if (!time_reclaim) state.ResumeTiming();
  }
  state.SetLabel(time_reclaim ? "reclaim" : "free");
}
BENCHMARK(BM_PrefixCache_FreeAndReclaim)
    ->Args({4096, 0})
    ->Args({4096, 1})
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace headpage

BENCHMARK_MAIN();
