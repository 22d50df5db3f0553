// SPDX-License-Identifier: Apache-2.0
#include "kernels/compact.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "core/kv_rows.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels/paged_case.h"
#include "tests/testing/guarded_array.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::HostCache;

// A plan built row by row, in the CSR layout Compact takes.
struct Plan {
  std::vector<int32_t> src_indptr{0}, src_pages, src_lens, dst_indptr{0}, dst_pages,
      keep_indptr{0}, keep;
  std::vector<uint8_t> in_place;

  void AddRow(const std::vector<int32_t>& src, int32_t len, const std::vector<int32_t>& dst,
              const std::vector<int32_t>& kept, bool inplace) {
    src_pages.insert(src_pages.end(), src.begin(), src.end());
    src_indptr.push_back(static_cast<int32_t>(src_pages.size()));
    src_lens.push_back(len);
    dst_pages.insert(dst_pages.end(), dst.begin(), dst.end());
    dst_indptr.push_back(static_cast<int32_t>(dst_pages.size()));
    keep.insert(keep.end(), kept.begin(), kept.end());
    keep_indptr.push_back(static_cast<int32_t>(keep.size()));
    in_place.push_back(inplace);
  }
  CompactArgs Args(const PagedKV& cache) const {
    CompactArgs args;
    args.cache = cache;
    args.num_rows = static_cast<int32_t>(src_lens.size());
    args.src_indptr = src_indptr.data();
    args.src_page_ids = src_pages.data();
    args.num_src_page_ids = static_cast<int32_t>(src_pages.size());
    args.src_lens = src_lens.data();
    args.dst_indptr = dst_indptr.data();
    args.dst_page_ids = dst_pages.data();
    args.num_dst_page_ids = static_cast<int32_t>(dst_pages.size());
    args.keep_indptr = keep_indptr.data();
    args.keep = keep.data();
    args.num_keep = static_cast<int32_t>(keep.size());
    args.in_place = in_place.data();
    return args;
  }
};

// Fills a stream's slots with tokens `first + i`.
void FillStream(HostCache* cache, const std::vector<int32_t>& pages, int32_t len, int32_t first) {
  for (int32_t i = 0; i < len; ++i) cache->Put(SlotOf(pages.data(), i, cache->view.page_size), first + i);
}

TEST_CASE("Compact: fresh pages receive the keep set in order", "[kernels]") {
  HostCache cache(8, 4, 64);
  const std::vector<int32_t> src = {3, 1};
  FillStream(&cache, src, 6, 0);  // tokens 0..5 at slots 12,13,14,15,4,5
  Plan plan;
  plan.AddRow(src, 6, {7}, {0, 2, 5}, false);
  REQUIRE_OK(ref::Compact(plan.Args(cache.view)));
  REQUIRE(cache.Holds(28, 0));
  REQUIRE(cache.Holds(29, 2));
  REQUIRE(cache.Holds(30, 5));
  REQUIRE(cache.Holds(12, 0));  // sources untouched
}

TEST_CASE("Compact: in place moves survivors down without clobbering", "[kernels]") {
  HostCache cache(8, 4, 64);
  const std::vector<int32_t> src = {2, 5, 6};
  FillStream(&cache, src, 10, 0);
  Plan plan;
  // Keep 1,2,3,4,5,9: survivor i reads slot keep[i] >= i, the dense prefix moves.
  plan.AddRow(src, 10, {2, 5}, {1, 2, 3, 4, 5, 9}, true);
  REQUIRE_OK(ref::Compact(plan.Args(cache.view)));
  const std::vector<int32_t> expect = {1, 2, 3, 4, 5, 9};
  for (int32_t i = 0; i < 6; ++i) REQUIRE(cache.Holds(SlotOf(src.data(), i, 4), expect[i]));
}

TEST_CASE("Compact: keep entries offset by keep_base name the row's slots", "[kernels]") {
  // A row that starts past a frozen prefix of 8 tokens: the keep set is
  // written over the whole stream (9, 11, 14), the row's slots are 1, 3, 6.
  HostCache cache(8, 4, 64);
  const std::vector<int32_t> src = {3, 1};
  FillStream(&cache, src, 7, 100);
  Plan plan;
  plan.AddRow(src, 7, {6}, {9, 11, 14}, false);
  CompactArgs args = plan.Args(cache.view);
  args.keep_base = 8;
  REQUIRE_OK(ref::Compact(args));
  REQUIRE(cache.Holds(24, 101));
  REQUIRE(cache.Holds(25, 103));
  REQUIRE(cache.Holds(26, 106));
  // An entry below the base, or past the row, is refused; a negative base too.
  plan.keep[0] = 7;
  args = plan.Args(cache.view);
  args.keep_base = 8;
  REQUIRE_ERROR(ref::Compact(args), absl::StatusCode::kOutOfRange, "keep entry 0");
  args.keep_base = -1;
  REQUIRE_ERROR(ref::Compact(args), absl::StatusCode::kInvalidArgument, "keep_base");
}

