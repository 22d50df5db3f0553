// SPDX-License-Identifier: Apache-2.0
// gpu::Compact against ref::Compact on random plans over the shared generator's
// pools: fresh and in-place rows mixed, byte-exact (ctest label `gpu`).
#include <algorithm>
#include <random>
#include <set>
#include <vector>

#include "kernels/compact.h"
#include "kernels/table_checks_host.h"
#include "tests/kernels/device_buffer.h"
#include "tests/kernels/paged_case.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::DeviceBuffer;
using testing::DevicePool;
using testing::PagedCase;

// A compaction plan over every stream of a PagedCase: a random keep set per
// stream (none, all, or a random subset), in place for about half the rows,
// otherwise into fresh pages taken from the pool's spare pages.
struct RandomPlan {
  std::vector<int32_t> src_indptr{0}, src_pages, src_lens, dst_indptr{0}, dst_pages,
      keep_indptr{0}, keep;
  std::vector<uint8_t> in_place;

  // many_fresh: even rows keep everything into fresh pages, odd rows a random
  // ~20% in place (enough survivors that every warp of the flat path walks
  // several slabs and crosses rows); otherwise each row's mode is random.
  explicit RandomPlan(PagedCase& c, bool many_fresh = false) {
    std::mt19937_64& rng = c.rng();
    const int32_t ps = c.spec().page_size;
    std::set<int32_t> used(c.page_ids().begin(), c.page_ids().end());
    std::vector<int32_t> spare;
    for (int32_t p = 0; p < c.num_pages(); ++p) {
      if (used.count(p) == 0) spare.push_back(p);
    }
    std::shuffle(spare.begin(), spare.end(), rng);
    for (int32_t s = 0; s < c.num_streams(); ++s) {
      const int32_t len = c.lens()[s];
      const int32_t mode = many_fresh ? (s % 2 == 0 ? 0 : 2) : static_cast<int32_t>(rng() % 4);
      std::vector<int32_t> kept;
      for (int32_t i = 0; i < len; ++i) {
        if (mode == 0 || (mode >= 2 && rng() % 5 == 0)) kept.push_back(i);  // all, or ~20%
      }
      if (mode == 1) kept.clear();
      const bool inplace = many_fresh ? s % 2 == 1 : rng() % 2 == 0;
      const int32_t dst_count = static_cast<int32_t>(PagesFor(static_cast<int64_t>(kept.size()), ps));
      const int32_t* src = c.page_ids().data() + c.indptr()[s];
      src_pages.insert(src_pages.end(), src, src + (c.indptr()[s + 1] - c.indptr()[s]));
      if (inplace || static_cast<int32_t>(spare.size()) < dst_count) {
        dst_pages.insert(dst_pages.end(), src, src + dst_count);
        in_place.push_back(1);
      } else {
        dst_pages.insert(dst_pages.end(), spare.end() - dst_count, spare.end());
        spare.resize(spare.size() - dst_count);
        in_place.push_back(0);
      }
      src_indptr.push_back(static_cast<int32_t>(src_pages.size()));
      dst_indptr.push_back(static_cast<int32_t>(dst_pages.size()));
      src_lens.push_back(len);
      keep.insert(keep.end(), kept.begin(), kept.end());
      keep_indptr.push_back(static_cast<int32_t>(keep.size()));
    }
  }
};

// The plan's arrays on the device, each exactly as long as on the host.
struct DevicePlan {
  DeviceBuffer src_indptr, src_pages, src_lens, dst_indptr, dst_pages, keep_indptr, keep,
      in_place;
  explicit DevicePlan(const RandomPlan& p)
      : src_indptr(p.src_indptr), src_pages(p.src_pages), src_lens(p.src_lens),
        dst_indptr(p.dst_indptr), dst_pages(p.dst_pages), keep_indptr(p.keep_indptr),
        keep(p.keep), in_place(p.in_place) {}
};

