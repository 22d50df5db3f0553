// SPDX-License-Identifier: Apache-2.0
// gpu::WriteKV against ref::WriteKV on the same random pools, fp8 pages
// included (ctest label `gpu`).
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/write_kv.h"
#include "tests/kernels/device_buffer.h"
#include "tests/kernels/paged_case.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::DeviceBuffer;
using testing::DevicePool;
using testing::PagedCase;

// Rows of `special` edge cases, written over the first rows of random input
// (bytes of `dtype`): all zeros, a NaN among finite values, an infinity, the
// largest finite value, subnormal magnitudes (448 / amax overflows to
// infinity), and a row whose amax is negative. fp8 quantization must treat
// each exactly as the host does.
void AddSpecialRows(std::vector<uint8_t>* rows, DType dtype, int32_t head_dim) {
  const float big = dtype == DType::kF16 ? 65504.0f : 3.0e38f;
  const float tiny = dtype == DType::kF16 ? 6.0e-8f : 1.0e-39f;
  for (int32_t e = 0; e < head_dim; ++e) {
    const size_t at = static_cast<size_t>(e);
    const size_t d = static_cast<size_t>(head_dim);
    StoreFromFloat(rows->data(), at, dtype, 0.0f);
    if (e == 3) StoreFromFloat(rows->data(), d + at, dtype, NAN);
    if (e == 5) StoreFromFloat(rows->data(), 2 * d + at, dtype, -INFINITY);
    if (e == 7) StoreFromFloat(rows->data(), 3 * d + at, dtype, big);
    StoreFromFloat(rows->data(), 4 * d + at, dtype, e % 2 == 0 ? tiny : 0.0f);
    StoreFromFloat(rows->data(), 5 * d + at, dtype, e == head_dim - 1 ? -8.0f : 1.0f + e);
  }
}

// gpu::WriteKV and ref::WriteKV on the same pool (page contents, positions and,
// for fp8, scales: every byte equal, the untouched NaN slots included).
void CheckWriteKV(DType dtype, KvDType kv_dtype, int32_t head_dim, int32_t page_size) {
  CAPTURE(DTypeName(dtype), KvDTypeName(kv_dtype), head_dim, page_size);
  const int32_t kv_heads = 3, layers = 2, layer = 1, tokens = 70;
  // Spare pages enough for every (token, head) to get its own slot at page size 1.
  PagedCase pool({page_size, head_dim, dtype, {5 * page_size, 0, 2 * page_size + 3},
                  tokens * kv_heads, 1.0f, kv_dtype},
                 static_cast<uint64_t>(head_dim * 100 + page_size));
  std::mt19937_64& rng = pool.rng();
  // A [token][layer][kv_head] slot mapping (BlockManager's layout): distinct
  // random slots of the pool, 1 in 7 skipped.
  const int32_t stride = layers * kv_heads;
  std::vector<int32_t> free_slots(static_cast<size_t>(pool.view().num_slots()));
  for (size_t i = 0; i < free_slots.size(); ++i) free_slots[i] = static_cast<int32_t>(i);
  std::shuffle(free_slots.begin(), free_slots.end(), rng);
  std::vector<int32_t> slots(static_cast<size_t>(tokens) * stride, -1);
  size_t next = 0;
  for (int32_t t = 0; t < tokens; ++t) {
    for (int32_t h = 0; h < kv_heads; ++h) {
      if ((t * kv_heads + h) % 7 != 3) {
        slots[t * stride + layer * kv_heads + h] = free_slots[next++];
      }
    }
  }
  std::vector<int32_t> positions(tokens);
  for (int32_t t = 0; t < tokens; ++t) positions[t] = 1000 + 2 * t;
  auto keys = testing::RandomRows(size_t{1} * tokens * kv_heads * head_dim, dtype, 2, rng);
  auto values = testing::RandomRows(size_t{1} * tokens * kv_heads * head_dim, dtype, 2, rng);
  if (dtype != DType::kF32) AddSpecialRows(&keys, dtype, head_dim);

  DevicePool device(pool.view(), pool.data(), pool.positions(), pool.scales());
  DeviceBuffer d_keys(keys), d_values(values), d_slots(slots), d_positions(positions);
  WriteKVArgs args;
  args.num_tokens = tokens;
  args.num_kv_heads = kv_heads;
  args.slot_stride = stride;
  args.cache = device.view;
  args.keys = d_keys.get();
  args.values = d_values.get();
  args.slot_mapping = d_slots.get<int32_t>() + layer * kv_heads;
  args.positions = d_positions.get<int32_t>();
  REQUIRE_OK(gpu::WriteKV(args, nullptr));
  HEADPAGE_CUDA_OK(cudaDeviceSynchronize());

  args.cache = pool.view();
  args.keys = keys.data();
  args.values = values.data();
  args.slot_mapping = slots.data() + layer * kv_heads;
  args.positions = positions.data();
  REQUIRE_OK(ref::WriteKV(args));
  REQUIRE(device.data.Download<uint8_t>() == pool.data());
  REQUIRE(device.positions.Download<int32_t>() == pool.positions());
  // Bit for bit: the untouched slots' NaN scales, the inf row's inf scale.
  if (pool.view().fp8()) REQUIRE(testing::SameBits(device.scales.Download<float>(), pool.scales()));
}

TEST_CASE("gpu::WriteKV equals ref::WriteKV, byte for byte", "[kernels][gpu][sanitize]") {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int32_t head_dim : {64, 128, 256}) {
      for (int32_t page_size : {1, 16, 33}) {
        CheckWriteKV(dtype, KvDType::kAuto, head_dim, page_size);
      }
    }
  }
}

TEST_CASE("gpu::WriteKV quantizes fp8 pages as ref:: does: bytes, scales, positions",
          "[kernels][gpu][sanitize]") {
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    for (int32_t head_dim : {64, 128, 256}) {
      for (int32_t page_size : {1, 16, 33}) {
        CheckWriteKV(dtype, KvDType::kFP8E4M3, head_dim, page_size);
      }
    }
  }
}

TEST_CASE("gpu::WriteKV: no tokens launches nothing, bad arguments are errors", "[kernels][gpu][sanitize]") {
  PagedCase pool({16, 128, DType::kBF16, {4}, 1}, 1);
  DevicePool device(pool.view(), pool.data(), pool.positions());
  WriteKVArgs args;
  args.cache = device.view;
  args.num_kv_heads = 1;
  args.slot_stride = 1;
  REQUIRE_OK(gpu::WriteKV(args, nullptr));
  args.num_tokens = 1;  // keys etc. are null
  REQUIRE_ERROR(gpu::WriteKV(args, nullptr), absl::StatusCode::kInvalidArgument, "null");
  // A head_dim the kernels are not compiled for is refused even with nothing to
  // write (the host reference takes it).
  args.num_tokens = 0;
  args.cache.head_dim = 96;
  REQUIRE_ERROR(gpu::WriteKV(args, nullptr), absl::StatusCode::kUnimplemented,
                "head_dim 96 is not compiled into the GPU kernels");
  // fp8 pages without their scales are refused before any launch.
  args.cache.head_dim = 128;
  args.cache.kv_dtype = KvDType::kFP8E4M3;
  REQUIRE_ERROR(gpu::WriteKV(args, nullptr), absl::StatusCode::kInvalidArgument, "scales");
}

}  // namespace
}  // namespace headpage
