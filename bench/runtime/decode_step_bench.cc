// SPDX-License-Identifier: Apache-2.0
// One decode step of every layer's attention for a batch (Llama-3-8B geometry:
// 32 layers, 8 KV heads, 32 q heads, head_dim 128, bf16, page 16): WriteKV of
// the new token and DecodeAttention over the device-resident block tables,
// launched eagerly (2 launches a layer) against the same step replayed from a
// CUDA graph (1 launch). Both read the same device tables, refreshed before the
// timed part with one upload (DeviceBlockTables), and the same slot mapping,
// uploaded into a fixed buffer. CUDA-event time of the kernels' part only.
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "allocator/arena.h"
#include "allocator/page_pool.h"
#include "blockmgr/block_manager.h"
#include "kernels/decode_attention.h"
#include "kernels/write_kv.h"
#include "runtime/device_block_tables.h"
#include "bench/device_fill.h"
#include "tests/kernels/device_buffer.h"

namespace headpage::bench {
namespace {

using testing::DeviceBuffer;

constexpr int32_t kLayers = 32, kKVHeads = 8, kQHeads = 32, kHeadDim = 128, kPageSize = 16;

class DecodeStep {
 public:
  DecodeStep(int32_t batch, int32_t context) : batch_(batch) {
    CacheGeometry g;
    g.num_layers = kLayers;
    g.num_kv_heads = kKVHeads;
    g.num_q_heads = kQHeads;
    g.head_dim = kHeadDim;
    g.dtype = DType::kBF16;
    g.page_size = kPageSize;
    // Room for the context, a few hundred steps, and the tables' headroom.
    const int64_t pages = int64_t{batch} * kLayers * kKVHeads * (PagesFor(context, kPageSize) + 16);
    pool_ = std::make_unique<PagePool>(PagePool::Create({pages, 0.0}).value());
    manager_ = std::make_unique<BlockManager>(BlockManager::Create(g, pool_.get()).value());
    arena_ = std::make_unique<CudaArena>(CudaArena::Create(g, pages).value());
    HEADPAGE_CUDA_OK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    for (int32_t b = 0; b < batch; ++b) {
      seqs_.push_back(manager_->AddSequence());
      (void)manager_->Reserve(seqs_.back(), context).value();
    }
    tables_ = DeviceBlockTables::Create(manager_.get(), seqs_, 8, stream_).value();
    // Random bf16 everywhere: the pool (doubling copies), the queries, the new K/V.
    FillRandomBf16(arena_->view().data, arena_->kv_bytes(), 11);
    const size_t q_bytes = size_t{kLayers} * batch * kQHeads * kHeadDim * 2;
    const size_t kv_bytes = size_t{kLayers} * batch * kKVHeads * kHeadDim * 2;
    q_ = DeviceBuffer(q_bytes);
    out_ = DeviceBuffer(q_bytes);
    k_ = DeviceBuffer(kv_bytes);
    v_ = DeviceBuffer(kv_bytes);
    FillRandomBf16(q_.get(), q_bytes, 11);
    FillRandomBf16(k_.get(), kv_bytes, 11);
    FillRandomBf16(v_.get(), kv_bytes, 11);
    slots_ = DeviceBuffer(sizeof(int32_t) * batch * kLayers * kKVHeads);
    positions_ = DeviceBuffer(sizeof(int32_t) * batch);
    int sms = 0, device = 0;
    HEADPAGE_CUDA_OK(cudaGetDevice(&device));
    HEADPAGE_CUDA_OK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    splits_ = DecodeAttentionSplits(context + 512, batch * kKVHeads, sms,
                                    DecodeAttentionResidentBlocks(arena_->view()));
    ws_bytes_ = DecodeAttentionWorkspaceBytes(batch, kQHeads, kHeadDim, splits_);
    workspace_ = DeviceBuffer(ws_bytes_ > 0 ? ws_bytes_ : 16);
  }
  ~DecodeStep() {
    if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
    if (graph_ != nullptr) cudaGraphDestroy(graph_);
    cudaStreamDestroy(stream_);
  }

  // The host's part of a step: one token for every sequence, its slots and
  // positions uploaded into the fixed buffers, the device tables refreshed.
  void Prepare() {
    std::vector<int32_t> slots(static_cast<size_t>(batch_) * kLayers * kKVHeads), positions(batch_);
    for (int32_t b = 0; b < batch_; ++b) {
      const ReservePlan plan = manager_->Reserve(seqs_[b], 1).value();
      // [token][layer][kv_head] for one token; WriteKV of layer l reads token b's
      // row at b * (layers * heads) + l * heads.
      std::copy(plan.slot_mapping.begin(), plan.slot_mapping.end(),
                slots.begin() + static_cast<size_t>(b) * kLayers * kKVHeads);
      positions[b] = static_cast<int32_t>(plan.first_position);
    }
    HEADPAGE_CUDA_OK(cudaMemcpyAsync(slots_.get(), slots.data(), sizeof(int32_t) * slots.size(),
                                     cudaMemcpyHostToDevice, stream_));
    HEADPAGE_CUDA_OK(cudaMemcpyAsync(positions_.get(), positions.data(), sizeof(int32_t) * batch_,
                                     cudaMemcpyHostToDevice, stream_));
    if (!tables_->Refresh().ok()) std::abort();
    HEADPAGE_CUDA_OK(cudaStreamSynchronize(stream_));
  }

