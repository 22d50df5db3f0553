// SPDX-License-Identifier: Apache-2.0
// gpu::WindowScores: SnapKV scoring of one layer straight from the paged keys,
// W = 32 window queries per sequence, the geometry (32 q heads, 8 kv
// heads, d = 128, bf16, page 16), avg pooling k = 7 and the group mean (the
// PyTorch formulation's options), every stream at the full length.
//
// Counters: key_read_Bps, the stream's key bytes (read once) per second, so
// that its ratio to BM_CopyBandwidth's read_write_Bps is the fraction of the
// copy bandwidth; qk_flops, the 2 * rows * keys * d multiply-adds of the window
// logits (once) per second. The kernel reads the keys twice (statistics, then
// scores); the counters count them once, as the floor does.
#include <cmath>
#include <random>
#include <vector>

#include "bench/kernels/gpu_bench_util.h"
#include "kernels/window_scores.h"

namespace headpage::bench {
namespace {

constexpr int32_t kWindow = 32;

void RunWindowScores(benchmark::State& state, WindowScoresBackend backend) {
  const int32_t batch = static_cast<int32_t>(state.range(0));
  const int32_t len = static_cast<int32_t>(state.range(1));
  const int32_t streams = batch * kKVHeads;
  BenchPool pool(std::vector<int32_t>(static_cast<size_t>(streams), len));

  std::mt19937_64 rng(3);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  std::vector<uint8_t> queries(static_cast<size_t>(batch) * kQHeads * kWindow * kHeadDim *
                               SizeOf(kDType));
  for (size_t i = 0; i < queries.size() / SizeOf(kDType); ++i) {
    StoreFromFloat(queries.data(), i, kDType, value(rng));
  }
  // The window is the last W tokens (BenchPool's positions are 0..len-1).
  std::vector<int32_t> query_positions;
  for (int32_t s = 0; s < batch; ++s) {
    for (int32_t w = 0; w < kWindow; ++w) query_positions.push_back(len - kWindow + w);
  }
  std::vector<int32_t> score_offsets(1, 0);
  for (int32_t len_i : pool.host_lens) score_offsets.push_back(score_offsets.back() + len_i);

  DeviceBuffer d_queries(queries), d_query_positions(query_positions),
      d_score_offsets(score_offsets), d_scores(static_cast<size_t>(pool.total_tokens) * 4);
  WindowScoresArgs args;
  args.cache = pool.view;
  args.num_seqs = batch;
  args.num_q_heads = kQHeads;
  args.num_kv_heads = kKVHeads;
  args.window = kWindow;
  args.queries = d_queries.get();
  args.query_positions = d_query_positions.get<int32_t>();
  args.indptr = pool.indptr.get<int32_t>();
  args.page_ids = pool.page_ids.get<int32_t>();
  args.num_page_ids = static_cast<int32_t>(pool.host_page_ids.size());
  args.lens = pool.lens.get<int32_t>();
  args.score_offsets = d_score_offsets.get<int32_t>();
  args.max_len = len;
  args.num_scores = static_cast<int32_t>(pool.total_tokens);
  args.sm_scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  args.kernel_size = 7;
  args.pooling = policy::Pooling::kAvg;
  args.reduce = policy::GroupReduce::kMean;
  args.scores = d_scores.get<float>();
  args.backend = backend;
  DeviceBuffer workspace(WindowScoresWorkspaceBytes(args));
  args.workspace = workspace.get();
  args.workspace_bytes = workspace.bytes();

  TimeWithEvents(state, [&] {
    const absl::Status status = gpu::WindowScores(args, nullptr);
    if (!status.ok()) state.SkipWithError(status.ToString().c_str());
  });
  const double keys = static_cast<double>(pool.total_tokens);
  SetBytesPerSecond(state, "key_read_Bps", keys * kHeadDim * SizeOf(kDType));
  state.counters["qk_flops"] =
      benchmark::Counter(2.0 * keys * (kQHeads / kKVHeads) * kWindow * kHeadDim *
                             static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate);
}
// What a user gets (kAuto: the warpgroup MMA on an H100/H200 built for sm_90a).
void BM_WindowScores(benchmark::State& state) {
  RunWindowScores(state, WindowScoresBackend::kAuto);
}
BENCHMARK(BM_WindowScores)->Apply(BatchLengthShapes)->UseManualTime()->Unit(benchmark::kMillisecond);

// The warp MMA (mma.sync) path, what other GPUs run, side by side.
void BM_WindowScoresWarpMma(benchmark::State& state) {
  RunWindowScores(state, WindowScoresBackend::kWarpMma);
}
BENCHMARK(BM_WindowScoresWarpMma)
    ->Apply(BatchLengthShapes)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace headpage::bench