TEST_CASE("Compact: a score kept per slot moves with its token", "[kernels]") {
  HostCache cache(8, 4, 64);
  const std::vector<int32_t> src = {2, 5, 6};
  FillStream(&cache, src, 10, 0);
  std::vector<float> slot_scores(static_cast<size_t>(cache.view.num_slots()), -1.0f);
  for (int32_t i = 0; i < 10; ++i) slot_scores[SlotOf(src.data(), i, 4)] = 0.5f * i;
  Plan plan;
  plan.AddRow(src, 10, {2, 5}, {1, 2, 3, 4, 5, 9}, true);
  CompactArgs args = plan.Args(cache.view);
  args.slot_scores = slot_scores.data();
  REQUIRE_OK(ref::Compact(args));
  const std::vector<int32_t> expect = {1, 2, 3, 4, 5, 9};
  for (int32_t i = 0; i < 6; ++i) {
    REQUIRE(cache.Holds(SlotOf(src.data(), i, 4), expect[i]));
    REQUIRE(slot_scores[SlotOf(src.data(), i, 4)] == 0.5f * expect[i]);
  }
  REQUIRE(slot_scores[0] == -1.0f);  // slots outside the plan keep theirs
}

TEST_CASE("Compact: matches a dense gather, whatever the page ids", "[kernels]") {
  const uint32_t seed = GENERATE(11u, 12u, 13u, 14u);
  CAPTURE(seed);
  std::mt19937 rng(seed);
  const int32_t page_size = static_cast<int32_t>(1 + rng() % 8);
  const int32_t num_pages = 200;
  HostCache cache(num_pages, page_size, 64);
  // Shuffled page ids: any assignment of pages to rows must give the same tokens.
  std::vector<int32_t> ids(num_pages);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  size_t next = 0;
  auto take = [&](int64_t n) {
    std::vector<int32_t> out(ids.begin() + next, ids.begin() + next + n);
    next += n;
    return out;
  };
  Plan plan;
  std::vector<std::vector<int32_t>> dense_expected;  // per row: tokens kept, in order
  std::vector<std::vector<int32_t>> dst_tables;
  for (int32_t r = 0; r < 5; ++r) {
    const int32_t len = static_cast<int32_t>(rng() % 40);
    const std::vector<int32_t> src = take(PagesFor(len, page_size));
    FillStream(&cache, src, len, r * 1000);
    std::vector<int32_t> keep;
    for (int32_t i = 0; i < len; ++i) {
      if (rng() % 3 == 0) keep.push_back(i);
    }
    const bool inplace = rng() % 2 == 0;
    std::vector<int32_t> dst = inplace
        ? std::vector<int32_t>(src.begin(), src.begin() + PagesFor(static_cast<int64_t>(keep.size()), page_size))
        : take(PagesFor(static_cast<int64_t>(keep.size()), page_size));
    plan.AddRow(src, len, dst, keep, inplace);
    std::vector<int32_t> expected;
    for (int32_t k : keep) expected.push_back(r * 1000 + k);  // the dense oracle: gather
    dense_expected.push_back(expected);
    dst_tables.push_back(dst);
  }
  CompactArgs args = plan.Args(cache.view);
  // The same keep sets, rows in reverse order with gaps between them, found
  // through keep_offsets (how gpu::Select's output is laid out).
  std::vector<int32_t> scattered(3, -1), offsets(5);
  for (int32_t r = 4; r >= 0; --r) {
    offsets[r] = static_cast<int32_t>(scattered.size());
    scattered.insert(scattered.end(), plan.keep.begin() + plan.keep_indptr[r],
                     plan.keep.begin() + plan.keep_indptr[r + 1]);
    scattered.insert(scattered.end(), 2, -1);
  }
  if (GENERATE(false, true)) {
    args.keep = scattered.data();
    args.num_keep = static_cast<int32_t>(scattered.size());
    args.keep_offsets = offsets.data();
  }
  REQUIRE_OK(ref::Compact(args));
  for (size_t r = 0; r < dense_expected.size(); ++r) {
    for (size_t i = 0; i < dense_expected[r].size(); ++i) {
      REQUIRE(cache.Holds(SlotOf(dst_tables[r].data(), static_cast<int64_t>(i), page_size),
                          dense_expected[r][i]));
    }
  }
}