  // WriteKV and DecodeAttention for every layer, on the stream.
  void Launch() {
    for (int32_t l = 0; l < kLayers; ++l) {
      const size_t kv_at = static_cast<size_t>(l) * batch_ * kKVHeads * kHeadDim * 2;
      WriteKVArgs w{arena_->view(), batch_, kKVHeads, k_.get<char>() + kv_at, v_.get<char>() + kv_at,
                    slots_.get<int32_t>() + l * kKVHeads, kLayers * kKVHeads,
                    positions_.get<int32_t>()};
      if (!gpu::WriteKV(w, stream_).ok()) std::abort();
      const DeviceBlockTables::Layer t = tables_->layer(l);
      const size_t q_at = static_cast<size_t>(l) * batch_ * kQHeads * kHeadDim * 2;
      DecodeAttentionArgs a;
      a.cache = arena_->view();
      a.num_seqs = batch_;
      a.num_q_heads = kQHeads;
      a.num_kv_heads = kKVHeads;
      a.q = q_.get<char>() + q_at;
      a.indptr = t.indptr;
      a.page_ids = t.page_ids;
      a.num_page_ids = static_cast<int32_t>(t.num_page_entries);
      a.lens = t.lens;
      a.sm_scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
      a.out = out_.get<char>() + q_at;
      a.num_splits = splits_;
      a.workspace = workspace_.get();
      a.workspace_bytes = ws_bytes_;
      if (!gpu::DecodeAttention(a, stream_).ok()) std::abort();
    }
  }

  // Captures Launch() when the tables moved since the last capture.
  void CaptureIfNeeded() {
    if (exec_ != nullptr && captured_ == tables_->generation()) return;
    if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
    if (graph_ != nullptr) cudaGraphDestroy(graph_);
    HEADPAGE_CUDA_OK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    Launch();
    HEADPAGE_CUDA_OK(cudaStreamEndCapture(stream_, &graph_));
    HEADPAGE_CUDA_OK(cudaGraphInstantiate(&exec_, graph_, 0));
    captured_ = tables_->generation();
  }
  void Replay() { HEADPAGE_CUDA_OK(cudaGraphLaunch(exec_, stream_)); }
  cudaStream_t stream() const { return stream_; }
  int64_t last_upload_bytes() const { return tables_->last_upload_bytes(); }

 private:
  int32_t batch_;
  std::unique_ptr<PagePool> pool_;
  std::unique_ptr<BlockManager> manager_;
  std::unique_ptr<CudaArena> arena_;
  cudaStream_t stream_ = nullptr;
  std::vector<SeqId> seqs_;
  std::unique_ptr<DeviceBlockTables> tables_;
  DeviceBuffer q_, out_, k_, v_, slots_, positions_, workspace_;
  int32_t splits_ = 1;
  size_t ws_bytes_ = 0;
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
  uint64_t captured_ = ~uint64_t{0};
};

void BM_DecodeStep(benchmark::State& state) {
  const bool graph = state.range(2) != 0;
  DecodeStep step(static_cast<int32_t>(state.range(0)), static_cast<int32_t>(state.range(1)));
  state.SetLabel(graph ? "graph" : "eager");
  cudaEvent_t start, stop;
  HEADPAGE_CUDA_OK(cudaEventCreate(&start));
  HEADPAGE_CUDA_OK(cudaEventCreate(&stop));
  int64_t upload = 0;
  for (auto _ : state) {
    state.PauseTiming();
    step.Prepare();
    if (graph) step.CaptureIfNeeded();
    upload = step.last_upload_bytes();
    state.ResumeTiming();
    HEADPAGE_CUDA_OK(cudaEventRecord(start, step.stream()));
    if (graph) {
      step.Replay();
    } else {
      step.Launch();
    }
    HEADPAGE_CUDA_OK(cudaEventRecord(stop, step.stream()));
    HEADPAGE_CUDA_OK(cudaEventSynchronize(stop));
    float ms = 0;
    HEADPAGE_CUDA_OK(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(ms / 1e3);
  }
  state.counters["table_upload_bytes"] = static_cast<double>(upload);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}
// 64 x 4K (the shape), and 64 x 256, where launches rather than K/V
// reads bound the step.
BENCHMARK(BM_DecodeStep)
    ->ArgNames({"batch", "context", "graph"})
    ->Args({64, 4096, 0})
    ->Args({64, 4096, 1})
    ->Args({64, 256, 0})
    ->Args({64, 256, 1})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->Iterations(50);

}  // namespace
}  // namespace headpage::bench

BENCHMARK_MAIN();
