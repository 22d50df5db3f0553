// SPDX-License-Identifier: Apache-2.0
// File: tests/eviction/twin.h
//
// Two block managers driven through the same operations, one over a HostArena,
// one over a CudaArena holding the same bytes, each with its eviction engine:
// the CUDA executor is checked against the host executor on them.
//
// Scores from positions, key norms and random draws are bit-equal on both
// sides, so those policies must agree exactly. Attention scores (SnapKV, TOVA,
// H2O) come from tensor cores on the GPU and agree with the CPU to rounding:
// where the two keep sets differ, every differing token must be a near tie at
// the cut (its CPU score within a rounding band of the other differing tokens').
#ifndef HEADPAGE_TESTS_EVICTION_TWIN_H_
#define HEADPAGE_TESTS_EVICTION_TWIN_H_

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <vector>

#include "allocator/arena.h"
#include "eviction/engine.h"
#include "eviction/host_executor.h"
#include "kernels/write_kv.h"
#include "policy/scores.h"
#include "tests/blockmgr/blockmgr_test_util.h"
#include "tests/kernels/device_buffer.h"
#include "tests/testing/status_matchers.h"

namespace headpage::testing {

struct TwinSpec {
  int32_t layers = 2;
  int32_t kv_heads = 2;
  int32_t group = 4;
  int32_t head_dim = 128;
  int32_t page_size = 16;
  DType dtype = DType::kBF16;
  int64_t pages = 4096;
};

// What one stream holds: positions in slot order, and each token's K and V bytes.
struct Held {
  std::vector<int32_t> positions;
  std::vector<std::vector<uint8_t>> kv;
};

class Twin {
 public:
  Twin(const TwinSpec& spec, uint64_t seed)
      : spec_(spec), geometry_(Geometry(spec)), host_(spec.pages, geometry_),
        device_(spec.pages, geometry_), rng_(seed) {
    auto host_arena = HostArena::Create(geometry_, spec.pages);
    REQUIRE_OK(host_arena);
    host_arena_ = std::make_unique<HostArena>(std::move(host_arena).value());
    auto device_arena = CudaArena::Create(geometry_, spec.pages);
    REQUIRE_OK(device_arena);
    device_arena_ = std::make_unique<CudaArena>(std::move(device_arena).value());
    REQUIRE(device_arena_->view().memory == MemoryKind::kDevice);
    auto host_engine = EvictionEngine::Create(host_.manager.get(), host_arena_->view());
    REQUIRE_OK(host_engine);
    host_engine_ = std::make_unique<EvictionEngine>(std::move(host_engine).value());
    auto device_engine = EvictionEngine::Create(device_.manager.get(), device_arena_->view());
    REQUIRE_OK(device_engine);
    device_engine_ = std::make_unique<EvictionEngine>(std::move(device_engine).value());
    REQUIRE(device_engine_->memory() == MemoryKind::kDevice);
  }

  static CacheGeometry Geometry(const TwinSpec& s) {
    CacheGeometry g;
    g.num_layers = s.layers;
    g.num_kv_heads = s.kv_heads;
    g.num_q_heads = s.kv_heads * s.group;
    g.head_dim = s.head_dim;
    g.dtype = s.dtype;
    g.page_size = s.page_size;
    return g;
  }

  BlockManager& host() { return *host_.manager; }
  BlockManager& device() { return *device_.manager; }
  EvictionEngine& host_engine() { return *host_engine_; }
  EvictionEngine& device_engine() { return *device_engine_; }
  const CacheGeometry& geometry() const { return geometry_; }

  // A new sequence of `len` random tokens in both pools (then Mirror()).
  SeqId Prefill(int32_t len) {
    const SeqId seq = host().AddSequence();
    REQUIRE(device().AddSequence() == seq);
    Append(seq, len);
    return seq;
  }

  // `len` more random tokens of `seq` in both pools (then Mirror()).
  void Append(SeqId seq, int32_t len) {
    auto plan = host().Reserve(seq, len);
    REQUIRE_OK(plan);
    auto twin_plan = device().Reserve(seq, len);
    REQUIRE_OK(twin_plan);
    REQUIRE(plan->slot_mapping == twin_plan->slot_mapping);
    std::vector<int32_t> positions(len);
    for (int32_t t = 0; t < len; ++t) positions[t] = static_cast<int32_t>(plan->first_position + t);
    const size_t elements = static_cast<size_t>(len) * spec_.kv_heads * spec_.head_dim;
    for (int32_t layer = 0; layer < spec_.layers; ++layer) {
      const std::vector<uint8_t> keys = Random(elements), values = Random(elements);
      REQUIRE_OK(ref::WriteKV({host_arena_->view(), len, spec_.kv_heads, keys.data(), values.data(),
                               plan->slot_mapping.data() + layer * spec_.kv_heads,
                               spec_.layers * spec_.kv_heads, positions.data()}));
    }
  }

