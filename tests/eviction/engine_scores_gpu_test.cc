// SPDX-License-Identifier: Apache-2.0
// The CUDA executor's score store against the host engine's (ctest label
// `gpu`), on tests/eviction/twin.h's twin pools: H2O's prefill scores, its
// decode steps and streaming eviction, decode-time compression (DecodingPress)
// and the pool-wide budget keep the same tokens on both sides (exactly for
// bit-equal scores, up to near ties for attention), and the stored scores agree.
#include <algorithm>
#include <map>
#include <vector>

#include "tests/eviction/twin.h"

namespace headpage {
namespace {

using testing::CompressBoth;
using testing::ExpectSameTokens;
using testing::Held;
using testing::Twin;
using testing::TwinSpec;

// The score each side keeps for each token, by position (the host's where both
// have one): what ExpectSameTokens weighs a differing token by.
std::vector<std::map<int32_t, float>> StoredByPosition(Twin& twin, SeqId seq) {
  auto host_scores = twin.host_engine().StoredScores(seq);
  REQUIRE_OK(host_scores);
  auto device_scores = twin.device_engine().StoredScores(seq);
  REQUIRE_OK(device_scores);
  const std::vector<Held> host = twin.HostHeld(seq), device = twin.DeviceHeld(seq);
  std::vector<std::map<int32_t, float>> out(host.size());
  for (size_t s = 0; s < host.size(); ++s) {
    for (size_t i = 0; i < (*device_scores)[s].size(); ++i) {
      out[s][device[s].positions[i]] = (*device_scores)[s][i];
    }
    for (size_t i = 0; i < (*host_scores)[s].size(); ++i) {
      out[s][host[s].positions[i]] = (*host_scores)[s][i];
    }
  }
  return out;
}

// Where both sides hold the same tokens, their stored scores agree to `tolerance`
// (relative to the stream's largest), and they have scored as many.
void ExpectSameScores(Twin& twin, SeqId seq, float tolerance) {
  auto host_scores = twin.host_engine().StoredScores(seq);
  REQUIRE_OK(host_scores);
  auto device_scores = twin.device_engine().StoredScores(seq);
  REQUIRE_OK(device_scores);
  const std::vector<Held> host = twin.HostHeld(seq), device = twin.DeviceHeld(seq);
  for (size_t s = 0; s < host.size(); ++s) {
    CAPTURE(s);
    REQUIRE((*host_scores)[s].size() == (*device_scores)[s].size());
    if (host[s].positions != device[s].positions) continue;
    float top = 0.0f;
    for (const float x : (*host_scores)[s]) top = std::max(top, std::abs(x));
    for (size_t i = 0; i < (*host_scores)[s].size(); ++i) {
      REQUIRE(std::abs((*host_scores)[s][i] - (*device_scores)[s][i]) <= tolerance * top);
    }
  }
}

void ObserveBoth(Twin& twin, SeqId seq, const PolicyConfig& config, const DecodeSchedule& schedule,
                 bool device_queries) {
  const int32_t position = twin.Decode(seq);
  const std::vector<LayerQueries> queries = twin.Queries(1, position);
  REQUIRE_OK(twin.host_engine().ObserveDecode(seq, config, queries, schedule));
  const std::vector<LayerQueries> device_side = device_queries ? twin.OnDevice(queries) : queries;
  REQUIRE_OK(twin.device_engine().ObserveDecode(seq, config, device_side, schedule));
  auto host_lens = twin.host().StreamLengths(seq);
  REQUIRE_OK(host_lens);
  auto device_lens = twin.device().StreamLengths(seq);
  REQUIRE_OK(device_lens);
  REQUIRE(std::vector<uint32_t>(host_lens->begin(), host_lens->end()) ==
          std::vector<uint32_t>(device_lens->begin(), device_lens->end()));
}

TEST_CASE("CUDA executor: H2O's prefill scores and its decode-time eviction",
          "[eviction][gpu][sanitize]") {
  for (const TwinSpec& spec : {TwinSpec{2, 2, 4, 128, 16, DType::kBF16, 4096},
                               TwinSpec{2, 4, 2, 64, 32, DType::kF16, 4096}}) {
    CAPTURE(spec.group, spec.head_dim, spec.page_size);
    Twin twin(spec, 23);
    auto h2o = PolicyByName("h2o");
    REQUIRE_OK(h2o);
    // Every prompt first: Mirror() copies the whole pool.
    const std::vector<int32_t> lens = {300, 161};
    std::vector<SeqId> seqs;
    for (const int32_t len : lens) seqs.push_back(twin.Prefill(len));
    twin.Mirror();
    for (size_t i = 0; i < lens.size(); ++i) {
      const int32_t len = lens[i];
      const SeqId seq = seqs[i];
      CAPTURE(len);
      // Every prompt query: more than one chunk of the GPU's 128 rows.
      CompressBoth(twin, seq, *h2o, Budget::Fraction(0.3), twin.Queries(len, 0), len == 161);
      ExpectSameScores(twin, seq, 1e-3f);
      // Each decode step adds its attention and evicts back to the budget.
      for (int step = 0; step < 5; ++step) {
        CAPTURE(step);
        ObserveBoth(twin, seq, *h2o, DecodeSchedule(), step % 2 == 1);
        const auto scores = StoredByPosition(twin, seq);
        ExpectSameTokens(twin.HostHeld(seq), twin.DeviceHeld(seq), &scores, spec.kv_heads);
        ExpectSameScores(twin, seq, 1e-3f);
      }
      REQUIRE_OK(twin.device().CheckInvariants());
    }
  }
}

TEST_CASE("CUDA executor: DecodingPress compresses every interval with the last decode queries",
          "[eviction][gpu]") {
  for (const char* name : {"knorm", "uniform-snapkv", "ada-snapkv"}) {
    CAPTURE(name);
    Twin twin({2, 2, 4, 128, 16, DType::kBF16, 4096}, 31);
    auto config = PolicyByName(name);
    REQUIRE_OK(config);
    const SeqId seq = twin.Prefill(250);
    twin.Mirror();
    DecodeSchedule schedule;
    schedule.interval = 3;
    schedule.target = 120;
    schedule.window = 4;
    // Steps 3 and 6 compress: the first with 3 remembered queries, the second
    // with the ring full and wrapped.
    for (int step = 0; step < 7; ++step) {
      CAPTURE(step);
      ObserveBoth(twin, seq, *config, schedule, step % 2 == 0);
      const auto scores = StoredByPosition(twin, seq);
      const bool exact = config->scorer == PolicyConfig::Scorer::kKeyNorm;
      ExpectSameTokens(twin.HostHeld(seq), twin.DeviceHeld(seq), exact ? nullptr : &scores, 2);
    }
    // Each stream back to the target at step 6, then one more token (Ada's
    // streams keep the target on average).
    auto lens = twin.device().StreamLengths(seq);
    REQUIRE_OK(lens);
    uint32_t total = 0;
    for (const uint32_t len : *lens) {
      total += len;
      if (config->allocator != PolicyConfig::Allocator::kAda) REQUIRE(len <= 121);
    }
    REQUIRE(total <= lens->size() * 121);
    REQUIRE_OK(twin.device().CheckInvariants());
  }
}

TEST_CASE("CUDA executor: the pool-wide budget over the stored scores",
          "[eviction][gpu][sanitize]") {
  for (const char* name : {"knorm", "streamingllm", "random"}) {
    CAPTURE(name);
    Twin twin({2, 2, 2, 64, 16, DType::kBF16, 4096}, 41);
    auto config = PolicyByName(name);
    REQUIRE_OK(config);
    const std::vector<int32_t> lens = {200, 333, 97};
    std::vector<SeqId> seqs;
    for (const int32_t len : lens) seqs.push_back(twin.Prefill(len));
    twin.Mirror();
    for (size_t i = 0; i < lens.size(); ++i) {
      CompressBoth(twin, seqs[i], *config, Budget::Fraction(0.8), twin.Queries(1, lens[i] - 1),
                   false);
    }
    // Tokens appended since are unscored, and protected: more of them than
    // the recent window protects.
    for (int step = 0; step < 3; ++step) twin.Decode(seqs[1]);
    for (const SeqId seq : seqs) {
      auto host_scores = twin.host_engine().StoredScores(seq);
      REQUIRE_OK(host_scores);
      auto device_scores = twin.device_engine().StoredScores(seq);
      REQUIRE_OK(device_scores);
      REQUIRE(*host_scores == *device_scores);  // bit-equal scorers
    }
    for (const int64_t pages : {int64_t{5}, int64_t{40}, int64_t{100000}}) {
      CAPTURE(pages);
      auto on_host = twin.host_engine().EnforcePoolBudget(pages, 8, 2);
      REQUIRE_OK(on_host);
      auto on_device = twin.device_engine().EnforcePoolBudget(pages, 8, 2);
      REQUIRE_OK(on_device);
      REQUIRE(*on_device == *on_host);
      for (const SeqId seq : seqs) {
        ExpectSameTokens(twin.HostHeld(seq), twin.DeviceHeld(seq), nullptr, 2);
        // The scores moved with their tokens, and the unscored ones stayed so.
        auto host_scores = twin.host_engine().StoredScores(seq);
        REQUIRE_OK(host_scores);
        auto device_scores = twin.device_engine().StoredScores(seq);
        REQUIRE_OK(device_scores);
        REQUIRE(*host_scores == *device_scores);
      }
      REQUIRE_OK(twin.device().CheckInvariants());
    }
  }
}

TEST_CASE("CUDA executor: the pool-wide budget over H2O's attention totals", "[eviction][gpu]") {
  Twin twin({2, 2, 4, 128, 16, DType::kBF16, 4096}, 43);
  auto h2o = PolicyByName("h2o");
  REQUIRE_OK(h2o);
  const std::vector<int32_t> lens = {260, 190};
  std::vector<SeqId> seqs;
  for (const int32_t len : lens) seqs.push_back(twin.Prefill(len));
  twin.Mirror();
  for (size_t i = 0; i < lens.size(); ++i) {
    CompressBoth(twin, seqs[i], *h2o, Budget::Fraction(0.6), twin.Queries(lens[i], 0), false);
  }
  auto on_host = twin.host_engine().EnforcePoolBudget(6, 4, 2);
  REQUIRE_OK(on_host);
  auto on_device = twin.device_engine().EnforcePoolBudget(6, 4, 2);
  REQUIRE_OK(on_device);
  REQUIRE(std::abs(*on_device - *on_host) <= 1);
  for (const SeqId seq : seqs) {
    const auto scores = StoredByPosition(twin, seq);
    ExpectSameTokens(twin.HostHeld(seq), twin.DeviceHeld(seq), &scores, 2);
  }
  REQUIRE_OK(twin.device().CheckInvariants());
}

// One score per slot cannot hold two sequences' scores: a sequence sharing
// pages stores none (its tokens count as unscored) and cannot observe decode
// steps on the device, while the scores of the sequence it was forked from
// stay as they were.
TEST_CASE("CUDA executor: the score store and forks", "[eviction][gpu]") {
  Twin twin({2, 2, 2, 64, 16, DType::kBF16, 4096}, 47);
  auto knorm = PolicyByName("knorm");
  REQUIRE_OK(knorm);
  const SeqId parent = twin.Prefill(150);
  twin.Mirror();
  CompressBoth(twin, parent, *knorm, Budget::Fraction(0.8), twin.Queries(1, 149), false);
  auto child = twin.device().Fork(parent);
  REQUIRE_OK(child);
  const auto before = twin.DeviceHeld(parent);
  std::vector<LayerQueries> queries = twin.Queries(1, 149);
  REQUIRE_ERROR(twin.device_engine().ObserveDecode(parent, *knorm, queries),
                absl::StatusCode::kFailedPrecondition, "shares pages");
  REQUIRE_ERROR(twin.device_engine().ObserveDecode(*child, *knorm, queries),
                absl::StatusCode::kFailedPrecondition, "shares pages");
  REQUIRE(twin.DeviceHeld(parent).size() == before.size());
  // The child compresses (into fresh pages), storing no scores; the parent's
  // stay what the host keeps.
  REQUIRE_OK(twin.device_engine().Compress(*child, *knorm, Budget::Fraction(0.5), queries));
  auto child_scores = twin.device_engine().StoredScores(*child);
  REQUIRE_OK(child_scores);
  for (const auto& stream : *child_scores) REQUIRE(stream.empty());
  auto host_scores = twin.host_engine().StoredScores(parent);
  REQUIRE_OK(host_scores);
  auto device_scores = twin.device_engine().StoredScores(parent);
  REQUIRE_OK(device_scores);
  REQUIRE(*host_scores == *device_scores);
  REQUIRE_OK(twin.device().CheckInvariants());
}

}  // namespace
}  // namespace headpage
