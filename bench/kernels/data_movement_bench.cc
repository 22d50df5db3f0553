// SPDX-License-Identifier: Apache-2.0
// The data-movement kernels: Compact (the target: to 20%, >= 70% of the
// copy bandwidth), WriteKV (one decode step of one layer) and CopyPages.
// Bytes count what the kernel must read and write.
#include <algorithm>
#include <random>
#include <vector>

#include "bench/kernels/gather_floor.h"
#include "bench/kernels/gpu_bench_util.h"
#include "kernels/compact.h"
#include "kernels/copy_pages.h"
#include "kernels/write_kv.h"

namespace headpage::bench {
namespace {

// Every stream of batch x kKVHeads keeps `kept` of its len tokens into fresh
// pages (the eviction engine's usual plan when the pool has room): runs of
// `run` consecutive tokens at random places (run 1: a uniformly random set),
// each stream's in ascending order, destination pages dst_pages_per_stream a
// stream from the pool's spare pages. Compact and its gather floor move the same plan.
struct FreshCompaction {
  int32_t streams, kept, dst_pages_per_stream;
  BenchPool pool;
  std::vector<int32_t> dst_pages, keep, keep_indptr{0};

  FreshCompaction(int32_t batch, int32_t len, int32_t kept_per_stream, int32_t run)
      : streams(batch * kKVHeads),
        kept(kept_per_stream),
        dst_pages_per_stream(static_cast<int32_t>(PagesFor(kept_per_stream, kPageSize))),
        pool(std::vector<int32_t>(static_cast<size_t>(streams), len),
             streams * dst_pages_per_stream),
        dst_pages(pool.SparePages()) {
    std::mt19937_64 rng(7);
    std::vector<int32_t> runs(static_cast<size_t>(len / run));
    for (int32_t s = 0; s < streams; ++s) {
      for (size_t i = 0; i < runs.size(); ++i) runs[i] = static_cast<int32_t>(i) * run;
      std::shuffle(runs.begin(), runs.end(), rng);
      std::sort(runs.begin(), runs.begin() + kept / run);
      for (int32_t i = 0; i < kept / run; ++i) {
        for (int32_t j = 0; j < run; ++j) keep.push_back(runs[static_cast<size_t>(i)] + j);
      }
      keep_indptr.push_back(static_cast<int32_t>(keep.size()));
    }
  }

  // K and V rows of every survivor, read once and written once.
  double moved_bytes() const {
    return static_cast<double>(streams) * kept * 2 * kHeadDim * SizeOf(kDType);
  }
};

void RunCompact(benchmark::State& state, int32_t kept, int32_t run) {
  FreshCompaction plan(static_cast<int32_t>(state.range(0)), static_cast<int32_t>(state.range(1)),
                       kept, run);
  BenchPool& pool = plan.pool;
  const int32_t streams = plan.streams;
  std::vector<int32_t> dst_indptr{0};
  for (int32_t s = 0; s < streams; ++s) {
    dst_indptr.push_back(dst_indptr.back() + plan.dst_pages_per_stream);
  }
  DeviceBuffer d_dst_indptr(dst_indptr), d_dst_pages(plan.dst_pages),
      d_keep_indptr(plan.keep_indptr), d_keep(plan.keep),
      d_in_place(std::vector<uint8_t>(static_cast<size_t>(streams), 0));
  CompactArgs args;
  args.cache = pool.view;
  args.num_rows = streams;
  args.src_indptr = pool.indptr.get<int32_t>();
  args.src_page_ids = pool.page_ids.get<int32_t>();
  args.num_src_page_ids = static_cast<int32_t>(pool.host_page_ids.size());
  args.src_lens = pool.lens.get<int32_t>();
  args.dst_indptr = d_dst_indptr.get<int32_t>();
  args.dst_page_ids = d_dst_pages.get<int32_t>();
  args.num_dst_page_ids = static_cast<int32_t>(plan.dst_pages.size());
  args.keep_indptr = d_keep_indptr.get<int32_t>();
  args.keep = d_keep.get<int32_t>();
  args.num_keep = static_cast<int32_t>(plan.keep.size());
  args.in_place = d_in_place.get<uint8_t>();
  TimeWithEvents(state, [&] {
    if (!gpu::Compact(args, nullptr).ok()) state.SkipWithError("gpu::Compact failed");
  });
  SetBytesPerSecond(state, "read_write_Bps", 2.0 * plan.moved_bytes());
}

// The figure: a uniformly random 20%, the hardest pattern (every
// survivor a lone 256-byte K row and V row somewhere in a shuffled pool).
void BM_CompactTo20Percent(benchmark::State& state) {
  RunCompact(state, static_cast<int32_t>(state.range(1)) / 5, 1);
}
// Pooled SnapKV keeps runs of neighbours: 20% in runs of 8 tokens.
void BM_CompactTo20PercentRuns8(benchmark::State& state) {
  RunCompact(state, static_cast<int32_t>(state.range(1)) / 5 / 8 * 8, 8);
}
// Everything kept: a page-by-page copy, the kernel's streaming ceiling.
void BM_CompactAll(benchmark::State& state) {
  RunCompact(state, static_cast<int32_t>(state.range(1)), 1);
}
BENCHMARK(BM_CompactTo20PercentRuns8)
    ->ArgNames({"batch", "len"})
    ->Args({8, 32768})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CompactAll)
    ->ArgNames({"batch", "len"})
    ->Args({8, 32768})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CompactTo20Percent)
    ->Apply(BatchLengthShapes)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// Compact's floor: BM_CompactTo20Percent's survivors (the same keep sets,
