// SPDX-License-Identifier: Apache-2.0
// gpu::SlotScores against ref::SlotScores, bit for bit, on the shared case
// generator's pools (ctest label `gpu`).
#include <algorithm>
#include <random>
#include <vector>

#include "kernels/slot_scores.h"
#include "tests/kernels/device_buffer.h"
#include "tests/kernels/paged_case.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::DeviceBuffer;
using testing::PagedCase;

TEST_CASE("gpu::SlotScores equals ref:: bit for bit", "[kernels][gpu][sanitize]") {
  for (const int32_t page_size : {16, 32}) {
    std::vector<int32_t> lens = testing::EdgeLengths(page_size);
    lens.push_back(1000);
    lens.push_back(257);
    PagedCase c({page_size, 64, DType::kBF16, lens, 4}, 70 + page_size);
    std::mt19937 rng(page_size);
    std::vector<int32_t> offsets{0}, scored;
    for (const int32_t len : lens) {
      offsets.push_back(offsets.back() + len + 3);
      scored.push_back(static_cast<int32_t>(rng() % (len + 1)));
    }
    const int32_t tokens = offsets.back();
    std::uniform_real_distribution<float> value(-2.0f, 3.0f);
    std::vector<float> store(static_cast<size_t>(c.view().num_slots())), dense(tokens);
    for (float& x : store) x = value(rng);
    for (float& x : dense) x = value(rng);
    DeviceBuffer indptr(c.indptr()), pages(c.page_ids()), d_lens(lens), d_offsets(offsets),
        d_scored(scored);
    for (const SlotScoresOp op : {SlotScoresOp::kStore, SlotScoresOp::kLoad, SlotScoresOp::kAdd}) {
      for (const bool shift : {false, true}) {
        CAPTURE(page_size, static_cast<int>(op), shift);
        std::vector<float> host_store = store, host_dense = dense;
        SlotScoresArgs args;
        args.cache = c.view();
        args.num_streams = c.num_streams();
        args.indptr = c.indptr().data();
        args.page_ids = c.page_ids().data();
        args.num_page_ids = static_cast<int32_t>(c.page_ids().size());
        args.lens = lens.data();
        args.offsets = offsets.data();
        args.scored = scored.data();
        args.max_len = *std::max_element(lens.begin(), lens.end());
        args.num_dense = tokens;
        args.op = op;
        args.unscored = 1e30f;
        args.shift_to_zero = shift;
        args.slot_scores = host_store.data();
        args.dense = host_dense.data();
        REQUIRE_OK(ref::SlotScores(args));

        DeviceBuffer device_store(store), device_dense(dense);
        args.indptr = indptr.get<int32_t>();
        args.page_ids = pages.get<int32_t>();
        args.lens = d_lens.get<int32_t>();
        args.offsets = d_offsets.get<int32_t>();
        args.scored = d_scored.get<int32_t>();
        args.slot_scores = device_store.get<float>();
        args.dense = device_dense.get<float>();
        REQUIRE_OK(gpu::SlotScores(args, nullptr));
        HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
        REQUIRE(device_store.Download<float>() == host_store);
        REQUIRE(device_dense.Download<float>() == host_dense);
      }
    }
  }
}

}  // namespace
}  // namespace headpage
