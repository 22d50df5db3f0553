// SPDX-License-Identifier: Apache-2.0
// The eviction engine on the head-wise methods that weigh values by the
// output projection (CriticalKV, DefensiveKV) and that share a budget across
// layers (Layer-DefensiveKV): each keep set equals the policy functions' own
// result on a dense copy of the streams.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "eviction/engine.h"
#include "policy/budget.h"
#include "policy/critical.h"
#include "policy/defensive.h"
#include "policy/head_classes.h"
#include "policy/select.h"
#include "tests/eviction/engine_fixture.h"

namespace headpage {
namespace {

constexpr int32_t kLen = 200, kLayers = EngineFixture::kLayers, kHeads = EngineFixture::kHeads;
constexpr int32_t kDim = EngineFixture::kDim, kGroup = EngineFixture::kQHeads / kHeads;

// One layer of the fixture's sequence, dense, with what the policies compute
// from it.
struct DenseLayer {
  std::vector<std::vector<float>> keys, values, scores, norms;
  std::vector<int32_t> positions;

  std::vector<policy::StreamScores> Streams(const policy::Protection& protection) const {
    std::vector<policy::StreamScores> streams;
    for (const auto& s : scores) streams.push_back({s, positions, protection});
    return streams;
  }
};

policy::GroupQueries GroupOf(const LayerQueries& q, int32_t h) {
  const auto* data = static_cast<const float*>(q.data) + static_cast<size_t>(h) * kGroup * q.num_queries * kDim;
  return {data, q.positions, kGroup, q.num_queries, kDim, DType::kF32};
}

DenseLayer Dense(EngineFixture& f, SeqId seq, int32_t layer, const LayerQueries& q,
                 const PolicyConfig& config, int32_t capacity) {
  DenseLayer d;
  d.keys.resize(kHeads);
  d.values.resize(kHeads);
  d.scores.assign(kHeads, std::vector<float>(kLen));
  d.norms.assign(kHeads, std::vector<float>(kLen));
  std::vector<std::vector<float>> mean(kHeads, std::vector<float>(kLen));
  double mass = 0;
  int32_t prefix = 0;
  for (int32_t h = 0; h < kHeads; ++h) {
    d.keys[h] = f.DenseKeys(seq, layer, h, &d.positions);
    d.values[h] = f.DenseValues(seq, layer, h);
    const policy::StreamKeys keys{d.keys[h].data(), d.positions.data(), kLen, kDim, DType::kF32};
    REQUIRE_OK(policy::ProjectedValueNorms({d.values[h].data(), kLen, kDim, DType::kF32},
                                           q.output_projection, kHeads, h,
                                           absl::MakeSpan(d.norms[h])));
    if (config.scorer == PolicyConfig::Scorer::kDefensive) {
      policy::DefensiveStream measured;
      REQUIRE_OK(policy::DefensiveScores(keys, GroupOf(q, h), config.snapkv.kernel_size,
                                         absl::MakeSpan(d.scores[h]), absl::MakeSpan(mean[h]),
                                         &measured));
      mass += measured.mass_before_window;
      prefix = measured.prefix;
    } else {
      REQUIRE_OK(policy::SnapKVScores(keys, GroupOf(q, h), config.snapkv, absl::MakeSpan(d.scores[h])));
    }
  }
  if (config.scorer == PolicyConfig::Scorer::kDefensive) {
    REQUIRE(prefix == kLen - config.window);
    const std::vector<absl::Span<float>> out = {absl::MakeSpan(d.scores[0]), absl::MakeSpan(d.scores[1])};
    const std::vector<absl::Span<const float>> means = {mean[0], mean[1]}, norms = {d.norms[0], d.norms[1]};
    REQUIRE_OK(policy::DefensiveLayerScores(out, means, norms, prefix,
                                            mass / (kHeads * kGroup * q.num_queries), capacity));
  }
  return d;
}

// The positions the policy keeps of head h given its kept count. CriticalKV:
// kvpress adds epsilon to SnapKV's mean over the window's rows (headpage's
// scores are the sum), and its Ada variant secures each head's top
// int(alpha C) first.
std::vector<int32_t> Keep(const PolicyConfig& config, const DenseLayer& d, int32_t h, int32_t kept,
                          const policy::Protection& protection, int32_t capacity) {
  policy::StreamScores stream{d.scores[h], d.positions, protection};
  std::vector<float> critical(kLen);
  if (config.critical) {
    policy::CriticalOptions options = config.critical_options;
    options.epsilon *= config.window;
    const int32_t secured = config.allocator == PolicyConfig::Allocator::kAda
                                ? static_cast<int32_t>(config.ada.alpha * capacity)
                                : 0;
    REQUIRE_OK(policy::CriticalScores(stream, d.norms[h], kept, options, absl::MakeSpan(critical),
                                      secured));
    stream.scores = critical;
  }
  std::vector<int32_t> keep;
  REQUIRE_OK(policy::SelectKeepSet(stream, kept, &keep));
  for (int32_t& k : keep) k = d.positions[k];
  return keep;
}

TEST_CASE("EvictionEngine: CriticalKV and DefensiveKV keep what their policy functions select",
          "[eviction][headwise]") {
  const std::string name =
      GENERATE("critical-snapkv", "critical-ada-snapkv", "defensivekv", "layer-defensivekv");
  CAPTURE(name);
  EngineFixture f;
  const SeqId seq = f.Prefill(kLen);
  auto config = PolicyByName(name);
  REQUIRE_OK(config);
  const int32_t w = config->ObservedQueries(kLen), capacity = 80;
  auto queries = f.Queries(w, kLen - w);
  f.AddOutputProjections(&queries);
  const policy::Protection protection{0, config->window};

  std::vector<DenseLayer> dense;
  std::vector<policy::StreamScores> all;
  for (int32_t layer = 0; layer < kLayers; ++layer) {
    dense.push_back(Dense(f, seq, layer, queries[layer], *config, capacity));
  }
  for (const DenseLayer& d : dense) {
    const auto streams = d.Streams(protection);
    all.insert(all.end(), streams.begin(), streams.end());
  }
  std::vector<int32_t> kept;
  if (config->allocator == PolicyConfig::Allocator::kAdaAcrossLayers) {
    auto across = policy::AdaKept(all, capacity, config->ada);
    REQUIRE_OK(across);
    kept = *across;
  } else {
    for (const DenseLayer& d : dense) {
      auto layer_kept = config->allocator == PolicyConfig::Allocator::kAda
                            ? policy::AdaKept(d.Streams(protection), capacity, config->ada)
                            : policy::UniformKept(d.Streams(protection), capacity);
      REQUIRE_OK(layer_kept);
      kept.insert(kept.end(), layer_kept->begin(), layer_kept->end());
    }
  }

  auto result = f.engine().Compress(seq, *config, Budget::TokensPerHead(capacity), queries);
  REQUIRE_OK(result);
  REQUIRE(result->kept == kept);
  int64_t total = 0;
  for (int32_t layer = 0; layer < kLayers; ++layer) {
    for (int32_t h = 0; h < kHeads; ++h) {
      CAPTURE(layer, h);
      const int32_t k = kept[layer * kHeads + h];
      REQUIRE(f.CheckStream(seq, layer, h) == Keep(*config, dense[layer], h, k, protection, capacity));
      total += k;
    }
  }
  REQUIRE_OK(f.manager().CheckInvariants());
  if (config->ada.alpha == 0.0 || config->allocator == PolicyConfig::Allocator::kUniform) {
    REQUIRE(total == int64_t{kLayers} * kHeads * capacity);  // no rounding: exact
  }
  if (name == "layer-defensivekv") {
    // The budget moved between layers (their scores differ).
    REQUIRE(kept[0] + kept[1] != kept[2] + kept[3]);
  }
}

TEST_CASE("EvictionEngine: the value-weighted policies need every layer's output projection",
          "[eviction][headwise]") {
  EngineFixture f;
  const SeqId seq = f.Prefill(kLen);
  auto config = PolicyByName("critical-snapkv");
  REQUIRE_OK(config);
  auto queries = f.Queries(64, kLen - 64);
  const auto lens_before = f.manager().StreamLengths(seq).value();
  const std::vector<uint32_t> before(lens_before.begin(), lens_before.end());
  REQUIRE_ERROR(f.engine().Compress(seq, *config, Budget::TokensPerHead(80), queries),
                absl::StatusCode::kInvalidArgument, "layer 0 needs its W_o");
  f.AddOutputProjections(&queries);
  queries[1].output_projection.num_q_heads = 2;  // another model's shape
  REQUIRE_ERROR(f.engine().Compress(seq, *config, Budget::TokensPerHead(80), queries),
                absl::StatusCode::kInvalidArgument, "layer 1 needs its W_o");
  const auto lens_after = f.manager().StreamLengths(seq).value();
  REQUIRE(std::vector<uint32_t>(lens_after.begin(), lens_after.end()) == before);
  // Values that make a norm NaN or Inf, in the last layer: refused before the
  // first layer is compacted.
  for (const char* name : {"critical-snapkv", "defensivekv"}) {
    CAPTURE(name);
    auto policy = PolicyByName(name);
    REQUIRE_OK(policy);
    auto good = f.Queries(policy->ObservedQueries(kLen), kLen - policy->ObservedQueries(kLen));
    f.AddOutputProjections(&good);
    std::vector<float> poisoned(static_cast<const float*>(good[1].output_projection.data),
                                static_cast<const float*>(good[1].output_projection.data) +
                                    24 * EngineFixture::kQHeads * kDim);
    // A NaN, or q head 0's whole first row at 3e38: some token's projection overflows.
    for (const float bad : {std::numeric_limits<float>::quiet_NaN(), 3e38f}) {
      std::fill(poisoned.begin(), poisoned.begin() + (std::isnan(bad) ? 1 : kDim), bad);
      good[1].output_projection.data = poisoned.data();
      REQUIRE_ERROR(f.engine().Compress(seq, *policy, Budget::TokensPerHead(80), good),
                    absl::StatusCode::kInvalidArgument, "layer 1 kv head 0: the value norm");
      const auto lens_now = f.manager().StreamLengths(seq).value();
      REQUIRE(std::vector<uint32_t>(lens_now.begin(), lens_now.end()) == before);
    }
  }
  // Decode-time compression is not built for them: refused before any change.
  const DecodeSchedule every4{4, 60, 8};
  auto step = f.Queries(1, kLen - 1);
  REQUIRE_ERROR(f.engine().ObserveDecode(seq, *config, step, every4),
                absl::StatusCode::kUnimplemented, "decode-time compression is not built");
  // A policy that does not read it ignores a missing one.
  auto snap = PolicyByName("uniform-snapkv");
  REQUIRE_OK(snap);
  REQUIRE_OK(f.engine().Compress(seq, *snap, Budget::TokensPerHead(80), f.Queries(32, kLen - 32)));
}

}  // namespace
}  // namespace headpage

