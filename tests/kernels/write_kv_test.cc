// SPDX-License-Identifier: Apache-2.0
#include "kernels/write_kv.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/kv_rows.h"
#include "kernels/supported.h"
#include "tests/kernels/paged_case.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::HostCache;

// K/V input [tokens][heads][head_dim] whose rows encode (token * 10 + head).
struct Input {
  std::vector<float> keys, values;
  Input(int32_t tokens, int32_t heads, int32_t head_dim) {
    for (int32_t t = 0; t < tokens; ++t) {
      for (int32_t h = 0; h < heads; ++h) {
        for (int32_t e = 0; e < head_dim; ++e) {
          keys.push_back(HostCache::KeyValue(t * 10 + h, e));
          values.push_back(HostCache::ValueValue(t * 10 + h, e));
        }
      }
    }
  }
};

TEST_CASE("WriteKV: every token lands in its slot, -1 is skipped", "[kernels]") {
  HostCache cache(/*num_pages=*/6, /*page_size=*/4, /*head_dim=*/64);
  Input in(/*tokens=*/3, /*heads=*/2, 64);
  // [token][head]: head 0 -> slots 5, 6, 7; head 1 -> slot 20, skip, 2.
  const std::vector<int32_t> slots = {5, 20, 6, -1, 7, 2};
  const std::vector<int32_t> positions = {100, 101, 102};
  WriteKVArgs args{cache.view, 3, 2, in.keys.data(), in.values.data(), slots.data(), 2,
                   positions.data()};
  REQUIRE_OK(ref::WriteKV(args));
  // Input row (t, h) encodes t*10+h; the arena stores it with position 100+t.
  auto holds = [&](int64_t slot, int32_t t, int32_t h) {
    for (int32_t e = 0; e < 64; ++e) {
      if (cache.data[cache.view.KeyOffset(slot) + e] != HostCache::KeyValue(t * 10 + h, e) ||
          cache.data[cache.view.ValueOffset(slot) + e] != HostCache::ValueValue(t * 10 + h, e)) {
        return false;
      }
    }
    return cache.positions[slot] == 100 + t;
  };
  REQUIRE(holds(5, 0, 0));
  REQUIRE(holds(6, 1, 0));
  REQUIRE(holds(7, 2, 0));
  REQUIRE(holds(20, 0, 1));
  REQUIRE(holds(2, 2, 1));
  int written = 0;
  for (int32_t p : cache.positions) written += p >= 0;
  REQUIRE(written == 5);
}

TEST_CASE("WriteKV: reads one layer out of a token x layer x kv_head slot mapping", "[kernels]") {
  HostCache cache(6, 4, 64);
  Input in(/*tokens=*/2, /*heads=*/2, 64);
  // 3 layers: layer 1's slots are the middle pair of each token's record.
  const std::vector<int32_t> slots = {-1, -1, 3, 9, -1, -1, /**/ -1, -1, 4, 10, -1, -1};
  const std::vector<int32_t> positions = {7, 8};
  WriteKVArgs args{cache.view, 2, 2, in.keys.data(), in.values.data(), slots.data() + 2, 6,
                   positions.data()};
  REQUIRE_OK(ref::WriteKV(args));
  REQUIRE(cache.positions[3] == 7);
  REQUIRE(cache.positions[9] == 7);
  REQUIRE(cache.positions[4] == 8);
  REQUIRE(cache.positions[10] == 8);
  REQUIRE(cache.data[cache.view.KeyOffset(10)] == HostCache::KeyValue(1 * 10 + 1, 0));
  int written = 0;
  for (int32_t p : cache.positions) written += p >= 0;
  REQUIRE(written == 4);
}

TEST_CASE("WriteKV: bad arguments get clear errors and write nothing", "[kernels]") {
  HostCache cache(4, 4, 64);
  Input in(2, 1, 64);
  std::vector<int32_t> slots = {0, 16};  // 16 is one past the last slot
  const std::vector<int32_t> positions = {0, 1};
  WriteKVArgs args{cache.view, 2, 1, in.keys.data(), in.values.data(), slots.data(), 1,
                   positions.data()};
  REQUIRE_ERROR(ref::WriteKV(args), absl::StatusCode::kOutOfRange, "token 1, head 0 = 16");
  REQUIRE(cache.positions[0] == -1);  // the valid first token was not written either

  WriteKVArgs bad = args;
  bad.keys = nullptr;
  REQUIRE_ERROR(Validate(bad), absl::StatusCode::kInvalidArgument, "null");
  bad = args;
  bad.slot_stride = 0;
  REQUIRE_ERROR(Validate(bad), absl::StatusCode::kInvalidArgument, "slot_stride");
  bad = args;
  bad.num_kv_heads = 0;
  REQUIRE_ERROR(Validate(bad), absl::StatusCode::kInvalidArgument, "num_kv_heads");
  bad = args;
  bad.cache.head_dim = 2048;
  REQUIRE_ERROR(Validate(bad), absl::StatusCode::kInvalidArgument, "head_dim 2048 is outside");
  bad = args;
  bad.cache.dtype = static_cast<DType>(5);
  REQUIRE_ERROR(Validate(bad), absl::StatusCode::kInvalidArgument, "dtype");
  bad = args;
  bad.cache.data = nullptr;
  REQUIRE_ERROR(Validate(bad), absl::StatusCode::kInvalidArgument, "null");
  bad = args;
  bad.num_tokens = -1;
  REQUIRE_ERROR(Validate(bad), absl::StatusCode::kInvalidArgument, "num_tokens -1");
  bad = args;
  bad.values = reinterpret_cast<const char*>(in.values.data()) + 8;
  REQUIRE_ERROR(Validate(bad), absl::StatusCode::kInvalidArgument, "16-byte aligned");
  // No tokens: nothing to check beyond the cache.
  WriteKVArgs empty{cache.view, 0, 1, nullptr, nullptr, nullptr, 0, nullptr};
  REQUIRE_OK(ref::WriteKV(empty));
}