  // One decode step of `seq` in both pools: a random token (the same bytes)
  // written by each pool's own slot mapping, so that the pools stay right
  // even where near ties made them keep different tokens. Returns its position.
  int32_t Decode(SeqId seq) {
    auto plan = host().Reserve(seq, 1);
    REQUIRE_OK(plan);
    auto twin_plan = device().Reserve(seq, 1);
    REQUIRE_OK(twin_plan);
    const auto position = static_cast<int32_t>(plan->first_position);
    REQUIRE(twin_plan->first_position == plan->first_position);
    const size_t elements = static_cast<size_t>(spec_.kv_heads) * spec_.head_dim;
    DeviceBuffer device_position(std::vector<int32_t>{position});
    for (int32_t layer = 0; layer < spec_.layers; ++layer) {
      const std::vector<uint8_t> keys = Random(elements), values = Random(elements);
      REQUIRE_OK(ref::WriteKV({host_arena_->view(), 1, spec_.kv_heads, keys.data(), values.data(),
                               plan->slot_mapping.data() + layer * spec_.kv_heads,
                               spec_.layers * spec_.kv_heads, &position}));
      DeviceBuffer device_keys(keys), device_values(values);
      DeviceBuffer mapping(std::vector<int32_t>(
          twin_plan->slot_mapping.begin() + layer * spec_.kv_heads,
          twin_plan->slot_mapping.begin() + (layer + 1) * spec_.kv_heads));
      REQUIRE_OK(gpu::WriteKV({device_arena_->view(), 1, spec_.kv_heads, device_keys.get(),
                               device_values.get(), mapping.get<int32_t>(), spec_.kv_heads,
                               device_position.get<int32_t>()},
                              nullptr));
      HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
    }
    return position;
  }

  // The device pool becomes a byte copy of the host pool.
  void Mirror() {
    const PagedKV& h = host_arena_->view();
    const PagedKV& d = device_arena_->view();
    HEADPAGE_CUDA_OK(cudaMemcpy(d.data, h.data, host_arena_->kv_bytes(), cudaMemcpyHostToDevice));
    HEADPAGE_CUDA_OK(cudaMemcpy(d.positions, h.positions, sizeof(int32_t) * h.num_slots(),
                                cudaMemcpyHostToDevice));
  }

  // Random window queries of the cache dtype for every layer: `w` rows at
  // positions first..first+w-1.
  std::vector<LayerQueries> Queries(int32_t w, int32_t first) {
    query_positions_.resize(w);
    for (int32_t r = 0; r < w; ++r) query_positions_[r] = first + r;
    query_data_.assign(spec_.layers, {});
    std::vector<LayerQueries> out;
    for (int32_t layer = 0; layer < spec_.layers; ++layer) {
      query_data_[layer] = Random(static_cast<size_t>(geometry_.num_q_heads) * w * spec_.head_dim, 2.0f);
      out.push_back({query_data_[layer].data(), query_positions_.data(), w, spec_.dtype,
                     MemoryKind::kHost, {}});
    }
    return out;
  }

  // The same queries, copied to device memory.
  std::vector<LayerQueries> OnDevice(const std::vector<LayerQueries>& queries) {
    device_queries_.clear();
    std::vector<LayerQueries> out;
    for (const LayerQueries& q : queries) {
      const size_t bytes = static_cast<size_t>(geometry_.num_q_heads) * q.num_queries *
                           spec_.head_dim * SizeOf(spec_.dtype);
      std::vector<uint8_t> data(static_cast<const uint8_t*>(q.data),
                                static_cast<const uint8_t*>(q.data) + bytes);
      device_queries_.emplace_back(data);
      device_queries_.emplace_back(std::vector<int32_t>(q.positions, q.positions + q.num_queries));
      out.push_back({device_queries_[device_queries_.size() - 2].get(),
                     device_queries_.back().get<int32_t>(), q.num_queries, q.dtype,
                     MemoryKind::kDevice, {}});
    }
    return out;
  }

