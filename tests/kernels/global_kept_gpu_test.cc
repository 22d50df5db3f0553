// SPDX-License-Identifier: Apache-2.0
// This file checks gpu::GlobalKept against ref::GlobalKept on random pools.
// The tests carry the ctest label `gpu`. The kept counts must be equal: exact
// ties (small integer scores, streams without mass, -0 against +0) and random
// floats alike, because the GPU sums each stream's mass in the policy's order
// and divides the same way.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "kernels/global_kept.h"
#include "tests/kernels/captured_graph.h"
#include "tests/kernels/device_buffer.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::DeviceBuffer;
using Ints = std::vector<int32_t>;
using Floats = std::vector<float>;

enum class ScoreKind {
  kSmallIntegers,  // 0..3: exact ties within and across streams
  kUniform,        // floats in [0, 1)
  kWideRange,      // small integers times powers of two down to 2^-40
  kEqual,          // one value everywhere: every share ties within its stream
};

// A pool of streams as the engine lays them out: back to back, with the
// recent window after the candidates.
struct PoolCase {
  Ints offsets = {0};
  Floats scores;
  Ints candidates;
  Ints floors;

  int32_t num_streams() const { return static_cast<int32_t>(candidates.size()); }
  int32_t length(int32_t s) const { return offsets[s + 1] - offsets[s]; }

  GlobalKeptArgs HostArgs(int32_t page_size, int64_t pages_to_free) const {
    GlobalKeptArgs args;
    args.num_streams = num_streams();
    args.score_offsets = offsets.data();
    args.num_scores = static_cast<int32_t>(scores.size());
    args.scores = scores.data();
    args.candidate_counts = candidates.data();
    args.floors = floors.data();
    args.page_size = page_size;
    args.pages_to_free = pages_to_free;
    return args;
  }

  // The pages that the floors and protection let go: pages_to_free values
  // around it cover "everything freeable" and "more than that".
  int64_t Freeable(int32_t page_size) const {
    int64_t pages = 0;
    for (int32_t s = 0; s < num_streams(); ++s) {
      const int32_t n = length(s);
      const int32_t min_kept = std::max(n - candidates[s], std::min(floors[s], n));
      pages += (n + page_size - 1) / page_size - (min_kept + page_size - 1) / page_size;
    }
    return pages;
  }
};

struct PoolSpec {
  int32_t num_streams = 1;
  int32_t page_size = 16;
  int32_t max_pages = 4;     // lengths are k * page_size + {-1, 0, 1}, k < max_pages...
  bool any_length = false;   // ...or anything in [0, max_pages * page_size]
  int32_t max_window = 8;    // protected slots after the candidates
  ScoreKind kind = ScoreKind::kSmallIntegers;
};

PoolCase RandomPool(const PoolSpec& spec, uint64_t seed) {
  std::mt19937_64 rng(seed);
  PoolCase c;
  const float equal_value = 0.25f + static_cast<float>(rng() % 4);
  for (int32_t s = 0; s < spec.num_streams; ++s) {
    const int32_t span = spec.max_pages * spec.page_size;
    const int32_t n =
        spec.any_length
            ? static_cast<int32_t>(rng() % (span + 1))
            : std::max<int32_t>(0, spec.page_size * static_cast<int32_t>(rng() % spec.max_pages) +
                                       static_cast<int32_t>(rng() % 3) - 1);
    const bool no_mass = rng() % 8 == 0;
    for (int32_t j = 0; j < n; ++j) {
      float v = 0.0f;
      switch (spec.kind) {
        case ScoreKind::kSmallIntegers: v = static_cast<float>(rng() % 4); break;
        case ScoreKind::kUniform: v = std::uniform_real_distribution<float>(0.0f, 1.0f)(rng); break;
        case ScoreKind::kWideRange:
          v = std::ldexp(static_cast<float>(rng() % 8), -static_cast<int>(rng() % 41));
          break;
        case ScoreKind::kEqual: v = equal_value; break;
      }
      if (rng() % 23 == 0) v = -0.0f;
      c.scores.push_back(no_mass ? 0.0f : v);
    }
    c.offsets.push_back(static_cast<int32_t>(c.scores.size()));
    const int32_t window = static_cast<int32_t>(rng() % (spec.max_window + 1));
    c.candidates.push_back(std::max(0, n - window));
    const int32_t floor_choice = static_cast<int32_t>(rng() % 4);
    c.floors.push_back(floor_choice == 0 ? static_cast<int32_t>(rng() % (span + 2))
                                         : (floor_choice == 1 ? 1 << 20 : 0));
  }
  return c;
}

