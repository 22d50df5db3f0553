// SPDX-License-Identifier: Apache-2.0
// The eviction engine on a sequence that starts on a cached prefix
// (EvictionEngine::FreezePrefix): the prefix stays whole and in its shared
// pages, and the rest is compressed exactly as a policy protecting the prefix
// as sinks would compress an unshared copy of the sequence.
#include <vector>

#include "eviction/engine.h"
#include "policy/config.h"
#include "tests/eviction/engine_fixture.h"

namespace headpage {
namespace {

constexpr int32_t kLayers = EngineFixture::kLayers, kHeads = EngineFixture::kHeads;
constexpr int32_t kPrefix = 64, kOwn = 72, kWindow = 8;

std::vector<int32_t> Ids(int32_t n) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) ids[i] = 7 * i + 1;
  return ids;
}

// A sequence that wrote the prefix and offered it, and one that started on it
// and wrote kOwn tokens of its own; the second is frozen at the prefix.
struct Shared {
  SeqId first = 0, second = 0;
};
Shared MakeShared(EngineFixture& f) {
  Shared s;
  s.first = f.Prefill(kPrefix + 5);
  const std::vector<int32_t> ids = Ids(kPrefix + 5);
  REQUIRE(*f.manager().CachePrefix(s.first, ids, 0) == kPrefix + 4);
  const BlockManager::PrefixHit hit =
      f.manager().AddSequenceWithPrefix(absl::MakeConstSpan(ids).first(kPrefix), 0);
  REQUIRE(hit.cached_tokens == kPrefix);
  s.second = hit.seq;
  f.SharePrefix(s.first, s.second, kPrefix);
  f.Append(s.second, kOwn);
  REQUIRE_OK(f.engine().FreezePrefix(s.second, kPrefix));
  return s;
}

TEST_CASE("EvictionEngine: a frozen prefix stays shared, the rest compresses as with sinks",
          "[eviction][prefix]") {
  const char* name = GENERATE("uniform-snapkv", "ada-snapkv", "pyramid", "h2o", "streamingllm",
                              "knorm", "critical-ada-snapkv", "dbudget");
  CAPTURE(name);
  EngineFixture f;
  const Shared s = MakeShared(f);
  auto config = PolicyByName(name);
  REQUIRE_OK(config);
  // 43 of the 72 own tokens, above the window (CriticalKV's is 64: 68).
  const Budget budget = Budget::Fraction(config->window >= 64 ? 0.95 : 0.6);
  const int32_t len = kPrefix + kOwn;
  const bool all_queries = config->scorer == PolicyConfig::Scorer::kH2O;
  std::vector<LayerQueries> queries =
      all_queries ? f.Queries(len, 0) : f.Queries(kWindow, len - kWindow);
  if (config->needs_output_projection()) f.AddOutputProjections(&queries);
  std::vector<std::vector<PageId>> prefix_pages;
  for (int32_t st = 0; st < kLayers * kHeads; ++st) {
    auto pages = f.manager().StreamPages(s.first, st / kHeads, st % kHeads);
    REQUIRE_OK(pages);
    prefix_pages.emplace_back(pages->begin(), pages->begin() + kPrefix / 4);
  }

  // The oracle: an unshared copy, the prefix protected as sinks and its
  // tokens added to the budget the rest gets.
  const SeqId twin = f.Copy(s.second);
  PolicyConfig as_sinks = *config;
  as_sinks.sinks = std::max(as_sinks.sinks, kPrefix);
  if (as_sinks.recent_half) {  // H2O's recent half is of the rest's capacity
    as_sinks.recent_half = false;
    as_sinks.window = budget.CapacityFor(kOwn) / 2;
  }
  const Budget twin_budget = Budget::TokensPerHead(kPrefix + budget.CapacityFor(kOwn));
  if (config->allocator == PolicyConfig::Allocator::kPyramid) {
    // The pyramid spreads the rest's capacity over the layers, each on top of
    // the prefix: compare the kept counts against that instead.
    auto result = f.engine().Compress(s.second, *config, budget, queries);
    REQUIRE_OK(result);
    auto capacities = policy::PyramidCapacities(kLayers, budget.CapacityFor(kOwn), config->window,
                                                kOwn, config->pyramid_beta);
    REQUIRE_OK(capacities);
    for (int32_t st = 0; st < kLayers * kHeads; ++st) {
      REQUIRE(result->kept[st] == kPrefix + (*capacities)[st / kHeads]);
    }
  } else {
    auto twin_result = f.engine().Compress(twin, as_sinks, twin_budget, queries);
    REQUIRE_OK(twin_result);
    auto result = f.engine().Compress(s.second, *config, budget, queries);
    REQUIRE_OK(result);
    REQUIRE(result->kept == twin_result->kept);
    for (int32_t layer = 0; layer < kLayers; ++layer) {
      for (int32_t h = 0; h < kHeads; ++h) {
        REQUIRE(f.CheckStream(s.second, layer, h) == f.CheckStream(twin, layer, h));
      }
    }
  }
  // The prefix is still the cached pages, and the first sequence still holds
  // what it wrote.
  for (int32_t st = 0; st < kLayers * kHeads; ++st) {
    auto pages = f.manager().StreamPages(s.second, st / kHeads, st % kHeads);
    REQUIRE_OK(pages);
    REQUIRE(std::vector<PageId>(pages->begin(), pages->begin() + kPrefix / 4) == prefix_pages[st]);
    const std::vector<int32_t> held = f.CheckStream(s.first, st / kHeads, st % kHeads);
    REQUIRE(held.size() == static_cast<size_t>(kPrefix + 5));
  }
  REQUIRE(*f.manager().IntactTokens(s.second) == kPrefix);
  REQUIRE_OK(f.manager().CheckInvariants());
}

