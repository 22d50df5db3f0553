// SPDX-License-Identifier: Apache-2.0
// EvictionEngine in a tensor-parallel group (JoinGroup): members holding a
// slice of every layer's KV heads, threads of one process here, keep exactly
// what one engine over every head keeps, stream by stream and token by token,
// and fail together.
#include <algorithm>
#include <cstdint>
#include <deque>
#include <memory>
#include <random>
#include <vector>

#include "allocator/arena.h"
#include "eviction/engine.h"
#include "kernels/write_kv.h"
#include "tests/blockmgr/blockmgr_test_util.h"
#include "tests/testing/catch.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/thread_group.h"

namespace headpage {
namespace {

using headpage::testing::ThreadGroup;

constexpr int32_t kLayers = 3, kHeads = 4, kGroup = 2, kDim = 16, kPage = 4, kHidden = 24;

// A prompt's K/V, observation queries and output projections for every head.
struct Prompt {
  int32_t len = 0, window = 0;
  std::vector<float> keys, values;      // [layer][token][kHeads][kDim]
  std::vector<float> queries;           // [layer][kHeads * kGroup][window][kDim]
  std::vector<float> projections;       // [layer][kHidden][kHeads * kGroup * kDim]
  std::vector<int32_t> query_positions;

  Prompt(int32_t len, int32_t window, uint64_t seed) : len(len), window(window) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    keys.resize(static_cast<size_t>(kLayers) * len * kHeads * kDim);
    values.resize(keys.size());
    queries.resize(static_cast<size_t>(kLayers) * kHeads * kGroup * window * kDim);
    projections.resize(static_cast<size_t>(kLayers) * kHidden * kHeads * kGroup * kDim);
    for (float& x : keys) x = normal(rng);
    for (float& x : values) x = normal(rng);
    for (float& x : queries) x = 2.0f * normal(rng);  // peaky attention
    for (float& x : projections) x = normal(rng);
    for (int32_t r = 0; r < window; ++r) query_positions.push_back(len - window + r);
  }
};

// One engine over kv heads [first, first + heads) of every layer.
class Member {
 public:
  Member(int32_t first, int32_t heads, int64_t pages) : first_(first), heads_(heads) {
    geometry_ = testing::TinyGeometry(kPage);
    geometry_.num_layers = kLayers;
    geometry_.num_kv_heads = heads;
    geometry_.num_q_heads = heads * kGroup;
    geometry_.head_dim = kDim;
    fixture_ = std::make_unique<testing::Fixture>(pages, geometry_);
    auto arena = HostArena::Create(geometry_, pages);
    REQUIRE_OK(arena);
    arena_ = std::make_unique<HostArena>(std::move(arena).value());
    auto engine = EvictionEngine::Create(fixture_->manager.get(), arena_->view());
    REQUIRE_OK(engine);
    engine_ = std::make_unique<EvictionEngine>(std::move(engine).value());
  }

  EvictionEngine& engine() { return *engine_; }

  // Writes this member's heads of the prompt into a new sequence.
  SeqId Prefill(const Prompt& p) {
    const SeqId seq = fixture_->manager->AddSequence();
    auto plan = fixture_->manager->Reserve(seq, p.len);
    REQUIRE_OK(plan);
    std::vector<int32_t> positions(p.len);
    for (int32_t t = 0; t < p.len; ++t) positions[t] = t;
    for (int32_t layer = 0; layer < kLayers; ++layer) {
      std::vector<float> keys, values;
      for (int32_t t = 0; t < p.len; ++t) {
        const size_t at = ((static_cast<size_t>(layer) * p.len + t) * kHeads + first_) * kDim;
        keys.insert(keys.end(), p.keys.begin() + at, p.keys.begin() + at + heads_ * kDim);
        values.insert(values.end(), p.values.begin() + at, p.values.begin() + at + heads_ * kDim);
      }
      REQUIRE_OK(ref::WriteKV({arena_->view(), p.len, heads_, keys.data(), values.data(),
                               plan->slot_mapping.data() + layer * heads_, kLayers * heads_,
                               positions.data()}));
    }
    return seq;
  }

