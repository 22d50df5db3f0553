// SPDX-License-Identifier: Apache-2.0
// ref::WindowScores: hand-computed cases, the CPU policy scorer on the dense
// gathered keys, page-id invariance, and every error.
#include "kernels/window_scores.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "absl/types/span.h"
#include "policy/scores.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels/window_scores_case.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::HostCache;
using testing::PagedCaseSpec;
using testing::WindowScoresCase;
using testing::WindowScoresShape;
using Vec = std::vector<float>;

// The kernels' enums mirror the policy's, value for value.
static_assert(static_cast<int>(policy::Pooling::kAvg) == static_cast<int>(policy::Pooling::kAvg) &&
              static_cast<int>(policy::Pooling::kMax) == static_cast<int>(policy::Pooling::kMax) &&
              static_cast<int>(policy::Pooling::kNone) == static_cast<int>(policy::Pooling::kNone));
static_assert(static_cast<int>(policy::GroupReduce::kMax) ==
              static_cast<int>(policy::GroupReduce::kMax));

// ---------------------------------------------------------------------------
// Hand-computed cases, as in the policy's scores_test.cc: the first four
// elements of d = 64 vectors carry the example, sm_scale = 1/2, and the
// queries are scaled by 2, so that a logit q.k / 2 is exactly a chosen log:
// QA weighs keys Z:1 E1:2 E2:3 E12:6, QB swaps E1 and E2.
constexpr int32_t kD = 64;
constexpr float kLn2 = 0.693147180559945309f;
constexpr float kLn3 = 1.098612288668109691f;
const Vec kZ = {0, 0, 0, 0};
const Vec kE1 = {1, 0, 0, 0};
const Vec kE2 = {0, 1, 0, 0};
const Vec kQA = {2 * kLn2, 2 * kLn3, 0, 0};
const Vec kQB = {2 * kLn3, 2 * kLn2, 0, 0};

// Streams of 4-element keys in an f32 pool of 2-token pages, laid out
// back to front so that page ids and logical order disagree.
struct HandPool {
  HostCache cache;
  std::vector<int32_t> indptr{0}, page_ids, lens;

  HandPool(const std::vector<std::vector<Vec>>& keys,
           const std::vector<std::vector<int32_t>>& positions)
      : cache(Pages(keys) + 1, 2, kD) {
    int32_t next = cache.view.num_pages - 1;
    for (size_t s = 0; s < keys.size(); ++s) {
      const int32_t n = static_cast<int32_t>(keys[s].size());
      for (int64_t p = 0; p < PagesFor(n, 2); ++p) page_ids.push_back(next--);
      indptr.push_back(static_cast<int32_t>(page_ids.size()));
      lens.push_back(n);
      for (int32_t j = 0; j < n; ++j) {
        const int64_t slot = SlotOf(page_ids.data() + indptr[s], j, 2);
        for (int32_t e = 0; e < kD; ++e) {
          cache.data[cache.view.KeyOffset(slot) + e] = e < 4 ? keys[s][j][e] : 0.0f;
        }
        cache.positions[slot] = positions[s][j];
      }
    }
  }
  static int32_t Pages(const std::vector<std::vector<Vec>>& keys) {
    int32_t pages = 0;
    for (const auto& k : keys) pages += static_cast<int32_t>(PagesFor(k.size(), 2));
    return pages;
  }
};

// Query rows [seq][q head][w] of 4 elements, padded to kD.
Vec QueryRows(const std::vector<Vec>& rows) {
  Vec out;
  for (const Vec& r : rows) {
    out.insert(out.end(), r.begin(), r.end());
    out.insert(out.end(), kD - 4, 0.0f);
  }
  return out;
}

struct HandCase {
  HandPool pool;
  Vec queries;
  std::vector<int32_t> qpos, offsets;
  Vec scores;
  WindowScoresArgs args;

