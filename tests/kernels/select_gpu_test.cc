// SPDX-License-Identifier: Apache-2.0
// gpu::Select against ref::Select on the same random layers (ctest label
// `gpu`): keep sets and kept counts equal exactly, for every cluster size.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/select.h"
#include "tests/kernels/device_buffer.h"
#include "tests/kernels/paged_case.h"
#include "tests/kernels/select_case.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::DeviceBuffer;
using testing::SelectCase;
using testing::SelectCaseSpec;
using Ints = std::vector<int32_t>;

// What gpu::Select wrote: kept counts and the whole keep array.
struct DeviceResult {
  Ints counts;
  Ints keep;
};

// The case's host args with `mode_args`' mode, budgets and ctas_per_group.
SelectArgs WithMode(const SelectCase& c, const SelectArgs& mode_args) {
  SelectArgs args = c.HostArgs();
  args.mode = mode_args.mode;
  args.capacity = mode_args.capacity;
  args.alpha = mode_args.alpha;
  args.floor = mode_args.floor;
  args.ctas_per_group = mode_args.ctas_per_group;
  return args;
}

// Runs gpu::Select on the case in `mode_args`' mode, every output poisoned
// first.
DeviceResult RunGpu(const SelectCase& c, const SelectArgs& mode_args, const Ints& kept) {
  DeviceBuffer offsets(c.offsets()), scores(c.scores()), positions(c.positions());
  DeviceBuffer d_kept(kept.empty() ? Ints{0} : kept);
  DeviceBuffer keep(sizeof(int32_t) * std::max(1, c.size()));
  DeviceBuffer counts(sizeof(int32_t) * static_cast<size_t>(c.num_streams()));
  keep.Poison();
  counts.Poison();
  SelectArgs args = WithMode(c, mode_args);
  args.score_offsets = offsets.get<int32_t>();
  args.scores = scores.get<float>();
  args.positions = positions.get<int32_t>();
  args.kept = d_kept.get<int32_t>();
  args.keep = keep.get<int32_t>();
  args.kept_counts = counts.get<int32_t>();
  REQUIRE_OK(gpu::Select(args, nullptr));
  HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
  return {counts.Download<int32_t>(), keep.Download<int32_t>()};
}

// gpu::Select equals ref::Select: the counts, and each stream's keep set
// (what lies past it is not an output).
void CheckAgainstRef(const SelectCase& c, const SelectArgs& mode_args, const Ints& kept = {}) {
  SelectArgs args = WithMode(c, mode_args);
  Ints ref_keep(static_cast<size_t>(c.size()), -1), ref_counts(static_cast<size_t>(c.num_streams()));
  args.kept = kept.data();
  args.keep = ref_keep.data();
  args.kept_counts = ref_counts.data();
  REQUIRE_OK(ref::Select(args));

  const DeviceResult gpu = RunGpu(c, args, kept);
  REQUIRE(gpu.counts == ref_counts);
  for (int32_t s = 0; s < c.num_streams(); ++s) {
    const auto first = c.offsets()[s], last = first + ref_counts[s];
    INFO("stream " << s << " of length " << c.length(s) << " keeps " << ref_counts[s]);
    REQUIRE(std::equal(ref_keep.begin() + first, ref_keep.begin() + last, gpu.keep.begin() + first));
  }
}

SelectArgs TopB(int32_t ctas) {
  SelectArgs args;
  args.mode = SelectMode::kTopB;
  args.ctas_per_group = ctas;
  return args;
}

SelectArgs Ada(int32_t capacity, double alpha, policy::AdaFloor floor, int32_t ctas) {
  SelectArgs args;
  args.mode = SelectMode::kAda;
  args.capacity = capacity;
  args.alpha = alpha;
  args.floor = floor;
  args.ctas_per_group = ctas;
  return args;
}

int32_t MaxProtected(const SelectCase& c) {
  int32_t most = 1;
  for (int32_t s = 0; s < c.num_streams(); ++s) most = std::max(most, c.NumProtected(s));
  return most;
}

