// SPDX-License-Identifier: Apache-2.0
#include "eviction/engine.h"

#include <map>
#include <random>
#include <vector>

#include "allocator/arena.h"
#include "eviction/cuda_executor.h"
#include "eviction/host_executor.h"
#include "policy/budget.h"
#include "policy/options.h"
#include "policy/select.h"
#include "kernels/write_kv.h"
#include "tests/blockmgr/blockmgr_test_util.h"
#include "tests/eviction/engine_fixture.h"

namespace headpage {
namespace {

// What a policy should keep, recomputed on a dense copy of the stream's keys
// with the policy functions directly: the engine must agree with it exactly.
std::vector<int32_t> ExpectedSnapKVKeep(const std::vector<float>& keys, const std::vector<int32_t>& positions,
                                        const LayerQueries& q, int32_t h, int32_t kept, int32_t window) {
  const int32_t n = static_cast<int32_t>(positions.size());
  const policy::StreamKeys sk{keys.data(), positions.data(), n, EngineFixture::kDim, DType::kF32};
  const auto* qd = static_cast<const float*>(q.data) + static_cast<size_t>(h) * 2 * q.num_queries * EngineFixture::kDim;
  const policy::GroupQueries gq{qd, q.positions, 2, q.num_queries, EngineFixture::kDim, DType::kF32};
  std::vector<float> scores(n);
  REQUIRE_OK(policy::SnapKVScores(sk, gq, policy::SnapKVOptions(), absl::MakeSpan(scores)));
  std::vector<int32_t> keep;
  REQUIRE_OK(policy::SelectKeepSet({scores, positions, {0, window}}, kept, &keep));
  for (int32_t& k : keep) k = positions[k];
  return keep;
}

TEST_CASE("EvictionEngine: every policy leaves exactly its chosen tokens, and frees their pages",
          "[eviction]") {
  const std::string name = GENERATE("uniform-snapkv", "pyramid", "ada-snapkv", "ada-pyramid",
                                    "dbudget", "h2o", "streamingllm", "tova", "knorm", "random");
  CAPTURE(name);
  EngineFixture f;
  const int32_t len = 150;
  const SeqId seq = f.Prefill(len);
  auto config = PolicyByName(name);
  REQUIRE_OK(config);
  const int32_t w = config->ObservedQueries(len);
  auto queries = f.Queries(w, len - w);
  const int64_t free_before = f.manager().pool().free_pages();
  auto result = f.engine().Compress(seq, *config, Budget::TokensPerHead(48), queries);
  REQUIRE_OK(result);
  REQUIRE(result->tokens_before == 4 * len);
  int64_t tokens = 0, pages = 0;
  for (int32_t layer = 0; layer < 2; ++layer) {
    for (int32_t h = 0; h < 2; ++h) {
      const std::vector<int32_t> held = f.CheckStream(seq, layer, h);
      REQUIRE(static_cast<int32_t>(held.size()) == result->kept[layer * 2 + h]);
      tokens += static_cast<int64_t>(held.size());
      pages += PagesFor(static_cast<int64_t>(held.size()), 4);
      // Protected tokens survive.
      for (int32_t p = 0; p < config->sinks; ++p) REQUIRE(std::count(held.begin(), held.end(), p) == 1);
      if (config->window > 0) REQUIRE(held.back() == len - 1);
    }
  }
  REQUIRE(result->tokens_after == tokens);
  REQUIRE(tokens < 4 * len);
  // Every page the policy gave up is back in the pool.
  REQUIRE(result->pages_freed == 4 * PagesFor(len, 4) - pages);
  REQUIRE(f.manager().pool().free_pages() - free_before == result->pages_freed);
  REQUIRE(f.manager().Stats().pages_retired == 0);
  REQUIRE_OK(f.manager().CheckInvariants());
  if (name != "dbudget" && name != "pyramid" && name != "ada-pyramid") {
    // Fixed budgets: 48 a head on average (Ada's rounding within half a token a head).
    REQUIRE(std::abs(tokens - 4 * 48) <= 2);
  }
}

TEST_CASE("EvictionEngine: uniform-snapkv keeps SnapKV's top tokens of every head", "[eviction]") {
  EngineFixture f;
  const SeqId seq = f.Prefill(100);
  auto config = PolicyByName("uniform-snapkv");
  REQUIRE_OK(config);
  auto queries = f.Queries(32, 100 - 32);
  // The oracle: SnapKV and selection on the dense keys that were written.
  std::vector<std::vector<int32_t>> expected(4);
  for (int32_t st = 0; st < 4; ++st) {
    std::vector<int32_t> positions;
    const std::vector<float> keys = f.DenseKeys(seq, st / 2, st % 2, &positions);
    expected[st] = ExpectedSnapKVKeep(keys, positions, queries[st / 2], st % 2, 40, 32);
  }
  REQUIRE_OK(f.engine().Compress(seq, *config, Budget::TokensPerHead(40), queries));
  for (int32_t st = 0; st < 4; ++st) {
    CAPTURE(st);
    REQUIRE(f.CheckStream(seq, st / 2, st % 2) == expected[st]);
  }
  // Heads choose differently: head-wise eviction, not one token set per layer.
  REQUIRE(expected[0] != expected[1]);
}

TEST_CASE("EvictionEngine: dbudget-fro cuts where the paper's metric says, on every prompt query",
          "[eviction]") {
  // The oracle, per layer: SnapKV's vote over the last 8 queries (no pooling)
  // orders each stream's candidates, and DBudgetFrobeniusKept cuts on the
  // attention rows of all 60 prompt queries. A threshold of 0.3 (the paper's
  // 1% keeps everything of random keys, whose attention is spread out).
  EngineFixture f;
  const int32_t len = 60;
  const SeqId seq = f.Prefill(len);
  PolicyOptions options;
  REQUIRE_OK(SetPolicyOption("threshold", "0.3", &options));
  auto config = PolicyByName("dbudget-fro", options);
  REQUIRE_OK(config);
  const auto queries = f.Queries(config->ObservedQueries(len), 0);  // positions 0..59
  std::vector<int32_t> expected;
  for (int32_t layer = 0; layer < 2; ++layer) {
    std::vector<std::vector<float>> keys(2), scores(2), rows(2);
    std::vector<std::vector<int32_t>> positions(2);
    std::vector<policy::StreamScores> streams;
    std::vector<absl::Span<const float>> spans;
    const LayerQueries& q = queries[layer];
    for (int32_t h = 0; h < 2; ++h) {
      keys[h] = f.DenseKeys(seq, layer, h, &positions[h]);
      const policy::StreamKeys sk{keys[h].data(), positions[h].data(), len, EngineFixture::kDim,
                                  DType::kF32};
      const auto* all = static_cast<const float*>(q.data) +
                        static_cast<size_t>(h) * 2 * q.num_queries * EngineFixture::kDim;
      std::vector<float> window(2 * 8 * EngineFixture::kDim);
      for (int32_t g = 0; g < 2; ++g) {
        std::copy_n(all + (static_cast<size_t>(g) * len + len - 8) * EngineFixture::kDim,
                    8 * EngineFixture::kDim, window.begin() + g * 8 * EngineFixture::kDim);
      }
      const policy::GroupQueries vote{window.data(), q.positions + len - 8, 2, 8,
                                      EngineFixture::kDim, DType::kF32};
      scores[h].resize(len);
      REQUIRE_OK(policy::SnapKVScores(sk, vote, config->snapkv, absl::MakeSpan(scores[h])));
      const policy::GroupQueries every{all, q.positions, 2, len, EngineFixture::kDim, DType::kF32};
      rows[h].resize(static_cast<size_t>(2) * len * len);
      REQUIRE_OK(policy::QueryAttentionRows(sk, every, absl::MakeSpan(rows[h])));
    }
    for (int32_t h = 0; h < 2; ++h) {
      streams.push_back({scores[h], positions[h], {0, 8}});
      spans.push_back(rows[h]);
    }
    auto kept = policy::DBudgetFrobeniusKept(streams, spans,
                                             absl::MakeConstSpan(q.positions, len), 2, 0.3);
    REQUIRE_OK(kept);
    expected.insert(expected.end(), kept->begin(), kept->end());
  }
  auto result = f.engine().Compress(seq, *config, Budget::Fraction(1.0), queries);
  REQUIRE_OK(result);
  REQUIRE(std::vector<int32_t>(result->kept.begin(), result->kept.end()) == expected);
  REQUIRE(result->tokens_after < result->tokens_before);  // it cut something
  REQUIRE(expected[0] == expected[1]);  // one cut for the layer
  REQUIRE_OK(f.manager().CheckInvariants());
  // The GPU executor says why it cannot run it.
  REQUIRE_ERROR(CudaExecutor::Supports(*config), absl::StatusCode::kUnimplemented,
                "DBudgetKV's Frobenius metric does not run on the GPU");
}

TEST_CASE("EvictionEngine: full changes nothing, a larger budget is a no-op", "[eviction]") {
  EngineFixture f;
  const SeqId seq = f.Prefill(60);
  auto queries = f.Queries(32, 28);
  auto full = PolicyByName("full");
  REQUIRE_OK(full);
  auto r = f.engine().Compress(seq, *full, Budget::Fraction(0.2), queries);
  REQUIRE_OK(r);
  REQUIRE(r->tokens_after == r->tokens_before);
  REQUIRE(r->pages_freed == 0);
  auto ada = PolicyByName("ada-snapkv");
  REQUIRE_OK(ada);
  r = f.engine().Compress(seq, *ada, Budget::TokensPerHead(100), queries);
  REQUIRE_OK(r);
  REQUIRE(r->tokens_after == 4 * 60);
  for (int32_t st = 0; st < 4; ++st) REQUIRE(f.CheckStream(seq, st / 2, st % 2).size() == 60);
}

TEST_CASE("EvictionEngine: bad policies, budgets and queries are refused, changing nothing",
          "[eviction]") {
  EngineFixture f;
  const SeqId seq = f.Prefill(40);
  auto queries = f.Queries(32, 8);
  auto config = PolicyByName("ada-snapkv");
  REQUIRE_OK(config);
  REQUIRE_ERROR(PolicyByName("snapkv2"), absl::StatusCode::kInvalidArgument, "unknown policy");
  const auto check_unchanged = [&] {
    for (int32_t st = 0; st < 4; ++st) REQUIRE(f.CheckStream(seq, st / 2, st % 2).size() == 40);
  };
  PolicyConfig bad = *config;
  bad.ada.alpha = 1.5;
  REQUIRE_ERROR(f.engine().Compress(seq, bad, Budget::TokensPerHead(36), queries),
                absl::StatusCode::kInvalidArgument, "alpha");
  bad = *config;
  bad.pyramid_beta = 0;
  REQUIRE_ERROR(f.engine().Compress(seq, bad, Budget::TokensPerHead(36), queries),
                absl::StatusCode::kInvalidArgument, "beta");
  bad = *config;
  bad.dbudget_threshold = -1;
  REQUIRE_ERROR(f.engine().Compress(seq, bad, Budget::TokensPerHead(36), queries),
                absl::StatusCode::kInvalidArgument, "threshold");
  bad = *config;
  bad.window = 41;
  REQUIRE_ERROR(f.engine().Compress(seq, bad, Budget::TokensPerHead(36), queries),
                absl::StatusCode::kInvalidArgument, "longer than the prompt");
  REQUIRE_ERROR(f.engine().Compress(seq, *config, Budget::TokensPerHead(0), queries),
                absl::StatusCode::kInvalidArgument, "budget");
  REQUIRE_ERROR(f.engine().Compress(seq, *config, Budget::TokensPerHead(36),
                                    absl::MakeConstSpan(queries).subspan(0, 1)),
                absl::StatusCode::kInvalidArgument, "queries for 1 layers");
  REQUIRE_ERROR(f.engine().Compress(seq + 100, *config, Budget::TokensPerHead(36), queries),
                absl::StatusCode::kNotFound, "not live");
  // Query positions outside the sequence, negative, or not strictly ascending.
  for (const std::vector<int32_t>& positions :
       {std::vector<int32_t>{38, 39, 40}, std::vector<int32_t>{-1, 0, 1},
        std::vector<int32_t>{5, 4, 6}, std::vector<int32_t>{5, 5, 6}}) {
    CAPTURE(positions);
    auto wrong = f.Queries(3, 30);
    for (LayerQueries& q : wrong) q.positions = positions.data();
    REQUIRE_ERROR(f.engine().Compress(seq, *config, Budget::TokensPerHead(36), wrong),
                  absl::StatusCode::kInvalidArgument, "ascend strictly within");
    REQUIRE_ERROR(f.engine().ObserveDecode(seq, *config, f.Queries(1, 40)),
                  absl::StatusCode::kInvalidArgument, "ascend strictly within");
  }
  check_unchanged();
  REQUIRE_OK(f.manager().CheckInvariants());
}

TEST_CASE("EvictionEngine: decode-time compression every N steps", "[eviction]") {
  EngineFixture f;
  const SeqId seq = f.Prefill(40);
  auto config = PolicyByName("uniform-snapkv");
  REQUIRE_OK(config);
  const DecodeSchedule schedule{/*interval=*/8, /*target=*/24, /*window=*/4};
  for (int32_t step = 0; step < 16; ++step) {
    f.Append(seq, 1);
    auto q = f.Queries(1, 40 + step);
    REQUIRE_OK(f.engine().ObserveDecode(seq, *config, q, schedule));
    auto lens = f.manager().StreamLengths(seq);
    REQUIRE_OK(lens);
    const uint32_t expect = step == 7 || step == 15 ? 24u : (step < 7 ? 41u + step : 24u + (step - 7));
    for (uint32_t len : *lens) REQUIRE(len == expect);
  }
  for (int32_t st = 0; st < 4; ++st) REQUIRE(f.CheckStream(seq, st / 2, st % 2).back() == 55);
}

TEST_CASE("EvictionEngine: H2O evicts as it decodes, staying at its capacity", "[eviction]") {
  EngineFixture f;
  const SeqId seq = f.Prefill(80);
  auto config = PolicyByName("h2o");
  REQUIRE_OK(config);
  auto prompt = f.Queries(80, 0);
  REQUIRE_OK(f.engine().Compress(seq, *config, Budget::TokensPerHead(20), prompt));
  for (int32_t step = 0; step < 12; ++step) {
    f.Append(seq, 1);
    auto q = f.Queries(1, 80 + step);
    REQUIRE_OK(f.engine().ObserveDecode(seq, *config, q));
    for (int32_t st = 0; st < 4; ++st) {
      const std::vector<int32_t> held = f.CheckStream(seq, st / 2, st % 2);
      REQUIRE(held.size() == 20);
      // The recent half is always kept.
      for (int32_t p = 80 + step - 9; p <= 80 + step; ++p) {
        REQUIRE(std::count(held.begin(), held.end(), p) == 1);
      }
    }
  }
  REQUIRE_OK(f.manager().CheckInvariants());
}

TEST_CASE("EvictionEngine: the pool-wide budget frees pages across sequences", "[eviction]") {
  EngineFixture f;
  auto config = PolicyByName("ada-snapkv");
  REQUIRE_OK(config);
  std::vector<SeqId> seqs;
  for (int32_t i = 0; i < 3; ++i) {
    seqs.push_back(f.Prefill(60 + 20 * i));
    auto q = f.Queries(32, 60 + 20 * i - 32);
    REQUIRE_OK(f.engine().Compress(seqs.back(), *config, Budget::Fraction(0.8), q));
  }
  const int64_t free_before = f.manager().pool().free_pages();
  auto freed = f.engine().EnforcePoolBudget(/*pages_to_free=*/20, /*floor_tokens=*/8,
                                            /*protect_recent=*/4);
  REQUIRE_OK(freed);
  REQUIRE(*freed >= 20);
  REQUIRE(f.manager().pool().free_pages() - free_before == *freed);
  for (const SeqId seq : seqs) {
    for (int32_t st = 0; st < 4; ++st) {
      const std::vector<int32_t> held = f.CheckStream(seq, st / 2, st % 2);
      REQUIRE(held.size() >= 8);
    }
  }
  // Floors above every stream's length: nothing can go.
  auto none = f.engine().EnforcePoolBudget(10, 1000, 0);
  REQUIRE_OK(none);
  REQUIRE(*none == 0);
  REQUIRE_ERROR(f.engine().EnforcePoolBudget(-1), absl::StatusCode::kInvalidArgument, "pages_to_free");
  REQUIRE_OK(f.manager().CheckInvariants());
}

TEST_CASE("EvictionEngine: the pool-wide budget works from knorm's negative scores", "[eviction]") {
  EngineFixture f;
  auto config = PolicyByName("knorm");
  REQUIRE_OK(config);
  const SeqId seq = f.Prefill(80);
  auto q = f.Queries(1, 79);
  REQUIRE_OK(f.engine().Compress(seq, *config, Budget::Fraction(0.9), q));
  auto freed = f.engine().EnforcePoolBudget(8, 4, 0);
  REQUIRE_OK(freed);
  REQUIRE(*freed >= 8);
  for (int32_t st = 0; st < 4; ++st) REQUIRE(f.CheckStream(seq, st / 2, st % 2).size() >= 4);
}

TEST_CASE("EvictionEngine: CompressBatch equals one Compress per sequence", "[eviction]") {
  const std::string name = GENERATE("ada-snapkv", "pyramid", "h2o", "knorm");
  CAPTURE(name);
  auto config = PolicyByName(name);
  REQUIRE_OK(config);
  const std::vector<int32_t> lens = {90, 150, 121};
  // Two engines over identical pools and prompts: one batch against one call each.
  EngineFixture batched(600, 11), single(600, 11);
  std::vector<SeqId> seqs;
  std::vector<std::vector<LayerQueries>> queries;
  for (int32_t len : lens) {
    seqs.push_back(batched.Prefill(len));
    REQUIRE(single.Prefill(len) == seqs.back());
  }
  // Queries() reuses its buffers: keep a copy of every sequence's.
  std::vector<absl::Span<const LayerQueries>> spans;
  queries.resize(lens.size());
  std::vector<std::vector<std::vector<float>>> owned(lens.size());
  std::vector<std::vector<int32_t>> positions(lens.size());
  for (size_t i = 0; i < lens.size(); ++i) {
    const int32_t w = config->ObservedQueries(lens[i]);
    auto q = batched.Queries(w, lens[i] - w);
    positions[i].assign(q[0].positions, q[0].positions + w);
    for (LayerQueries& layer : q) {
      const auto* data = static_cast<const float*>(layer.data);
      owned[i].emplace_back(data, data + static_cast<size_t>(EngineFixture::kQHeads) * w * EngineFixture::kDim);
    }
    queries[i].clear();
    for (size_t l = 0; l < owned[i].size(); ++l) {
      queries[i].push_back({owned[i][l].data(), positions[i].data(), w, DType::kF32, MemoryKind::kHost, {}});
    }
  }
  for (const auto& q : queries) spans.push_back(q);
  const Budget budget = Budget::Fraction(0.5);
  auto batch = batched.engine().CompressBatch(seqs, *config, budget, spans);
  REQUIRE_OK(batch);
  REQUIRE(batch->size() == lens.size());
  for (size_t i = 0; i < lens.size(); ++i) {
    auto one = single.engine().Compress(seqs[i], *config, budget, queries[i]);
    REQUIRE_OK(one);
    REQUIRE((*batch)[i].kept == one->kept);
    REQUIRE((*batch)[i].tokens_before == one->tokens_before);
    REQUIRE((*batch)[i].tokens_after == one->tokens_after);
    REQUIRE((*batch)[i].pages_freed == one->pages_freed);
    for (int32_t layer = 0; layer < EngineFixture::kLayers; ++layer) {
      for (int32_t h = 0; h < EngineFixture::kHeads; ++h) {
        REQUIRE(batched.CheckStream(seqs[i], layer, h) == single.CheckStream(seqs[i], layer, h));
      }
    }
  }
  REQUIRE(batched.manager().pool().free_pages() == single.manager().pool().free_pages());
  REQUIRE_OK(batched.manager().CheckInvariants());
}

TEST_CASE("EvictionEngine: CompressBatch refuses a bad batch, changing nothing", "[eviction]") {
  EngineFixture f;
  const SeqId a = f.Prefill(60), b = f.Prefill(70);
  auto config = PolicyByName("uniform-snapkv");
  REQUIRE_OK(config);
  const std::vector<LayerQueries> qa = f.Queries(32, 28);
  const absl::Span<const LayerQueries> one[] = {qa};
  const absl::Span<const LayerQueries> two[] = {qa, qa};
  const SeqId twice[] = {a, a};
  REQUIRE_ERROR(f.engine().CompressBatch(twice, *config, Budget::Fraction(0.6), two),
                absl::StatusCode::kInvalidArgument, "listed twice");
  const SeqId both[] = {a, b};
  REQUIRE_ERROR(f.engine().CompressBatch(both, *config, Budget::Fraction(0.6), one),
                absl::StatusCode::kInvalidArgument, "queries for 1");
  // The second sequence's prompt is too short for the budget to cover its
  // window (60% of 40 < 32): refused before the first one (60% of 60 = 36) is
  // compressed.
  const SeqId short_one = f.Prefill(40);
  const SeqId with_short[] = {a, short_one};
  REQUIRE_ERROR(f.engine().CompressBatch(with_short, *config, Budget::Fraction(0.6), two),
                absl::StatusCode::kInvalidArgument, "protected tokens");
  // The second sequence is unknown: the first is not compressed either.
  const SeqId with_unknown[] = {a, b + 100};
  REQUIRE_ERROR(f.engine().CompressBatch(with_unknown, *config, Budget::Fraction(0.6), two),
                absl::StatusCode::kNotFound, "");
  for (const SeqId seq : {a, b}) {
    auto lens = f.manager().StreamLengths(seq);
    REQUIRE_OK(lens);
    for (uint32_t len : *lens) REQUIRE(len == (seq == a ? 60u : 70u));
  }
}

TEST_CASE("EvictionEngine: device memory never reaches the host executor", "[eviction]") {
  EngineFixture f;
  const SeqId seq = f.Prefill(40);
  // A host arena's view, labelled device memory: nothing may dereference it.
  auto arena = HostArena::Create(EngineFixture::Geometry(), 600);
  REQUIRE_OK(arena);
  PagedKV device_view = arena->view();
  device_view.memory = MemoryKind::kDevice;
  HostExecutor executor(&f.manager(), device_view);
  LayerKeys keys;
  REQUIRE_ERROR(executor.GatherLayer(seq, 0, &keys), absl::StatusCode::kInvalidArgument,
                "device memory");
  auto engine = EvictionEngine::Create(&f.manager(), device_view);
#if HEADPAGE_HAVE_CUDA
  REQUIRE_OK(engine);
  REQUIRE(engine->memory() == MemoryKind::kDevice);
  // Nothing scored yet: nothing to free, and no device work.
  auto freed = engine->EnforcePoolBudget(1);
  REQUIRE_OK(freed);
  REQUIRE(*freed == 0);
#else
  REQUIRE_ERROR(engine, absl::StatusCode::kUnimplemented, "no CUDA");
#endif
  // Device queries handed to a host pool are refused, changing nothing.
  auto config = PolicyByName("uniform-snapkv");
  REQUIRE_OK(config);
  std::vector<LayerQueries> queries = f.Queries(8, 32);
  queries[1].memory = MemoryKind::kDevice;
  REQUIRE_ERROR(f.engine().Compress(seq, *config, Budget::TokensPerHead(20), queries),
                absl::StatusCode::kInvalidArgument, "device memory for a host pool");
  auto lens = f.manager().StreamLengths(seq);
  REQUIRE_OK(lens);
  for (uint32_t len : *lens) REQUIRE(len == 40);
}

}  // namespace
}  // namespace headpage
