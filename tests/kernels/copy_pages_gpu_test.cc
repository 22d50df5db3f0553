// SPDX-License-Identifier: Apache-2.0
// gpu::CopyPages against ref::CopyPages, byte-exact (ctest label `gpu`).
#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/copy_pages.h"
#include "tests/kernels/device_buffer.h"
#include "tests/kernels/paged_case.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::DeviceBuffer;
using testing::DevicePool;
using testing::PagedCase;

// gpu:: and ref:: copy the same random pages of the same pool: every byte,
// position and (fp8) scale equal afterwards.
void CheckCopyPages(DType dtype, KvDType kv_dtype, int32_t head_dim, int32_t page_size) {
  CAPTURE(DTypeName(dtype), KvDTypeName(kv_dtype), head_dim, page_size);
  PagedCase c({page_size, head_dim, dtype, {9 * page_size, 4 * page_size + 1}, 30, 1.0f, kv_dtype},
              static_cast<uint64_t>(head_dim * 7 + page_size));
  // Disjoint sources and destinations drawn from one shuffle of the pages;
  // sources may repeat (one page copied to two children).
  std::vector<int32_t> pages(static_cast<size_t>(c.num_pages()));
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), c.rng());
  const int32_t copies = c.num_pages() / 2;
  std::vector<int32_t> dst(pages.begin(), pages.begin() + copies);
  std::vector<int32_t> src(static_cast<size_t>(copies));
  for (int32_t i = 0; i < copies; ++i) {
    src[i] = pages[copies + static_cast<int32_t>(c.rng()() % (c.num_pages() - copies))];
  }
  DevicePool device(c.view(), c.data(), c.positions(), c.scales());
  DeviceBuffer d_src(src), d_dst(dst);
  REQUIRE_OK(gpu::CopyPages({device.view, copies, d_src.get<int32_t>(), d_dst.get<int32_t>()},
                            nullptr));
  HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
  REQUIRE_OK(ref::CopyPages({c.view(), copies, src.data(), dst.data()}));
  REQUIRE(device.data.Download<uint8_t>() == c.data());
  REQUIRE(device.positions.Download<int32_t>() == c.positions());
  if (c.view().fp8()) REQUIRE(testing::SameBits(device.scales.Download<float>(), c.scales()));
}

TEST_CASE("gpu::CopyPages equals ref::CopyPages", "[kernels][gpu][sanitize]") {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int32_t head_dim : {64, 128, 256}) {
      for (int32_t page_size : {1, 16, 5}) {
        CheckCopyPages(dtype, KvDType::kAuto, head_dim, page_size);
      }
    }
  }
}

TEST_CASE("gpu::CopyPages copies fp8 pages with their scales", "[kernels][gpu][sanitize]") {
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    for (int32_t head_dim : {64, 128, 256}) {
      for (int32_t page_size : {1, 16, 5}) {
        CheckCopyPages(dtype, KvDType::kFP8E4M3, head_dim, page_size);
      }
    }
  }
}

TEST_CASE("gpu::CopyPages: no copies, and Validate's errors", "[kernels][gpu]") {
  PagedCase c({16, 128, DType::kBF16, {3}, 2}, 5);
  DevicePool device(c.view(), c.data(), c.positions());
  REQUIRE_OK(gpu::CopyPages({device.view, 0, nullptr, nullptr}, nullptr));
  REQUIRE_ERROR(gpu::CopyPages({device.view, 1, nullptr, nullptr}, nullptr),
                absl::StatusCode::kInvalidArgument, "null");
  PagedKV bad = device.view;
  bad.page_size = 0;
  REQUIRE_ERROR(gpu::CopyPages({bad, 0, nullptr, nullptr}, nullptr),
                absl::StatusCode::kInvalidArgument, "pages of 0 tokens");
}

}  // namespace
}  // namespace headpage
