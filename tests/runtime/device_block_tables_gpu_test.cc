// SPDX-License-Identifier: Apache-2.0
// DeviceBlockTables against the block manager (ctest label `gpu`): after every
// decode step and every eviction, each layer's device table describes exactly
// the streams the manager holds; append-only steps upload only pairs; and a
// CUDA graph that captured DecodeAttention for every layer over the device
// tables, replayed after later steps, gives what eager launches give.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "allocator/arena.h"
#include "kernels/decode_attention.h"
#include "kernels/write_kv.h"
#include "runtime/device_block_tables.h"
#include "tests/blockmgr/blockmgr_test_util.h"
#include "tests/kernels/device_buffer.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::DeviceBuffer;

CacheGeometry Geometry() {
  CacheGeometry g;
  g.num_layers = 3;
  g.num_kv_heads = 2;
  g.num_q_heads = 8;
  g.head_dim = 128;
  g.dtype = DType::kBF16;
  g.page_size = 16;
  return g;
}

template <typename T>
std::vector<T> Download(const T* data, size_t n) {
  std::vector<T> out(n);
  HEADPAGE_CUDA_OK(cudaMemcpy(out.data(), data, sizeof(T) * n, cudaMemcpyDeviceToHost));
  return out;
}

// Every row of every layer's device table holds the stream's length and, in
// its first pages, the stream's block table.
void ExpectTablesMatch(const BlockManager& manager, const std::vector<SeqId>& seqs,
                       const DeviceBlockTables& tables) {
  HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
  const CacheGeometry& g = manager.geometry();
  for (int32_t l = 0; l < g.num_layers; ++l) {
    const DeviceBlockTables::Layer layer = tables.layer(l);
    REQUIRE(layer.num_rows == static_cast<int32_t>(seqs.size()) * g.num_kv_heads);
    const std::vector<int32_t> indptr = Download(layer.indptr, layer.num_rows + 1);
    const std::vector<int32_t> lens = Download(layer.lens, layer.num_rows);
    const std::vector<int32_t> pages = Download(layer.page_ids, indptr.back());
    for (size_t i = 0; i < seqs.size(); ++i) {
      auto held = manager.StreamLengths(seqs[i]);
      REQUIRE_OK(held);
      for (int32_t h = 0; h < g.num_kv_heads; ++h) {
        const int32_t r = static_cast<int32_t>(i) * g.num_kv_heads + h;
        CAPTURE(l, i, h);
        REQUIRE(lens[r] == static_cast<int32_t>((*held)[l * g.num_kv_heads + h]));
        auto stream_pages = manager.StreamPages(seqs[i], l, h);
        REQUIRE_OK(stream_pages);
        REQUIRE(indptr[r + 1] - indptr[r] >= static_cast<int32_t>(stream_pages->size()));
        for (size_t p = 0; p < stream_pages->size(); ++p) {
          REQUIRE(pages[indptr[r] + p] == static_cast<int32_t>((*stream_pages)[p]));
        }
      }
    }
  }
}

TEST_CASE("DeviceBlockTables follow decode steps and evictions with small uploads",
          "[runtime][gpu]") {
  const CacheGeometry g = Geometry();
  testing::Fixture f(20000, g);
  BlockManager& manager = *f.manager;
  std::vector<SeqId> seqs;
  for (const int32_t len : {1, 15, 16, 17, 100, 700}) {
    seqs.push_back(manager.AddSequence());
    REQUIRE_OK(manager.Reserve(seqs.back(), len));
  }
  auto created = DeviceBlockTables::Create(&manager, seqs, 2, nullptr);
  REQUIRE_OK(created);
  DeviceBlockTables& tables = **created;
  ExpectTablesMatch(manager, seqs, tables);
  const uint64_t first_generation = tables.generation();
  const int64_t rows = static_cast<int64_t>(seqs.size()) * g.num_kv_heads;
  std::mt19937 rng(3);
  CompactionPlan plan;
  for (int32_t step = 0; step < 120; ++step) {
    CAPTURE(step);
    for (const SeqId seq : seqs) REQUIRE_OK(manager.Reserve(seq, 1));
    if (step % 40 == 39) {
      // An eviction: every stream of a sequence's layer 1 to a random count.
      const SeqId seq = seqs[rng() % seqs.size()];
      auto lens = manager.StreamLengths(seq);
      REQUIRE_OK(lens);
      std::vector<int32_t> kept;
      for (int32_t h = 0; h < g.num_kv_heads; ++h) {
        kept.push_back(static_cast<int32_t>(rng() % ((*lens)[g.num_kv_heads + h] + 1)));
      }
      plan.Clear();
      REQUIRE_OK(manager.Evict(seq, 1, kept, &plan));
      manager.ReleaseRetiredPages();
    }
    REQUIRE_OK(tables.Refresh());
    ExpectTablesMatch(manager, seqs, tables);
    if (!tables.last_refresh_rebuilt()) {
      // Append-only: every length plus at most one new page a stream, as pairs.
      REQUIRE(tables.last_upload_bytes() <= 8 * 2 * rows * g.num_layers);
    }
  }
  // Two pages of headroom did not hold 120 steps, yet the arrays kept their
  // place (rebuilds fit the capacity) or moved with a new generation.
  REQUIRE(tables.generation() >= first_generation);
  REQUIRE_OK(manager.CheckInvariants());
}