TEST_CASE("kernels: every supported head_dim passes Validate", "[kernels]") {
  HostCache cache(1, 1, 64);
  for (int32_t d : kSupportedHeadDims) {
    WriteKVArgs args{cache.view, 0, 1, nullptr, nullptr, nullptr, 0, nullptr};
    args.cache.head_dim = d;
    REQUIRE_OK(Validate(args));
  }
}

TEST_CASE("WriteKV: the dense view holds what was written, whatever the page ids", "[kernels]") {
  // Overwrites every token of every stream through block-table slots, on a pool
  // and on the same pool with its pages relabelled: both dense views must equal
  // the new rows (the oracle), whatever the physical pages.
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    CAPTURE(DTypeName(dtype));
    const std::vector<int32_t> lens = testing::EdgeLengths(8);
    testing::PagedCase original({8, 64, dtype, lens, 5}, 21);
    testing::PagedCase relabelled({8, 64, dtype, lens, 5}, 21);
    relabelled.RelabelPages(22);
    int32_t tokens = 0;
    for (int32_t len : lens) tokens = std::max(tokens, len);
    std::mt19937_64 rng(23);
    const int32_t heads = static_cast<int32_t>(lens.size());
    const auto keys = testing::RandomRows(size_t{1} * tokens * heads * 64, dtype, 1, rng);
    const auto values = testing::RandomRows(size_t{1} * tokens * heads * 64, dtype, 1, rng);
    std::vector<int32_t> positions(static_cast<size_t>(tokens));
    for (int32_t t = 0; t < tokens; ++t) positions[t] = 500 + t;
    for (testing::PagedCase* c : {&original, &relabelled}) {
      // Stream s plays KV head s; token t goes to its logical slot t if it has one.
      std::vector<int32_t> slots(static_cast<size_t>(tokens) * heads, -1);
      for (int32_t t = 0; t < tokens; ++t) {
        for (int32_t h = 0; h < heads; ++h) {
          if (t < lens[h]) slots[t * heads + h] = static_cast<int32_t>(c->Slot(h, t));
        }
      }
      WriteKVArgs args;
      args.cache = c->view();
      args.num_tokens = tokens;
      args.num_kv_heads = heads;
      args.keys = keys.data();
      args.values = values.data();
      args.slot_mapping = slots.data();
      args.slot_stride = heads;
      args.positions = positions.data();
      REQUIRE_OK(ref::WriteKV(args));
      for (int32_t h = 0; h < heads; ++h) {
        for (int32_t t = 0; t < lens[h]; ++t) {
          REQUIRE(c->Position(h, t) == 500 + t);
          for (int32_t e = 0; e < 64; ++e) {
            const size_t at = (static_cast<size_t>(t) * heads + h) * 64 + e;
            REQUIRE(c->Key(h, t, e) == LoadAsFloat(keys.data(), at, dtype));
            REQUIRE(c->Value(h, t, e) == LoadAsFloat(values.data(), at, dtype));
          }
        }
      }
    }
  }
}

