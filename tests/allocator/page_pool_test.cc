// SPDX-License-Identifier: Apache-2.0
#include "allocator/page_pool.h"

#include <cmath>
#include <map>
#include <random>
#include <vector>

#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

PagePool MakePool(int64_t pages, double watermark = 0.0) {
  auto pool = PagePool::Create({pages, watermark});
  REQUIRE_OK(pool);
  return std::move(pool).value();
}

TEST_CASE("PagePool: bad options get clear errors", "[allocator]") {
  REQUIRE_ERROR(PagePool::Create({0, 0.0}), absl::StatusCode::kInvalidArgument, "num_pages");
  REQUIRE_ERROR(PagePool::Create({-5, 0.0}), absl::StatusCode::kInvalidArgument, "num_pages");
  REQUIRE_ERROR(PagePool::Create({int64_t{1} << 31, 0.0}), absl::StatusCode::kInvalidArgument,
                "num_pages");
  REQUIRE_ERROR(PagePool::Create({10, -0.1}), absl::StatusCode::kInvalidArgument, "watermark");
  REQUIRE_ERROR(PagePool::Create({10, 1.0}), absl::StatusCode::kInvalidArgument, "watermark");
  REQUIRE_ERROR(PagePool::Create({10, std::nan("")}), absl::StatusCode::kInvalidArgument,
                "watermark");
}

TEST_CASE("PagePool: a fresh pool hands out ascending ids with refcount 1", "[allocator]") {
  PagePool pool = MakePool(8);
  std::vector<PageId> pages(3);
  REQUIRE_OK(pool.Allocate(absl::MakeSpan(pages)));
  REQUIRE(pages == std::vector<PageId>{0, 1, 2});
  for (PageId p : pages) REQUIRE(pool.refcount(p) == 1);
  REQUIRE(pool.free_pages() == 5);
  REQUIRE(pool.used_pages() == 3);
  REQUIRE_OK(pool.CheckInvariants());
}

TEST_CASE("PagePool: Allocate is all-or-nothing", "[allocator]") {
  PagePool pool = MakePool(4);
  std::vector<PageId> three(3), two(2);
  REQUIRE_OK(pool.Allocate(absl::MakeSpan(three)));
  const absl::Status status = pool.Allocate(absl::MakeSpan(two));
  REQUIRE(status.code() == absl::StatusCode::kResourceExhausted);
  REQUIRE(pool.free_pages() == 1);
  REQUIRE(pool.Stats().peak_used_pages == 3);
  REQUIRE_OK(pool.CheckInvariants());
  // An exhausted pool refuses even one page, and zero pages always succeed.
  std::vector<PageId> one(1);
  REQUIRE_OK(pool.Allocate(absl::MakeSpan(one)));
  REQUIRE(pool.Allocate(absl::MakeSpan(one)).code() == absl::StatusCode::kResourceExhausted);
  REQUIRE_OK(pool.Allocate(absl::Span<PageId>()));
}

TEST_CASE("PagePool: a page returns to the free list when its last reference goes", "[allocator]") {
  PagePool pool = MakePool(4);
  std::vector<PageId> p(1);
  REQUIRE_OK(pool.Allocate(absl::MakeSpan(p)));
  REQUIRE_OK(pool.Share(p));
  REQUIRE_OK(pool.Share(p));
  REQUIRE(pool.refcount(p[0]) == 3);
  REQUIRE_OK(pool.Release(p));
  REQUIRE_OK(pool.Release(p));
  REQUIRE(pool.free_pages() == 3);
  REQUIRE_OK(pool.Release(p));
  REQUIRE(pool.free_pages() == 4);
  REQUIRE(pool.refcount(p[0]) == 0);
  REQUIRE_OK(pool.CheckInvariants());
}

