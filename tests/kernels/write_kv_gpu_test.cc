// SPDX-License-Identifier: Apache-2.0
// gpu::WriteKV against ref::WriteKV on the same random pools (ctest label `gpu`).
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

TEST_CASE("gpu::WriteKV equals ref::WriteKV, byte for byte", "[kernels][gpu][sanitize]") {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int32_t head_dim : {64, 128, 256}) {
      for (int32_t page_size : {1, 16, 33}) {
        CAPTURE(DTypeName(dtype), head_dim, page_size);
        const int32_t kv_heads = 3, layers = 2, layer = 1, tokens = 70;
        // Spare pages enough for every (token, head) to get its own slot at page size 1.
        PagedCase pool({page_size, head_dim, dtype, {5 * page_size, 0, 2 * page_size + 3}, tokens * kv_heads},
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
            if ((t * kv_heads + h) % 7 != 3) slots[t * stride + layer * kv_heads + h] = free_slots[next++];
          }
        }
        std::vector<int32_t> positions(tokens);
        for (int32_t t = 0; t < tokens; ++t) positions[t] = 1000 + 2 * t;
        const auto keys = testing::RandomRows(size_t{1} * tokens * kv_heads * head_dim, dtype, 2, rng);
        const auto values = testing::RandomRows(size_t{1} * tokens * kv_heads * head_dim, dtype, 2, rng);

        DevicePool device(pool.view(), pool.data(), pool.positions());
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
      }
    }
  }
}

TEST_CASE("gpu::WriteKV: no tokens launches nothing; bad arguments are errors", "[kernels][gpu][sanitize]") {
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
}

}  // namespace
}  // namespace headpage