CompactArgs ArgsOf(const PagedKV& cache, const RandomPlan& host, DevicePlan* device) {
  CompactArgs args;
  args.cache = cache;
  args.num_rows = static_cast<int32_t>(host.src_lens.size());
  args.num_src_page_ids = static_cast<int32_t>(host.src_pages.size());
  args.num_dst_page_ids = static_cast<int32_t>(host.dst_pages.size());
  args.num_keep = static_cast<int32_t>(host.keep.size());
  if (device == nullptr) {
    args.src_indptr = host.src_indptr.data();
    args.src_page_ids = host.src_pages.data();
    args.src_lens = host.src_lens.data();
    args.dst_indptr = host.dst_indptr.data();
    args.dst_page_ids = host.dst_pages.data();
    args.keep_indptr = host.keep_indptr.data();
    args.keep = host.keep.data();
    args.in_place = host.in_place.data();
  } else {
    args.src_indptr = device->src_indptr.get<int32_t>();
    args.src_page_ids = device->src_pages.get<int32_t>();
    args.src_lens = device->src_lens.get<int32_t>();
    args.dst_indptr = device->dst_indptr.get<int32_t>();
    args.dst_page_ids = device->dst_pages.get<int32_t>();
    args.keep_indptr = device->keep_indptr.get<int32_t>();
    args.keep = device->keep.get<int32_t>();
    args.in_place = device->in_place.get<uint8_t>();
  }
  return args;
}

// With `scattered`, the GPU reads the keep sets through keep_offsets from an
// array holding them in reverse row order with gaps (gpu::Select's layout),
// and its keep_indptr, which then gives only counts, starts at 11, not 0; the
// reference reads the packed plan. The scattered and many-fresh cases also
// carry a score per slot (the eviction engine's device score store), which
// moves with its token, on the in-place and the fresh path. A scattered plan's
// keep entries are offset by `keep_base` on the GPU side (a frozen prefix's
// keep sets, written over the whole stream).
void CheckAgainstRef(PagedCase& c, bool scattered = false, bool many_fresh = false,
                     int32_t keep_base = 0) {
  RandomPlan plan(c, many_fresh);
  DevicePool device(c.view(), c.data(), c.positions(), c.scales());
  std::vector<float> slot_scores(c.positions().size());
  for (size_t i = 0; i < slot_scores.size(); ++i) slot_scores[i] = 0.25f * static_cast<float>(i) - 3.0f;
  DeviceBuffer device_scores(slot_scores);
  const bool with_scores = scattered || many_fresh;
  std::vector<int32_t> keep_array = plan.keep, offsets, counts_indptr = plan.keep_indptr;
  if (scattered) {
    for (int32_t& entry : counts_indptr) entry += 11;
    keep_array.assign(5, -1);
    offsets.resize(static_cast<size_t>(c.num_streams()));
    for (int32_t r = c.num_streams() - 1; r >= 0; --r) {
      offsets[r] = static_cast<int32_t>(keep_array.size());
      for (int32_t e = plan.keep_indptr[r]; e < plan.keep_indptr[r + 1]; ++e) {
        keep_array.push_back(plan.keep[e] + keep_base);
      }
      keep_array.insert(keep_array.end(), 3, -1);
    }
  }
  DevicePlan device_plan(plan);
  DeviceBuffer keep_indptr(counts_indptr), keep(keep_array), keep_offsets(offsets),
      fault(std::vector<uint64_t>{0});
  // Checked on the device (a valid plan: no fault, everything moves).
  CompactArgs args = ArgsOf(device.view, plan, &device_plan);
  args.keep_indptr = keep_indptr.get<int32_t>();
  args.keep = keep.get<int32_t>();
  args.num_keep = static_cast<int32_t>(keep_array.size());
  args.keep_offsets = scattered ? keep_offsets.get<int32_t>() : nullptr;
  args.keep_base = scattered ? keep_base : 0;
  args.slot_scores = with_scores ? device_scores.get<float>() : nullptr;
  args.fault = fault.get<uint64_t>();
  REQUIRE_OK(gpu::Compact(args, nullptr));
  HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
  REQUIRE_OK(TableFaultStatus(args, gpu::ReadTableFault(args.fault, nullptr).value()));

  CompactArgs host = ArgsOf(c.view(), plan, nullptr);
  host.slot_scores = with_scores ? slot_scores.data() : nullptr;
  REQUIRE_OK(ref::Compact(host));
  // The whole pool, not only the destinations: nothing else may change either.
  REQUIRE(device.positions.Download<int32_t>() == c.positions());
  REQUIRE(device.data.Download<uint8_t>() == c.data());
  REQUIRE(device_scores.Download<float>() == slot_scores);
  if (c.view().fp8()) REQUIRE(testing::SameBits(device.scales.Download<float>(), c.scales()));
}