  HandCase(HandPool p, Vec q, std::vector<int32_t> query_positions, int32_t q_heads,
           int32_t kv_heads)
      : pool(std::move(p)), queries(std::move(q)), qpos(std::move(query_positions)) {
    offsets.push_back(0);
    int32_t max_len = 0;
    for (int32_t len : pool.lens) {
      offsets.push_back(offsets.back() + len);
      max_len = std::max(max_len, len);
    }
    scores.assign(offsets.back(), -1.0f);
    const int32_t seqs = static_cast<int32_t>(pool.lens.size()) / kv_heads;
    args.cache = pool.cache.view;
    args.num_seqs = seqs;
    args.num_q_heads = q_heads;
    args.num_kv_heads = kv_heads;
    args.window = static_cast<int32_t>(qpos.size()) / seqs;
    args.queries = queries.data();
    args.query_positions = qpos.data();
    args.indptr = pool.indptr.data();
    args.page_ids = pool.page_ids.data();
    args.num_page_ids = static_cast<int32_t>(pool.page_ids.size());
    args.lens = pool.lens.data();
    args.score_offsets = offsets.data();
    args.max_len = max_len;
    args.num_scores = offsets.back();
    args.sm_scale = 0.5f;
    args.scores = scores.data();
  }

  Vec Run(int32_t kernel_size, policy::Pooling pooling,
          policy::GroupReduce reduce = policy::GroupReduce::kMean) {
    args.kernel_size = kernel_size;
    args.pooling = pooling;
    args.reduce = reduce;
    REQUIRE_OK(ref::WindowScores(args));
    return scores;
  }
};

Vec Over(Vec v, double denom) {
  for (float& x : v) x = static_cast<float>(x / denom);
  return v;
}

void RequireNear(const Vec& actual, const Vec& expected, double rel = 1e-6) {
  REQUIRE(actual.size() == expected.size());
  for (size_t j = 0; j < actual.size(); ++j) {
    INFO("j = " << j << ": " << actual[j] << " vs " << expected[j]);
    REQUIRE(actual[j] == Approx(expected[j]).epsilon(rel).margin(1e-9));
  }
}

// Keys Z E1 E2 Z E1 at positions 0..4; two QA queries at 3 and 4:
//   query @3 sees keys 0..3: 1/7 2/7 3/7 1/7 0; query @4 all five: 1/9 2/9 3/9 1/9 2/9
//   column sums (x 63): 16 32 48 16 14. Keys 0..2 are the prefix, 3 and 4 the window's.
TEST_CASE("WindowScores: causal window sum and prefix pooling", "[kernels]") {
  auto make = [](std::vector<int32_t> qpos) {
    return HandCase(HandPool({{kZ, kE1, kE2, kZ, kE1}}, {{0, 1, 2, 3, 4}}),
                    QueryRows({kQA, kQA}), std::move(qpos), 1, 1);
  };
  HandCase c = make({3, 4});
  RequireNear(c.Run(7, policy::Pooling::kNone), Over({16, 32, 48, 16, 14}, 63));
  RequireNear(c.Run(1, policy::Pooling::kMax), Over({16, 32, 48, 16, 14}, 63));
  RequireNear(c.Run(3, policy::Pooling::kMax), Over({32, 48, 48, 16, 14}, 63));
  // avg pads the prefix ends with zeros (never the window's values) and divides by 3.
  RequireNear(c.Run(3, policy::Pooling::kAvg), Over({48, 96, 80, 48, 42}, 189));
  // The window starts at its lowest query position, whatever the row order.
  HandCase reversed = make({4, 3});
  RequireNear(reversed.Run(3, policy::Pooling::kMax), Over({32, 48, 48, 16, 14}, 63));
}

