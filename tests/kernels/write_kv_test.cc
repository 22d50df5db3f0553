// SPDX-License-Identifier: Apache-2.0
#include "kernels/write_kv.h"

#include <vector>

#include "kernels/supported.h"
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

TEST_CASE("WriteKV: reads one layer out of a [token][layer][kv_head] slot mapping", "[kernels]") {
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
  bad.cache.head_dim = 96;
  REQUIRE_ERROR(Validate(bad), absl::StatusCode::kUnimplemented, "head_dim 96");
  bad = args;
  bad.cache.dtype = static_cast<DType>(5);
  REQUIRE_ERROR(Validate(bad), absl::StatusCode::kInvalidArgument, "dtype");
  bad = args;
  bad.cache.data = nullptr;
  REQUIRE_ERROR(Validate(bad), absl::StatusCode::kInvalidArgument, "null");
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

}  // namespace
}  // namespace headpage