// Edge-length layers (0, 1, 15, 16, 17, 53 tokens per stream, shuffled in
// each of two sequences), with ties or without, protection or none, one or
// several CTAs per cluster; kTopB and kAda with either floor.
void CheckEdgeLengths(int iterations, bool every_alpha) {
  std::mt19937_64 rng(17);
  const Ints edges = testing::EdgeLengths(16);
  for (int iter = 0; iter < iterations; ++iter) {
    SelectCaseSpec spec;
    spec.num_seqs = 2;
    spec.num_kv_heads = static_cast<int32_t>(edges.size());
    for (int32_t seq = 0; seq < spec.num_seqs; ++seq) {
      Ints lens = edges;
      std::shuffle(lens.begin(), lens.end(), rng);
      spec.lens.insert(spec.lens.end(), lens.begin(), lens.end());
    }
    const int32_t distinct_choices[] = {0, 3, 1, 6};
    spec.distinct = distinct_choices[iter % 4];
    spec.sinks = static_cast<int32_t>(iter % 3 == 0 ? 0 : rng() % 5);
    spec.recent = static_cast<int32_t>(iter % 4 == 1 ? 0 : rng() % 9);
    spec.lead = iter % 2;
    SelectCase c(spec, rng());
    const int32_t ctas_choices[] = {1, 2, 3, 8};
    const int32_t ctas = ctas_choices[iter % 4];
    INFO("iter " << iter << " ctas " << ctas << " distinct " << spec.distinct);
    CheckAgainstRef(c, TopB(ctas), c.RandomKept());
    const int32_t capacity = MaxProtected(c) + static_cast<int32_t>(rng() % 30);
    const double alpha_choices[] = {0.0, 0.2, 0.5};
    for (const policy::AdaFloor floor : {policy::AdaFloor::kScaled, policy::AdaFloor::kProtectTop}) {
      for (int a = 0; a < 3; ++a) {
        if (!every_alpha && a != iter % 3) continue;
        const double alpha = alpha_choices[a];
        INFO("capacity " << capacity << " alpha " << alpha << " floor " << static_cast<int>(floor));
        CheckAgainstRef(c, Ada(capacity, alpha, floor, ctas));
      }
    }
  }
}

// Small enough for compute-sanitizer's racecheck, yet every path: one and
// several CTAs per cluster, both floors, early and late ends of the select.
TEST_CASE("gpu::Select equals ref::Select on the edge lengths, every cluster size",
          "[kernels][gpu][select][sanitize]") {
  CheckEdgeLengths(4, false);
}

// A capacity of exactly the protected tokens leaves every long stream
// competing for nothing: the sequence's select takes k = 0 and passes no
// cluster barrier of its own (the kernel adds one before the hits' exchange),
// and every stream keeps its protected tokens.
TEST_CASE("gpu::Select: an Ada layer with no budget left selects nothing, every cluster size",
          "[kernels][gpu][select][sanitize]") {
  std::mt19937_64 rng(29);
  SelectCaseSpec spec;
  spec.num_seqs = 2;
  spec.num_kv_heads = 8;
  spec.lens = {0, 1, 15, 16, 17, 53, 40, 9, 53, 17, 0, 16, 33, 1, 15, 64};
  spec.recent = 3;  // no sinks: every stream longer than 3 protects exactly 3
  SelectCase c(spec, rng());
  const int32_t capacity = MaxProtected(c);
  // The case is what it claims: in each sequence some stream competes, and
  // every competing stream's budget (capacity - protected) is 0.
  for (int32_t seq = 0; seq < spec.num_seqs; ++seq) {
    int competing = 0;
    for (int32_t h = 0; h < spec.num_kv_heads; ++h) {
      const int32_t s = seq * spec.num_kv_heads + h;
      const int32_t budget = capacity - c.NumProtected(s);
      if (budget < spec.lens[static_cast<size_t>(s)] - c.NumProtected(s)) {
        ++competing;
        REQUIRE(budget == 0);
      }
    }
    REQUIRE(competing > 0);
  }
  for (const int32_t ctas : {1, 2, 3, 8}) {
    for (const policy::AdaFloor floor :
         {policy::AdaFloor::kScaled, policy::AdaFloor::kProtectTop}) {
      INFO("ctas " << ctas << " floor " << static_cast<int>(floor));
      CheckAgainstRef(c, Ada(capacity, 0.2, floor, ctas));
    }
  }
}

TEST_CASE("gpu::Select equals ref::Select on the edge lengths, more cases",
          "[kernels][gpu][select]") {
  CheckEdgeLengths(16, true);
}