TEST_CASE("WriteKV: fp8 pages store every row quantized with its own scale", "[kernels]") {
  // The oracle: QuantizeRowFp8 of each input row's float values, its bytes at
  // the slot's K (V) row and its scale at scales[2 * slot] ([2 * slot + 1]);
  // skipped tokens and other slots keep the case's NaN bytes and scales.
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    for (int32_t page_size : {1, 8, 16}) {
      CAPTURE(DTypeName(dtype), page_size);
      const std::vector<int32_t> lens = testing::EdgeLengths(page_size);
      const int32_t d = 64;
      testing::PagedCase c({page_size, d, dtype, lens, 3, 1.0f, KvDType::kFP8E4M3}, 24);
      testing::PagedCase before = c;
      const int32_t heads = static_cast<int32_t>(lens.size());
      const int32_t tokens = *std::max_element(lens.begin(), lens.end());
      std::mt19937_64 rng(25);
      const auto keys = testing::RandomRows(size_t{1} * tokens * heads * d, dtype, 3, rng);
      const auto values = testing::RandomRows(size_t{1} * tokens * heads * d, dtype, 3, rng);
      std::vector<int32_t> positions(static_cast<size_t>(tokens));
      for (int32_t t = 0; t < tokens; ++t) positions[t] = 70 + t;
      // Head h writes token t at its logical slot t, every third one skipped.
      std::vector<int32_t> slots(static_cast<size_t>(tokens) * heads, -1);
      for (int32_t t = 0; t < tokens; ++t) {
        for (int32_t h = 0; h < heads; ++h) {
          if (t < lens[h] && t % 3 != 2) slots[t * heads + h] = static_cast<int32_t>(c.Slot(h, t));
        }
      }
      WriteKVArgs args{c.view(), tokens, heads, keys.data(), values.data(), slots.data(), heads,
                       positions.data()};
      REQUIRE_OK(ref::WriteKV(args));
      std::vector<float> row(d);
      std::vector<fp8_e4m3> q(d);
      for (int32_t h = 0; h < heads; ++h) {
        for (int32_t t = 0; t < lens[h]; ++t) {
          const int64_t slot = c.Slot(h, t);
          CAPTURE(h, t, slot);
          if (t % 3 == 2) continue;
          REQUIRE(c.Position(h, t) == 70 + t);
          for (const KvPart part : {KvPart::kKey, KvPart::kValue}) {
            const auto& in = part == KvPart::kKey ? keys : values;
            for (int32_t e = 0; e < d; ++e) {
              row[e] = LoadAsFloat(in.data(), (static_cast<size_t>(t) * heads + h) * d + e, dtype);
            }
            const float scale = QuantizeRowFp8(row.data(), d, q.data());
            REQUIRE(c.scales()[2 * slot + static_cast<int>(part)] == scale);
            REQUIRE(std::memcmp(KvRowBytes(c.view(), slot, part), q.data(), d) == 0);
          }
        }
      }
      // Every other slot (skipped tokens, spare pages) is as it was, bit for bit.
      for (int64_t slot = 0; slot < c.view().num_slots(); ++slot) {
        if (std::find(slots.begin(), slots.end(), slot) != slots.end()) continue;
        CAPTURE(slot);
        REQUIRE(c.positions()[slot] == before.positions()[slot]);
        REQUIRE(std::memcmp(&c.scales()[2 * slot], &before.scales()[2 * slot],
                            2 * sizeof(float)) == 0);
        for (const KvPart part : {KvPart::kKey, KvPart::kValue}) {
          REQUIRE(std::memcmp(KvRowBytes(c.view(), slot, part),
                              KvRowBytes(before.view(), slot, part), d) == 0);
        }
      }
    }
  }
}

TEST_CASE("WriteKV: fp8 pages read back within e4m3's rounding of what was written",
          "[kernels]") {
  testing::PagedCase c({16, 128, DType::kBF16, {40}, 1, 1.0f, KvDType::kFP8E4M3}, 26);
  std::mt19937_64 rng(27);
  const auto keys = testing::RandomRows(size_t{40} * 128, DType::kBF16, 5, rng);
  const auto values = testing::RandomRows(size_t{40} * 128, DType::kBF16, 5, rng);
  std::vector<int32_t> slots(40), positions(40);
  for (int32_t t = 0; t < 40; ++t) {
    slots[t] = static_cast<int32_t>(c.Slot(0, t));
    positions[t] = t;
  }
  REQUIRE_OK(ref::WriteKV({c.view(), 40, 1, keys.data(), values.data(), slots.data(), 1,
                           positions.data()}));
  for (int32_t t = 0; t < 40; ++t) {
    const float key_scale = c.scales()[2 * c.Slot(0, t)];
    for (int32_t e = 0; e < 128; ++e) {
      const float key = LoadAsFloat(keys.data(), static_cast<size_t>(t) * 128 + e, DType::kBF16);
      // Half an e4m3 ulp (2^-4 relative), or half the smallest subnormal step.
      REQUIRE(std::fabs(c.Key(0, t, e) - key) <=
              std::max(std::fabs(key) / 16, key_scale / 1024) * 1.0001f);
    }
  }
}

TEST_CASE("WriteKV: fp8 pages need their scales and a 16-bit model dtype", "[kernels]") {
  testing::PagedCase c({16, 64, DType::kBF16, {3}, 1, 1.0f, KvDType::kFP8E4M3}, 28);
  WriteKVArgs args{c.view(), 0, 1, nullptr, nullptr, nullptr, 0, nullptr};
  REQUIRE_OK(Validate(args));
  args.cache.scales = nullptr;
  REQUIRE_ERROR(Validate(args), absl::StatusCode::kInvalidArgument, "scales");
  args.cache.scales = c.scales().data() + 1;  // 4-byte aligned only
  REQUIRE_ERROR(Validate(args), absl::StatusCode::kInvalidArgument, "aligned");
  args.cache = c.view();
  args.cache.dtype = DType::kF32;
  REQUIRE_ERROR(Validate(args), absl::StatusCode::kInvalidArgument, "f16 or bf16");
  args.cache = c.view();
  args.cache.kv_dtype = static_cast<KvDType>(3);
  REQUIRE_ERROR(Validate(args), absl::StatusCode::kInvalidArgument, "kv_dtype");
}

}  // namespace
}  // namespace headpage