  // What every stream of `seq` holds, in each pool.
  std::vector<Held> HostHeld(SeqId seq) { return HeldIn(host(), host_arena_->view(), nullptr, seq); }
  std::vector<Held> DeviceHeld(SeqId seq) {
    const PagedKV& d = device_arena_->view();
    std::vector<uint8_t> kv(device_arena_->kv_bytes());
    std::vector<int32_t> positions(static_cast<size_t>(d.num_slots()));
    HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
    HEADPAGE_CUDA_OK(cudaMemcpy(kv.data(), d.data, kv.size(), cudaMemcpyDeviceToHost));
    HEADPAGE_CUDA_OK(cudaMemcpy(positions.data(), d.positions, sizeof(int32_t) * positions.size(),
                                cudaMemcpyDeviceToHost));
    PagedKV copy = d;
    copy.data = kv.data();
    copy.positions = positions.data();
    return HeldIn(device(), copy, nullptr, seq);
  }

  // CPU scores of every stream of `seq` (host pool) by position: SnapKV's, or
  // TOVA's (one per token of a layer; the queries hold one row, the last).
  std::vector<std::map<int32_t, float>> HostAttentionScores(SeqId seq, const PolicyConfig& config,
                                                            const std::vector<LayerQueries>& queries) {
    HostExecutor executor(&host(), host_arena_->view());
    std::vector<std::map<int32_t, float>> out;
    for (int32_t layer = 0; layer < spec_.layers; ++layer) {
      LayerKeys keys;
      REQUIRE_OK(executor.GatherLayer(seq, layer, &keys));
      std::vector<policy::StreamKeys> streams;
      std::vector<policy::GroupQueries> groups;
      for (int32_t h = 0; h < spec_.kv_heads; ++h) {
        streams.push_back(keys.Stream(h, geometry_));
        groups.push_back(GroupOf(queries[layer], geometry_, h));
      }
      std::vector<float> tova(streams[0].num_tokens);
      if (config.scorer == PolicyConfig::Scorer::kTova) {
        REQUIRE_OK(policy::TovaScores(streams, groups, absl::MakeSpan(tova)));
      }
      for (int32_t h = 0; h < spec_.kv_heads; ++h) {
        const policy::StreamKeys& stream = streams[h];
        std::vector<float> scores = tova;
        if (config.scorer == PolicyConfig::Scorer::kSnapKV) {
          scores.assign(stream.num_tokens, 0.0f);
          REQUIRE_OK(policy::SnapKVScores(stream, groups[h], config.snapkv, absl::MakeSpan(scores)));
        }
        if (config.scorer == PolicyConfig::Scorer::kH2O) {
          scores.assign(stream.num_tokens, 0.0f);
          REQUIRE_OK(policy::AccumulateAttention(stream, groups[h], config.reduce,
                                                 absl::MakeSpan(scores)));
        }
        std::map<int32_t, float> by_position;
        for (int32_t j = 0; j < stream.num_tokens; ++j) by_position[stream.positions[j]] = scores[j];
        out.push_back(std::move(by_position));
      }
    }
    return out;
  }

 private:
  std::vector<uint8_t> Random(size_t elements, float scale = 1.0f) {
    std::vector<uint8_t> out(elements * SizeOf(spec_.dtype));
    std::normal_distribution<float> normal(0.0f, scale);
    for (size_t i = 0; i < elements; ++i) StoreFromFloat(out.data(), i, spec_.dtype, normal(rng_));
    return out;
  }

  std::vector<Held> HeldIn(BlockManager& manager, const PagedKV& kv, void*, SeqId seq) {
    auto lens = manager.StreamLengths(seq);
    REQUIRE_OK(lens);
    const size_t row = static_cast<size_t>(spec_.head_dim) * SizeOf(spec_.dtype);
    std::vector<Held> out;
    for (int32_t layer = 0; layer < spec_.layers; ++layer) {
      for (int32_t h = 0; h < spec_.kv_heads; ++h) {
        auto pages = manager.StreamPages(seq, layer, h);
        REQUIRE_OK(pages);
        const std::vector<int32_t> table(pages->begin(), pages->end());
        Held held;
        for (uint32_t i = 0; i < (*lens)[layer * spec_.kv_heads + h]; ++i) {
          const int64_t slot = SlotOf(table.data(), i, kv.page_size);
          held.positions.push_back(kv.positions[slot]);
          const auto* base = static_cast<const uint8_t*>(kv.data);
          std::vector<uint8_t> bytes(base + kv.KeyOffset(slot) * SizeOf(kv.dtype),
                                     base + kv.KeyOffset(slot) * SizeOf(kv.dtype) + row);
          bytes.insert(bytes.end(), base + kv.ValueOffset(slot) * SizeOf(kv.dtype),
                       base + kv.ValueOffset(slot) * SizeOf(kv.dtype) + row);
          held.kv.push_back(std::move(bytes));
        }
        out.push_back(std::move(held));
      }
    }
    return out;
  }