  // This member's q heads of the observation window, and its columns of W_o
  // (valid while the member lives).
  std::vector<LayerQueries> Queries(const Prompt& p, bool with_projection) {
    const int32_t q_heads = heads_ * kGroup, q_first = first_ * kGroup;
    const size_t per_head = static_cast<size_t>(p.window) * kDim;
    std::vector<LayerQueries> out;
    for (int32_t layer = 0; layer < kLayers; ++layer) {
      const size_t base = (static_cast<size_t>(layer) * kHeads * kGroup + q_first) * per_head;
      std::vector<float>& queries = buffers_.emplace_back(
          p.queries.begin() + base, p.queries.begin() + base + q_heads * per_head);
      std::vector<float>& projection = buffers_.emplace_back();
      const size_t row = static_cast<size_t>(kHeads) * kGroup * kDim;
      for (int32_t o = 0; o < kHidden; ++o) {
        const size_t at = (static_cast<size_t>(layer) * kHidden + o) * row + q_first * kDim;
        projection.insert(projection.end(), p.projections.begin() + at,
                          p.projections.begin() + at + q_heads * kDim);
      }
      LayerQueries q{queries.data(), p.query_positions.data(), p.window, DType::kF32,
                     MemoryKind::kHost, {}};
      if (with_projection) {
        q.output_projection = {projection.data(), kHidden, q_heads, kDim, DType::kF32};
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
    std::vector<int32_t> out;
    const int32_t begin = table->indptr()[h];
    for (int32_t i = 0; i < table->lens()[h]; ++i) {
      const int32_t page = table->page_ids()[begin + i / kPage];
      out.push_back(arena_->view().positions[static_cast<int64_t>(page) * kPage + i % kPage]);
    }
    return out;
  }

 private:
  int32_t first_, heads_;
  CacheGeometry geometry_;
  std::unique_ptr<testing::Fixture> fixture_;
  std::unique_ptr<HostArena> arena_;
  std::unique_ptr<EvictionEngine> engine_;
  // What Queries() handed out, alive as long as the member (a deque keeps
  // addresses when it grows).
  std::deque<std::vector<float>> buffers_;
};

PolicyConfig Named(const char* name) {
  auto config = PolicyByName(name);
  REQUIRE_OK(config);
  return *config;
}

TEST_CASE("EvictionEngine in a group keeps what one engine over every head keeps",
          "[eviction][group]") {
  PolicyConfig across = Named("ada-snapkv");  // Ada's top-k over every layer's heads
  across.allocator = PolicyConfig::Allocator::kAdaAcrossLayers;
  across.name = "ada-snapkv across layers";
  const std::vector<PolicyConfig> policies = {
      Named("ada-snapkv"), Named("ada-pyramid"), Named("uniform-snapkv"), Named("pyramid"),
      Named("critical-ada-snapkv"), Named("h2o"), Named("streamingllm"), Named("knorm"), across};
  int trial = 0;
  for (const PolicyConfig& config : policies) {
    for (const int32_t members : {2, 4}) {
      for (const double fraction : {0.2, 0.35}) {
        const Prompt prompt(400 + 37 * (trial % 3), 70, 100 + trial);
        ++trial;
        const bool projection = config.needs_output_projection();
        Member whole(0, kHeads, 2000);
        const SeqId whole_seq = whole.Prefill(prompt);
        std::vector<LayerQueries> whole_queries = whole.Queries(prompt, projection);
        auto single = whole.engine().Compress(whole_seq, config, Budget::Fraction(fraction),
                                              whole_queries);
        INFO(config.name << ", " << members << " members, budget " << fraction);
        REQUIRE_OK(single);

        ThreadGroup group(members);
        const int32_t heads = kHeads / members;
        std::vector<std::unique_ptr<Member>> parts;
        std::vector<SeqId> seqs;
        std::vector<std::vector<LayerQueries>> queries;
        for (int32_t r = 0; r < members; ++r) {
          parts.push_back(std::make_unique<Member>(r * heads, heads, 2000));
          REQUIRE_OK(parts[r]->engine().JoinGroup(&group.member(r)));
          seqs.push_back(parts[r]->Prefill(prompt));
          queries.push_back(parts[r]->Queries(prompt, projection));
        }
        std::vector<absl::StatusOr<CompressResult>> results(members);
        group.Run([&](int32_t r) {
          results[r] = parts[r]->engine().Compress(seqs[r], config, Budget::Fraction(fraction),
                                                   queries[r]);
        });
        int64_t after = 0;
        for (int32_t r = 0; r < members; ++r) {
          REQUIRE_OK(results[r]);
          after += results[r]->tokens_after;
          for (int32_t layer = 0; layer < kLayers; ++layer) {
            for (int32_t h = 0; h < heads; ++h) {
              const int32_t global = r * heads + h;
              REQUIRE(results[r]->kept[layer * heads + h] == single->kept[layer * kHeads + global]);
              REQUIRE(parts[r]->Positions(seqs[r], layer, h) ==
                      whole.Positions(whole_seq, layer, global));
            }
          }
        }
        REQUIRE(after == single->tokens_after);
        REQUIRE(single->tokens_after < single->tokens_before);
      }
    }
  }
}

TEST_CASE("EvictionEngine in a group: a member's refused call fails every member, none waits",
          "[eviction][group]") {
  const Prompt prompt(120, 16, 5);
  ThreadGroup group(2);
  std::vector<std::unique_ptr<Member>> parts;
  std::vector<SeqId> seqs;
  for (int32_t r = 0; r < 2; ++r) {
    parts.push_back(std::make_unique<Member>(r * 2, 2, 1000));
    REQUIRE_OK(parts[r]->engine().JoinGroup(&group.member(r)));
    seqs.push_back(parts[r]->Prefill(prompt));
  }
  std::vector<std::vector<LayerQueries>> queries = {parts[0]->Queries(prompt, false),
                                                    parts[1]->Queries(prompt, false)};
  std::vector<absl::StatusOr<CompressResult>> results(2);
  const PolicyConfig ada = Named("ada-snapkv"), tova = Named("tova");
  // Member 1 names a sequence it does not have.
  group.Run([&](int32_t r) {
    results[r] = parts[r]->engine().Compress(r == 1 ? seqs[r] + 99 : seqs[r], ada,
                                             Budget::Fraction(0.5), queries[r]);
  });
  REQUIRE_ERROR(results[1], absl::StatusCode::kNotFound, "");
  REQUIRE_ERROR(results[0], absl::StatusCode::kAborted, "1 other member");
  // A policy that reads across a layer's heads is refused on every member.
  group.Run([&](int32_t r) {
    results[r] = parts[r]->engine().Compress(seqs[r], tova, Budget::Fraction(0.5), queries[r]);
  });
  for (int32_t r = 0; r < 2; ++r) {
    REQUIRE_ERROR(results[r], absl::StatusCode::kUnimplemented, "across a layer's kv heads");
  }
  // Nothing changed: the same call on both now compresses.
  group.Run([&](int32_t r) {
    results[r] = parts[r]->engine().Compress(seqs[r], ada, Budget::Fraction(0.5), queries[r]);
  });
  REQUIRE_OK(results[0]);
  REQUIRE_OK(results[1]);
  REQUIRE(results[0]->tokens_before == 2 * kLayers * 120);
  REQUIRE_ERROR(parts[0]->engine().JoinGroup(nullptr), absl::StatusCode::kInvalidArgument, "null");
}

TEST_CASE("EvictionEngine in a group: the pool budget frees what one engine over every head "
          "frees",
          "[eviction][group]") {
  for (const int32_t members : {2, 4}) {
    for (const int64_t target : {int64_t{1}, int64_t{9}, int64_t{40}, int64_t{100000}}) {
      // Three requests compressed (their scores kept per token), then the budget.
      const std::vector<Prompt> prompts = {Prompt(200, 70, 1), Prompt(260, 70, 2),
                                           Prompt(230, 70, 3)};
      Member whole(0, kHeads, 3000);
      std::vector<SeqId> whole_seqs;
      for (const Prompt& p : prompts) {
        whole_seqs.push_back(whole.Prefill(p));
        auto q = whole.Queries(p, false);
        REQUIRE_OK(whole.engine().Compress(whole_seqs.back(), Named("uniform-snapkv"),
                                           Budget::Fraction(0.6), q));
      }
      auto single = whole.engine().EnforcePoolBudget(target, 8, 4);
      INFO(members << " members, " << target << " pages to free");
      REQUIRE_OK(single);

      ThreadGroup group(members);
      const int32_t heads = kHeads / members;
      std::vector<std::unique_ptr<Member>> parts;
      std::vector<std::vector<SeqId>> seqs(members);
      std::vector<absl::StatusOr<int64_t>> freed(members);
      for (int32_t r = 0; r < members; ++r) {
        parts.push_back(std::make_unique<Member>(r * heads, heads, 3000));
        REQUIRE_OK(parts[r]->engine().JoinGroup(&group.member(r)));
      }
      // Catch's assertions (in Prefill, Queries, Named) stay on this thread.
      std::vector<std::vector<std::vector<LayerQueries>>> queries(members);
      for (int32_t r = 0; r < members; ++r) {
        for (const Prompt& p : prompts) {
          seqs[r].push_back(parts[r]->Prefill(p));
          queries[r].push_back(parts[r]->Queries(p, false));
        }
      }
      const PolicyConfig uniform = Named("uniform-snapkv");
      group.Run([&](int32_t r) {
        for (size_t s = 0; s < prompts.size(); ++s) {
          auto compressed = parts[r]->engine().Compress(seqs[r][s], uniform,
                                                        Budget::Fraction(0.6), queries[r][s]);
          if (!compressed.ok()) {
            freed[r] = compressed.status();
            return;
          }
        }
        freed[r] = parts[r]->engine().EnforcePoolBudget(target, 8, 4);
      });
      int64_t total = 0;
      for (int32_t r = 0; r < members; ++r) {
        REQUIRE_OK(freed[r]);
        total += *freed[r];
        for (size_t s = 0; s < prompts.size(); ++s) {
          for (int32_t layer = 0; layer < kLayers; ++layer) {
            for (int32_t h = 0; h < heads; ++h) {
              REQUIRE(parts[r]->Positions(seqs[r][s], layer, h) ==
                      whole.Positions(whole_seqs[s], layer, r * heads + h));
            }
          }
        }
      }
      REQUIRE(total == *single);
      REQUIRE(*single >= std::min<int64_t>(target, 1));
    }
  }
}

}  // namespace
}  // namespace headpage
