// SPDX-License-Identifier: Apache-2.0
// File: allocator/page_pool.h
//
// PagePool hands out page ids and counts references to them; it owns no bytes
// (an Arena does). Every page is in exactly one of two states:
//
//   free        refcount 0, on the free stack exactly once
//   referenced  refcount >= 1, not on the free stack
//
// Allocate() takes pages all-or-nothing; Share() and Release() move references.
// A page returns to the free stack when its last reference is released.
// Every operation is O(1) per page and allocates no heap memory.
//
// Thread-compatible: the engine's scheduler thread owns the pool.
#ifndef HEADPAGE_ALLOCATOR_PAGE_POOL_H_
#define HEADPAGE_ALLOCATOR_PAGE_POOL_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/paged_kv.h"

namespace headpage {

struct PagePoolOptions {
  // Pages in the pool; at least 1, at most 2^31 - 1 (kernels see page ids as int32).
  int64_t num_pages = 0;
  // Fraction of the pool that CanAllocate() keeps free, as vLLM's watermark does:
  // admitting a new request must leave this much room for the running ones to grow.
  // In [0, 1).
  double watermark = 0.0;
};

struct PagePoolStats {
  int64_t num_pages = 0;
  int64_t free_pages = 0;
  int64_t used_pages = 0;
  int64_t peak_used_pages = 0;  // since creation or the last ResetPeak()
  int64_t watermark_pages = 0;
};

class PagePool {
 public:
  // InvalidArgument for num_pages outside [1, 2^31 - 1] or watermark outside [0, 1).
  [[nodiscard]] static absl::StatusOr<PagePool> Create(const PagePoolOptions& options);

  PagePool(PagePool&&) = default;
  PagePool& operator=(PagePool&&) = default;
  PagePool(const PagePool&) = delete;
  PagePool& operator=(const PagePool&) = delete;

  // Takes `out.size()` free pages, each with refcount 1, and writes their ids to
  // `out`. All or nothing: when fewer pages are free, returns ResourceExhausted
  // (with no message, so this path allocates nothing) and changes nothing.
  // Ignores the watermark: that is CanAllocate()'s business.
  [[nodiscard]] absl::Status Allocate(absl::Span<PageId> out);

  // True when `n` pages can be allocated with the watermark still free afterwards.
  bool CanAllocate(int64_t n) const { return free_top_ - n >= watermark_pages_; }

  // Adds one reference to each page (a page may appear several times).
  // InvalidArgument, changing nothing, if a page is out of range or free.
  [[nodiscard]] absl::Status Share(absl::Span<const PageId> pages);

  // Drops one reference from each page (a page may appear as often as it has
  // references); pages reaching zero go back to the free stack. InvalidArgument,
  // changing nothing, if a page is out of range or has no reference left to drop.
  [[nodiscard]] absl::Status Release(absl::Span<const PageId> pages);

  // REQUIRES: page < num_pages().
  uint32_t refcount(PageId page) const { return refcounts_[page]; }
  int64_t num_pages() const { return static_cast<int64_t>(refcounts_.size()); }
  int64_t free_pages() const { return free_top_; }
  int64_t used_pages() const { return num_pages() - free_top_; }
  PagePoolStats Stats() const;
  void ResetPeak() { peak_used_ = used_pages(); }

  // The one block manager a pool serves: refcounts mean "streams and retired
  // lists of that manager hold the page", so a second manager on the same pool
  // would break both. Claim() is false when a manager already holds the pool;
  // the manager gives it back with Unclaim() when it goes.
  [[nodiscard]] bool Claim() {
    if (claimed_) return false;
    claimed_ = true;
    return true;
  }
  void Unclaim() { claimed_ = false; }
  bool claimed() const { return claimed_; }

  // Proves the two-state invariant above; Internal naming the first violation.
  // O(num_pages).
  [[nodiscard]] absl::Status CheckInvariants() const;

 private:
  PagePool(int64_t num_pages, int64_t watermark_pages);

  // Free page ids; the free ones are free_stack_[0, free_top_). Allocation pops
  // from the top, release pushes on top. A stack, not a Boost.Intrusive list:
  // nothing here removes a page from the middle, and bench_allocator measures the
  // stack at ~1.7 ns per page in batches against ~3-4 ns for a Boost.Intrusive
  // doubly linked list (single pages cost ~5 ns either way; docs/performance.md).
  // A prefix-cache LRU of unreferenced pages, which does remove from the middle,
  // would be the place for one.
  std::vector<PageId> free_stack_;
  int64_t free_top_ = 0;
  std::vector<uint32_t> refcounts_;
  int64_t watermark_pages_ = 0;
  int64_t peak_used_ = 0;
  bool claimed_ = false;
};

}  // namespace headpage

#endif  // HEADPAGE_ALLOCATOR_PAGE_POOL_H_
