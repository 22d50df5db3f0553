// SPDX-License-Identifier: Apache-2.0
// File: bench/allocator_bench.cc
//
// PagePool against the free-list design it chose not to use. PagePool keeps its
// free page ids on a plain stack (a vector); vLLM v1's FreeKVCacheBlockQueue keeps
// them on a doubly linked list threaded through the block objects, so that a
// prefix-cache hit can take a block out of the middle in O(1). IntrusiveFreeList
// below is that design in C++ (Boost.Intrusive, nodes in one array), with the
// same contract as PagePool (all-or-nothing Allocate, checked Release, refcounts),
// so that the two differ only in the free list.
//
// Every benchmark uses a pool of kPoolPages pages: 8 GiB of Llama-3-8B KV in
// 8 KiB pages, a small GPU's worth. Items are allocate + release pairs, one per
// page, so 1 / items_per_second is the cost of one page's round trip.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <utility>
#include <vector>

#include "absl/base/attributes.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "allocator/page_pool.h"
#include "benchmark/benchmark.h"
#include "boost/intrusive/list.hpp"

namespace headpage {
namespace {

constexpr int64_t kPoolPages = int64_t{1} << 20;

PagePool MakePool(int64_t num_pages) {
  absl::StatusOr<PagePool> pool = PagePool::Create({num_pages, 0.0});
  if (!pool.ok()) {
    std::fprintf(stderr, "PagePool::Create: %s\n", pool.status().ToString().c_str());
    std::abort();
  }
  return *std::move(pool);
}

// A free list on boost::intrusive::list, as vLLM v1's FreeKVCacheBlockQueue
// (vllm/v1/core/kv_cache_utils.py): one node per page, all in one array, each
// carrying the page's refcount and the list links. Allocation pops the front and
// release appends at the back (FIFO, so that a freed block whose prefix is
// cached is reused last), or pushes at the front when built with kLifo, which is
// PagePool's order. What the design buys is free_.erase(free_.iterator_to(node)):
// O(1) removal from the middle (a prefix-cache hit), which PagePool never needs.
// normal_link: no safe-mode unlinking writes, the fastest hook Boost offers.
// Allocate and Release are kept out of line, as PagePool's are (page_pool.cc, no
// LTO), so that call overhead does not favour either side.
class IntrusiveFreeList {
 public:
  enum class Order { kFifo, kLifo };

  IntrusiveFreeList(int64_t num_pages, Order order)
      : nodes_(static_cast<size_t>(num_pages)), order_(order) {
    for (Node& node : nodes_) free_.push_back(node);
  }
  IntrusiveFreeList(const IntrusiveFreeList&) = delete;
  IntrusiveFreeList& operator=(const IntrusiveFreeList&) = delete;

  // As PagePool::Allocate: all or nothing, refcount 1.
  ABSL_ATTRIBUTE_NOINLINE bool Allocate(absl::Span<PageId> out) {
    if (out.size() > free_.size()) return false;
    for (PageId& id : out) {
      Node& node = free_.front();
      free_.pop_front();
      node.refcount = 1;
      id = static_cast<PageId>(&node - nodes_.data());
    }
    return true;
  }

  // As PagePool::Release: one pass that commits as it goes and undoes itself on
  // the first bad id.
  ABSL_ATTRIBUTE_NOINLINE bool Release(absl::Span<const PageId> pages) {
    for (size_t i = 0; i < pages.size(); ++i) {
      const PageId page = pages[i];
      if (page >= nodes_.size() || nodes_[page].refcount == 0) {
        for (size_t j = 0; j < i; ++j) {
          Node& node = nodes_[pages[j]];
          if (node.refcount++ == 0) free_.erase(free_.iterator_to(node));
        }
        return false;
      }
      Node& node = nodes_[page];
      if (--node.refcount == 0) {
        if (order_ == Order::kFifo) {
          free_.push_back(node);
        } else {
          free_.push_front(node);
        }
      }
    }
    return true;
  }

