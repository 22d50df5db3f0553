// SPDX-License-Identifier: Apache-2.0
// The policy step on the CPU: what EvictionEngine::Compress computes for one
// layer, without the pool. Llama-3-8B (8 KV heads, 32 q heads, head_dim 128,
// bf16), SnapKV scoring with the observation window of w = 32 queries (max
// pooling, kernel 7), Ada-KV allocation (alpha 0.2) at 20% of the tokens, and
// the keep sets. Items are the layer's token positions.
#include <random>
#include <vector>

#include "benchmark/benchmark.h"
#include "policy/budget.h"
#include "policy/scores.h"
#include "policy/select.h"
#include "core/dtype.h"
#include "core/geometry.h"

namespace headpage {
namespace {

using policy::StreamScores;

struct Layer {
  static constexpr int32_t kWindow = 32;
  CacheGeometry g = CacheGeometry::Llama3_8B();
  int32_t n;
  std::vector<bf16> keys;     // [kv_heads][n][head_dim]
  std::vector<bf16> queries;  // [q_heads][window][head_dim]
  std::vector<int32_t> positions, query_positions;

  explicit Layer(int32_t tokens) : n(tokens) {
    std::mt19937 rng(3);
    std::normal_distribution<float> normal;
    keys.resize(static_cast<size_t>(g.num_kv_heads) * n * g.head_dim);
    for (bf16& k : keys) k = bf16::FromFloat(normal(rng));
    queries.resize(static_cast<size_t>(g.num_q_heads) * kWindow * g.head_dim);
    for (bf16& q : queries) q = bf16::FromFloat(normal(rng));
    for (int32_t i = 0; i < n; ++i) positions.push_back(i);
    for (int32_t r = 0; r < kWindow; ++r) query_positions.push_back(n - kWindow + r);
  }

  policy::StreamKeys Keys(int32_t h) const {
    return {keys.data() + static_cast<size_t>(h) * n * g.head_dim, positions.data(), n, g.head_dim,
            DType::kBF16};
  }
  policy::GroupQueries Group(int32_t h) const {
    const int32_t group = g.group_size();
    return {queries.data() + static_cast<size_t>(h) * group * kWindow * g.head_dim,
            query_positions.data(), group, kWindow, g.head_dim, DType::kBF16};
  }
};

void BM_Policy_AdaSnapKV(benchmark::State& state) {
  const Layer layer(static_cast<int32_t>(state.range(0)));
  const int32_t heads = layer.g.num_kv_heads;
  std::vector<std::vector<float>> scores(heads, std::vector<float>(layer.n));
  std::vector<std::vector<int32_t>> keep(heads);
  const int32_t capacity = layer.n / 5;
  for (auto _ : state) {
    std::vector<StreamScores> streams;
    for (int32_t h = 0; h < heads; ++h) {
      if (!policy::SnapKVScores(layer.Keys(h), layer.Group(h), policy::SnapKVOptions(),
                                absl::MakeSpan(scores[h]))
               .ok()) {
        state.SkipWithError("SnapKVScores failed");
        return;
      }
      streams.push_back({scores[h], layer.positions, {0, Layer::kWindow}});
    }
    const absl::StatusOr<std::vector<int32_t>> kept = policy::AdaKept(streams, capacity);
    if (!kept.ok()) {
      state.SkipWithError("AdaKept failed");
      return;
    }
    for (int32_t h = 0; h < heads; ++h) {
      if (!policy::SelectKeepSet(streams[h], (*kept)[h], &keep[h]).ok()) {
        state.SkipWithError("SelectKeepSet failed");
        return;
      }
    }
    benchmark::DoNotOptimize(keep.data());
  }
  state.SetItemsProcessed(state.iterations() * layer.n);
}
BENCHMARK(BM_Policy_AdaSnapKV)->Arg(8192)->Unit(benchmark::kMillisecond);

// The parts on their own, to see where the time goes.
void BM_Policy_SnapKVScores(benchmark::State& state) {
  const Layer layer(static_cast<int32_t>(state.range(0)));
  std::vector<float> scores(layer.n);
  for (auto _ : state) {
    for (int32_t h = 0; h < layer.g.num_kv_heads; ++h) {
      benchmark::DoNotOptimize(policy::SnapKVScores(layer.Keys(h), layer.Group(h),
                                                    policy::SnapKVOptions(), absl::MakeSpan(scores)));
    }
  }
  state.SetItemsProcessed(state.iterations() * layer.n);
}
BENCHMARK(BM_Policy_SnapKVScores)->Arg(8192)->Unit(benchmark::kMillisecond);

void BM_Policy_AdaKeptAndSelect(benchmark::State& state) {
  const int32_t n = static_cast<int32_t>(state.range(0));
  const int32_t heads = 8;
  std::mt19937 rng(5);
  std::exponential_distribution<float> expo(1.0f);
  std::vector<std::vector<float>> scores(heads, std::vector<float>(n));
  for (auto& s : scores) {
    for (float& x : s) x = expo(rng);
  }
  std::vector<int32_t> positions(n);
  for (int32_t i = 0; i < n; ++i) positions[i] = i;
  std::vector<StreamScores> streams;
  for (auto& s : scores) streams.push_back({s, positions, {0, 32}});
  std::vector<int32_t> keep;
  for (auto _ : state) {
    const auto kept = policy::AdaKept(streams, n / 5);
    for (int32_t h = 0; h < heads; ++h) {
      benchmark::DoNotOptimize(policy::SelectKeepSet(streams[h], (*kept)[h], &keep));
    }
  }
  state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_Policy_AdaKeptAndSelect)->Arg(8192)->Arg(32768);

}  // namespace
}  // namespace headpage

BENCHMARK_MAIN();