TEST_CASE("DeviceBlockTables move to another batch in place and read as padded tables",
          "[runtime][gpu]") {
  const CacheGeometry g = Geometry();
  testing::Fixture f(20000, g);
  BlockManager& manager = *f.manager;
  std::vector<SeqId> all;
  for (const int32_t len : {3, 16, 40, 200, 33, 1}) {
    all.push_back(manager.AddSequence());
    REQUIRE_OK(manager.Reserve(all.back(), len));
  }
  const int32_t row_capacity = 8 * g.num_kv_heads;
  auto created = DeviceBlockTables::Create(&manager, {all[0], all[1]}, 2, nullptr,
                                           {row_capacity, 4096});
  REQUIRE_OK(created);
  DeviceBlockTables& tables = **created;
  const uint64_t generation = tables.generation();
  const int32_t* indptr_at = tables.layer(0).indptr;
  // Every row past the batch's reads as empty: indptr flat, length 0.
  auto expect_padding = [&](size_t batch) {
    HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
    for (int32_t l = 0; l < g.num_layers; ++l) {
      const DeviceBlockTables::Layer layer = tables.layer(l);
      REQUIRE(layer.row_capacity == row_capacity);
      REQUIRE(layer.page_capacity >= 4096);
      const std::vector<int32_t> indptr = Download(layer.indptr, row_capacity + 1);
      const std::vector<int32_t> lens = Download(layer.lens, row_capacity);
      const int32_t rows = static_cast<int32_t>(batch) * g.num_kv_heads;
      for (int32_t r = rows; r < row_capacity; ++r) {
        CAPTURE(l, r);
        REQUIRE(lens[r] == 0);
        REQUIRE(indptr[r + 1] == indptr[rows]);
      }
    }
  };
  expect_padding(2);
  std::mt19937 rng(5);
  CompactionPlan plan;
  for (const std::vector<SeqId>& batch :
       {std::vector<SeqId>{all[2], all[0], all[3]}, std::vector<SeqId>{all[5]},
        std::vector<SeqId>{all[1], all[2], all[3], all[4], all[5], all[0]}}) {
    REQUIRE_OK(tables.Reset(batch));
    ExpectTablesMatch(manager, batch, tables);
    expect_padding(batch.size());
    for (int32_t step = 0; step < 40; ++step) {
      for (const SeqId seq : batch) REQUIRE_OK(manager.Reserve(seq, 1));
      if (step == 20) {  // an eviction rebuilds layer 2 with fewer pages
        auto lens = manager.StreamLengths(batch[0]);
        REQUIRE_OK(lens);
        std::vector<int32_t> kept(g.num_kv_heads);
        for (int32_t h = 0; h < g.num_kv_heads; ++h) {
          kept[h] = static_cast<int32_t>(rng() % ((*lens)[2 * g.num_kv_heads + h] + 1));
        }
        plan.Clear();
        REQUIRE_OK(manager.Evict(batch[0], 2, kept, &plan));
        manager.ReleaseRetiredPages();
      }
      REQUIRE_OK(tables.Refresh());
    }
    ExpectTablesMatch(manager, batch, tables);
    expect_padding(batch.size());
  }
  // Every batch fit the capacity asked for: the arrays never moved.
  REQUIRE(tables.generation() == generation);
  REQUIRE(tables.layer(0).indptr == indptr_at);
  // An unknown sequence is refused and the tables stay those of the last batch.
  REQUIRE(tables.Reset({all[0], SeqId{999999}}).code() == absl::StatusCode::kNotFound);
  REQUIRE(tables.layer(0).num_rows == 6 * g.num_kv_heads);
  // A batch over the row capacity moves the arrays: a new generation.
  std::vector<SeqId> many(all);
  for (int32_t i = 0; i < 4; ++i) {
    many.push_back(manager.AddSequence());
    REQUIRE_OK(manager.Reserve(many.back(), 5));
  }
  REQUIRE_OK(tables.Reset(many));
  REQUIRE(tables.generation() != generation);
  ExpectTablesMatch(manager, many, tables);
  REQUIRE(DeviceBlockTables::Create(&manager, many, 2, nullptr, {-1, 0}).status().code() ==
          absl::StatusCode::kInvalidArgument);
  REQUIRE_OK(manager.CheckInvariants());
}