// G = 2 over keys E1 E2 Z, one query per head at position 2: QA -> 2/6 3/6 1/6,
// QB -> 3/6 2/6 1/6. Mean 5/12 5/12 1/6, max 1/2 1/2 1/6; the reduction comes
// before pooling (max-pooling each head first would give 1/2 for the mean).
TEST_CASE("WindowScores: GQA reduces the group before pooling", "[kernels]") {
  HandCase c(HandPool({{kE1, kE2, kZ}}, {{0, 1, 2}}), QueryRows({kQA, kQB}), {2}, 2, 1);
  RequireNear(c.Run(1, policy::Pooling::kNone), {5.0f / 12, 5.0f / 12, 1.0f / 6});
  RequireNear(c.Run(1, policy::Pooling::kNone, policy::GroupReduce::kMax), {0.5f, 0.5f, 1.0f / 6});
  RequireNear(c.Run(3, policy::Pooling::kMax), {5.0f / 12, 5.0f / 12, 1.0f / 6});
}

// Stream 0: keys E1 E2 Z at positions 10 20 30, query QA at 25: it sees the
// first two (2/5 3/5) and starts the window, so key 30 is a window key nobody
// sees. Stream 1 (second sequence): keys E1 E2 at 5 6 and queries QB@3 (sees
// nothing, contributes nothing) and QA@6: both keys are the window's, 2/5 3/5.
TEST_CASE("WindowScores: positions, not slots, decide visibility and the window", "[kernels]") {
  HandCase c(HandPool({{kE1, kE2, kZ}, {kE1, kE2}}, {{10, 20, 30}, {5, 6}}),
             QueryRows({kQA, kQA, kQB, kQA}), {25, 25, 3, 6}, 1, 1);
  // Sequence 0 sees E1 E2 twice: (2/5 + 2/5, 3/5 + 3/5) pooled avg k=3 over the
  // two prefix keys: (0 + 0.8 + 1.2) / 3 twice; key 30 is the window's: 0.
  RequireNear(c.Run(3, policy::Pooling::kAvg), {2.0f / 3, 2.0f / 3, 0.0f, 0.4f, 0.6f});
}

TEST_CASE("WindowScores: writes only each stream's own scores", "[kernels]") {
  // Three kv heads of G = 1, one QA query at position 1 each.
  HandCase c(HandPool({{kE1, kE2}, {}, {kZ}}, {{0, 1}, {}, {0}}), QueryRows({kQA, kQA, kQA}),
             {1}, 3, 3);
  // Stream 0 at 0..1, stream 1 empty, stream 2 at 4: slots 2 and 3 are a gap.
  c.offsets = {0, 2, 4, 5};
  c.scores.assign(5, -1.0f);
  c.args.score_offsets = c.offsets.data();
  c.args.num_scores = 5;
  c.args.scores = c.scores.data();
  RequireNear(c.Run(1, policy::Pooling::kNone), {0.4f, 0.6f, -1.0f, -1.0f, 1.0f});
}

// accumulate adds each stream's scores into what `scores` holds and leaves
// the gaps alone: two runs give twice the attention (H2O's chunked sum).
TEST_CASE("WindowScores: accumulate adds into the scores", "[kernels]") {
  HandCase c(HandPool({{kE1, kE2}, {}, {kZ}}, {{0, 1}, {}, {0}}), QueryRows({kQA, kQA, kQA}),
             {1}, 3, 3);
  c.offsets = {0, 2, 4, 5};
  c.scores.assign(5, -1.0f);
  c.args.score_offsets = c.offsets.data();
  c.args.num_scores = 5;
  c.args.scores = c.scores.data();
  c.args.accumulate = true;
  RequireNear(c.Run(1, policy::Pooling::kNone), {-0.6f, -0.4f, -1.0f, -1.0f, 0.0f});
  RequireNear(c.Run(1, policy::Pooling::kNone), {-0.2f, 0.2f, -1.0f, -1.0f, 1.0f});
}

// ---------------------------------------------------------------------------
// Against policy::SnapKVScores on the gathered keys of random pools.