TEST_CASE("gpu::Select equals ref::Select on 32K streams, with and without ties",
          "[kernels][gpu][select]") {
  std::mt19937_64 rng(23);
  for (const int32_t distinct : {0, 5, 1}) {
    SelectCaseSpec spec;
    spec.num_seqs = 2;
    spec.num_kv_heads = 4;
    spec.lens = {32768, 32768, 32768, 32768, 32768, 20000, 32771, 901};
    spec.distinct = distinct;
    spec.sinks = 4;
    spec.recent = 32;
    spec.lead = 3;
    SelectCase c(spec, rng());
    for (const int32_t ctas : {0, 1, 8}) {
      INFO("distinct " << distinct << " ctas " << ctas);
      Ints uniform(static_cast<size_t>(c.num_streams()));
      for (int32_t s = 0; s < c.num_streams(); ++s) {
        uniform[s] = std::max(c.NumProtected(s), std::min(c.length(s), 6554));
      }
      CheckAgainstRef(c, TopB(ctas), uniform);
      CheckAgainstRef(c, TopB(ctas), c.RandomKept());
      for (const policy::AdaFloor floor : {policy::AdaFloor::kScaled, policy::AdaFloor::kProtectTop}) {
        // 20%, and a capacity that covers the 901-token stream only.
        for (const int32_t capacity : {6554, 1000}) {
          CheckAgainstRef(c, Ada(capacity, 0.2, floor, ctas));
        }
      }
    }
  }
}

// kSelectMaxAdaHeads kv heads: CTAs that own many streams (tens of segments
// each), every cluster size up to 8 (5 and 7 included), heavy ties (few
// distinct scores, so kProtectTop's tops end in ties that the sequence's cut
// meets again).
TEST_CASE("gpu::Select equals ref::Select with 256 kv heads, every cluster size",
          "[kernels][gpu][select]") {
  std::mt19937_64 rng(29);
  for (const int32_t distinct : {0, 2}) {
    SelectCaseSpec spec;
    spec.num_seqs = 2;
    spec.num_kv_heads = kSelectMaxAdaHeads;
    for (int32_t s = 0; s < spec.num_seqs * spec.num_kv_heads; ++s) {
      spec.lens.push_back(static_cast<int32_t>(rng() % 300));
    }
    spec.distinct = distinct;
    spec.sinks = 2;
    spec.recent = 5;
    SelectCase c(spec, rng());
    for (const int32_t ctas : {0, 1, 3, 5, 7, 8}) {
      INFO("distinct " << distinct << " ctas " << ctas);
      CheckAgainstRef(c, TopB(ctas), c.RandomKept());
      for (const policy::AdaFloor floor : {policy::AdaFloor::kScaled, policy::AdaFloor::kProtectTop}) {
        CheckAgainstRef(c, Ada(MaxProtected(c) + 40, 0.3, floor, ctas));
      }
    }
  }
}

TEST_CASE("gpu::Select equals ref::Select on 128K streams, cached in shared memory or not",
          "[kernels][gpu][select]") {
  SelectCaseSpec spec;
  spec.num_seqs = 1;
  spec.num_kv_heads = 2;
  spec.lens = {131072, 131072};
  spec.sinks = 4;
  spec.recent = 64;
  SelectCase c(spec, 3);
  // One CTA per group: a share too large for shared memory, read from global
  // memory on every pass.
  for (const int32_t ctas : {0, 1}) {
    CheckAgainstRef(c, TopB(ctas), {26214, 13107});
    CheckAgainstRef(c, Ada(26214, 0.2, policy::AdaFloor::kScaled, ctas));
    CheckAgainstRef(c, Ada(26214, 0.2, policy::AdaFloor::kProtectTop, ctas));
  }
}

// One stream over a cluster of 8 whose shares straddle the cache: 327700
// candidates split at multiples of four give four CTAs 40960 keys (cached) and
// four 40964 (read from global memory), so that one cluster mixes the staged
// keep set with the two-pass one, and their prefix sums meet.
TEST_CASE("gpu::Select equals ref::Select where a cluster's shares straddle the cache",
          "[kernels][gpu][select]") {
  std::mt19937_64 rng(31);
  for (const int32_t distinct : {0, 3}) {
    SelectCaseSpec spec;
    spec.num_seqs = 1;
    spec.num_kv_heads = 1;
    spec.lens = {327700 + 4 + 64};
    spec.sinks = 4;
    spec.recent = 64;
    spec.distinct = distinct;
    SelectCase c(spec, rng());
    INFO("distinct " << distinct);
    CheckAgainstRef(c, TopB(8), {65608});
    CheckAgainstRef(c, TopB(8), c.RandomKept());
  }
}

