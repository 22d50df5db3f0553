// SPDX-License-Identifier: Apache-2.0
// File: tests/eviction/group_member.h
//
// What the tests of EvictionEngine in a tensor-parallel group share
// (engine_group_test.cc on host pools, engine_group_gpu_test.cc on device
// pools): a prompt for every kv head of a model, and a member engine holding a
// slice of those heads, whose kept positions are compared with one engine's
// over every head.
#ifndef HEADPAGE_TESTS_EVICTION_GROUP_MEMBER_H_
#define HEADPAGE_TESTS_EVICTION_GROUP_MEMBER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <random>
#include <vector>

#include "allocator/arena.h"
#include "eviction/engine.h"
#include "kernels/write_kv.h"
#include "tests/blockmgr/blockmgr_test_util.h"
#include "tests/testing/catch.h"
#include "tests/testing/status_matchers.h"

namespace headpage::testing {

// The model the members slice: f32 K/V, `group` q heads per kv head, and an
// output projection of `hidden` rows (CriticalKV's weights).
struct GroupShape {
  int32_t layers = 3, heads = 4, group = 2, dim = 16, page = 4, hidden = 24;
};

// A prompt's K/V, observation queries and output projections for every head.
struct Prompt {
  GroupShape shape;
  int32_t len = 0, window = 0;
  std::vector<float> keys, values;      // [layer][token][heads][dim]
  std::vector<float> queries;           // [layer][heads * group][window][dim]
  std::vector<float> projections;       // [layer][hidden][heads * group * dim]
  std::vector<int32_t> query_positions;

  Prompt(const GroupShape& shape, int32_t len, int32_t window, uint64_t seed)
      : shape(shape), len(len), window(window) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    const auto& s = shape;
    keys.resize(static_cast<size_t>(s.layers) * len * s.heads * s.dim);
    values.resize(keys.size());
    queries.resize(static_cast<size_t>(s.layers) * s.heads * s.group * window * s.dim);
    projections.resize(static_cast<size_t>(s.layers) * s.hidden * s.heads * s.group * s.dim);
    for (float& x : keys) x = normal(rng);
    for (float& x : values) x = normal(rng);
    for (float& x : queries) x = 2.0f * normal(rng);  // peaky attention
    for (float& x : projections) x = normal(rng);
    for (int32_t r = 0; r < window; ++r) query_positions.push_back(len - window + r);
  }
};

// Where a member keeps its pool when it is in device memory: the K/V are
// written into a host pool first, then `mirror` copies the given slots of it
// (the tokens just written) into the device pool (`view`), whose other slots
// may hold tokens the device compacted; `positions` reads the device pool's
// positions back.
struct DeviceMirror {
  PagedKV view;
  std::function<void(const HostArena&, const std::vector<int32_t>& slots)> mirror;
  std::function<std::vector<int32_t>()> positions;
};

// One engine over kv heads [first, first + heads) of every layer, on a host
// pool, or on `device` when given (which must outlive the member).
class Member {
 public:
  Member(const GroupShape& shape, int32_t first, int32_t heads, int64_t pages,
         const DeviceMirror* device = nullptr)
      : shape_(shape), first_(first), heads_(heads), device_(device),
        geometry_(Geometry(shape, heads)) {
    fixture_ = std::make_unique<Fixture>(pages, geometry_);
    auto arena = HostArena::Create(geometry_, pages);
    REQUIRE_OK(arena);
    arena_ = std::make_unique<HostArena>(std::move(arena).value());
    auto engine = EvictionEngine::Create(fixture_->manager.get(),
                                         device != nullptr ? device->view : arena_->view());
    REQUIRE_OK(engine);
    engine_ = std::make_unique<EvictionEngine>(std::move(engine).value());
  }

  // The geometry of a member holding `heads` kv heads.
  static CacheGeometry Geometry(const GroupShape& shape, int32_t heads) {
    CacheGeometry g = TinyGeometry(shape.page);
    g.num_layers = shape.layers;
    g.num_kv_heads = heads;
    g.num_q_heads = heads * shape.group;
    g.head_dim = shape.dim;
    return g;
  }

  EvictionEngine& engine() { return *engine_; }

  // Writes this member's heads of the prompt into a new sequence.
  SeqId Prefill(const Prompt& p) {
    const SeqId seq = fixture_->manager->AddSequence();
    Write(seq, p.len, p.keys, p.values);
    return seq;
  }

  // Appends `n` tokens of random K/V (from `seed`, the same for every member:
  // each writes its heads' share) to `seq`, as decode steps would.
  void Append(SeqId seq, int32_t n, uint64_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    std::vector<float> keys(static_cast<size_t>(shape_.layers) * n * shape_.heads * shape_.dim);
    std::vector<float> values(keys.size());
    for (float& x : keys) x = normal(rng);
    for (float& x : values) x = normal(rng);
    Write(seq, n, keys, values);
  }