std::vector<float> Policy(WindowScoresCase& c, const WindowScoresArgs& args) {
  testing::PagedCase& pool = c.pool();
  const int32_t d = pool.spec().head_dim;
  const int32_t group = args.num_q_heads / args.num_kv_heads;
  const size_t q_row_bytes = static_cast<size_t>(d) * SizeOf(pool.spec().dtype);
  std::vector<float> out(static_cast<size_t>(args.num_scores), -1.0f);
  for (int32_t s = 0; s < args.num_seqs; ++s) {
    for (int32_t h = 0; h < args.num_kv_heads; ++h) {
      const size_t stream = static_cast<size_t>(s) * args.num_kv_heads + h;
      const int32_t n = pool.lens()[stream];
      std::vector<float> keys(static_cast<size_t>(n) * d);
      std::vector<int32_t> positions(n);
      for (int32_t j = 0; j < n; ++j) {
        for (int32_t e = 0; e < d; ++e) {
          float key = pool.Key(stream, j, e);
          if (pool.spec().kv_dtype == KvDType::kFP8E4M3) {
            // ref:: reads fp8 keys dequantized and rounded to the model dtype.
            uint8_t rounded[4];
            StoreFromFloat(rounded, 0, pool.spec().dtype, key);
            key = LoadAsFloat(rounded, 0, pool.spec().dtype);
          }
          keys[static_cast<size_t>(j) * d + e] = key;
        }
        positions[j] = pool.Position(stream, j);
      }
      policy::StreamKeys k{keys.data(), positions.data(), n, d, DType::kF32};
      policy::GroupQueries q;
      q.data = c.queries().data() +
               (static_cast<size_t>(s) * args.num_q_heads + h * group) * args.window * q_row_bytes;
      q.positions = c.query_positions().data() + static_cast<size_t>(s) * args.window;
      q.group_size = group;
      q.num_queries = args.window;
      q.head_dim = d;
      q.dtype = pool.spec().dtype;
      policy::SnapKVOptions options;
      options.kernel_size = args.kernel_size;
      options.pooling = static_cast<policy::Pooling>(args.pooling);
      options.reduce = static_cast<policy::GroupReduce>(args.reduce);
      REQUIRE_OK(policy::SnapKVScores(
          k, q, options, absl::MakeSpan(out.data() + c.score_offsets()[stream], n)));
    }
  }
  return out;
}

// ref:: computes in double and multiplies by sm_scale; the policy computes in
// float, divides by sqrt(d) and uses a polynomial exp within 1 ulp. So they
// agree to float rounding, not bit for bit: each logit differs by ~1e-7
// relative, each softmax entry by a few ulps, the sums likewise.
TEST_CASE("WindowScores: ref equals policy::SnapKVScores on the gathered keys", "[kernels]") {
  uint64_t seed = 1;
  double worst = 0.0;
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    // 8 and 96 are not compiled into the GPU kernels: the reference takes them.
    for (int32_t head_dim : {8, 64, 96, 128}) {
      for (int32_t page_size : {16, 5}) {
        for (auto [q_heads, kv_heads, window] :
             std::vector<std::tuple<int32_t, int32_t, int32_t>>{{4, 2, 8}, {2, 2, 1}, {8, 1, 32}}) {
          std::vector<int32_t> lens;
          for (int32_t i = 0; i < kv_heads * 3; ++i) {
            lens.push_back(testing::EdgeLengths(page_size)[i % 6] + (i / 6) * 40);
          }
          WindowScoresShape shape{3, q_heads, kv_heads, window};
          WindowScoresCase c(PagedCaseSpec{page_size, head_dim, dtype, lens}, shape, seed++);
          for (policy::Pooling pooling : {policy::Pooling::kNone, policy::Pooling::kAvg, policy::Pooling::kMax}) {
            for (policy::GroupReduce reduce : {policy::GroupReduce::kMean, policy::GroupReduce::kMax}) {
              CAPTURE(DTypeName(dtype), head_dim, page_size, q_heads, kv_heads, window,
                      static_cast<int>(pooling), static_cast<int>(reduce));
              WindowScoresArgs args = c.HostArgs();
              args.kernel_size = pooling == policy::Pooling::kAvg ? 5 : 7;
              args.pooling = pooling;
              args.reduce = reduce;
              std::vector<float> scores(static_cast<size_t>(c.num_scores()), -1.0f);
              args.scores = scores.data();
              REQUIRE_OK(ref::WindowScores(args));
              const std::vector<float> expected = Policy(c, args);
              for (size_t j = 0; j < scores.size(); ++j) {
                INFO("score " << j << ": " << scores[j] << " vs " << expected[j]);
                REQUIRE(scores[j] == Approx(expected[j]).epsilon(1e-5).margin(1e-9));
                if (expected[j] > 1e-6) {
                  worst = std::max<double>(worst, std::abs(scores[j] - expected[j]) / expected[j]);
                }
              }
            }
          }
        }
      }
    }
  }
  WARN("ref vs policy: worst relative difference " << worst);
}