// Scores shaped so that the cut lies inside one narrow bucket of the first
// digit that holds about 128 of the group's keys, spread over the cluster's
// CTAs: the later passes, their bucket searches and the ties at the cut all
// cross CTAs. Per stream: `above` keys far over the bucket, `bucket` keys
// just over 1.0 (distinct, or in runs of four ties), the rest under 0.5,
// shuffled; every stream keeps its keys above the bucket and about half of
// the bucket's.
void ShapeBucket(SelectCase& c, int32_t above, int32_t bucket, bool ties, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> low(0.0f, 0.5f);
  for (int32_t s = 0; s < c.num_streams(); ++s) {
    const auto first = c.mutable_scores().begin() + c.offsets()[s];
    const auto last = first + c.length(s);
    int32_t i = 0;
    for (auto it = first; it != last; ++it, ++i) {
      if (i < above) {
        *it = 4.0f + 0.001f * static_cast<float>(i);
      } else if (i < above + bucket) {
        const int32_t j = ties ? (i - above) / 4 : i - above;
        *it = 1.0f + std::ldexp(static_cast<float>(j), -20);
      } else {
        *it = low(rng);
      }
    }
    std::shuffle(first, last, rng);
  }
}

TEST_CASE("gpu::Select equals ref::Select where the cut's bucket holds about 128 keys",
          "[kernels][gpu][select]") {
  std::mt19937_64 rng(31);
  constexpr int32_t kAbove = 300;
  for (const bool ties : {false, true}) {
    SelectCaseSpec spec;
    spec.num_seqs = 2;
    spec.num_kv_heads = 4;
    spec.lens.assign(8, 4096);
    SelectCase c(spec, rng());
    // kTopB: the bucket is one stream's, spread over its cluster's CTAs.
    for (const int32_t bucket : {127, 128, 129}) {
      ShapeBucket(c, kAbove, bucket, ties, rng);
      const Ints kept(static_cast<size_t>(c.num_streams()), kAbove + bucket / 2);
      for (const int32_t ctas : {1, 2, 8}) {
        INFO("ties " << ties << " bucket " << bucket << " ctas " << ctas);
        CheckAgainstRef(c, TopB(ctas), kept);
      }
    }
    // kAda: the sequence's bucket is its four streams' together.
    for (const int32_t bucket : {31, 32, 33}) {
      ShapeBucket(c, kAbove, bucket, ties, rng);
      for (const int32_t ctas : {0, 1, 4}) {
        for (const policy::AdaFloor floor : {policy::AdaFloor::kScaled, policy::AdaFloor::kProtectTop}) {
          INFO("ties " << ties << " bucket " << bucket << " ctas " << ctas << " floor "
                       << static_cast<int>(floor));
          CheckAgainstRef(c, Ada(kAbove + bucket / 2, 0.2, floor, ctas));
        }
      }
    }
  }
}

TEST_CASE("gpu::Select: bad device contents give well-formed output", "[kernels][gpu][select][sanitize]") {
  SelectCaseSpec spec;
  spec.num_seqs = 1;
  spec.num_kv_heads = 3;
  spec.lens = {40, 40, 40};
  spec.sinks = 2;
  spec.recent = 3;
  SelectCase c(spec, 9);
  // NaN scores, which the reference rejects: ranked by their bits.
  c.mutable_scores()[5] = std::nanf("");
  c.mutable_scores()[50] = -std::nanf("");
  // kTopB counts outside [protected, length] are clamped.
  const Ints kept = {-5, 20, 1000};
  for (const SelectArgs& mode : {TopB(2), Ada(1, 0.2, policy::AdaFloor::kScaled, 2)}) {
    const DeviceResult gpu = RunGpu(c, mode, kept);
    for (int32_t s = 0; s < c.num_streams(); ++s) {
      const int32_t count = gpu.counts[s];
      INFO("stream " << s << " keeps " << count);
      REQUIRE(count >= c.NumProtected(s));
      REQUIRE(count <= c.length(s));
      const auto first = gpu.keep.begin() + c.offsets()[s];
      REQUIRE(std::is_sorted(first, first + count));
      REQUIRE(std::adjacent_find(first, first + count) == first + count);
      REQUIRE(std::all_of(first, first + count, [&](int32_t j) { return j >= 0 && j < c.length(s); }));
    }
    if (mode.mode == SelectMode::kTopB) REQUIRE(gpu.counts == Ints{c.NumProtected(0), 20, 40});
  }
}

TEST_CASE("gpu::Select: no streams launches nothing, bad arguments are errors",
          "[kernels][gpu][select]") {
  SelectArgs args;
  args.num_kv_heads = 8;
  REQUIRE_OK(gpu::Select(args, nullptr));
  args.num_seqs = 1;
  REQUIRE_ERROR(gpu::Select(args, nullptr), absl::StatusCode::kInvalidArgument, "null");
}

}  // namespace
}  // namespace headpage