  TwinSpec spec_;
  CacheGeometry geometry_;
  Fixture host_, device_;
  std::mt19937_64 rng_;
  std::unique_ptr<HostArena> host_arena_;
  std::unique_ptr<CudaArena> device_arena_;
  std::unique_ptr<EvictionEngine> host_engine_, device_engine_;
  std::vector<std::vector<uint8_t>> query_data_;
  std::vector<int32_t> query_positions_;
  std::vector<DeviceBuffer> device_queries_;
};

// Every stream holds K/V bytes that belong to its positions (checked against
// the other pool's copy of the same token), and the two keep sets agree: exactly,
// or, with `scores`, up to near ties.
inline void ExpectSameTokens(const std::vector<Held>& host, const std::vector<Held>& device,
                      const std::vector<std::map<int32_t, float>>* scores, int32_t kv_heads) {
  REQUIRE(host.size() == device.size());
  // K/V of one position in one stream are the same wherever they were moved.
  for (size_t s = 0; s < host.size(); ++s) {
    std::map<int32_t, const std::vector<uint8_t>*> host_kv;
    for (size_t i = 0; i < host[s].positions.size(); ++i) host_kv[host[s].positions[i]] = &host[s].kv[i];
    for (size_t i = 0; i < device[s].positions.size(); ++i) {
      if (i > 0) REQUIRE(device[s].positions[i] > device[s].positions[i - 1]);
      const auto it = host_kv.find(device[s].positions[i]);
      if (it != host_kv.end()) REQUIRE(*it->second == device[s].kv[i]);
    }
  }
  if (scores == nullptr) {
    for (size_t s = 0; s < host.size(); ++s) {
      CAPTURE(s);
      REQUIRE(host[s].positions == device[s].positions);
    }
    return;
  }
  // Near ties: per layer, the differing tokens' CPU scores lie in a band far
  // narrower than the scores' spread, and few tokens differ.
  const size_t layers = host.size() / kv_heads;
  for (size_t layer = 0; layer < layers; ++layer) {
    std::vector<float> differing;
    float top = 0.0f;
    for (int32_t h = 0; h < kv_heads; ++h) {
      const size_t s = layer * kv_heads + h;
      for (const auto& [position, score] : (*scores)[s]) top = std::max(top, std::abs(score));
      const std::set<int32_t> a(host[s].positions.begin(), host[s].positions.end());
      const std::set<int32_t> b(device[s].positions.begin(), device[s].positions.end());
      for (int32_t p : a) if (b.count(p) == 0) differing.push_back((*scores)[s].at(p));
      for (int32_t p : b) if (a.count(p) == 0) differing.push_back((*scores)[s].at(p));
    }
    CAPTURE(layer, differing.size());
    REQUIRE(differing.size() <= 4);
    if (!differing.empty()) {
      const auto [lo, hi] = std::minmax_element(differing.begin(), differing.end());
      REQUIRE(*hi - *lo <= 1e-3f * top);
    }
  }
}

inline void CompressBoth(Twin& twin, SeqId seq, const PolicyConfig& config, const Budget& budget,
                  const std::vector<LayerQueries>& queries, bool device_queries) {
  const bool window_scores = config.scorer == PolicyConfig::Scorer::kSnapKV ||
                             config.scorer == PolicyConfig::Scorer::kTova ||
                             config.scorer == PolicyConfig::Scorer::kH2O;
  std::vector<std::map<int32_t, float>> scores;
  if (window_scores) scores = twin.HostAttentionScores(seq, config, queries);
  const std::vector<LayerQueries> device_side = device_queries ? twin.OnDevice(queries) : queries;
  auto on_host = twin.host_engine().Compress(seq, config, budget, queries);
  REQUIRE_OK(on_host);
  auto on_device = twin.device_engine().Compress(seq, config, budget, device_side);
  REQUIRE_OK(on_device);
  REQUIRE(on_device->tokens_before == on_host->tokens_before);
  if (!window_scores) {
    REQUIRE(on_device->kept == on_host->kept);
    REQUIRE(on_device->pages_freed == on_host->pages_freed);
  }
  ExpectSameTokens(twin.HostHeld(seq), twin.DeviceHeld(seq), window_scores ? &scores : nullptr,
                   twin.geometry().num_kv_heads);
  REQUIRE_OK(twin.host().CheckInvariants());
  REQUIRE_OK(twin.device().CheckInvariants());
}

}  // namespace headpage::testing

#endif  // HEADPAGE_TESTS_EVICTION_TWIN_H_
