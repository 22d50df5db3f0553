// SPDX-License-Identifier: Apache-2.0
#include "kernels/gather_kv.h"

#include <vector>

#include "core/kv_rows.h"
#include "tests/kernels/paged_case.h"
#include "tests/testing/guarded_array.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::PagedCase;

// Every stream of `c`, into the given outputs.
GatherKVArgs GatherAll(PagedCase& c, void* keys, void* values, int32_t* positions) {
  GatherKVArgs args;
  args.cache = c.view();
  args.num_rows = c.num_streams();
  args.indptr = c.indptr().data();
  args.page_ids = c.page_ids().data();
  args.num_page_ids = static_cast<int32_t>(c.page_ids().size());
  args.lens = c.lens().data();
  args.keys = keys;
  args.values = values;
  args.positions = positions;
  return args;
}

TEST_CASE("GatherKV: rows come out dense, in order, whatever the page ids", "[kernels]") {
  const std::vector<int32_t> lens = testing::EdgeLengths(4);
  PagedCase original({4, 64, DType::kBF16, lens, 3}, 31);
  PagedCase relabelled({4, 64, DType::kBF16, lens, 3}, 31);
  relabelled.RelabelPages(32);
  int64_t total = 0;
  for (int32_t len : lens) total += len;
  std::vector<std::vector<uint8_t>> keys, values;
  std::vector<std::vector<int32_t>> positions;
  for (PagedCase* c : {&original, &relabelled}) {
    keys.emplace_back(static_cast<size_t>(total) * 64 * 2);
    values.emplace_back(static_cast<size_t>(total) * 64 * 2);
    positions.emplace_back(static_cast<size_t>(total));
    REQUIRE_OK(ref::GatherKV(
        GatherAll(*c, keys.back().data(), values.back().data(), positions.back().data())));
    // The dense oracle: row after row, token after token.
    int64_t out = 0;
    for (int32_t s = 0; s < c->num_streams(); ++s) {
      for (int32_t i = 0; i < lens[s]; ++i, ++out) {
        REQUIRE(positions.back()[out] == c->Position(s, i));
        for (int32_t e = 0; e < 64; ++e) {
          REQUIRE(LoadAsFloat(keys.back().data(), out * 64 + e, DType::kBF16) == c->Key(s, i, e));
          REQUIRE(LoadAsFloat(values.back().data(), out * 64 + e, DType::kBF16) ==
                  c->Value(s, i, e));
        }
      }
    }
  }
  REQUIRE(keys[0] == keys[1]);
  REQUIRE(values[0] == values[1]);
  REQUIRE(positions[0] == positions[1]);
}

TEST_CASE("GatherKV: fp8 pages come out dequantized and rounded to the model dtype",
          "[kernels]") {
  for (const DType dtype : {DType::kF16, DType::kBF16}) {
    CAPTURE(DTypeName(dtype));
    const std::vector<int32_t> lens = testing::EdgeLengths(16);
    PagedCase c({16, 64, dtype, lens, 2, 4.0f, KvDType::kFP8E4M3}, 35);
    int64_t total = 0;
    for (int32_t len : lens) total += len;
    // Poisoned outputs, one row longer than needed: every written element
    // changes, and nothing is written past the end.
    const size_t bytes = static_cast<size_t>(total + 1) * 64 * SizeOf(dtype);
    std::vector<uint8_t> keys(bytes, 0xff), values(bytes, 0xff);
    std::vector<int32_t> positions(static_cast<size_t>(total + 1), -3);
    REQUIRE_OK(ref::GatherKV(GatherAll(c, keys.data(), values.data(), positions.data())));
    // The oracle, from the stored bytes: e4m3 value times the row's scale,
    // rounded once to the model dtype.
    const auto expect = [&](int64_t slot, KvPart part, int32_t e) {
      const auto byte = static_cast<uint8_t>(KvRowBytes(c.view(), slot, part)[e]);
      const float scale = c.scales()[2 * slot + static_cast<int>(part)];
      const float x = fp8_e4m3::FromBits(byte).ToFloat() * scale;
      return dtype == DType::kF16 ? f16::FromFloat(x).bits : bf16::FromFloat(x).bits;
    };
    const auto* key_bits = reinterpret_cast<const uint16_t*>(keys.data());
    const auto* value_bits = reinterpret_cast<const uint16_t*>(values.data());
    int64_t out = 0;
    for (int32_t s = 0; s < c.num_streams(); ++s) {
      for (int32_t i = 0; i < lens[s]; ++i, ++out) {
        const int64_t slot = c.Slot(s, i);
        REQUIRE(positions[out] == c.Position(s, i));
        for (int32_t e = 0; e < 64; ++e) {
          CAPTURE(s, i, e);
          REQUIRE(key_bits[out * 64 + e] == expect(slot, KvPart::kKey, e));
          REQUIRE(value_bits[out * 64 + e] == expect(slot, KvPart::kValue, e));
          // And within e4m3's rounding of the dense view the case drew.
          REQUIRE(LoadAsFloat(keys.data(), out * 64 + e, dtype) ==
                  Approx(c.Key(s, i, e)).epsilon(0.01).margin(1e-6));
        }
      }
    }
    REQUIRE(positions[out] == -3);
    REQUIRE(key_bits[out * 64] == 0xffff);
    REQUIRE(value_bits[out * 64 + 63] == 0xffff);
  }
}

