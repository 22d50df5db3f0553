// SPDX-License-Identifier: Apache-2.0
// DBudgetCut over one layer: batch sequences x kKVHeads streams of len tokens,
// group size kQHeads / kKVHeads (4), scores uniform in [0, 1) (SnapKV-like
// votes), softmax-like attention rows of the last prompt query, 4 sinks and
// a 32-token window protected, threshold 0.05 (ReFreeKV's script). By score
// (the sort, the gather, the sums) and by position (no sort). The arrays are
// L2-resident after the first iteration, as in the engine, where the kernels
// that wrote them have just run.
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "bench/kernels/gpu_bench_util.h"
#include "kernels/dbudget_cut.h"

namespace headpage::bench {
namespace {

constexpr int32_t kSinks = 4;
constexpr int32_t kWindow = 32;
constexpr int32_t kGroup = kQHeads / kKVHeads;

void RunDBudgetCut(benchmark::State& state, bool by_position) {
  const int32_t batch = static_cast<int32_t>(state.range(0));
  const int32_t len = static_cast<int32_t>(state.range(1));
  const int32_t streams = batch * kKVHeads;
  const int64_t total = int64_t{streams} * len;

  std::vector<int32_t> offsets(static_cast<size_t>(streams) + 1),
      positions(static_cast<size_t>(total));
  for (int32_t s = 0; s <= streams; ++s) offsets[static_cast<size_t>(s)] = s * len;
  for (int64_t i = 0; i < total; ++i)
    positions[static_cast<size_t>(i)] = static_cast<int32_t>(i % len);
  std::mt19937_64 rng(13);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  std::vector<float> scores(static_cast<size_t>(total));
  for (float& v : scores) v = uniform(rng);
  // Each row exp(N(0, 2)) normalized: a few heavy tokens, a long light tail.
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> attention(static_cast<size_t>(total) * kGroup);
  for (size_t row = 0; row < attention.size() / static_cast<size_t>(len); ++row) {
    float* values = attention.data() + row * static_cast<size_t>(len);
    double sum = 0.0;
    for (int32_t j = 0; j < len; ++j) {
      values[j] = std::exp(normal(rng));
      sum += values[j];
    }
    for (int32_t j = 0; j < len; ++j) values[j] = static_cast<float>(values[j] / sum);
  }
  DeviceBuffer d_offsets(offsets), d_scores(scores), d_positions(positions), d_attention(attention),
      kept(static_cast<size_t>(streams) * sizeof(int32_t));

  DBudgetCutArgs args;
  args.num_seqs = batch;
  args.num_kv_heads = kKVHeads;
  args.group_size = kGroup;
  args.score_offsets = d_offsets.get<int32_t>();
  args.num_tokens = static_cast<int32_t>(total);
  args.scores = d_scores.get<float>();
  args.positions = d_positions.get<int32_t>();
  args.sinks = kSinks;
  args.recent = kWindow;
  args.attention = d_attention.get<float>();
  args.threshold = 0.05;
  args.by_position = by_position;
  args.kept = kept.get<int32_t>();
  DeviceBuffer workspace(DBudgetCutWorkspaceBytes(args));
  args.workspace = workspace.get();
  args.workspace_bytes = workspace.bytes();
  TimeWithEvents(state, [&] {
    if (!gpu::DBudgetCut(args, nullptr).ok()) state.SkipWithError("gpu::DBudgetCut failed");
  });
  // What the cut must read at least once: the scores and the attention rows.
  SetBytesPerSecond(state, "input_Bps", 4.0 * static_cast<double>(total) * (1 + kGroup));
  const std::vector<int32_t> counts = kept.Download<int32_t>();
  state.counters["kept_fraction"] = static_cast<double>(counts[0]) / len;
}

void BM_DBudgetCut(benchmark::State& state) { RunDBudgetCut(state, false); }
void BM_DBudgetCutByPosition(benchmark::State& state) { RunDBudgetCut(state, true); }

void Layer8x32K(benchmark::internal::Benchmark* b) {
  b->ArgNames({"batch", "len"})->Args({8, 32768});
}

BENCHMARK(BM_DBudgetCut)->Apply(Layer8x32K)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_DBudgetCutByPosition)
    ->Apply(Layer8x32K)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace headpage::bench