// One slot of an fp8 case as stored: K and V bytes, both scales, position.
struct StoredSlot {
  std::vector<uint8_t> bytes;
  float scales[2];
  int32_t position;

  StoredSlot(const PagedKV& cache, int64_t slot) : position(cache.positions[slot]) {
    for (const KvPart part : {KvPart::kKey, KvPart::kValue}) {
      const auto* row = reinterpret_cast<const uint8_t*>(KvRowBytes(cache, slot, part));
      bytes.insert(bytes.end(), row, row + cache.head_dim);
      scales[static_cast<int>(part)] = KvRowScale(cache, slot, part);
    }
  }
  bool operator==(const StoredSlot& other) const {
    return bytes == other.bytes && position == other.position &&
           std::memcmp(scales, other.scales, sizeof(scales)) == 0;
  }
};

TEST_CASE("Compact: fp8 survivors move with their scales, fresh and in place", "[kernels]") {
  const int32_t page_size = GENERATE(1, 5, 16);
  CAPTURE(page_size);
  // Two of each edge length: one row in place, one into fresh pages.
  const std::vector<int32_t> edge = testing::EdgeLengths(page_size);
  std::vector<int32_t> lens = edge;
  lens.insert(lens.end(), edge.begin(), edge.end());
  testing::PagedCase c({page_size, 64, DType::kBF16, lens, 40, 1.0f, KvDType::kFP8E4M3}, 51);
  std::vector<int32_t> spare;
  for (int32_t p = 0; p < c.num_pages(); ++p) {
    if (std::find(c.page_ids().begin(), c.page_ids().end(), p) == c.page_ids().end()) {
      spare.push_back(p);
    }
  }
  std::mt19937 rng(52);
  Plan plan;
  std::vector<std::vector<StoredSlot>> expected;  // per row: the survivors, in order
  std::vector<std::vector<int32_t>> dst_tables;
  std::vector<float> slot_scores(static_cast<size_t>(c.view().num_slots()));
  for (size_t i = 0; i < slot_scores.size(); ++i) slot_scores[i] = 0.5f * static_cast<float>(i);
  std::vector<float> expected_scores;
  for (int32_t s = 0; s < c.num_streams(); ++s) {
    const std::vector<int32_t> src(c.page_ids().begin() + c.indptr()[s],
                                   c.page_ids().begin() + c.indptr()[s + 1]);
    std::vector<int32_t> keep;
    expected.emplace_back();
    for (int32_t i = 0; i < lens[s]; ++i) {
      if (rng() % 3 != 0) {
        keep.push_back(i);
        expected.back().emplace_back(c.view(), c.Slot(s, i));
        expected_scores.push_back(slot_scores[c.Slot(s, i)]);
      }
    }
    const bool in_place = s < static_cast<int32_t>(edge.size());
    const int64_t pages = PagesFor(static_cast<int64_t>(keep.size()), page_size);
    std::vector<int32_t> dst(src.begin(), src.begin() + pages);
    if (!in_place) {
      dst.assign(spare.end() - pages, spare.end());
      spare.resize(spare.size() - pages);
    }
    plan.AddRow(src, lens[s], dst, keep, in_place);
    dst_tables.push_back(dst);
  }
  CompactArgs args = plan.Args(c.view());
  args.slot_scores = slot_scores.data();
  REQUIRE_OK(ref::Compact(args));
  size_t k = 0;
  for (size_t r = 0; r < expected.size(); ++r) {
    for (size_t i = 0; i < expected[r].size(); ++i, ++k) {
      const int64_t slot = SlotOf(dst_tables[r].data(), static_cast<int64_t>(i), page_size);
      CAPTURE(r, i, slot);
      REQUIRE(StoredSlot(c.view(), slot) == expected[r][i]);
      REQUIRE(slot_scores[slot] == expected_scores[k]);
    }
  }
}

