// SPDX-License-Identifier: Apache-2.0
// FlashInfer's paged decode beside headpage's DecodeAttention in one run (issue
// #18), on decode_attention_bench.cc's shapes and counters: full caches
// (batch x kKVHeads streams of len tokens) and the head-wise 20% cache (stream
// lengths averaging 20% of len, 5x apart: the same SkewedLengths call and seed).
//
//   BM_HeadpageDecode[Headwise20]  gpu::DecodeAttention as decode_attention_bench.cc
//                                  runs it: the baseline, measured in this run
//   BM_FlashInferHeadwise[20]      FlashInfer reading headpage's pool in place: one
//                                  request per stream (one KV head, its 4 query
//                                  heads), the stream's own block table
//   BM_FlashInferDenseNHD / HND    full caches only: FlashInfer's native cache, as
//                                  a vLLM-style engine keeps it, one request per
//                                  sequence with all 8 KV heads in every page,
//                                  shuffled pages, in either page layout (NHD is
//                                  its wrappers' default)
//   BM_FlashInferTensorCore...     the same caches (Headwise[20], DenseNHD / HND)
//                                  through the wrapper's use_tensor_cores=True
//                                  path: FlashInfer's FA2 prefill kernel with one
//                                  query row per request, the kernel its backend
//                                  "auto" runs for bf16 on an H200
//
// FlashInfer runs as its BatchDecodeWithPagedKVCacheWrapper would
// (flashinfer_decode.h), without or with tensor cores: plan() once before the
// timing, as an engine plans once per step for all its layers, then run()
// timed. Before timing, each FlashInfer case checks its output against
// DecodeAttention's on the same queries and K/V (max_abs_diff_vs_headpage;
// over 2e-2 skips the case). kv_read_Bps counts the
// K/V bytes of every stream's tokens in all of them, as decode_attention_bench.cc
// does: the same bytes, so the rates compare as times do.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/kernels/decode_bench_util.h"
#include "bench/kernels/flashinfer_decode.h"
#include "bench/kernels/gpu_bench_util.h"