TEST_CASE("GatherKV: bad arguments are errors that write nothing", "[kernels]") {
  PagedCase c({4, 64, DType::kF32, {5, 2}, 1}, 33);
  std::vector<int32_t> indptr = c.indptr(), pages = c.page_ids(), lens = c.lens();
  std::vector<int32_t> positions(7, -3);
  auto args = [&] {
    GatherKVArgs a;
    a.cache = c.view();
    a.num_rows = 2;
    a.indptr = indptr.data();
    a.page_ids = pages.data();
    a.num_page_ids = static_cast<int32_t>(pages.size());
    a.lens = lens.data();
    a.positions = positions.data();
    return a;
  };
  REQUIRE_ERROR(Validate(GatherKVArgs{c.view(), -1}), absl::StatusCode::kInvalidArgument,
                "num_rows -1");
  REQUIRE_ERROR(Validate(GatherKVArgs{c.view(), 1}), absl::StatusCode::kInvalidArgument, "null");
  GatherKVArgs negative = args();
  negative.num_page_ids = -1;
  REQUIRE_ERROR(Validate(negative), absl::StatusCode::kInvalidArgument, "-1 page ids");
  lens[0] = 9;  // 3 pages' worth in a 2-page row
  REQUIRE_ERROR(ref::GatherKV(args()), absl::StatusCode::kOutOfRange,
                "stream 0: lens[0] tokens need more pages");
  lens = c.lens();
  pages[1] = c.num_pages();
  REQUIRE_ERROR(ref::GatherKV(args()), absl::StatusCode::kOutOfRange,
                "stream 0: page 1 of its table is outside the pool's");
  pages = c.page_ids();
  indptr[0] = -1;
  REQUIRE_ERROR(ref::GatherKV(args()), absl::StatusCode::kOutOfRange, "indptr[0] is not 0");
  indptr = c.indptr();
  // The array ends before indptr does: caught from the length the Args carry,
  // without reading past it.
  // Really one entry short, before a guard page: a read past it would fault.
  testing::GuardedInts short_pages(std::vector<int32_t>(pages.begin(), pages.end() - 1));
  GatherKVArgs short_ids = args();
  short_ids.page_ids = short_pages.data();
  short_ids.num_page_ids = indptr.back() - 1;
  REQUIRE_ERROR(ref::GatherKV(short_ids), absl::StatusCode::kOutOfRange,
                "stream 1: indptr[2] is past the end of page_ids");
  REQUIRE(positions == std::vector<int32_t>(7, -3));
}

TEST_CASE("ValidatePagedKV: every op rejects a bad cache the same way", "[kernels]") {
  PagedCase c({4, 64, DType::kF32, {5}, 1}, 34);
  auto check = [&](PagedKV cache, const char* what) {
    REQUIRE_ERROR(Validate(GatherKVArgs{cache, 0}), absl::StatusCode::kInvalidArgument, what);
  };
  PagedKV v = c.view();
  v.positions = nullptr;
  check(v, "positions is null");
  v = c.view();
  v.data = static_cast<char*>(v.data) + 4;
  check(v, "16-byte aligned");
  v = c.view();
  v.num_pages = 0;
  check(v, "0 pages");
  v = c.view();
  v.num_pages = 1 << 30;
  v.page_size = 4;
  check(v, "int32 slot id range");
  v = c.view();
  v.dtype = static_cast<DType>(7);
  check(v, "unknown dtype");
  v = c.view();
  v.head_dim = -3;
  check(v, "head_dim -3 is outside [1, 1024]");
}

}  // namespace
}  // namespace headpage
