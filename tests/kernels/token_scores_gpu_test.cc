// SPDX-License-Identifier: Apache-2.0
// gpu::TokenScores against ref::TokenScores, bit for bit, on the shared case
// generator's pools (ctest label `gpu`).
#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/token_scores.h"
#include "tests/kernels/device_buffer.h"
#include "tests/kernels/paged_case.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::DeviceBuffer;
using testing::DevicePool;
using testing::PagedCase;

TEST_CASE("gpu::TokenScores equals ref:: bit for bit", "[kernels][gpu][sanitize]") {
  for (const testing::PageKind page_kind : testing::kEveryPageKind) {
    const DType dtype = page_kind.dtype;
    for (const int32_t head_dim : {64, 128, 256}) {
      for (const int32_t page_size : {16, 32}) {
        CAPTURE(DTypeName(dtype), KvDTypeName(page_kind.kv_dtype), head_dim, page_size);
        std::vector<int32_t> lens = testing::EdgeLengths(page_size);
        lens.push_back(1000);
        lens.push_back(257);
        PagedCase c({page_size, head_dim, dtype, lens, 4, 1.0f, page_kind.kv_dtype},
                    50 + head_dim + page_size);
        std::vector<int32_t> offsets{0};
        for (int32_t len : lens) offsets.push_back(offsets.back() + len + 3);
        const int32_t tokens = offsets.back();
        const int32_t max_len = *std::max_element(lens.begin(), lens.end());
        DevicePool pool(c.view(), c.data(), c.positions(), c.scales());
        DeviceBuffer indptr(c.indptr()), pages(c.page_ids()), d_lens(lens), d_offsets(offsets);
        for (const TokenScore kind :
             {TokenScore::kNone, TokenScore::kPosition, TokenScore::kKeyNorm, TokenScore::kRandom}) {
          CAPTURE(static_cast<int>(kind));
          std::vector<int32_t> positions(tokens, -9);
          std::vector<float> scores(tokens, -9.0f);
          TokenScoresArgs args;
          args.cache = c.view();
          args.num_streams = c.num_streams();
          args.indptr = c.indptr().data();
          args.page_ids = c.page_ids().data();
          args.num_page_ids = static_cast<int32_t>(c.page_ids().size());
          args.lens = lens.data();
          args.offsets = offsets.data();
          args.num_tokens = tokens;
          args.max_len = max_len;
          args.score = kind;
          args.seed = 0xfeedull * head_dim;
          args.positions = positions.data();
          args.scores = scores.data();
          REQUIRE_OK(ref::TokenScores(args));

          DeviceBuffer d_positions(std::vector<int32_t>(tokens, -9));
          DeviceBuffer d_scores(std::vector<float>(tokens, -9.0f));
          args.cache = pool.view;
          args.indptr = indptr.get<int32_t>();
          args.page_ids = pages.get<int32_t>();
          args.lens = d_lens.get<int32_t>();
          args.offsets = d_offsets.get<int32_t>();
          args.positions = d_positions.get<int32_t>();
          args.scores = d_scores.get<float>();
          REQUIRE_OK(gpu::TokenScores(args, nullptr));
          HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
          REQUIRE(d_positions.Download<int32_t>() == positions);
          const std::vector<float> got = d_scores.Download<float>();
          REQUIRE(std::memcmp(got.data(), scores.data(), sizeof(float) * tokens) == 0);
        }
      }
    }
  }
}

TEST_CASE("gpu::MeanOverHeads equals ref:: bit for bit", "[kernels][gpu][sanitize]") {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> value(0.0f, 1.0f);
  for (const int32_t heads : {1, 3, 8}) {
    CAPTURE(heads);
    const std::vector<int32_t> group_lens = {0, 1, 255, 256, 257, 3000};
    std::vector<int32_t> offsets{0}, lens;
    for (int32_t len : group_lens) {
      for (int32_t h = 0; h < heads; ++h) {
        lens.push_back(len);
        offsets.push_back(offsets.back() + len + 1);
      }
    }
    std::vector<float> scores(offsets.back());
    for (float& x : scores) x = value(rng);
    DeviceBuffer d_scores(scores), d_offsets(offsets), d_lens(lens);
    MeanOverHeadsArgs args{static_cast<int32_t>(group_lens.size()), heads, offsets.data(),
                           lens.data(), 3000, offsets.back(), scores.data()};
    REQUIRE_OK(ref::MeanOverHeads(args));
    args.offsets = d_offsets.get<int32_t>();
    args.lens = d_lens.get<int32_t>();
    args.scores = d_scores.get<float>();
    REQUIRE_OK(gpu::MeanOverHeads(args, nullptr));
    const std::vector<float> got = d_scores.Download<float>();
    REQUIRE(std::memcmp(got.data(), scores.data(), sizeof(float) * scores.size()) == 0);
  }
}

}  // namespace
}  // namespace headpage
