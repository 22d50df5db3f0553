// SPDX-License-Identifier: Apache-2.0
#include "allocator/page_pool.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "core/check.h"

namespace headpage {

absl::StatusOr<PagePool> PagePool::Create(const PagePoolOptions& options) {
  constexpr int64_t kMaxPages = std::numeric_limits<int32_t>::max();
  if (options.num_pages < 1 || options.num_pages > kMaxPages) {
    return absl::InvalidArgumentError(absl::StrCat("num_pages must be in [1, ", kMaxPages,
                                                   "], got ", options.num_pages));
  }
  if (!(options.watermark >= 0.0 && options.watermark < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("watermark must be in [0, 1), got ", options.watermark));
  }
  const auto watermark_pages =
      static_cast<int64_t>(options.watermark * static_cast<double>(options.num_pages));
  return PagePool(options.num_pages, watermark_pages);
}

PagePool::PagePool(int64_t num_pages, int64_t watermark_pages)
    : free_stack_(static_cast<size_t>(num_pages)),
      free_top_(num_pages),
      refcounts_(static_cast<size_t>(num_pages), 0),
      watermark_pages_(watermark_pages) {
  // Page 0 on top, so a fresh pool hands out ids in ascending order.
  for (int64_t i = 0; i < num_pages; ++i) {
    free_stack_[static_cast<size_t>(i)] = static_cast<PageId>(num_pages - 1 - i);
  }
}

absl::Status PagePool::Allocate(absl::Span<PageId> out) {
  const auto n = static_cast<int64_t>(out.size());
  if (n > free_top_) {
    // No message: absl keeps a code-only status inline, with no allocation.
    return absl::Status(absl::StatusCode::kResourceExhausted, "");
  }
  const PageId* top = free_stack_.data() + free_top_;
  for (int64_t i = 0; i < n; ++i) {
    const PageId page = *--top;
    refcounts_[page] = 1;
    out[static_cast<size_t>(i)] = page;
  }
  free_top_ -= n;
  peak_used_ = std::max(peak_used_, used_pages());
  return absl::OkStatus();
}

absl::Status PagePool::Share(absl::Span<const PageId> pages) {
  for (const PageId page : pages) {
    if (page >= refcounts_.size() || refcounts_[page] == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("Share: page ", page, page >= refcounts_.size() ? " is out of range"
                                                                       : " is free"));
    }
  }
  for (const PageId page : pages) {
    HEADPAGE_CHECK(refcounts_[page] != std::numeric_limits<uint32_t>::max());
    ++refcounts_[page];
  }
  return absl::OkStatus();
}

namespace {

// Out of line, so that building the message does not bloat Release()'s loop.
[[gnu::noinline, gnu::cold]] absl::Status BadRelease(PageId page, size_t num_pages) {
  return absl::InvalidArgumentError(absl::StrCat(
      "Release: page ", page,
      page >= num_pages ? " is out of range" : " has no reference left to release"));
}

}  // namespace

absl::Status PagePool::Release(absl::Span<const PageId> pages) {
  // One pass that commits as it goes and undoes itself on the first bad id. The
  // pages it pushed are exactly the top of the free stack, so undoing is cheap,
  // and a page listed more often than it has references is caught where it
  // reaches zero the second time.
  uint32_t* refcounts = refcounts_.data();
  PageId* stack = free_stack_.data();
  const size_t num_pages = refcounts_.size();
  int64_t top = free_top_;
  for (size_t i = 0; i < pages.size(); ++i) {
    const PageId page = pages[i];
    if (page >= num_pages || refcounts[page] == 0) {
      for (size_t j = 0; j < i; ++j) ++refcounts[pages[j]];
      return BadRelease(page, num_pages);  // free_top_ was never written
    }
    if (--refcounts[page] == 0) stack[top++] = page;
  }
  free_top_ = top;
  return absl::OkStatus();
}

PagePoolStats PagePool::Stats() const {
  PagePoolStats stats;
  stats.num_pages = num_pages();
  stats.free_pages = free_top_;
  stats.used_pages = used_pages();
  stats.peak_used_pages = peak_used_;
  stats.watermark_pages = watermark_pages_;
  return stats;
}

absl::Status PagePool::CheckInvariants() const {
  std::vector<uint8_t> on_stack(refcounts_.size(), 0);
  for (int64_t i = 0; i < free_top_; ++i) {
    const PageId page = free_stack_[static_cast<size_t>(i)];
    if (page >= refcounts_.size()) {
      return absl::InternalError(absl::StrCat("free stack holds out-of-range page ", page));
    }
    if (on_stack[page]++) {
      return absl::InternalError(absl::StrCat("page ", page, " is on the free stack twice"));
    }
    if (refcounts_[page] != 0) {
      return absl::InternalError(absl::StrCat("free page ", page, " has refcount ",
                                              refcounts_[page]));
    }
  }
  for (size_t page = 0; page < refcounts_.size(); ++page) {
    if (refcounts_[page] == 0 && !on_stack[page]) {
      return absl::InternalError(
          absl::StrCat("page ", page, " has no reference but is not on the free stack"));
    }
  }
  if (peak_used_ < used_pages()) {
    return absl::InternalError("peak_used_pages is below used_pages");
  }
  return absl::OkStatus();
}

}  // namespace headpage