TEST_CASE("WindowScores: ref on fp8 pages equals policy::SnapKVScores on the dequantized keys",
          "[kernels][fp8]") {
  uint64_t seed = 70;
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    for (int32_t page_size : {16, 5}) {
      std::vector<int32_t> lens;
      for (int32_t i = 0; i < 4; ++i) lens.push_back(testing::EdgeLengths(page_size)[i + 1] + i * 40);
      PagedCaseSpec spec{page_size, 64, dtype, lens};
      spec.kv_dtype = KvDType::kFP8E4M3;
      WindowScoresCase c(spec, WindowScoresShape{2, 4, 2, 8}, seed++);
      CAPTURE(DTypeName(dtype), page_size);
      WindowScoresArgs args = c.HostArgs();
      args.kernel_size = 5;
      args.pooling = policy::Pooling::kAvg;
      args.reduce = policy::GroupReduce::kMean;
      std::vector<float> scores(static_cast<size_t>(c.num_scores()), -1.0f);
      args.scores = scores.data();
      REQUIRE_OK(ref::WindowScores(args));
      const std::vector<float> expected = Policy(c, args);
      for (size_t j = 0; j < scores.size(); ++j) {
        REQUIRE(scores[j] == Approx(expected[j]).epsilon(1e-5).margin(1e-9));
      }
    }
  }
}

TEST_CASE("WindowScores: results do not depend on page ids", "[kernels]") {
  WindowScoresShape shape{2, 8, 2, 16};
  WindowScoresCase c(PagedCaseSpec{16, 128, DType::kBF16, {100, 17, 0, 64}, 6}, shape, 99);
  std::vector<float> before(static_cast<size_t>(c.num_scores())), after(before.size());
  WindowScoresArgs args = c.HostArgs();
  args.scores = before.data();
  REQUIRE_OK(ref::WindowScores(args));
  c.pool().RelabelPages(7);
  args = c.HostArgs();
  args.scores = after.data();
  REQUIRE_OK(ref::WindowScores(args));
  REQUIRE(before == after);
}

// ---------------------------------------------------------------------------
// Errors.