TEST_CASE("gpu::Compact equals ref::Compact, fresh and in place", "[kernels][gpu][sanitize]") {
  for (const testing::PageKind page_kind : testing::kEveryPageKind) {
    const DType dtype = page_kind.dtype;
    for (int32_t head_dim : {64, 128, 256}) {
      for (int32_t page_size : {1, 16, 7}) {
        CAPTURE(DTypeName(dtype), KvDTypeName(page_kind.kv_dtype), head_dim, page_size);
        std::vector<int32_t> lens = testing::EdgeLengths(page_size);
        lens.push_back(40 * page_size + 3);
        const std::vector<int32_t> more = lens;
        lens.insert(lens.end(), more.begin(), more.end());  // two of each, more mode mixes
        PagedCase c({page_size, head_dim, dtype, lens, 60 * (page_size + 1), 1.0f,
                     page_kind.kv_dtype},
                    static_cast<uint64_t>(head_dim + 1000 * page_size) + static_cast<int>(dtype));
        CheckAgainstRef(c);
        // fp8 pages' scales also through scattered keep sets past a frozen prefix.
        if (c.view().fp8()) CheckAgainstRef(c, /*scattered=*/true, false, /*keep_base=*/page_size);
      }
    }
  }
}

TEST_CASE("gpu::Compact reads keep sets where keep_offsets say", "[kernels][gpu][sanitize]") {
  for (int32_t page_size : {1, 16}) {
    CAPTURE(page_size);
    std::vector<int32_t> lens = testing::EdgeLengths(page_size);
    lens.push_back(40 * page_size + 3);
    PagedCase c({page_size, 128, DType::kBF16, lens, 60 * (page_size + 1)},
                static_cast<uint64_t>(900 + page_size));
    CheckAgainstRef(c, /*scattered=*/true);
    CheckAgainstRef(c, /*scattered=*/true, /*many_fresh=*/false, /*keep_base=*/page_size * 3);
  }
}

// More rows than the GPU holds blocks at once: in-place rows are shared out
// among the in-place blocks, and fresh rows' survivors, flat over all rows,
// cross row boundaries inside a warp's slab of 32.
TEST_CASE("gpu::Compact: thousands of short rows", "[kernels][gpu][sanitize]") {
  std::mt19937 rng(5);
  std::vector<int32_t> lens(3000);
  for (int32_t& len : lens) len = static_cast<int32_t>(rng() % 70);
  PagedCase c({16, 128, DType::kBF16, lens, 6000}, 31);
  CheckAgainstRef(c);
  CheckAgainstRef(c, /*scattered=*/true);
}

TEST_CASE("gpu::Compact: 32K-token streams", "[kernels][gpu]") {
  PagedCase c({16, 128, DType::kBF16, {32768, 32768, 32767, 1}, 2100}, 77);
  CheckAgainstRef(c);
}

// Over 200K fresh survivors in one launch: more than one slab of 32 per warp
// of a full wave (about 100K on an H100), so the flat path walks its range
// slab by slab, prefetching the next slab's moves and advancing rows.
TEST_CASE("gpu::Compact: several slabs per warp", "[kernels][gpu]") {
  // Even rows (fresh, everything kept): 204K survivors.
  const std::vector<int32_t> lens{32768, 32768, 32768, 0,     32768, 32768,
                                  40000, 17,    32768, 32768, 32768, 5};
  for (const testing::PageKind page_kind : {testing::PageKind{DType::kBF16, KvDType::kAuto},
                                            testing::PageKind{DType::kF32, KvDType::kAuto},
                                            testing::PageKind{DType::kBF16, KvDType::kFP8E4M3}}) {
    const DType dtype = page_kind.dtype;
    CAPTURE(DTypeName(dtype), KvDTypeName(page_kind.kv_dtype));
    PagedCase c({16, dtype == DType::kF32 ? 64 : 128, dtype, lens, 14000, 1.0f, page_kind.kv_dtype},
                41);
    CheckAgainstRef(c, /*scattered=*/false, /*many_fresh=*/true);
  }
}

