// SPDX-License-Identifier: Apache-2.0
// The host-pool eviction engine's test fixture (engine_test.cc,
// engine_headwise_test.cc).
#ifndef HEADPAGE_TESTS_EVICTION_ENGINE_FIXTURE_H_
#define HEADPAGE_TESTS_EVICTION_ENGINE_FIXTURE_H_

#include <map>
#include <memory>
#include <random>
#include <tuple>
#include <vector>

#include "allocator/arena.h"
#include "eviction/engine.h"
#include "kernels/write_kv.h"
#include "tests/blockmgr/blockmgr_test_util.h"

namespace headpage {

// 2 layers x 2 KV heads x 2 q heads per group, head_dim 64, f32, page size 4:
// a sequence's prompt is written with random K/V, and a dense copy of every
// stream is kept to check the pool against after eviction.
class EngineFixture {
 public:
  static constexpr int32_t kLayers = 2, kHeads = 2, kQHeads = 4, kDim = 64;

  explicit EngineFixture(int64_t pages = 600, uint64_t seed = 7)
      : geometry_(Geometry()), fixture_(pages, geometry_), rng_(seed) {
    auto arena = HostArena::Create(geometry_, pages);
    REQUIRE_OK(arena);
    arena_ = std::make_unique<HostArena>(std::move(arena).value());
    auto engine = EvictionEngine::Create(fixture_.manager.get(), arena_->view());
    REQUIRE_OK(engine);
    engine_ = std::make_unique<EvictionEngine>(std::move(engine).value());
  }

  static CacheGeometry Geometry() {
    CacheGeometry g = testing::TinyGeometry(4);
    g.num_q_heads = kQHeads;
    return g;
  }

  BlockManager& manager() { return *fixture_.manager; }
  EvictionEngine& engine() { return *engine_; }

  // A new sequence holding `len` tokens with random K/V.
  SeqId Prefill(int32_t len) {
    const SeqId seq = manager().AddSequence();
    Append(seq, len);
    return seq;
  }

  // Appends `n` tokens with random K/V to every stream of `seq`.
  void Append(SeqId seq, int32_t n) {
    auto plan = manager().Reserve(seq, n);
    REQUIRE_OK(plan);
    REQUIRE(plan->page_copies.size() == 0);
    std::vector<int32_t> positions(n);
    for (int32_t t = 0; t < n; ++t) positions[t] = static_cast<int32_t>(plan->first_position + t);
    for (int32_t layer = 0; layer < kLayers; ++layer) {
      std::vector<float> keys(static_cast<size_t>(n) * kHeads * kDim), values(keys.size());
      for (float& x : keys) x = Normal();
      for (float& x : values) x = Normal();
      for (int32_t t = 0; t < n; ++t) {
        for (int32_t h = 0; h < kHeads; ++h) {
          auto& dense = dense_[{seq, layer, h}][positions[t]];
          dense.assign(keys.begin() + (t * kHeads + h) * kDim, keys.begin() + (t * kHeads + h + 1) * kDim);
          dense.insert(dense.end(), values.begin() + (t * kHeads + h) * kDim,
                       values.begin() + (t * kHeads + h + 1) * kDim);
        }
      }
      REQUIRE_OK(ref::WriteKV({arena_->view(), n, kHeads, keys.data(), values.data(),
                               plan->slot_mapping.data() + layer * kHeads, kLayers * kHeads,
                               positions.data()}));
    }
  }

  // `to` starts on `from`'s first `tokens` tokens (a prefix-cache hit): the
  // dense copy says so.
  void SharePrefix(SeqId from, SeqId to, int32_t tokens) {
    for (int32_t layer = 0; layer < kLayers; ++layer) {
      for (int32_t h = 0; h < kHeads; ++h) {
        const auto& source = dense_.at({from, layer, h});
        auto& target = dense_[{to, layer, h}];
        for (auto it = source.begin(); it != source.end() && it->first < tokens; ++it) {
          target[it->first] = it->second;
        }
      }
    }
  }

  // A new, unshared sequence holding exactly what `seq` was written with
  // (every stream must still hold every position).
  SeqId Copy(SeqId seq) {
    const int32_t n = static_cast<int32_t>(dense_.at({seq, 0, 0}).size());
    const SeqId copy = manager().AddSequence();
    auto plan = manager().Reserve(copy, n);
    REQUIRE_OK(plan);
    std::vector<int32_t> positions(n);
    for (int32_t t = 0; t < n; ++t) positions[t] = t;
    for (int32_t layer = 0; layer < kLayers; ++layer) {
      std::vector<float> keys(static_cast<size_t>(n) * kHeads * kDim), values(keys.size());
      for (int32_t h = 0; h < kHeads; ++h) {
        const auto& stream = dense_.at({seq, layer, h});
        REQUIRE(static_cast<int32_t>(stream.size()) == n);
        for (const auto& [t, kv] : stream) {
          std::copy(kv.begin(), kv.begin() + kDim, keys.begin() + (t * kHeads + h) * kDim);
          std::copy(kv.begin() + kDim, kv.end(), values.begin() + (t * kHeads + h) * kDim);
        }
        dense_[{copy, layer, h}] = stream;
      }
      REQUIRE_OK(ref::WriteKV({arena_->view(), n, kHeads, keys.data(), values.data(),
                               plan->slot_mapping.data() + layer * kHeads, kLayers * kHeads,
                               positions.data()}));
    }
    return copy;
  }