namespace headpage {
namespace {

// Two layers of two kv heads with scores (0.9 0.1 | 0.2 0.8): at sparsity 0.5
// heads (0, 0) and (1, 1) are retrieval heads and keep all 200 tokens; the
// other two keep their 4 sinks and last 20 tokens.
TEST_CASE("EvictionEngine: head classes keep retrieval heads whole, streaming heads their "
          "sinks and recent window", "[eviction][headwise]") {
  EngineFixture f;
  const SeqId seq = f.Prefill(kLen);
  auto config = PolicyByName("duoattention");
  REQUIRE_OK(config);
  config->sinks = 4;
  config->window = 20;
  auto queries = f.Queries(20, kLen - 20);
  // No profile: refused, nothing changed.
  REQUIRE_ERROR(f.engine().Compress(seq, *config, Budget::Fraction(1.0), queries),
                absl::StatusCode::kInvalidArgument, "needs a head profile of 2 layers x 2 kv heads");
  const auto lens = f.manager().StreamLengths(seq).value();
  REQUIRE(std::vector<uint32_t>(lens.begin(), lens.end()) == std::vector<uint32_t>(4, kLen));
  auto profile = policy::HeadClasses::FromScores(2, 2, {0.9f, 0.1f, 0.2f, 0.8f});
  REQUIRE_OK(profile);
  config->head_profile = std::make_shared<const policy::HeadClasses>(*profile);
  auto result = f.engine().Compress(seq, *config, Budget::Fraction(1.0), queries);
  REQUIRE_OK(result);
  REQUIRE(result->kept == std::vector<int32_t>{kLen, 24, 24, kLen});
  std::vector<int32_t> streaming = {0, 1, 2, 3};  // the sinks
  for (int32_t p = kLen - 20; p < kLen; ++p) streaming.push_back(p);
  std::vector<int32_t> all(kLen);
  for (int32_t p = 0; p < kLen; ++p) all[p] = p;
  CHECK(f.CheckStream(seq, 0, 0) == all);
  CHECK(f.CheckStream(seq, 0, 1) == streaming);
  CHECK(f.CheckStream(seq, 1, 0) == streaming);
  CHECK(f.CheckStream(seq, 1, 1) == all);
  REQUIRE_OK(f.manager().CheckInvariants());

  // A prompt no longer than sinks + window is kept whole (not refused).
  const SeqId short_seq = f.Prefill(20);
  auto kept_short = f.engine().Compress(short_seq, *config, Budget::Fraction(1.0), f.Queries(1, 19));
  REQUIRE_OK(kept_short);
  REQUIRE(kept_short->kept == std::vector<int32_t>(4, 20));
  // Nor does it compress again while decoding.
  REQUIRE_ERROR(f.engine().ObserveDecode(seq, *config, f.Queries(1, kLen - 1), DecodeSchedule{4, 60, 8}),
                absl::StatusCode::kUnimplemented, "head classes keep");

  // A profile of another model's shape is refused.
  auto wrong = policy::HeadClasses::FromScores(3, 2, {0, 0, 0, 0, 0, 0});
  REQUIRE_OK(wrong);
  config->head_profile = std::make_shared<const policy::HeadClasses>(*wrong);
  REQUIRE_ERROR(f.engine().Compress(seq, *config, Budget::Fraction(1.0), queries),
                absl::StatusCode::kInvalidArgument, "has one of 3 x 2");
}

}  // namespace
}  // namespace headpage