TEST_CASE("WindowScores: Validate rejects every bad argument", "[kernels]") {
  WindowScoresShape shape{2, 4, 2, 4};
  WindowScoresCase c(PagedCaseSpec{16, 64, DType::kF16, {3, 20, 0, 5}}, shape, 3);
  std::vector<float> scores(static_cast<size_t>(c.num_scores()));
  WindowScoresArgs good = c.HostArgs();
  good.scores = scores.data();
  REQUIRE_OK(Validate(good));
  using absl::StatusCode;
  auto expect = [&](auto mutate, StatusCode code, const char* text) {
    WindowScoresArgs bad = good;
    mutate(bad);
    REQUIRE_ERROR(Validate(bad), code, text);
    REQUIRE_ERROR(ref::WindowScores(bad), code, text);
  };
  expect([](WindowScoresArgs& a) { a.cache.data = nullptr; }, StatusCode::kInvalidArgument, "null");
  expect([](WindowScoresArgs& a) { a.cache.head_dim = 1025; }, StatusCode::kInvalidArgument,
         "head_dim 1025 is outside [1, 1024]");
  expect([](WindowScoresArgs& a) { a.cache.dtype = static_cast<DType>(7); },
         StatusCode::kInvalidArgument, "dtype");
  expect([](WindowScoresArgs& a) { a.num_seqs = -1; }, StatusCode::kInvalidArgument, "num_seqs -1");
  expect([](WindowScoresArgs& a) { a.num_kv_heads = 0; }, StatusCode::kInvalidArgument, "num_kv_heads 0");
  expect([](WindowScoresArgs& a) { a.num_q_heads = 0; }, StatusCode::kInvalidArgument, "num_q_heads 0");
  expect([](WindowScoresArgs& a) { a.num_q_heads = 3; }, StatusCode::kInvalidArgument, "multiple");
  expect([](WindowScoresArgs& a) { a.window = 0; }, StatusCode::kInvalidArgument, "window 0");
  expect([](WindowScoresArgs& a) { a.window = kMaxScoreWindow + 1; }, StatusCode::kInvalidArgument,
         "window 129");
  expect([](WindowScoresArgs& a) { a.kernel_size = 4; }, StatusCode::kInvalidArgument, "kernel_size");
  expect([](WindowScoresArgs& a) { a.kernel_size = -1; }, StatusCode::kInvalidArgument, "kernel_size");
  expect([](WindowScoresArgs& a) { a.pooling = static_cast<policy::Pooling>(3); },
         StatusCode::kInvalidArgument, "pooling value 3");
  expect([](WindowScoresArgs& a) { a.reduce = static_cast<policy::GroupReduce>(2); },
         StatusCode::kInvalidArgument, "reduce value 2");
  expect([](WindowScoresArgs& a) { a.sm_scale = 0.0f; }, StatusCode::kInvalidArgument, "sm_scale");
  expect([](WindowScoresArgs& a) { a.sm_scale = -0.1f; }, StatusCode::kInvalidArgument, "sm_scale");
  expect([](WindowScoresArgs& a) { a.sm_scale = std::numeric_limits<float>::infinity(); },
         StatusCode::kInvalidArgument, "sm_scale");
  expect([](WindowScoresArgs& a) { a.sm_scale = std::nanf(""); }, StatusCode::kInvalidArgument,
         "sm_scale");
  expect([](WindowScoresArgs& a) { a.max_len = -1; }, StatusCode::kInvalidArgument, "max_len -1");
  expect([](WindowScoresArgs& a) { a.num_scores = -1; }, StatusCode::kInvalidArgument,
         "num_scores -1");
  expect([](WindowScoresArgs& a) { a.queries = nullptr; }, StatusCode::kInvalidArgument, "null");
  expect([](WindowScoresArgs& a) { a.query_positions = nullptr; }, StatusCode::kInvalidArgument,
         "null");
  expect([](WindowScoresArgs& a) { a.indptr = nullptr; }, StatusCode::kInvalidArgument, "null");
  expect([](WindowScoresArgs& a) { a.lens = nullptr; }, StatusCode::kInvalidArgument, "null");
  expect([](WindowScoresArgs& a) { a.score_offsets = nullptr; }, StatusCode::kInvalidArgument,
         "null");
  expect([](WindowScoresArgs& a) { a.page_ids = nullptr; }, StatusCode::kInvalidArgument,
         "page_ids is null");
  expect([](WindowScoresArgs& a) { a.scores = nullptr; }, StatusCode::kInvalidArgument,
         "scores is null");

  // No sequences: nothing else is needed.
  WindowScoresArgs empty;
  empty.cache = good.cache;
  empty.num_q_heads = empty.num_kv_heads = 1;
  empty.window = 1;
  empty.sm_scale = 1.0f;
  REQUIRE_OK(ref::WindowScores(empty));
}