// pool and fresh pages) moved by a bare gather, sources and destinations
// computed on the host, a warp per token a step. layout 0 places a token's rows
// as the pool does (K rows, then V rows half a page later); layout 1 as a
// token-major page would (V right after K: 512 contiguous bytes a token), the
// same bytes of the same pages. Their ratio says what moving K and V together
// would give Compact; against BM_CopyBandwidth, how near the target a gather gets.
void BM_GatherFloor(benchmark::State& state) {
  const int32_t len = static_cast<int32_t>(state.range(1));
  const bool token_major = state.range(2) != 0;
  FreshCompaction plan(static_cast<int32_t>(state.range(0)), len, len / 5, 1);
  // In 16-byte vectors: a row, a page (K rows and V rows), and a token's first
  // vector within its page in either layout.
  const int32_t row = kHeadDim * static_cast<int32_t>(SizeOf(kDType)) / 16;
  const int64_t page = int64_t{2} * kPageSize * row;
  const int64_t value_offset = token_major ? row : int64_t{kPageSize} * row;
  const int64_t token_stride = token_major ? 2 * row : row;
  std::vector<int64_t> src, dst;
  for (int32_t s = 0; s < plan.streams; ++s) {
    const int32_t* pages =
        plan.pool.host_page_ids.data() + plan.pool.host_indptr[static_cast<size_t>(s)];
    for (int32_t j = 0; j < plan.kept; ++j) {
      const int32_t k =
          plan.keep[static_cast<size_t>(plan.keep_indptr[static_cast<size_t>(s)] + j)];
      const int32_t to =
          plan.dst_pages[static_cast<size_t>(s * plan.dst_pages_per_stream + j / kPageSize)];
      src.push_back(pages[k / kPageSize] * page + (k % kPageSize) * token_stride);
      dst.push_back(to * page + (j % kPageSize) * token_stride);
    }
  }
  DeviceBuffer d_src(src), d_dst(dst);
  TimeWithEvents(state, [&] {
    if (GatherTokens(plan.pool.data.get(), d_src.get<int64_t>(), d_dst.get<int64_t>(),
                     static_cast<int64_t>(src.size()), row, value_offset, nullptr) != cudaSuccess) {
      state.SkipWithError("GatherTokens failed");
    }
  });
  SetBytesPerSecond(state, "read_write_Bps", 2.0 * plan.moved_bytes());
}
BENCHMARK(BM_GatherFloor)
    ->ArgNames({"batch", "len", "token_major"})
    ->ArgsProduct({{8}, {32768}, {0, 1}})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// One decode step of one layer: batch tokens, each to its own slot per KV head.
void BM_WriteKVDecodeStep(benchmark::State& state) {
  const int32_t batch = static_cast<int32_t>(state.range(0));
  BenchPool pool(std::vector<int32_t>(static_cast<size_t>(batch) * kKVHeads, kPageSize - 1), 0);
  std::vector<int32_t> slots, positions(static_cast<size_t>(batch), 100);
  for (int32_t s = 0; s < batch * kKVHeads; ++s) {
    slots.push_back(static_cast<int32_t>(
        SlotOf(pool.host_page_ids.data() + pool.host_indptr[s], kPageSize - 1, kPageSize)));
  }
  const size_t row_elements = static_cast<size_t>(batch) * kKVHeads * kHeadDim;
  DeviceBuffer keys(row_elements * SizeOf(kDType)), values(row_elements * SizeOf(kDType)),
      d_slots(slots), d_positions(positions);
  WriteKVArgs args;
  args.cache = pool.view;
  args.num_tokens = batch;
  args.num_kv_heads = kKVHeads;
  args.keys = keys.get();
  args.values = values.get();
  args.slot_mapping = d_slots.get<int32_t>();
  args.slot_stride = kKVHeads;
  args.positions = d_positions.get<int32_t>();
  TimeWithEvents(state, [&] {
    if (!gpu::WriteKV(args, nullptr).ok()) state.SkipWithError("gpu::WriteKV failed");
  });
  SetBytesPerSecond(state, "read_write_Bps", 2.0 * 2 * row_elements * SizeOf(kDType));
}
BENCHMARK(BM_WriteKVDecodeStep)
    ->ArgName("batch")
    ->Arg(1)
    ->Arg(32)
    ->Arg(256)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// Copy-on-write of `copies` pages (a beam search forking many tails at once).
void BM_CopyPages(benchmark::State& state) {
  const int32_t copies = static_cast<int32_t>(state.range(0));
  BenchPool pool(std::vector<int32_t>(static_cast<size_t>(copies), kPageSize), copies);
  // Every stream's page to a spare one, both in ascending id order.
  std::vector<int32_t> src = pool.host_page_ids;
  std::sort(src.begin(), src.end());
  const std::vector<int32_t> dst = pool.SparePages();
  DeviceBuffer d_src(src), d_dst(dst);
  const CopyPagesArgs args{pool.view, copies, d_src.get<int32_t>(), d_dst.get<int32_t>()};
  TimeWithEvents(state, [&] {
    if (!gpu::CopyPages(args, nullptr).ok()) state.SkipWithError("gpu::CopyPages failed");
  });
  SetBytesPerSecond(state, "read_write_Bps",
                    2.0 * copies * 2 * kPageSize * kHeadDim * SizeOf(kDType));
}
BENCHMARK(BM_CopyPages)
    ->ArgName("copies")
    ->Arg(64)
    ->Arg(4096)
    ->Arg(65536)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace headpage::bench