  // Random queries for every layer: `w` rows at positions first..first+w-1.
  std::vector<LayerQueries> Queries(int32_t w, int32_t first) {
    query_data_.assign(kLayers, {});
    query_positions_.resize(w);
    for (int32_t r = 0; r < w; ++r) query_positions_[r] = first + r;
    std::vector<LayerQueries> out;
    for (int32_t layer = 0; layer < kLayers; ++layer) {
      query_data_[layer].resize(static_cast<size_t>(kQHeads) * w * kDim);
      for (float& x : query_data_[layer]) x = 2.0f * Normal();  // peaky attention
      out.push_back({query_data_[layer].data(), query_positions_.data(), w, DType::kF32,
                     MemoryKind::kHost, {}});
    }
    return out;
  }

  // The keys written to stream (seq, layer, h), dense in position order.
  std::vector<float> DenseKeys(SeqId seq, int32_t layer, int32_t h, std::vector<int32_t>* positions) {
    std::vector<float> keys;
    positions->clear();
    for (const auto& [position, kv] : dense_.at({seq, layer, h})) {
      positions->push_back(position);
      keys.insert(keys.end(), kv.begin(), kv.begin() + kDim);
    }
    return keys;
  }
  // The values, likewise.
  std::vector<float> DenseValues(SeqId seq, int32_t layer, int32_t h) {
    std::vector<float> values;
    for (const auto& [position, kv] : dense_.at({seq, layer, h})) {
      values.insert(values.end(), kv.begin() + kDim, kv.end());
    }
    return values;
  }

  // Gives every layer's queries a random output projection W_o,
  // [hidden][kQHeads * kDim] (kept by the fixture).
  void AddOutputProjections(std::vector<LayerQueries>* queries, int32_t hidden = 24) {
    projection_data_.assign(queries->size(), {});
    for (size_t l = 0; l < queries->size(); ++l) {
      projection_data_[l].resize(static_cast<size_t>(hidden) * kQHeads * kDim);
      for (float& x : projection_data_[l]) x = 0.2f * Normal();
      (*queries)[l].output_projection = policy::OutputProjection{
          projection_data_[l].data(), hidden, kQHeads, kDim, DType::kF32};
    }
  }

  // The positions a stream holds, in slot order, after checking that every
  // slot's K and V are exactly what was written for that position.
  std::vector<int32_t> CheckStream(SeqId seq, int32_t layer, int32_t h) {
    auto pages = manager().StreamPages(seq, layer, h);
    REQUIRE_OK(pages);
    auto lens = manager().StreamLengths(seq);
    REQUIRE_OK(lens);
    const std::vector<int32_t> table(pages->begin(), pages->end());
    const PagedKV& kv = arena_->view();
    const auto* data = static_cast<const float*>(kv.data);
    std::vector<int32_t> held;
    for (uint32_t i = 0; i < (*lens)[layer * kHeads + h]; ++i) {
      const int64_t slot = SlotOf(table.data(), i, kv.page_size);
      const int32_t position = kv.positions[slot];
      const auto& dense = dense_.at({seq, layer, h}).at(position);
      for (int32_t e = 0; e < kDim; ++e) {
        REQUIRE(data[kv.KeyOffset(slot) + e] == dense[e]);
        REQUIRE(data[kv.ValueOffset(slot) + e] == dense[kDim + e]);
      }
      if (!held.empty()) REQUIRE(position > held.back());  // position order
      held.push_back(position);
    }
    return held;
  }

 private:
  float Normal() { return std::normal_distribution<float>(0.0f, 1.0f)(rng_); }

  CacheGeometry geometry_;
  testing::Fixture fixture_;
  std::mt19937 rng_;
  std::unique_ptr<HostArena> arena_;
  std::unique_ptr<EvictionEngine> engine_;
  std::map<std::tuple<SeqId, int32_t, int32_t>, std::map<int32_t, std::vector<float>>> dense_;
  std::vector<std::vector<float>> query_data_;
  std::vector<int32_t> query_positions_;
  std::vector<std::vector<float>> projection_data_;
};

}  // namespace headpage

#endif  // HEADPAGE_TESTS_EVICTION_ENGINE_FIXTURE_H_