 private:
  struct Node : boost::intrusive::list_base_hook<
                    boost::intrusive::link_mode<boost::intrusive::normal_link>> {
    uint32_t refcount = 0;
  };

  std::vector<Node> nodes_;  // never resized: the list points into it
  boost::intrusive::list<Node, boost::intrusive::constant_time_size<true>> free_;
  Order order_;
};

// ---------------------------------------------------------------------------
// PagePool

void BM_PagePool_AllocateRelease(benchmark::State& state) {
  PagePool pool = MakePool(kPoolPages);
  PageId page = 0;
  for (auto _ : state) {
    if (!pool.Allocate(absl::MakeSpan(&page, 1)).ok()) {
      state.SkipWithError("Allocate failed");
      break;
    }
    benchmark::DoNotOptimize(page);
    if (!pool.Release(absl::MakeConstSpan(&page, 1)).ok()) {
      state.SkipWithError("Release failed");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PagePool_AllocateRelease);

void BM_PagePool_AllocateReleaseBatch(benchmark::State& state) {
  PagePool pool = MakePool(kPoolPages);
  std::vector<PageId> pages(static_cast<size_t>(state.range(0)));
  for (auto _ : state) {
    if (!pool.Allocate(absl::MakeSpan(pages)).ok()) {
      state.SkipWithError("Allocate failed");
      break;
    }
    benchmark::DoNotOptimize(pages.data());
    benchmark::ClobberMemory();
    if (!pool.Release(pages).ok()) {
      state.SkipWithError("Release failed");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_PagePool_AllocateReleaseBatch)->Arg(16)->Arg(256);

// ---------------------------------------------------------------------------
// The intrusive list: vLLM's FIFO order, then PagePool's LIFO order, which
// separates the cost of the list from the cost of FIFO walking the whole pool.

void AllocateReleaseOne(benchmark::State& state, IntrusiveFreeList::Order order) {
  IntrusiveFreeList list(kPoolPages, order);
  PageId page = 0;
  for (auto _ : state) {
    if (!list.Allocate(absl::MakeSpan(&page, 1))) {
      state.SkipWithError("Allocate failed");
      break;
    }
    benchmark::DoNotOptimize(page);
    if (!list.Release(absl::MakeConstSpan(&page, 1))) {
      state.SkipWithError("Release failed");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
}

void AllocateReleaseBatch(benchmark::State& state, IntrusiveFreeList::Order order) {
  IntrusiveFreeList list(kPoolPages, order);
  std::vector<PageId> pages(static_cast<size_t>(state.range(0)));
  for (auto _ : state) {
    if (!list.Allocate(absl::MakeSpan(pages))) {
      state.SkipWithError("Allocate failed");
      break;
    }
    benchmark::DoNotOptimize(pages.data());
    benchmark::ClobberMemory();
    if (!list.Release(pages)) {
      state.SkipWithError("Release failed");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

void BM_IntrusiveFreeList_AllocateRelease(benchmark::State& state) {
  AllocateReleaseOne(state, IntrusiveFreeList::Order::kFifo);
}
BENCHMARK(BM_IntrusiveFreeList_AllocateRelease);

void BM_IntrusiveFreeList_AllocateReleaseBatch(benchmark::State& state) {
  AllocateReleaseBatch(state, IntrusiveFreeList::Order::kFifo);
}
BENCHMARK(BM_IntrusiveFreeList_AllocateReleaseBatch)->Arg(16)->Arg(256);

void BM_IntrusiveFreeListLifo_AllocateRelease(benchmark::State& state) {
  AllocateReleaseOne(state, IntrusiveFreeList::Order::kLifo);
}
BENCHMARK(BM_IntrusiveFreeListLifo_AllocateRelease);

void BM_IntrusiveFreeListLifo_AllocateReleaseBatch(benchmark::State& state) {
  AllocateReleaseBatch(state, IntrusiveFreeList::Order::kLifo);
}
BENCHMARK(BM_IntrusiveFreeListLifo_AllocateReleaseBatch)->Arg(16)->Arg(256);

}  // namespace
}  // namespace headpage

BENCHMARK_MAIN();