namespace headpage::bench {
namespace {

static_assert(kHeadDim == kFlashInferHeadDim && kDType == DType::kBF16,
              "flashinfer_decode.cu instantiates bf16, head_dim 128");

constexpr int32_t kGroup = kQHeads / kKVHeads;  // query heads per KV head
constexpr double kTolerance = 2e-2;

std::vector<int32_t> FullLengths(int32_t batch, int32_t len) {
  return std::vector<int32_t>(static_cast<size_t>(batch) * kKVHeads, len);
}

// decode_attention_bench.cc's BM_DecodeAttentionHeadwise20 lengths.
std::vector<int32_t> Headwise20Lengths(int32_t batch, int32_t len) {
  return SkewedLengths(batch * kKVHeads, len, 0.2, 5.0, 11);
}

// gpu::DecodeAttention as decode_attention_bench.cc's RunDecode times it (the
// split heuristic's count, the tables trusted).
void RunHeadpage(benchmark::State& state, int32_t batch, const std::vector<int32_t>& lens) {
  BenchPool pool(lens);
  DecodeAttentionCall decode(pool, batch);
  TimeDecodeAttention(state, pool, decode);
}

// Each request's last page holds len - (pages - 1) * page_size tokens.
std::vector<int32_t> LastPageLengths(const std::vector<int32_t>& lens) {
  std::vector<int32_t> last(lens.size());
  for (size_t i = 0; i < lens.size(); ++i) {
    last[i] = lens[i] - static_cast<int32_t>(PagesFor(lens[i], kPageSize) - 1) * kPageSize;
  }
  return last;
}

// FlashInfer's cache and tables for one case; `problem` points into the rest.
struct FlashInferInputs {
  DeviceBuffer pages, source_pages, indptr, indices, last_page_len;
  FlashInferDecodeProblem problem;
};

// headpage's pool as FlashInfer sees it, zero copy. Streams are seq-major and
// kv-head-minor, so request s * kKVHeads + h is KV head h of sequence s, and
// headpage's [batch][kQHeads][head_dim] queries and outputs are FlashInfer's
// [batch * kKVHeads][kGroup][head_dim]. A head-wise page is [2][page_size]
// [head_dim]: a one-head HND page whose V starts page_size rows after its K.
void HeadwiseInputs(const BenchPool& pool, FlashInferInputs& in) {
  in.last_page_len = DeviceBuffer(LastPageLengths(pool.host_lens));
  FlashInferDecodeProblem& p = in.problem;
  p.batch_size = static_cast<int32_t>(pool.host_lens.size());
  p.num_qo_heads = kGroup;
  p.num_kv_heads = 1;
  p.page_size = kPageSize;
  p.layout = FlashInferKvLayout::kHND;
  const int64_t page_rows = int64_t{kPageSize} * kHeadDim;
  p.k_data = pool.data.get();
  p.v_data = pool.data.get<uint16_t>() + page_rows;
  p.stride_page = pool.view.page_elements();
  p.stride_h = page_rows;
  p.stride_n = kHeadDim;
  p.host_indptr = pool.host_indptr;
  p.indptr = pool.indptr.get<int32_t>();
  p.indices = pool.page_ids.get<int32_t>();
  p.last_page_len = in.last_page_len.get<int32_t>();
  p.q_stride_n = int64_t{kGroup} * kHeadDim;
  p.q_stride_h = kHeadDim;
}

// FlashInfer's native cache holding the pool's tokens: one request per
// sequence, every page [2][...] with all kKVHeads heads, page ids shuffled as
// BenchPool shuffles its own. REQUIRES: a sequence's streams are equally long.
FlashInferResult DenseInputs(const BenchPool& pool, int32_t batch, FlashInferKvLayout layout,
                             FlashInferInputs& in) {
  std::vector<int32_t> seq_lens(static_cast<size_t>(batch)), host_indptr{0};
  for (int32_t s = 0; s < batch; ++s) {
    seq_lens[s] = pool.host_lens[static_cast<size_t>(s) * kKVHeads];
    host_indptr.push_back(host_indptr.back() +
                          static_cast<int32_t>(PagesFor(seq_lens[s], kPageSize)));
  }
  const int32_t num_pages = host_indptr.back();
  std::vector<int32_t> ids(static_cast<size_t>(num_pages));
  std::iota(ids.begin(), ids.end(), 0);
  std::mt19937_64 rng(1);
  std::shuffle(ids.begin(), ids.end(), rng);
  // Head h of dense page ids[i] (logical page p of sequence s) is page p of
  // stream s * kKVHeads + h.
  std::vector<int32_t> source(static_cast<size_t>(num_pages) * kKVHeads, -1);
  for (int32_t s = 0; s < batch; ++s) {
    for (int32_t p = 0; p < host_indptr[s + 1] - host_indptr[s]; ++p) {
      for (int32_t h = 0; h < kKVHeads; ++h) {
        const int32_t stream = s * kKVHeads + h;
        source[static_cast<size_t>(ids[host_indptr[s] + p]) * kKVHeads + h] =
            pool.host_page_ids[pool.host_indptr[stream] + p];
      }
    }
  }
  const int64_t page_elements = int64_t{2} * kKVHeads * kPageSize * kHeadDim;
  in.pages = DeviceBuffer(static_cast<size_t>(num_pages * page_elements) * SizeOf(kDType));
  in.source_pages = DeviceBuffer(source);
  FlashInferResult filled =
      FillFlashInferPages(pool.data.get(), in.source_pages.get<int32_t>(), num_pages, kKVHeads,
                          kPageSize, layout, in.pages.get(), nullptr);
  if (!filled.ok()) return filled;
  in.indptr = DeviceBuffer(host_indptr);
  in.indices = DeviceBuffer(ids);
  in.last_page_len = DeviceBuffer(LastPageLengths(seq_lens));

  FlashInferDecodeProblem& p = in.problem;
  p.batch_size = batch;
  p.num_qo_heads = kQHeads;
  p.num_kv_heads = kKVHeads;
  p.page_size = kPageSize;
  p.layout = layout;
  p.k_data = in.pages.get();
  p.v_data = in.pages.get<uint16_t>() + page_elements / 2;
  p.stride_page = page_elements;
  const bool hnd = layout == FlashInferKvLayout::kHND;
  p.stride_h = hnd ? int64_t{kPageSize} * kHeadDim : kHeadDim;
  p.stride_n = hnd ? kHeadDim : int64_t{kKVHeads} * kHeadDim;
  p.host_indptr = host_indptr;
  p.indptr = in.indptr.get<int32_t>();
  p.indices = in.indices.get<int32_t>();
  p.last_page_len = in.last_page_len.get<int32_t>();
  p.q_stride_n = int64_t{kQHeads} * kHeadDim;
  p.q_stride_h = kHeadDim;
  return {};
}

// The largest |a - b| over two outputs, as floats; infinity where either is
// not finite (a poisoned, unwritten element is a NaN).
double MaxAbsDiff(const DeviceBuffer& a, const DeviceBuffer& b) {
  const std::vector<uint8_t> host_a = a.Download<uint8_t>(), host_b = b.Download<uint8_t>();
  double worst = 0.0;
  for (size_t i = 0; i < host_a.size() / SizeOf(kDType); ++i) {
    const double x = LoadAsFloat(host_a.data(), i, kDType),
                 y = LoadAsFloat(host_b.data(), i, kDType);
    const double diff = std::abs(x - y);
    if (!std::isfinite(diff)) return std::numeric_limits<double>::infinity();
    worst = std::max(worst, diff);
  }
  return worst;
}

enum class Cache { kHeadwise, kDenseNHD, kDenseHND };

// FlashInfer's decoder: BatchDecodeWithPagedKVCacheWrapper's use_tensor_cores.
enum class Cores { kCuda, kTensor };

// What the decoder's plan chose. blocks: per KV head, the requests, or the
// (request, KV chunk) pairs when split; on tensor cores (request, query tile,
// KV chunk) triples, with cta_tile_q packed (row, head) pairs per query tile.
void SetPlanCounters(benchmark::State& state, const FlashInferDecoder& decoder, Cores cores) {
  state.counters["split_kv"] = decoder.split_kv() ? 1 : 0;
  state.counters["blocks"] = static_cast<double>(decoder.padded_batch_size());
  if (cores == Cores::kTensor) {
    state.counters["cta_tile_q"] = static_cast<double>(decoder.cta_tile_q());
  }
}

void RunFlashInfer(benchmark::State& state, int32_t batch, const std::vector<int32_t>& lens,
                   Cores cores, Cache cache) {
  BenchPool pool(lens);
  DecodeAttentionCall reference(pool, batch);
  if (!reference.Run().ok()) {
    state.SkipWithError("gpu::DecodeAttention (the reference) failed");
    return;
  }
  DeviceBuffer out(reference.out.bytes());
  out.Poison();
  FlashInferInputs in;
  if (cache == Cache::kHeadwise) {
    HeadwiseInputs(pool, in);
  } else {
    const FlashInferResult built = DenseInputs(
        pool, batch,
        cache == Cache::kDenseHND ? FlashInferKvLayout::kHND : FlashInferKvLayout::kNHD, in);
    if (!built.ok()) {
      state.SkipWithError(built.message.c_str());
      return;
    }
  }
  in.problem.q = reference.q.get();
  in.problem.o = out.get();
  in.problem.sm_scale = 1.0 / std::sqrt(static_cast<double>(kHeadDim));

  const std::unique_ptr<FlashInferDecoder> decoder =
      cores == Cores::kTensor ? MakeFlashInferTensorCoreDecoder() : MakeFlashInferCudaCoreDecoder();
  FlashInferResult result = decoder->Plan(in.problem, nullptr);
  if (result.ok()) result = decoder->Run(nullptr);
  if (!result.ok()) {
    state.SkipWithError(result.message.c_str());
    return;
  }
  HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
  const double diff = MaxAbsDiff(reference.out, out);
  state.counters["max_abs_diff_vs_headpage"] = diff;
  if (!(diff <= kTolerance)) {
    const std::string message = "FlashInfer's output differs from DecodeAttention's by " +
                                std::to_string(diff) + " (tolerance " + std::to_string(kTolerance) +
                                ")";
    state.SkipWithError(message.c_str());
    return;
  }
  TimeWithEvents(state, [&] {
    result = decoder->Run(nullptr);
    if (!result.ok()) state.SkipWithError(result.message.c_str());
  });
  SetKvCounters(state, pool);
  SetPlanCounters(state, *decoder, cores);
}

using StreamLengths = std::vector<int32_t> (*)(int32_t batch, int32_t len);

// Registers `name` on every batch x len shape, timed with CUDA events, as
// BENCHMARK(name)->Apply(BatchLengthShapes)->UseManualTime() would: `run` gets
// the batch and the stream lengths `lengths` makes for it.
template <typename Run>
void Register(const char* name, StreamLengths lengths, Run run) {
  benchmark::RegisterBenchmark(name,
                               [lengths, run](benchmark::State& state) {
                                 const auto batch = static_cast<int32_t>(state.range(0));
                                 const auto len = static_cast<int32_t>(state.range(1));
                                 run(state, batch, lengths(batch, len));
                               })
      ->Apply(BatchLengthShapes)
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond);
}

// RunFlashInfer on `cores` over `cache`, as a Register run.
auto FlashInfer(Cores cores, Cache cache) {
  return [cores, cache](benchmark::State& state, int32_t batch, const std::vector<int32_t>& lens) {
    RunFlashInfer(state, batch, lens, cores, cache);
  };
}

// At start-up, before benchmark_main runs them, in this order.
[[maybe_unused]] const bool kRegistered = [] {
  // Full caches.
  Register("BM_HeadpageDecode", FullLengths, RunHeadpage);
  Register("BM_FlashInferHeadwise", FullLengths, FlashInfer(Cores::kCuda, Cache::kHeadwise));
  Register("BM_FlashInferDenseNHD", FullLengths, FlashInfer(Cores::kCuda, Cache::kDenseNHD));
  Register("BM_FlashInferDenseHND", FullLengths, FlashInfer(Cores::kCuda, Cache::kDenseHND));
  Register("BM_FlashInferTensorCoreHeadwise", FullLengths,
           FlashInfer(Cores::kTensor, Cache::kHeadwise));
  Register("BM_FlashInferTensorCoreDenseNHD", FullLengths,
           FlashInfer(Cores::kTensor, Cache::kDenseNHD));
  Register("BM_FlashInferTensorCoreDenseHND", FullLengths,
           FlashInfer(Cores::kTensor, Cache::kDenseHND));
  // Head-wise 20% (a dense cache cannot hold streams of their own lengths).
  Register("BM_HeadpageDecodeHeadwise20", Headwise20Lengths, RunHeadpage);
  Register("BM_FlashInferHeadwise20", Headwise20Lengths,
           FlashInfer(Cores::kCuda, Cache::kHeadwise));
  Register("BM_FlashInferTensorCoreHeadwise20", Headwise20Lengths,
           FlashInfer(Cores::kTensor, Cache::kHeadwise));
  return true;
}();

}  // namespace
}  // namespace headpage::bench