  // Writes `len` tokens of `keys` and `values` ([layer][token][every head][dim])
  // after `seq`'s, this member's heads of them.
  void Write(SeqId seq, int32_t len, const std::vector<float>& all_keys,
             const std::vector<float>& all_values) {
    const auto& s = shape_;
    auto plan = fixture_->manager->Reserve(seq, len);
    REQUIRE_OK(plan);
    std::vector<int32_t> positions(len);
    for (int32_t t = 0; t < len; ++t) positions[t] = static_cast<int32_t>(plan->first_position + t);
    for (int32_t layer = 0; layer < s.layers; ++layer) {
      std::vector<float> keys, values;
      for (int32_t t = 0; t < len; ++t) {
        const size_t at = ((static_cast<size_t>(layer) * len + t) * s.heads + first_) * s.dim;
        keys.insert(keys.end(), all_keys.begin() + at, all_keys.begin() + at + heads_ * s.dim);
        values.insert(values.end(), all_values.begin() + at,
                      all_values.begin() + at + heads_ * s.dim);
      }
      REQUIRE_OK(ref::WriteKV({arena_->view(), len, heads_, keys.data(), values.data(),
                               plan->slot_mapping.data() + layer * heads_, s.layers * heads_,
                               positions.data()}));
    }
    if (device_ != nullptr) device_->mirror(*arena_, plan->slot_mapping);
  }

  // This member's q heads of the observation window, and its columns of W_o
  // (valid while the member lives), in host memory.
  std::vector<LayerQueries> Queries(const Prompt& p, bool with_projection) {
    const auto& s = shape_;
    const int32_t q_heads = heads_ * s.group, q_first = first_ * s.group;
    const size_t per_head = static_cast<size_t>(p.window) * s.dim;
    std::vector<LayerQueries> out;
    for (int32_t layer = 0; layer < s.layers; ++layer) {
      const size_t base = (static_cast<size_t>(layer) * s.heads * s.group + q_first) * per_head;
      std::vector<float>& queries = buffers_.emplace_back(
          p.queries.begin() + base, p.queries.begin() + base + q_heads * per_head);
      std::vector<float>& projection = buffers_.emplace_back();
      const size_t row = static_cast<size_t>(s.heads) * s.group * s.dim;
      for (int32_t o = 0; o < s.hidden; ++o) {
        const size_t at = (static_cast<size_t>(layer) * s.hidden + o) * row + q_first * s.dim;
        projection.insert(projection.end(), p.projections.begin() + at,
                          p.projections.begin() + at + q_heads * s.dim);
      }
      LayerQueries q{queries.data(), p.query_positions.data(), p.window, DType::kF32,
                     MemoryKind::kHost, {}};
      if (with_projection) {
        q.output_projection = {projection.data(), s.hidden, q_heads, s.dim, DType::kF32};
      }
      out.push_back(q);
    }
    return out;
  }

  // The positions stream (layer, h) holds, in slot order.
  std::vector<int32_t> Positions(SeqId seq, int32_t layer, int32_t h) {
    const SeqId seqs[] = {seq};
    auto table = fixture_->manager->BlockTable(layer, seqs);
    REQUIRE_OK(table);
    std::vector<int32_t> pool_positions;
    const int32_t* positions = arena_->view().positions;
    if (device_ != nullptr) {
      pool_positions = device_->positions();
      positions = pool_positions.data();
    }
    std::vector<int32_t> out;
    const int32_t begin = table->indptr()[h];
    for (int32_t i = 0; i < table->lens()[h]; ++i) {
      const int32_t page = table->page_ids()[begin + i / shape_.page];
      out.push_back(positions[static_cast<int64_t>(page) * shape_.page + i % shape_.page]);
    }
    return out;
  }

 private:
  GroupShape shape_;
  int32_t first_, heads_;
  const DeviceMirror* device_;
  CacheGeometry geometry_;
  std::unique_ptr<Fixture> fixture_;
  std::unique_ptr<HostArena> arena_;
  std::unique_ptr<EvictionEngine> engine_;
  // What Queries() handed out, alive as long as the member (a deque keeps
  // addresses when it grows).
  std::deque<std::vector<float>> buffers_;
};

inline PolicyConfig Named(const char* name) {
  auto config = PolicyByName(name);
  REQUIRE_OK(config);
  return *config;
}

}  // namespace headpage::testing

#endif  // HEADPAGE_TESTS_EVICTION_GROUP_MEMBER_H_