TEST_CASE("WindowScores: ref checks block tables, lengths and offsets", "[kernels]") {
  WindowScoresShape shape{2, 4, 2, 4};
  WindowScoresCase c(PagedCaseSpec{16, 64, DType::kF16, {3, 20, 0, 5}}, shape, 4);
  std::vector<float> scores(static_cast<size_t>(c.num_scores()), -1.0f);
  WindowScoresArgs args = c.HostArgs();
  args.scores = scores.data();
  using absl::StatusCode;

  std::vector<int32_t> lens = c.pool().lens();
  lens[1] = 33;  // needs 3 pages, has 2
  args.lens = lens.data();
  args.max_len = 40;
  REQUIRE_ERROR(ref::WindowScores(args), StatusCode::kOutOfRange,
                "stream 1: lens[1] tokens need more pages than indptr[1]..indptr[2] gives");
  lens = c.pool().lens();
  lens[1] = 21;  // above max_len = 20
  args.max_len = 20;
  REQUIRE_ERROR(ref::WindowScores(args), StatusCode::kOutOfRange, "above max_len 20");
  lens[1] = -1;
  REQUIRE_ERROR(ref::WindowScores(args), StatusCode::kOutOfRange, "stream 1: lens[1] is negative");
  args = c.HostArgs();
  args.scores = scores.data();

  std::vector<int32_t> pages = c.pool().page_ids();
  pages[1] = c.pool().num_pages();
  args.page_ids = pages.data();
  args.num_page_ids = static_cast<int32_t>(pages.size());
  REQUIRE_ERROR(ref::WindowScores(args), StatusCode::kOutOfRange,
                "stream 1: page 0 of its table is outside the pool's");
  pages[1] = -1;
  REQUIRE_ERROR(ref::WindowScores(args), StatusCode::kOutOfRange, "page 0 of its table");
  args.num_page_ids = 2;  // indptr ends at 4
  REQUIRE_ERROR(ref::WindowScores(args), StatusCode::kOutOfRange,
                "stream 1: indptr[2] is past the end of page_ids (2 entries)");
  args.page_ids = c.pool().page_ids().data();
  args.num_page_ids = static_cast<int32_t>(c.pool().page_ids().size());

  std::vector<int32_t> indptr = c.pool().indptr();  // 0 1 3 3 4
  indptr[2] = 0;  // stream 1's pages end before they begin
  args.indptr = indptr.data();
  REQUIRE_ERROR(ref::WindowScores(args), StatusCode::kOutOfRange,
                "stream 1: indptr[2] is below indptr[1]");
  args.indptr = c.pool().indptr().data();

  std::vector<int32_t> offsets = c.score_offsets();  // 0 3 23 23 28
  offsets[1] = 2;  // stream 0's three scores overlap stream 1's
  args.score_offsets = offsets.data();
  REQUIRE_ERROR(ref::WindowScores(args), StatusCode::kOutOfRange, "do not fit");
  offsets = c.score_offsets();
  offsets[4] = 29;  // past num_scores
  REQUIRE_ERROR(ref::WindowScores(args), StatusCode::kOutOfRange, "num_scores 28");
  offsets[0] = -1;
  REQUIRE_ERROR(ref::WindowScores(args), StatusCode::kOutOfRange, "offset -1");
  for (float s : scores) REQUIRE(s == -1.0f);  // nothing was written
}