// gpu::GlobalKept with the kept counts and the workspace poisoned first.
Ints RunGpu(const PoolCase& c, int32_t page_size, int64_t pages_to_free) {
  DeviceBuffer offsets(c.offsets), candidates(c.candidates), floors(c.floors);
  DeviceBuffer scores(c.scores.empty() ? Floats{0.0f} : c.scores);
  DeviceBuffer kept(sizeof(int32_t) * static_cast<size_t>(std::max(1, c.num_streams())));
  GlobalKeptArgs args = c.HostArgs(page_size, pages_to_free);
  args.score_offsets = offsets.get<int32_t>();
  args.scores = scores.get<float>();
  args.candidate_counts = candidates.get<int32_t>();
  args.floors = floors.get<int32_t>();
  args.kept_counts = kept.get<int32_t>();
  DeviceBuffer workspace(std::max<size_t>(1, GlobalKeptWorkspaceBytes(args)));
  workspace.Poison();
  kept.Poison();
  args.workspace = workspace.get();
  args.workspace_bytes = workspace.bytes();
  REQUIRE_OK(gpu::GlobalKept(args, nullptr));
  HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
  Ints result = kept.Download<int32_t>();
  result.resize(static_cast<size_t>(c.num_streams()));
  return result;
}

Ints RunRef(const PoolCase& c, int32_t page_size, int64_t pages_to_free) {
  Ints kept(static_cast<size_t>(c.num_streams()), -1);
  GlobalKeptArgs args = c.HostArgs(page_size, pages_to_free);
  args.kept_counts = kept.data();
  REQUIRE_OK(ref::GlobalKept(args));
  return kept;
}

// gpu:: equals ref:: for nothing to free, a little, about half of what can be
// freed, all of it, and more.
void CheckTargets(const PoolCase& c, int32_t page_size) {
  const int64_t freeable = c.Freeable(page_size);
  for (const int64_t pages : {int64_t{0}, int64_t{1}, int64_t{2}, freeable / 10, freeable / 2,
                              freeable - 1, freeable, freeable + 1, int64_t{1} << 40}) {
    if (pages < 0) continue;
    INFO("pages_to_free " << pages << " of " << freeable << " freeable, page size " << page_size);
    const Ints expected = RunRef(c, page_size, pages);
    const Ints actual = RunGpu(c, page_size, pages);
    for (int32_t s = 0; s < c.num_streams(); ++s) {
      INFO("stream " << s << " of length " << c.length(s) << ", " << c.candidates[s]
                     << " candidates, floor " << c.floors[s]);
      REQUIRE(actual[s] == expected[s]);
    }
  }
}

// Small enough for compute-sanitizer, yet every step: ties, streams without
// mass, floors, lengths at page boundaries, each target.
TEST_CASE("gpu::GlobalKept equals ref::GlobalKept on small pools",
          "[kernels][gpu][global_kept][sanitize]") {
  const ScoreKind kinds[] = {ScoreKind::kSmallIntegers, ScoreKind::kUniform, ScoreKind::kEqual};
  for (int iter = 0; iter < 3; ++iter) {
    PoolSpec spec;
    spec.num_streams = 40;
    spec.page_size = 4;
    spec.kind = kinds[iter];
    INFO("iter " << iter);
    CheckTargets(RandomPool(spec, 100 + iter), spec.page_size);
  }
}

TEST_CASE("gpu::GlobalKept equals ref::GlobalKept on thousands of streams, every score kind",
          "[kernels][gpu][global_kept]") {
  int iter = 0;
  for (const ScoreKind kind : {ScoreKind::kSmallIntegers, ScoreKind::kUniform,
                               ScoreKind::kWideRange, ScoreKind::kEqual}) {
    for (const int32_t page_size : {1, 5, 16}) {
      PoolSpec spec;
      spec.num_streams = 3000 + iter;  // not a multiple of a warp's 32 streams
      spec.page_size = page_size;
      spec.max_pages = page_size == 1 ? 70 : 12;
      spec.any_length = iter % 2 == 1;
      spec.max_window = 40;
      spec.kind = kind;
      INFO("kind " << static_cast<int>(kind) << " page size " << page_size);
      CheckTargets(RandomPool(spec, 200 + iter), page_size);
      ++iter;
    }
  }
}

TEST_CASE("gpu::GlobalKept equals ref::GlobalKept on long streams",
          "[kernels][gpu][global_kept]") {
  // Many chunks of the mass sum, and long sort segments.
  for (const ScoreKind kind : {ScoreKind::kUniform, ScoreKind::kSmallIntegers}) {
    PoolSpec spec;
    spec.num_streams = 37;
    spec.page_size = 16;
    spec.max_pages = 8192;
    spec.any_length = true;
    spec.max_window = 64;
    spec.kind = kind;
    CheckTargets(RandomPool(spec, 300 + static_cast<int>(kind)), spec.page_size);
  }
}

