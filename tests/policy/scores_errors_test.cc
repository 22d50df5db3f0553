// SPDX-License-Identifier: Apache-2.0
// Every scorer's input errors: InvalidArgument naming the problem, and the
// output left untouched.
#include "policy/scores.h"

#include <cstdint>
#include <string>
#include <vector>

#include "tests/policy/scores_test_util.h"
#include "tests/testing/status_matchers.h"

namespace headpage::policy::testing {
namespace {

using absl::StatusCode;

TEST_CASE("every scorer rejects bad inputs and writes nothing", "[policy][scores]") {
  const Vec kd = Concat({kE1, kE2, kZ});
  const std::vector<int32_t> kpos = {0, 1, 2};
  const Vec qd = Concat({kQA, kQB});
  const std::vector<int32_t> qpos = {2};
  const StreamKeys good_keys = Keys(kd, kpos);
  const GroupQueries good_q = Queries(qd, qpos, 2);  // two heads, one query each
  const std::vector<int32_t> bad_order = {0, 2, 2};
  const std::vector<int32_t> descending = {2, 1, 0};
  constexpr float kSentinel = -123.0f;

  // Each scorer in turn, on (keys, queries): every error must leave the output
  // (sized for the good inputs) untouched.
  auto all = [&](const StreamKeys& keys, const GroupQueries& q, StatusCode code,
                 const std::string& what, bool keys_only_error) {
    Vec out(3, kSentinel), rows(6, kSentinel);
    REQUIRE_ERROR(SnapKVScores(keys, q, SnapKVOptions(), absl::MakeSpan(out)), code, what);
    REQUIRE_ERROR(AccumulateAttention(keys, q, GroupReduce::kMean, absl::MakeSpan(out)), code,
                  what);
    REQUIRE_ERROR(LastQueryAttention(keys, q, absl::MakeSpan(rows)), code, what);
    const StreamKeys lk[] = {keys};
    const GroupQueries lq[] = {q};
    REQUIRE_ERROR(TovaScores(lk, lq, absl::MakeSpan(out)), code, what);
    if (keys_only_error) REQUIRE_ERROR(KeyNormScores(keys, absl::MakeSpan(out)), code, what);
    REQUIRE(out == Vec(3, kSentinel));
    REQUIRE(rows == Vec(6, kSentinel));
  };
  const StatusCode kInvalid = StatusCode::kInvalidArgument;

  SECTION("keys") {
    StreamKeys k = good_keys;
    k.data = nullptr;
    all(k, good_q, kInvalid, "keys: data is null", true);
    k = good_keys;
    k.positions = nullptr;
    all(k, good_q, kInvalid, "keys: positions is null", true);
    k = good_keys;
    k.num_tokens = -1;
    all(k, good_q, kInvalid, "num_tokens must be >= 0", true);
    k = good_keys;
    k.head_dim = 0;
    all(k, good_q, kInvalid, "keys: head_dim must be >= 1", true);
    k = good_keys;
    k.dtype = static_cast<DType>(9);
    all(k, good_q, kInvalid, "keys: unknown dtype", true);
    k = Keys(kd, bad_order);
    all(k, good_q, kInvalid, "strictly ascending", true);
    k = Keys(kd, descending);
    all(k, good_q, kInvalid, "strictly ascending", true);
  }
  SECTION("queries") {
    GroupQueries q = good_q;
    q.data = nullptr;
    all(good_keys, q, kInvalid, "queries: data is null", false);
    q = good_q;
    q.positions = nullptr;
    all(good_keys, q, kInvalid, "queries: positions is null", false);
    q = good_q;
    q.group_size = 0;
    all(good_keys, q, kInvalid, "group_size must be >= 1", false);
    q.group_size = -2;
    all(good_keys, q, kInvalid, "group_size must be >= 1", false);
    q = good_q;
    q.num_queries = -1;
    all(good_keys, q, kInvalid, "num_queries must be >= 0", false);
    q = good_q;
    q.head_dim = 0;
    all(good_keys, q, kInvalid, "queries: head_dim must be >= 1", false);
    q = good_q;
    q.dtype = static_cast<DType>(3);
    all(good_keys, q, kInvalid, "queries: unknown dtype", false);
    q = good_q;
    q.head_dim = 2;
    all(good_keys, q, kInvalid, "head_dim mismatch", false);
  }
  SECTION("output sizes") {
    for (size_t size : {0, 2, 4}) {
      Vec out(size, kSentinel);
      REQUIRE_ERROR(SnapKVScores(good_keys, good_q, SnapKVOptions(), absl::MakeSpan(out)), kInvalid,
                    "scores: size");
      REQUIRE_ERROR(AccumulateAttention(good_keys, good_q, GroupReduce::kMax, absl::MakeSpan(out)),
                    kInvalid, "scores: size");
      REQUIRE_ERROR(RecencyScores(good_keys, absl::MakeSpan(out)), kInvalid, "scores: size");
      REQUIRE_ERROR(KeyNormScores(good_keys, absl::MakeSpan(out)), kInvalid, "scores: size");
      const StreamKeys lk[] = {good_keys};
      const GroupQueries lq[] = {good_q};
      REQUIRE_ERROR(TovaScores(lk, lq, absl::MakeSpan(out)), kInvalid, "scores: size");
      REQUIRE(out == Vec(size, kSentinel));
    }
    for (size_t size : {3, 5, 7}) {  // rows need group_size * num_tokens = 6
      Vec rows(size, kSentinel);
      REQUIRE_ERROR(LastQueryAttention(good_keys, good_q, absl::MakeSpan(rows)), kInvalid,
                    "rows: size");
      REQUIRE(rows == Vec(size, kSentinel));
    }
  }
  SECTION("SnapKV options") {
    Vec out(3, kSentinel);
    for (int32_t k : {0, -1, -3, 2, 4, 8}) {
      for (Pooling p : {Pooling::kNone, Pooling::kAvg, Pooling::kMax}) {
        REQUIRE_ERROR(SnapKVScores(good_keys, good_q, Snap(k, p), absl::MakeSpan(out)), kInvalid,
                      "kernel_size must be odd and positive");
      }
    }
    REQUIRE_ERROR(SnapKVScores(good_keys, good_q, Snap(3, static_cast<Pooling>(7)),
                               absl::MakeSpan(out)),
                  kInvalid, "unknown Pooling");
    REQUIRE_ERROR(SnapKVScores(good_keys, good_q,
                               Snap(3, Pooling::kMax, static_cast<GroupReduce>(5)),
                               absl::MakeSpan(out)),
                  kInvalid, "unknown GroupReduce");
    REQUIRE_ERROR(AccumulateAttention(good_keys, good_q, static_cast<GroupReduce>(2),
                                      absl::MakeSpan(out)),
                  kInvalid, "unknown GroupReduce");
    REQUIRE(out == Vec(3, kSentinel));
  }
  SECTION("RecencyScores checks only positions") {
    Vec out(3, kSentinel);
    StreamKeys k = good_keys;
    k.positions = nullptr;
    REQUIRE_ERROR(RecencyScores(k, absl::MakeSpan(out)), kInvalid, "positions is null");
    REQUIRE_ERROR(RecencyScores(Keys(kd, bad_order), absl::MakeSpan(out)), kInvalid,
                  "strictly ascending");
    k = good_keys;
    k.num_tokens = -3;
    REQUIRE_ERROR(RecencyScores(k, absl::MakeSpan(out)), kInvalid, "num_tokens");
    REQUIRE(out == Vec(3, kSentinel));
  }
  SECTION("LastQueryAttention needs exactly one query") {
    Vec rows(6, kSentinel), empty_rows;
    const std::vector<int32_t> two = {1, 2};
    const Vec qd2 = Concat({kQA, kQA, kQB, kQB});
    REQUIRE_ERROR(LastQueryAttention(good_keys, Queries(qd2, two, 2), absl::MakeSpan(rows)),
                  kInvalid, "exactly one query");
    GroupQueries none = good_q;
    none.num_queries = 0;
    REQUIRE_ERROR(LastQueryAttention(good_keys, none, absl::MakeSpan(rows)), kInvalid,
                  "exactly one query");
    REQUIRE(rows == Vec(6, kSentinel));
  }
  SECTION("TOVA layer shape") {
    Vec out(3, kSentinel);
    REQUIRE_ERROR(TovaScores({}, {}, absl::MakeSpan(out)), kInvalid, "layer_keys is empty");
    const StreamKeys lk2[] = {good_keys, good_keys};
    const GroupQueries lq1[] = {good_q};
    REQUIRE_ERROR(TovaScores(lk2, lq1, absl::MakeSpan(out)), kInvalid, "2 KV heads");
    GroupQueries none = good_q;
    none.num_queries = 0;
    const GroupQueries lq_none[] = {good_q, none};
    REQUIRE_ERROR(TovaScores(lk2, lq_none, absl::MakeSpan(out)), kInvalid, "has no query");
    const std::vector<int32_t> at1 = {1};
    const GroupQueries lq_mixed[] = {good_q, Queries(qd, at1, 2)};
    REQUIRE_ERROR(TovaScores(lk2, lq_mixed, absl::MakeSpan(out)), kInvalid,
                  "last query is at position 1");
    // A bad second head is reported even though the first is fine.
    StreamKeys bad = good_keys;
    bad.data = nullptr;
    const StreamKeys lk_bad[] = {good_keys, bad};
    const GroupQueries lq2[] = {good_q, good_q};
    REQUIRE_ERROR(TovaScores(lk_bad, lq2, absl::MakeSpan(out)), kInvalid, "keys: data is null");
    REQUIRE(out == Vec(3, kSentinel));
  }
  SECTION("null arrays are fine for empty inputs") {
    StreamKeys empty;
    empty.head_dim = 4;
    GroupQueries q = good_q;
    REQUIRE_OK(SnapKVScores(empty, q, SnapKVOptions(), absl::Span<float>()));
    REQUIRE_OK(AccumulateAttention(empty, q, GroupReduce::kMax, absl::Span<float>()));
    REQUIRE_OK(RecencyScores(empty, absl::Span<float>()));
    REQUIRE_OK(KeyNormScores(empty, absl::Span<float>()));
    REQUIRE_OK(LastQueryAttention(empty, q, absl::Span<float>()));
    const StreamKeys lk[] = {empty};
    const GroupQueries lq[] = {q};
    REQUIRE_OK(TovaScores(lk, lq, absl::Span<float>()));
    GroupQueries no_queries;
    no_queries.group_size = 1;
    no_queries.head_dim = 4;
    Vec out(3, 0.0f);
    REQUIRE_OK(AccumulateAttention(good_keys, no_queries, GroupReduce::kMean, absl::MakeSpan(out)));
  }
}

}  // namespace
}  // namespace headpage::policy::testing