TEST_CASE("WindowScores: the plan and the workspace check", "[kernels]") {
  WindowScoresShape shape{8, 32, 8, 32};
  WindowScoresCase c(PagedCaseSpec{16, 64, DType::kBF16, std::vector<int32_t>(64, 1)}, shape, 5);
  WindowScoresArgs args = c.HostArgs();
  for (int32_t max_len : {1, 63, 64, 1000, 32768, 131072}) {
    args.max_len = max_len;
    const WindowScoresPlan plan = PlanWindowScores(args);
    CAPTURE(max_len, plan.chunk, plan.num_splits);
    REQUIRE(plan.chunk % kScoreTileKeys == 0);
    REQUIRE(plan.chunk >= kScoreTileKeys);
    REQUIRE(plan.chunk <= 16 * kScoreTileKeys);
    REQUIRE(static_cast<int64_t>(plan.num_splits) * plan.chunk >= max_len);
    REQUIRE(static_cast<int64_t>(plan.num_splits - 1) * plan.chunk < max_len);
  }
  // Row groups: whole q heads of padded rows, at most 128 rows each.
  auto groups = [&](int32_t q_heads, int32_t window) {
    args.num_q_heads = q_heads;
    args.window = window;
    const WindowScoresPlan plan = PlanWindowScores(args);
    REQUIRE(plan.heads_per_group * plan.padded_window <= kScoreRowsPerGroup);
    return plan.row_groups;
  };
  REQUIRE(groups(32, 32) == 1);   // 4 heads x 32 rows
  REQUIRE(groups(64, 32) == 2);   // 8 heads x 32 rows
  REQUIRE(groups(32, 33) == 2);   // 48 rows each: 2 heads per group
  REQUIRE(groups(8, 128) == 1);
  REQUIRE(groups(16, 128) == 2);
  REQUIRE(groups(8, 1) == 1);     // one 16-row tile per head

  // A tensor-parallel member (half the kv heads) cuts its streams into the chunks
  // one call over every head would when it passes the group's stream count, and
  // into others when it does not: its scores' rounding would differ.
  args = c.HostArgs();
  args.num_seqs = 32;  // layers
  args.num_q_heads = 32;
  args.num_kv_heads = 8;
  args.max_len = 4096;
  const WindowScoresPlan whole = PlanWindowScores(args);
  args.num_q_heads = 16;
  args.num_kv_heads = 4;
  REQUIRE(PlanWindowScores(args).chunk != whole.chunk);
  args.plan_streams = 32 * 8;
  REQUIRE(PlanWindowScores(args).chunk == whole.chunk);
  REQUIRE(PlanWindowScores(args).num_splits == whole.num_splits);
  // After head-wise eviction its longest stream is shorter than the group's: the
  // planned length keeps the chunks.
  args.max_len = 1500;
  REQUIRE(PlanWindowScores(args).chunk != whole.chunk);
  args.plan_max_len = 4096;
  REQUIRE(PlanWindowScores(args).chunk == whole.chunk);
  args.plan_streams = -1;
  REQUIRE_ERROR(ref::WindowScores(args), absl::StatusCode::kInvalidArgument, "plan_streams -1");

  args = c.HostArgs();
  const size_t bytes = WindowScoresWorkspaceBytes(args);
  REQUIRE(bytes > 0);
  std::vector<uint8_t> workspace(bytes);
  using absl::StatusCode;
  REQUIRE_ERROR(ValidateWindowScoresWorkspace(args), StatusCode::kInvalidArgument, "(null)");
  args.workspace = workspace.data();
  args.workspace_bytes = bytes - 1;
  REQUIRE_ERROR(ValidateWindowScoresWorkspace(args), StatusCode::kInvalidArgument, "needs");
  args.workspace_bytes = bytes;
  REQUIRE_OK(ValidateWindowScoresWorkspace(args));
  args.max_len = 0;  // nothing to do: no workspace needed
  args.workspace = nullptr;
  args.workspace_bytes = 0;
  REQUIRE(WindowScoresWorkspaceBytes(args) == 0);
  REQUIRE_OK(ValidateWindowScoresWorkspace(args));
}

}  // namespace
}  // namespace headpage