TEST_CASE("EvictionEngine: the pool budget keeps a frozen prefix", "[eviction][prefix]") {
  EngineFixture f;
  const Shared s = MakeShared(f);
  auto config = PolicyByName("uniform-snapkv");
  REQUIRE_OK(config);
  const int32_t len = kPrefix + kOwn;
  auto result = f.engine().Compress(s.second, *config, Budget::Fraction(0.75),
                                    f.Queries(kWindow, len - kWindow));
  REQUIRE_OK(result);
  // Ask for far more than anything can give: the floors and the prefix stop it.
  auto freed = f.engine().EnforcePoolBudget(1000, /*floor_tokens=*/4, /*protect_recent=*/0);
  REQUIRE_OK(freed);
  REQUIRE(*freed > 0);
  for (int32_t layer = 0; layer < kLayers; ++layer) {
    for (int32_t h = 0; h < kHeads; ++h) {
      const std::vector<int32_t> held = f.CheckStream(s.second, layer, h);
      REQUIRE(held.size() >= static_cast<size_t>(kPrefix));
      for (int32_t i = 0; i < kPrefix; ++i) REQUIRE(held[i] == i);
    }
  }
  REQUIRE_OK(f.manager().CheckInvariants());
}

TEST_CASE("EvictionEngine: H2O's decode-time eviction keeps a frozen prefix", "[eviction][prefix]") {
  // Capacity 64 + 20 (the own tokens' budget, its half recent); each decode
  // step evicts back to it, never below the prefix.
  EngineFixture f;
  const Shared s = MakeShared(f);
  auto config = PolicyByName("h2o");
  REQUIRE_OK(config);
  const int32_t len = kPrefix + kOwn;
  REQUIRE_OK(f.engine().Compress(s.second, *config, Budget::TokensPerHead(20), f.Queries(len, 0)));
  for (int32_t step = 0; step < 6; ++step) {
    f.Append(s.second, 1);
    REQUIRE_OK(f.engine().ObserveDecode(s.second, *config, f.Queries(1, len + step)));
    for (int32_t st = 0; st < kLayers * kHeads; ++st) {
      const std::vector<int32_t> held = f.CheckStream(s.second, st / kHeads, st % kHeads);
      REQUIRE(held.size() == static_cast<size_t>(kPrefix + 20));
      for (int32_t i = 0; i < kPrefix; ++i) REQUIRE(held[i] == i);
      REQUIRE(held.back() == len + step);  // the newest token, in the recent half
    }
  }
  REQUIRE_OK(f.manager().CheckInvariants());
}

TEST_CASE("EvictionEngine: FreezePrefix refuses what is not an intact page-aligned prefix",
          "[eviction][prefix]") {
  EngineFixture f;
  const SeqId seq = f.Prefill(40);
  REQUIRE_ERROR(f.engine().FreezePrefix(seq, 6), absl::StatusCode::kInvalidArgument,
                "multiple of the page size");
  REQUIRE_ERROR(f.engine().FreezePrefix(seq, 44), absl::StatusCode::kInvalidArgument,
                "at most the 40 tokens");
  REQUIRE_ERROR(f.engine().FreezePrefix(999, 4), absl::StatusCode::kNotFound, "not live");
  auto config = PolicyByName("uniform-snapkv");
  REQUIRE_OK(config);
  REQUIRE_OK(f.engine().Compress(seq, *config, Budget::TokensPerHead(36), f.Queries(kWindow, 32)));
  // After an eviction without a frozen prefix, nothing is intact any more.
  REQUIRE_ERROR(f.engine().FreezePrefix(seq, 4), absl::StatusCode::kInvalidArgument,
                "at most the 0 tokens");
  REQUIRE_OK(f.engine().FreezePrefix(seq, 0));
}

}  // namespace
}  // namespace headpage