TEST_CASE("A CUDA graph of every layer's DecodeAttention over DeviceBlockTables replays like "
          "eager launches", "[runtime][gpu]") {
  const CacheGeometry g = Geometry();
  const int64_t num_pages = 4000;
  testing::Fixture f(num_pages, g);
  BlockManager& manager = *f.manager;
  auto arena = CudaArena::Create(g, num_pages);
  REQUIRE_OK(arena);
  cudaStream_t stream;
  HEADPAGE_CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::mt19937 rng(9);
  std::normal_distribution<float> normal;
  const int32_t kv_row = g.num_kv_heads * g.head_dim;
  // Writes `n` random tokens to every stream of `seq` (gpu::WriteKV).
  auto append = [&](SeqId seq, int32_t n) {
    auto reserved = manager.Reserve(seq, n);
    REQUIRE_OK(reserved);
    std::vector<int32_t> positions(n);
    for (int32_t t = 0; t < n; ++t) positions[t] = static_cast<int32_t>(reserved->first_position + t);
    DeviceBuffer slots(reserved->slot_mapping), d_positions(positions);
    for (int32_t l = 0; l < g.num_layers; ++l) {
      std::vector<uint8_t> k(static_cast<size_t>(n) * kv_row * 2), v(k.size());
      for (size_t i = 0; i < k.size() / 2; ++i) {
        StoreFromFloat(k.data(), i, DType::kBF16, normal(rng));
        StoreFromFloat(v.data(), i, DType::kBF16, normal(rng));
      }
      DeviceBuffer dk(k), dv(v);
      REQUIRE_OK(gpu::WriteKV({arena->view(), n, g.num_kv_heads, dk.get(), dv.get(),
                               slots.get<int32_t>() + l * g.num_kv_heads,
                               g.num_layers * g.num_kv_heads, d_positions.get<int32_t>()},
                              stream));
      HEADPAGE_CUDA_OK(cudaStreamSynchronize(stream));
    }
  };
  std::vector<SeqId> seqs;
  for (const int32_t len : {33, 250, 1000}) {
    seqs.push_back(manager.AddSequence());
    append(seqs.back(), len);
  }
  auto created = DeviceBlockTables::Create(&manager, seqs, 4, stream);
  REQUIRE_OK(created);
  DeviceBlockTables& tables = **created;
  const int32_t batch = static_cast<int32_t>(seqs.size());
  const size_t q_elems = static_cast<size_t>(batch) * g.num_q_heads * g.head_dim;
  std::vector<uint8_t> q_host(q_elems * 2 * g.num_layers);
  DeviceBuffer q(q_host.size()), out_graph(q_host.size()), out_eager(q_host.size());
  const int32_t splits = 4;
  const size_t ws_bytes = DecodeAttentionWorkspaceBytes(batch, g.num_q_heads, g.head_dim, splits);
  DeviceBuffer workspace(ws_bytes * g.num_layers);
  auto launch_all = [&](DeviceBuffer& out) {
    for (int32_t l = 0; l < g.num_layers; ++l) {
      const DeviceBlockTables::Layer t = tables.layer(l);
      DecodeAttentionArgs a;
      a.cache = arena->view();
      a.num_seqs = batch;
      a.num_q_heads = g.num_q_heads;
      a.num_kv_heads = g.num_kv_heads;
      a.q = q.get<char>() + l * q_elems * 2;
      a.indptr = t.indptr;
      a.page_ids = t.page_ids;
      a.num_page_ids = static_cast<int32_t>(t.num_page_entries);
      a.lens = t.lens;
      a.sm_scale = 1.0f / std::sqrt(static_cast<float>(g.head_dim));
      a.out = out.get<char>() + l * q_elems * 2;
      a.num_splits = splits;
      a.workspace = workspace.get<char>() + l * ws_bytes;
      a.workspace_bytes = ws_bytes;
      REQUIRE_OK(gpu::DecodeAttention(a, stream));
    }
  };
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  uint64_t captured = tables.generation();
  auto capture = [&] {
    if (exec != nullptr) cudaGraphExecDestroy(exec);
    if (graph != nullptr) cudaGraphDestroy(graph);
    HEADPAGE_CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    launch_all(out_graph);
    HEADPAGE_CUDA_OK(cudaStreamEndCapture(stream, &graph));
    HEADPAGE_CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
    captured = tables.generation();
  };
  capture();
  int32_t replays = 0;
  for (int32_t step = 0; step < 40; ++step) {
    CAPTURE(step);
    for (const SeqId seq : seqs) append(seq, 1);
    REQUIRE_OK(tables.Refresh());
    if (tables.generation() != captured) capture();  // the arrays moved
    for (size_t i = 0; i < q_host.size() / 2; ++i) StoreFromFloat(q_host.data(), i, DType::kBF16, normal(rng));
    q.Upload(q_host);
    out_graph.Poison();
    out_eager.Poison();
    HEADPAGE_CUDA_OK(cudaDeviceSynchronize());  // the poison is on the legacy stream
    HEADPAGE_CUDA_OK(cudaGraphLaunch(exec, stream));
    ++replays;
    HEADPAGE_CUDA_OK(cudaStreamSynchronize(stream));
    launch_all(out_eager);
    HEADPAGE_CUDA_OK(cudaStreamSynchronize(stream));
    REQUIRE(out_graph.Download<uint8_t>() == out_eager.Download<uint8_t>());
  }
  REQUIRE(replays == 40);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace headpage