TEST_CASE("gpu::GlobalKept runs inside a CUDA graph: no host synchronization",
          "[kernels][gpu][global_kept]") {
  PoolSpec spec;
  // Over 500 streams: CUB's DeviceSegmentedSort would synchronize here (it reads
  // its partition on the host), which a capture rejects.
  spec.num_streams = 700;
  spec.kind = ScoreKind::kUniform;
  const PoolCase c = RandomPool(spec, 400);
  const int64_t pages = c.Freeable(spec.page_size) / 3;
  DeviceBuffer offsets(c.offsets), scores(c.scores), candidates(c.candidates), floors(c.floors);
  DeviceBuffer kept(sizeof(int32_t) * static_cast<size_t>(c.num_streams()));
  GlobalKeptArgs args = c.HostArgs(spec.page_size, pages);
  args.score_offsets = offsets.get<int32_t>();
  args.scores = scores.get<float>();
  args.candidate_counts = candidates.get<int32_t>();
  args.floors = floors.get<int32_t>();
  args.kept_counts = kept.get<int32_t>();
  DeviceBuffer workspace(GlobalKeptWorkspaceBytes(args));
  args.workspace = workspace.get();
  args.workspace_bytes = workspace.bytes();
  testing::CapturedGraph graph([&](cudaStream_t stream) { return gpu::GlobalKept(args, stream); });
  REQUIRE_OK(graph.captured());
  kept.Poison();
  graph.ReplayAndWait();
  REQUIRE(kept.Download<int32_t>() == RunRef(c, spec.page_size, pages));
}

TEST_CASE("gpu::GlobalKept: bad device contents give in-bounds counts",
          "[kernels][gpu][global_kept][sanitize]") {
  PoolSpec spec;
  spec.num_streams = 9;
  spec.page_size = 4;
  spec.kind = ScoreKind::kUniform;
  PoolCase c = RandomPool(spec, 500);
  const int32_t num_scores = static_cast<int32_t>(c.scores.size());
  // Offsets that go back, below 0 and past the end; candidate counts and
  // floors out of range; scores that the reference rejects.
  c.offsets[2] = c.offsets[1] - 3;
  c.offsets[4] = -9;
  c.offsets[7] = num_scores + 50;
  c.candidates[0] = -4;
  c.candidates[1] = 1 << 30;
  c.floors[3] = -8;
  c.scores[1] = std::nanf("");
  c.scores[2] = -1.0f;
  c.scores[3] = std::numeric_limits<float>::infinity();
  for (const int64_t pages : {int64_t{0}, int64_t{1}, int64_t{5}, int64_t{1} << 40}) {
    const Ints kept = RunGpu(c, spec.page_size, pages);
    for (int32_t s = 0; s < c.num_streams(); ++s) {
      // gpu::'s clamp (global_kept.h): offsets into [0, num_scores], a
      // decreasing pair empty.
      const int32_t begin = std::min(std::max(c.offsets[s], 0), num_scores);
      const int32_t end = std::min(std::max(c.offsets[s + 1], begin), num_scores);
      INFO("pages_to_free " << pages << " stream " << s);
      REQUIRE(kept[s] >= 0);
      REQUIRE(kept[s] <= end - begin);
      if (pages == 0) REQUIRE(kept[s] == end - begin);
    }
  }
}

TEST_CASE("gpu::GlobalKept: no streams launch nothing, a short workspace is an error",
          "[kernels][gpu][global_kept]") {
  GlobalKeptArgs none;
  none.page_size = 16;
  none.pages_to_free = 3;
  REQUIRE_OK(gpu::GlobalKept(none, nullptr));
  REQUIRE(GlobalKeptWorkspaceBytes(none) == 0);

  PoolSpec spec;
  spec.num_streams = 5;
  const PoolCase c = RandomPool(spec, 600);
  DeviceBuffer offsets(c.offsets), scores(c.scores), candidates(c.candidates), floors(c.floors);
  DeviceBuffer kept(sizeof(int32_t) * 5);
  GlobalKeptArgs args = c.HostArgs(spec.page_size, 1);
  args.score_offsets = offsets.get<int32_t>();
  args.scores = scores.get<float>();
  args.candidate_counts = candidates.get<int32_t>();
  args.floors = floors.get<int32_t>();
  args.kept_counts = kept.get<int32_t>();
  const size_t needed = GlobalKeptWorkspaceBytes(args);
  // The sorted scores and the sort's alternate buffer, at least.
  REQUIRE(needed >= 2 * sizeof(float) * c.scores.size());
  REQUIRE_ERROR(gpu::GlobalKept(args, nullptr), absl::StatusCode::kInvalidArgument, "workspace");
  DeviceBuffer workspace(needed);
  args.workspace = workspace.get();
  args.workspace_bytes = needed - 1;
  REQUIRE_ERROR(gpu::GlobalKept(args, nullptr), absl::StatusCode::kInvalidArgument, "workspace");
  // pages_to_free 0 keeps everything and needs no workspace.
  args.workspace = nullptr;
  args.workspace_bytes = 0;
  args.pages_to_free = 0;
  REQUIRE_OK(gpu::GlobalKept(args, nullptr));
  HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
  Ints lengths;
  for (int32_t s = 0; s < c.num_streams(); ++s) lengths.push_back(c.length(s));
  REQUIRE(kept.Download<int32_t>() == lengths);
}

}  // namespace
}  // namespace headpage
