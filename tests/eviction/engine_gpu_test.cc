// SPDX-License-Identifier: Apache-2.0
// The CUDA executor against the host executor at compression (ctest label
// `gpu`), on tests/eviction/twin.h's twin pools: after the same Compress,
// every stream must hold the same tokens, in the same order, with the same
// K/V bytes (up to near ties for attention scores).
#include <memory>
#include <vector>

#include "tests/eviction/twin.h"

namespace headpage {
namespace {

using testing::CompressBoth;
using testing::ExpectSameTokens;
using testing::Twin;
using testing::TwinSpec;

// Every named policy that compresses.
const char* const kGpuPolicies[] = {"uniform-snapkv", "ada-snapkv", "pyramid", "ada-pyramid",
                                    "dbudget", "h2o", "tova", "streamingllm", "knorm", "random"};

TEST_CASE("CUDA executor: every GPU policy keeps what the host executor keeps", "[eviction][gpu]") {
  // Geometries over head_dim, GQA group size and page size; lengths around
  // page boundaries; several sequences in one pool.
  const TwinSpec specs[] = {
      {2, 2, 1, 64, 16, DType::kBF16, 4096},  {2, 4, 2, 128, 32, DType::kBF16, 4096},
      {3, 2, 4, 128, 16, DType::kF16, 4096},  {2, 1, 8, 128, 16, DType::kBF16, 4096},
      {2, 8, 1, 64, 32, DType::kF32, 4096},
  };
  uint64_t seed = 1;
  for (const TwinSpec& spec : specs) {
    CAPTURE(spec.kv_heads, spec.group, spec.head_dim, spec.page_size, DTypeName(spec.dtype));
    for (const char* name : kGpuPolicies) {
      CAPTURE(name);
      Twin twin(spec, seed++);
      const int32_t ps = spec.page_size;
      const std::vector<int32_t> lens = {8 * ps - 1, 8 * ps, 8 * ps + 1, 37 * ps + 5};
      std::vector<SeqId> seqs;
      for (int32_t len : lens) seqs.push_back(twin.Prefill(len));
      twin.Mirror();
      auto config = PolicyByName(name);
      REQUIRE_OK(config);
      for (size_t i = 0; i < seqs.size(); ++i) {
        CAPTURE(lens[i]);
        const Budget budget = i % 2 == 0 ? Budget::Fraction(0.3) : Budget::TokensPerHead(3 * ps + 7);
        const int32_t w = config->ObservedQueries(lens[i]);
        const std::vector<LayerQueries> queries = twin.Queries(w, lens[i] - w);
        CompressBoth(twin, seqs[i], *config, budget, queries, /*device_queries=*/i == 1);
      }
    }
  }
}

TEST_CASE("CUDA executor: head classes keep what the host executor keeps", "[eviction][gpu]") {
  // Retrieval heads keep everything, streaming heads their sinks and recent
  // window: per-stream capacities through Select's kTopB.
  const TwinSpec specs[] = {{2, 2, 1, 64, 16, DType::kBF16, 4096},
                            {3, 4, 2, 128, 32, DType::kF16, 4096}};
  uint64_t seed = 11;
  for (const TwinSpec& spec : specs) {
    Twin twin(spec, seed++);
    const int32_t ps = spec.page_size;
    const std::vector<int32_t> lens = {8 * ps - 1, 8 * ps + 1, 37 * ps + 5};
    std::vector<SeqId> seqs;
    for (int32_t len : lens) seqs.push_back(twin.Prefill(len));
    twin.Mirror();
    auto config = PolicyByName("duoattention");
    REQUIRE_OK(config);
    config->sinks = 4;
    config->window = 3 * ps + 2;
    std::vector<float> scores(static_cast<size_t>(spec.layers) * spec.kv_heads);
    for (size_t i = 0; i < scores.size(); ++i) scores[i] = static_cast<float>((i * 7) % 5) / 5.0f;
    auto profile = policy::HeadClasses::FromScores(spec.layers, spec.kv_heads, scores);
    REQUIRE_OK(profile);
    config->head_profile = std::make_shared<const policy::HeadClasses>(*profile);
    for (size_t i = 0; i < seqs.size(); ++i) {
      CAPTURE(lens[i]);
      CompressBoth(twin, seqs[i], *config, Budget::Fraction(1.0), twin.Queries(1, lens[i] - 1),
                   /*device_queries=*/i == 1);
    }
  }
}

TEST_CASE("CUDA executor: Ada-KV's kvpress floor and a pool with no fresh pages",
          "[eviction][gpu][sanitize]") {
  // Just enough pages for the prompts plus a few: Evict compacts in place.
  const TwinSpec spec{2, 4, 2, 128, 16, DType::kBF16, 0};
  for (const bool short_pool : {false, true}) {
    CAPTURE(short_pool);
    TwinSpec s = spec;
    const std::vector<int32_t> lens = {300, 517};
    int64_t needed = 0;
    for (int32_t len : lens) needed += PagesFor(len, s.page_size) * s.layers * s.kv_heads;
    s.pages = short_pool ? needed + 3 : 4 * needed;
    Twin twin(s, 99);
    std::vector<SeqId> seqs;
    for (int32_t len : lens) seqs.push_back(twin.Prefill(len));
    twin.Mirror();
    auto config = PolicyByName("ada-snapkv");
    REQUIRE_OK(config);
    config->ada.floor = policy::AdaFloor::kProtectTop;
    for (size_t i = 0; i < seqs.size(); ++i) {
      const std::vector<LayerQueries> queries = twin.Queries(32, lens[i] - 32);
      CompressBoth(twin, seqs[i], *config, Budget::Fraction(0.25), queries, false);
    }
    auto knorm = PolicyByName("knorm");
    REQUIRE_OK(knorm);
    const SeqId more = twin.Prefill(200);
    twin.Mirror();
    CompressBoth(twin, more, *knorm, Budget::TokensPerHead(50), twin.Queries(1, 199), false);
  }
}

TEST_CASE("CUDA executor: a pipelined batch keeps what the host keeps", "[eviction][gpu]") {
  for (const char* name : {"ada-snapkv", "ada-pyramid", "knorm"}) {
    CAPTURE(name);
    Twin twin({3, 4, 2, 128, 16, DType::kBF16, 8192}, 17);
    const std::vector<int32_t> lens = {400, 1023, 130, 777};
    std::vector<SeqId> seqs;
    for (int32_t len : lens) seqs.push_back(twin.Prefill(len));
    twin.Mirror();
    auto config = PolicyByName(name);
    REQUIRE_OK(config);
    const bool window_scores = config->scorer == PolicyConfig::Scorer::kSnapKV;
    // Each sequence's own queries, kept alive for the batch.
    std::vector<std::vector<LayerQueries>> host_queries, device_queries;
    std::vector<std::vector<std::map<int32_t, float>>> scores;
    std::vector<std::vector<uint8_t>> keep_alive;
    for (size_t i = 0; i < lens.size(); ++i) {
      const int32_t w = config->ObservedQueries(lens[i]);
      std::vector<LayerQueries> q = twin.Queries(w, lens[i] - w);
      for (LayerQueries& layer : q) {
        const size_t bytes = static_cast<size_t>(twin.geometry().num_q_heads) * w *
                             twin.geometry().head_dim * SizeOf(layer.dtype);
        keep_alive.emplace_back(static_cast<const uint8_t*>(layer.data),
                                static_cast<const uint8_t*>(layer.data) + bytes);
        layer.data = keep_alive.back().data();
      }
      keep_alive.emplace_back(reinterpret_cast<const uint8_t*>(q[0].positions),
                              reinterpret_cast<const uint8_t*>(q[0].positions + w));
      for (LayerQueries& layer : q) {
        layer.positions = reinterpret_cast<const int32_t*>(keep_alive.back().data());
      }
      if (window_scores) scores.push_back(twin.HostAttentionScores(seqs[i], *config, q));
      host_queries.push_back(q);
    }
    std::vector<absl::Span<const LayerQueries>> spans(host_queries.begin(), host_queries.end());
    auto on_host = twin.host_engine().CompressBatch(seqs, *config, Budget::Fraction(0.3), spans);
    REQUIRE_OK(on_host);
    auto on_device = twin.device_engine().CompressBatch(seqs, *config, Budget::Fraction(0.3), spans);
    REQUIRE_OK(on_device);
    for (size_t i = 0; i < seqs.size(); ++i) {
      CAPTURE(lens[i]);
      REQUIRE((*on_device)[i].tokens_before == (*on_host)[i].tokens_before);
      if (!window_scores) REQUIRE((*on_device)[i].kept == (*on_host)[i].kept);
      ExpectSameTokens(twin.HostHeld(seqs[i]), twin.DeviceHeld(seqs[i]),
                       window_scores ? &scores[i] : nullptr, twin.geometry().num_kv_heads);
    }
    REQUIRE_OK(twin.device().CheckInvariants());
  }
}

TEST_CASE("CUDA executor: a frozen prefix stays shared, as on the host", "[eviction][gpu]") {
  // A sequence that offered 8 pages of prompt, and one that starts on them
  // with tokens of its own around page boundaries; the second is compressed
  // with the prefix frozen, on both executors.
  for (const char* name : {"uniform-snapkv", "ada-snapkv", "pyramid", "knorm", "streamingllm"}) {
    CAPTURE(name);
    Twin twin({2, 4, 2, 128, 16, DType::kBF16, 4096}, 23);
    const int32_t ps = 16, prefix = 8 * ps;
    const SeqId first = twin.Prefill(prefix + 3);
    std::vector<int32_t> ids(prefix + 3);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(3 * i + 5);
    REQUIRE(*twin.host().CachePrefix(first, ids, 0) == prefix);
    REQUIRE(*twin.device().CachePrefix(first, ids, 0) == prefix);
    const auto hit = twin.host().AddSequenceWithPrefix(absl::MakeConstSpan(ids).first(prefix), 0);
    REQUIRE(twin.device().AddSequenceWithPrefix(absl::MakeConstSpan(ids).first(prefix), 0).seq ==
            hit.seq);
    REQUIRE(hit.cached_tokens == prefix);
    const int32_t own = 5 * ps + 3;
    twin.Append(hit.seq, own);
    twin.Mirror();
    REQUIRE_OK(twin.host_engine().FreezePrefix(hit.seq, prefix));
    REQUIRE_OK(twin.device_engine().FreezePrefix(hit.seq, prefix));
    auto shared = twin.device().StreamPages(hit.seq, 1, 3);
    REQUIRE_OK(shared);
    const std::vector<PageId> before(shared->begin(), shared->begin() + prefix / ps);
    auto config = PolicyByName(name);
    REQUIRE_OK(config);
    const int32_t len = prefix + own;
    const int32_t w = config->ObservedQueries(len);
    CompressBoth(twin, hit.seq, *config, Budget::Fraction(0.6), twin.Queries(w, len - w),
                 /*device_queries=*/true);
    auto after = twin.device().StreamPages(hit.seq, 1, 3);
    REQUIRE_OK(after);
    REQUIRE(std::vector<PageId>(after->begin(), after->begin() + prefix / ps) == before);
    const testing::Held held = twin.DeviceHeld(hit.seq)[1 * 4 + 3];
    for (int32_t i = 0; i < prefix; ++i) REQUIRE(held.positions[i] == i);
    // The sequence that wrote the prefix holds what it wrote.
    ExpectSameTokens(twin.HostHeld(first), twin.DeviceHeld(first), nullptr, 4);
  }
}

TEST_CASE("CUDA executor: what it does not run is refused, changing nothing",
          "[eviction][gpu]") {
  Twin twin({2, 2, 2, 64, 16, DType::kBF16, 1024}, 5);
  const SeqId seq = twin.Prefill(300);
  twin.Mirror();
  auto h2o_max = PolicyByName("h2o");
  REQUIRE_OK(h2o_max);
  h2o_max->reduce = policy::GroupReduce::kMax;
  REQUIRE_ERROR(twin.device_engine().Compress(seq, *h2o_max, Budget::Fraction(0.2),
                                              twin.Queries(300, 0)),
                absl::StatusCode::kUnimplemented, "max group reduction");
  // Queries of another dtype than the cache's are refused.
  auto ada = PolicyByName("ada-snapkv");
  REQUIRE_OK(ada);
  std::vector<LayerQueries> queries = twin.Queries(32, 268);
  for (LayerQueries& q : queries) q.dtype = DType::kF16;
  REQUIRE_ERROR(twin.device_engine().Compress(seq, *ada, Budget::Fraction(0.2), queries),
                absl::StatusCode::kInvalidArgument, "cache's bf16");
  // CriticalKV, DefensiveKV and allocation across layers run on a host pool only.
  for (const char* name : {"critical-snapkv", "critical-ada-snapkv", "defensivekv",
                           "layer-defensivekv"}) {
    auto config = PolicyByName(name);
    REQUIRE_OK(config);
    REQUIRE_ERROR(twin.device_engine().Compress(seq, *config, Budget::Fraction(0.2),
                                                twin.Queries(config->ObservedQueries(300),
                                                             300 - config->ObservedQueries(300))),
                  absl::StatusCode::kUnimplemented, "host pool");
  }
  REQUIRE_OK(twin.device().CheckInvariants());
}

}  // namespace
}  // namespace headpage