TEST_CASE("gpu::Compact: no rows, and Validate's errors", "[kernels][gpu]") {
  PagedCase c({16, 64, DType::kF16, {3}, 1}, 3);
  DevicePool device(c.view(), c.data(), c.positions());
  CompactArgs args;
  args.cache = device.view;
  REQUIRE_OK(gpu::Compact(args, nullptr));
  args.num_rows = 1;
  REQUIRE_ERROR(gpu::Compact(args, nullptr), absl::StatusCode::kInvalidArgument, "null");
  args.num_rows = 0;
  args.cache.dtype = static_cast<DType>(9);
  REQUIRE_ERROR(gpu::Compact(args, nullptr), absl::StatusCode::kInvalidArgument, "dtype");
}

TEST_CASE("gpu::Compact checks its plan on the device as ref does, moving nothing",
          "[kernels][gpu][sanitize]") {
  PagedCase c({16, 64, DType::kBF16, {40, 3, 17, 33, 50}, 40}, 17);
  DevicePool device(c.view(), c.data(), c.positions());
  DeviceBuffer fault(sizeof(uint64_t));
  // Find a plan with an in-place row that keeps something and a fresh row.
  RandomPlan good(c);
  int32_t in_place_row = -1, fresh_row = -1;
  for (int attempt = 0; attempt < 100 && (in_place_row < 0 || fresh_row < 0); ++attempt) {
    good = RandomPlan(c);
    in_place_row = fresh_row = -1;
    for (int32_t r = 0; r < c.num_streams(); ++r) {
      const bool keeps = good.keep_indptr[r + 1] - good.keep_indptr[r] >= 2;
      if (keeps && good.in_place[r] && in_place_row < 0) in_place_row = r;
      if (keeps && !good.in_place[r] && fresh_row < 0) fresh_row = r;
    }
  }
  REQUIRE(in_place_row >= 0);
  REQUIRE(fresh_row >= 0);
  std::vector<RandomPlan> bad(9, good);
  bad[0].src_indptr[0] = 1;
  bad[1].src_pages.pop_back();                              // src_indptr ends past it
  bad[2].dst_pages.pop_back();
  bad[3].keep.pop_back();                                   // the last keep set runs past it
  bad[4].keep_indptr[fresh_row + 1] = bad[4].keep_indptr[fresh_row] - 1;
  bad[5].keep[bad[5].keep_indptr[fresh_row] + 1] = bad[5].keep[bad[5].keep_indptr[fresh_row]];
  bad[6].dst_pages[bad[6].dst_indptr[fresh_row]] = c.num_pages();
  bad[7].dst_pages[bad[7].dst_indptr[in_place_row]] = -1;   // outside the pool, then not a prefix
  bad[8].src_pages[bad[8].src_indptr[in_place_row]] = 2 * c.num_pages();
  for (size_t i = 0; i < bad.size(); ++i) {
    CAPTURE(i);
    PagedCase host = c;  // ref works on a copy of the pool
    const absl::Status want = ref::Compact(ArgsOf(host.view(), bad[i], nullptr));
    REQUIRE(want.code() == absl::StatusCode::kOutOfRange);
    REQUIRE(host.data() == c.data());
    DevicePlan plan(bad[i]);
    CompactArgs args = ArgsOf(device.view, bad[i], &plan);
    args.fault = fault.get<uint64_t>();
    REQUIRE_OK(gpu::Compact(args, nullptr));
    const absl::StatusOr<TableFault> found = gpu::ReadTableFault(args.fault, nullptr);
    REQUIRE_OK(found.status());
    const absl::Status got = TableFaultStatus(args, *found);
    CAPTURE(want.message(), got.message());
    REQUIRE(got == want);
    REQUIRE(device.data.Download<uint8_t>() == c.data());  // nothing moved
    REQUIRE(device.positions.Download<int32_t>() == c.positions());
  }
  // No rows: the word is still reset, not left with the last call's fault.
  CompactArgs none;
  none.cache = device.view;
  none.fault = fault.get<uint64_t>();
  REQUIRE_OK(gpu::Compact(none, nullptr));
  REQUIRE(gpu::ReadTableFault(none.fault, nullptr).value().ok());
}

}  // namespace
}  // namespace headpage