TEST_CASE("Compact: malformed plans are rejected before anything moves", "[kernels]") {
  HostCache cache(8, 4, 64);
  const std::vector<int32_t> src = {0, 1};
  FillStream(&cache, src, 6, 0);
  auto expect_error = [&](const CompactArgs& args, const char* what) {
    const std::vector<int32_t> before(cache.positions);
    REQUIRE_ERROR(ref::Compact(args), absl::StatusCode::kOutOfRange, what);
    REQUIRE(cache.positions == before);
  };
  auto expect_plan_error = [&](const Plan& plan, const char* what) {
    expect_error(plan.Args(cache.view), what);
  };
  Plan good;
  good.AddRow(src, 6, {4}, {1, 3}, false);
  Plan descending;
  descending.AddRow({4}, 1, {5}, {0}, false);  // a valid row first: nothing may move
  descending.AddRow(src, 6, {2}, {3, 1}, false);
  expect_plan_error(descending, "row 1: keep entry 1 is outside the row's tokens or not above");
  Plan duplicate;
  duplicate.AddRow(src, 6, {2}, {1, 1}, false);
  expect_plan_error(duplicate, "row 0: keep entry 1 ");
  Plan past_end;
  past_end.AddRow(src, 6, {2}, {2, 6}, false);
  expect_plan_error(past_end, "keep entry 1 ");
  Plan too_many;
  too_many.AddRow({0}, 2, {2}, {0, 1, 1}, false);
  expect_plan_error(too_many, "keeps more tokens than the row holds");
  Plan short_dst;
  short_dst.AddRow(src, 6, {}, {0}, false);
  expect_plan_error(short_dst, "need more destination pages");
  Plan bad_page;
  bad_page.AddRow(src, 6, {8}, {0}, false);
  expect_plan_error(bad_page, "destination page 0 is outside the pool's 8 pages");
  Plan bad_source;
  bad_source.AddRow({0, 9}, 6, {4}, {0}, false);
  expect_plan_error(bad_source, "page 1 of its table is outside the pool's 8 pages");
  Plan not_prefix;
  not_prefix.AddRow(src, 6, {1}, {0}, true);
  expect_plan_error(not_prefix, "in place, but destination page 0");

  // Each indptr must start at 0, ascend and end inside the array it indexes,
  // whose length the Args carry: caught without reading past the array.
  // The arrays really are that short, each before a guard page: a read past
  // one would fault.
  testing::GuardedInts one_src_page({src[0]}), no_dst_pages({}), one_keep({1});
  CompactArgs args = good.Args(cache.view);
  args.src_page_ids = one_src_page.data();
  args.num_src_page_ids = 1;
  expect_error(args, "row 0: indptr[1] is past the end of page_ids (1 entries)");
  args = good.Args(cache.view);
  args.dst_page_ids = no_dst_pages.data();
  args.num_dst_page_ids = 0;
  expect_error(args, "dst_indptr[1] is past the end of dst_page_ids (0 entries)");
  args = good.Args(cache.view);
  args.keep = one_keep.data();
  args.num_keep = 1;
  expect_error(args, "the keep set reaches past the end of keep (1 entries)");
  Plan shifted = good;
  shifted.keep_indptr[0] = -1;
  expect_plan_error(shifted, "keep_indptr[0] is not 0");
  shifted = good;
  shifted.src_indptr = {-2, 2};
  expect_plan_error(shifted, "indptr[0] is not 0");
  shifted = good;
  shifted.dst_indptr = {1, 0};
  expect_plan_error(shifted, "dst_indptr[0] is not 0");
  Plan two_rows = good;
  two_rows.AddRow({2}, 3, {5}, {0}, false);
  two_rows.src_indptr[2] = 1;  // row 1's pages would end before they begin
  expect_plan_error(two_rows, "row 1: indptr[2] is below indptr[1]");
  CompactArgs offset_args = good.Args(cache.view);
  const int32_t negative_offset = -4;
  offset_args.keep_offsets = &negative_offset;
  expect_error(offset_args, "the keep set reaches past the end of keep");

  CompactArgs null_args = good.Args(cache.view);
  null_args.keep = nullptr;
  REQUIRE_ERROR(ref::Compact(null_args), absl::StatusCode::kInvalidArgument,
                "non-empty plan array is null");
  null_args = good.Args(cache.view);
  null_args.src_lens = nullptr;
  REQUIRE_ERROR(Validate(null_args), absl::StatusCode::kInvalidArgument, "null");
  null_args = good.Args(cache.view);
  null_args.num_keep = -1;
  REQUIRE_ERROR(Validate(null_args), absl::StatusCode::kInvalidArgument, "negative array length");
  Plan keeps_nothing;  // empty page and keep arrays may be null
  keeps_nothing.AddRow({}, 0, {}, {}, false);
  REQUIRE(keeps_nothing.keep.data() == nullptr);
  REQUIRE_OK(ref::Compact(keeps_nothing.Args(cache.view)));
  CompactArgs none{cache.view, 0};
  REQUIRE_OK(ref::Compact(none));
  CompactArgs negative{cache.view, -1};
  REQUIRE_ERROR(Validate(negative), absl::StatusCode::kInvalidArgument, "num_rows -1");
}

}  // namespace
}  // namespace headpage
