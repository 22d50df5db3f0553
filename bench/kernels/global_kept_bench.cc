// SPDX-License-Identifier: Apache-2.0
// GlobalKept over a whole pool: batch sequences x 32 layers x kKVHeads streams
// of len tokens each, with page size 16. Scores are uniform in [0, 1) and a
// 32-token window is protected; there are no floors. The target is 10% of the
// pool's pages. This is the decision the engine makes when a step is short of
// pages, before it preempts anything. The shape, 64 x 4096, has 16384
// streams and 64M scores (256 MiB, far more than L2 holds).
#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "bench/kernels/gpu_bench_util.h"
#include "kernels/global_kept.h"

namespace headpage::bench {
namespace {

constexpr int32_t kLayers = 32;
constexpr int32_t kWindow = 32;

void BM_GlobalKept(benchmark::State& state) {
  const int32_t batch = static_cast<int32_t>(state.range(0));
  const int32_t len = static_cast<int32_t>(state.range(1));
  const int32_t streams = batch * kLayers * kKVHeads;
  const int64_t total = int64_t{streams} * len;

  std::vector<int32_t> offsets(static_cast<size_t>(streams) + 1);
  for (int32_t s = 0; s <= streams; ++s) offsets[static_cast<size_t>(s)] = s * len;
  std::vector<float> scores(static_cast<size_t>(total));
  std::mt19937 rng(13);
  // 24 random bits per score: uniform in [0, 1), faster than
  // uniform_real_distribution over 64M values.
  for (float& v : scores) v = static_cast<float>(rng() >> 8) * (1.0f / 16777216.0f);
  DeviceBuffer d_offsets(offsets), d_scores(scores),
      d_candidates(std::vector<int32_t>(static_cast<size_t>(streams), std::max(0, len - kWindow))),
      d_floors(std::vector<int32_t>(static_cast<size_t>(streams), 0)),
      kept(static_cast<size_t>(streams) * sizeof(int32_t));

  GlobalKeptArgs args;
  args.num_streams = streams;
  args.score_offsets = d_offsets.get<int32_t>();
  args.num_scores = static_cast<int32_t>(total);
  args.scores = d_scores.get<float>();
  args.candidate_counts = d_candidates.get<int32_t>();
  args.floors = d_floors.get<int32_t>();
  args.page_size = kPageSize;
  args.pages_to_free = int64_t{streams} * PagesFor(len, kPageSize) / 10;
  args.kept_counts = kept.get<int32_t>();
  DeviceBuffer workspace(GlobalKeptWorkspaceBytes(args));
  args.workspace = workspace.get();
  args.workspace_bytes = workspace.bytes();
  TimeWithEvents(state, [&] {
    if (!gpu::GlobalKept(args, nullptr).ok()) state.SkipWithError("gpu::GlobalKept failed");
  });
  SetBytesPerSecond(state, "scores_Bps", 4.0 * static_cast<double>(total));
  state.counters["workspace_MiB"] = static_cast<double>(workspace.bytes()) / (1 << 20);
}

void PoolShapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"batch", "len"})->Args({8, 4096})->Args({64, 4096});
}

BENCHMARK(BM_GlobalKept)->Apply(PoolShapes)->UseManualTime()->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace headpage::bench