TEST_CASE("PagePool: bad ids are rejected and change nothing", "[allocator]") {
  PagePool pool = MakePool(4);
  std::vector<PageId> p(2);
  REQUIRE_OK(pool.Allocate(absl::MakeSpan(p)));  // pages 0 and 1, refcount 1
  const std::vector<PageId> free_page = {3};
  const std::vector<PageId> out_of_range = {0, 9};
  REQUIRE_ERROR(pool.Share(free_page), absl::StatusCode::kInvalidArgument, "is free");
  REQUIRE_ERROR(pool.Share(out_of_range), absl::StatusCode::kInvalidArgument, "out of range");
  REQUIRE(pool.refcount(0) == 1);
  REQUIRE_ERROR(pool.Release(free_page), absl::StatusCode::kInvalidArgument, "no reference");
  // Page 0 listed twice with one reference: the second release must fail and the
  // first be undone.
  const std::vector<PageId> twice = {1, 0, 0};
  REQUIRE_ERROR(pool.Release(twice), absl::StatusCode::kInvalidArgument, "page 0");
  REQUIRE(pool.refcount(0) == 1);
  REQUIRE(pool.refcount(1) == 1);
  REQUIRE(pool.free_pages() == 2);
  REQUIRE_OK(pool.CheckInvariants());
  // With two references, listing it twice is fine.
  REQUIRE_OK(pool.Share(std::vector<PageId>{0}));
  REQUIRE_OK(pool.Release(std::vector<PageId>{0, 0}));
  REQUIRE(pool.free_pages() == 3);
  REQUIRE_OK(pool.CheckInvariants());
}

TEST_CASE("PagePool: CanAllocate keeps the watermark free", "[allocator]") {
  PagePool pool = MakePool(100, 0.1);
  REQUIRE(pool.Stats().watermark_pages == 10);
  REQUIRE(pool.CanAllocate(90));
  REQUIRE_FALSE(pool.CanAllocate(91));
  std::vector<PageId> p(95);
  REQUIRE_OK(pool.Allocate(absl::MakeSpan(p)));  // Allocate itself ignores the watermark
  REQUIRE_FALSE(pool.CanAllocate(1));
}

TEST_CASE("PagePool: peak usage", "[allocator]") {
  PagePool pool = MakePool(10);
  std::vector<PageId> p(6);
  REQUIRE_OK(pool.Allocate(absl::MakeSpan(p)));
  REQUIRE_OK(pool.Release(p));
  REQUIRE(pool.Stats().peak_used_pages == 6);
  pool.ResetPeak();
  REQUIRE(pool.Stats().peak_used_pages == 0);
}

TEST_CASE("PagePool: random operations against a map of refcounts", "[allocator]") {
  const uint32_t seed = GENERATE(1u, 2u, 3u);
  CAPTURE(seed);
  std::mt19937 rng(seed);
  PagePool pool = MakePool(64);
  std::map<PageId, uint32_t> model;  // referenced pages only
  for (int step = 0; step < 3000; ++step) {
    const int op = static_cast<int>(rng() % 3);
    if (op == 0) {
      std::vector<PageId> p(rng() % 10);
      const absl::Status s = pool.Allocate(absl::MakeSpan(p));
      if (p.size() > 64 - model.size()) {
        REQUIRE(s.code() == absl::StatusCode::kResourceExhausted);
      } else {
        REQUIRE_OK(s);
        for (PageId id : p) REQUIRE(model.emplace(id, 1).second);
      }
    } else if (!model.empty()) {
      auto it = model.begin();
      std::advance(it, rng() % model.size());
      const std::vector<PageId> one = {it->first};
      if (op == 1) {
        REQUIRE_OK(pool.Share(one));
        ++it->second;
      } else {
        REQUIRE_OK(pool.Release(one));
        if (--it->second == 0) model.erase(it);
      }
    }
    REQUIRE(pool.used_pages() == static_cast<int64_t>(model.size()));
    for (const auto& [id, refs] : model) REQUIRE(pool.refcount(id) == refs);
    if (step % 100 == 0) REQUIRE_OK(pool.CheckInvariants());
  }
}

}  // namespace
}  // namespace headpage
