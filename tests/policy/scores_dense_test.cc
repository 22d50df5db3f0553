// SPDX-License-Identifier: Apache-2.0
// The attention scorers on random inputs: against a dense (unpaged, unfused)
// re-implementation, softmax rows that sum to 1, and f16/bf16 inputs.
#include "policy/scores.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "tests/policy/scores_test_util.h"
#include "tests/testing/status_matchers.h"

namespace headpage::policy::testing {
namespace {

struct RandomCase {
  int32_t n, d, group, w;
  Vec keys, queries;
  std::vector<int32_t> kpos, qpos;
};

// Random strictly ascending positions with gaps; the window is the last w key
// positions (SnapKV's layout), or, with arbitrary_window, w sorted random
// positions in the same range (not necessarily key positions).
RandomCase MakeCase(std::mt19937& rng, bool arbitrary_window) {
  RandomCase c;
  c.n = std::uniform_int_distribution<int32_t>(1, 60)(rng);
  c.d = std::vector<int32_t>{1, 3, 4, 8, 16}[rng() % 5];
  c.group = std::vector<int32_t>{1, 2, 4}[rng() % 3];
  c.w = std::uniform_int_distribution<int32_t>(1, std::min(c.n, 8))(rng);
  std::uniform_real_distribution<float> value(-1.5f, 1.5f);
  c.keys.resize(static_cast<size_t>(c.n) * c.d);
  for (float& x : c.keys) x = value(rng);
  c.queries.resize(static_cast<size_t>(c.group) * c.w * c.d);
  for (float& x : c.queries) x = value(rng);
  int32_t p = std::uniform_int_distribution<int32_t>(0, 3)(rng);
  for (int32_t j = 0; j < c.n; ++j) {
    c.kpos.push_back(p);
    p += std::uniform_int_distribution<int32_t>(1, 3)(rng);
  }
  if (arbitrary_window) {
    std::uniform_int_distribution<int32_t> pos(-2, c.kpos.back() + 2);
    for (int32_t r = 0; r < c.w; ++r) c.qpos.push_back(pos(rng));
    std::sort(c.qpos.begin(), c.qpos.end());
  } else {
    c.qpos.assign(c.kpos.end() - c.w, c.kpos.end());
  }
  return c;
}

// The whole attention tensor att[g][r][j] (0 where masked), built the dense
// way: every logit first, -inf for masked keys, then a softmax over the full
// row. Logits in float as specified; exp and sums in double.
std::vector<double> DenseAttention(const RandomCase& c) {
  std::vector<double> att(static_cast<size_t>(c.group) * c.w * c.n, 0.0);
  for (int32_t g = 0; g < c.group; ++g) {
    for (int32_t r = 0; r < c.w; ++r) {
      std::vector<double> logit(c.n);
      double m = -std::numeric_limits<double>::infinity();
      for (int32_t j = 0; j < c.n; ++j) {
        float dot = 0.0f;
        for (int32_t t = 0; t < c.d; ++t) {
          dot += c.queries[(static_cast<size_t>(g) * c.w + r) * c.d + t] *
                 c.keys[static_cast<size_t>(j) * c.d + t];
        }
        logit[j] = c.kpos[j] <= c.qpos[r] ? dot / std::sqrt(static_cast<float>(c.d))
                                          : -std::numeric_limits<double>::infinity();
        m = std::max(m, logit[j]);
      }
      if (m == -std::numeric_limits<double>::infinity()) continue;  // sees no key
      double z = 0;
      for (int32_t j = 0; j < c.n; ++j) z += std::exp(logit[j] - m);
      for (int32_t j = 0; j < c.n; ++j) {
        att[(static_cast<size_t>(g) * c.w + r) * c.n + j] = std::exp(logit[j] - m) / z;
      }
    }
  }
  return att;
}

// SnapKV from the dense tensor: per-head column sums over the window rows,
// group reduce, then PyTorch-style pooling on an explicitly padded copy of the
// prefix (zeros for avg, -inf for max).
std::vector<double> DenseSnapKV(const RandomCase& c, const SnapKVOptions& o) {
  const std::vector<double> att = DenseAttention(c);
  std::vector<std::vector<double>> col(c.group, std::vector<double>(c.n, 0.0));
  for (int32_t g = 0; g < c.group; ++g) {
    for (int32_t r = 0; r < c.w; ++r) {
      for (int32_t j = 0; j < c.n; ++j) {
        col[g][j] += att[(static_cast<size_t>(g) * c.w + r) * c.n + j];
      }
    }
  }
  std::vector<double> red(c.n);
  for (int32_t j = 0; j < c.n; ++j) {
    double acc = o.reduce == GroupReduce::kMax ? -1.0 : 0.0;
    for (int32_t g = 0; g < c.group; ++g) {
      acc = o.reduce == GroupReduce::kMax ? std::max(acc, col[g][j]) : acc + col[g][j];
    }
    red[j] = o.reduce == GroupReduce::kMax ? acc : acc / c.group;
  }
  const int32_t start = *std::min_element(c.qpos.begin(), c.qpos.end());
  int32_t prefix = 0;
  while (prefix < c.n && c.kpos[prefix] < start) ++prefix;
  if (o.pooling == Pooling::kNone) return red;
  const int32_t half = o.kernel_size / 2;
  const double pad = o.pooling == Pooling::kMax ? -std::numeric_limits<double>::infinity() : 0.0;
  std::vector<double> padded(prefix + 2 * half, pad);
  std::copy(red.begin(), red.begin() + prefix, padded.begin() + half);
  std::vector<double> out = red;
  for (int32_t j = 0; j < prefix; ++j) {
    double acc = o.pooling == Pooling::kMax ? pad : 0.0;
    for (int32_t t = 0; t < o.kernel_size; ++t) {
      acc = o.pooling == Pooling::kMax ? std::max(acc, padded[j + t]) : acc + padded[j + t];
    }
    out[j] = o.pooling == Pooling::kMax ? acc : acc / o.kernel_size;
  }
  return out;
}

TEST_CASE("SnapKV and H2O agree with a dense re-implementation on random inputs",
          "[policy][scores]") {
  std::mt19937 rng(20240901);
  for (int iter = 0; iter < 400; ++iter) {
    const RandomCase c = MakeCase(rng, /*arbitrary_window=*/iter % 3 == 2);
    SnapKVOptions o;
    o.kernel_size = std::vector<int32_t>{1, 3, 5, 7, 9, 63}[rng() % 6];
    o.pooling = std::vector<Pooling>{Pooling::kNone, Pooling::kAvg, Pooling::kMax}[rng() % 3];
    o.reduce = rng() % 2 ? GroupReduce::kMax : GroupReduce::kMean;
    INFO("iter " << iter << " n=" << c.n << " d=" << c.d << " G=" << c.group << " w=" << c.w
                 << " k=" << o.kernel_size << " pooling=" << static_cast<int>(o.pooling)
                 << " reduce=" << static_cast<int>(o.reduce));
    const StreamKeys keys = Keys(c.keys, c.kpos, c.d);
    const GroupQueries window = Queries(c.queries, c.qpos, c.group, c.d);

    Vec scores(c.n);
    REQUIRE_OK(SnapKVScores(keys, window, o, absl::MakeSpan(scores)));
    const std::vector<double> expected = DenseSnapKV(c, o);
    for (int32_t j = 0; j < c.n; ++j) {
      INFO("j = " << j);
      REQUIRE(scores[j] == Approx(expected[j]).epsilon(1e-6).margin(1e-30));
    }

    // H2O without pooling is SnapKV's unpooled sum over every row given.
    SnapKVOptions unpooled = o;
    unpooled.pooling = Pooling::kNone;
    const std::vector<double> raw = DenseSnapKV(c, unpooled);
    Vec acc(c.n, 1.0f);
    REQUIRE_OK(AccumulateAttention(keys, window, o.reduce, absl::MakeSpan(acc)));
    for (int32_t j = 0; j < c.n; ++j) REQUIRE(acc[j] == Approx(1.0 + raw[j]).epsilon(1e-6));
  }
}

TEST_CASE("LastQueryAttention and TOVA agree with the dense tensor, rows sum to 1",
          "[policy][scores]") {
  std::mt19937 rng(7);
  for (int iter = 0; iter < 200; ++iter) {
    RandomCase c = MakeCase(rng, /*arbitrary_window=*/iter % 2 == 1);
    INFO("iter " << iter << " n=" << c.n << " d=" << c.d << " G=" << c.group);
    // Keep only the last window query of each head: [g][1][d]. Random window
    // positions may repeat; TOVA takes the first row at the highest position.
    const int32_t r_last = static_cast<int32_t>(
        std::lower_bound(c.qpos.begin(), c.qpos.end(), c.qpos.back()) - c.qpos.begin());
    RandomCase last = c;
    last.w = 1;
    last.qpos = {c.qpos.back()};
    last.queries.clear();
    for (int32_t g = 0; g < c.group; ++g) {
      const auto row = c.queries.begin() + (static_cast<size_t>(g) * c.w + r_last) * c.d;
      last.queries.insert(last.queries.end(), row, row + c.d);
    }
    const std::vector<double> att = DenseAttention(last);
    const StreamKeys keys = Keys(c.keys, c.kpos, c.d);

    Vec rows(static_cast<size_t>(c.group) * c.n);
    REQUIRE_OK(LastQueryAttention(keys, Queries(last.queries, last.qpos, c.group, c.d),
                                  absl::MakeSpan(rows)));
    const bool sees_any = c.kpos.front() <= last.qpos[0];
    for (int32_t g = 0; g < c.group; ++g) {
      double sum = 0;
      for (int32_t j = 0; j < c.n; ++j) {
        const float a = rows[static_cast<size_t>(g) * c.n + j];
        REQUIRE(a == Approx(att[static_cast<size_t>(g) * c.n + j]).epsilon(1e-6).margin(1e-30));
        if (c.kpos[j] > last.qpos[0]) REQUIRE(a == 0.0f);
        sum += a;
      }
      REQUIRE(sum == Approx(sees_any ? 1.0 : 0.0).margin(1e-6));
    }

    // TOVA over the whole window (it must pick the last row itself) of one
    // KV head is the group mean of those rows.
    const StreamKeys layer_keys[] = {keys};
    const GroupQueries layer_queries[] = {Queries(c.queries, c.qpos, c.group, c.d)};
    Vec tova(c.n);
    REQUIRE_OK(TovaScores(layer_keys, layer_queries, absl::MakeSpan(tova)));
    for (int32_t j = 0; j < c.n; ++j) {
      double mean = 0;
      for (int32_t g = 0; g < c.group; ++g) mean += att[static_cast<size_t>(g) * c.n + j];
      REQUIRE(tova[j] == Approx(mean / c.group).epsilon(1e-6).margin(1e-30));
    }
  }
}

// Inputs stored as f16 or bf16 give bit-identical scores to f32 arrays holding
// the same (rounded) values: widening is exact and the math is in float.
TEST_CASE("f16 and bf16 inputs score exactly like f32 holding the rounded values",
          "[policy][scores]") {
  std::mt19937 rng(99);
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    for (int iter = 0; iter < 30; ++iter) {
      RandomCase c = MakeCase(rng, false);
      INFO(DTypeName(dtype) << " iter " << iter);
      // 16-bit copies, and f32 copies of their exact values.
      std::vector<uint16_t> k16(c.keys.size()), q16(c.queries.size());
      for (size_t i = 0; i < c.keys.size(); ++i) {
        StoreFromFloat(k16.data(), i, dtype, c.keys[i]);
        c.keys[i] = LoadAsFloat(k16.data(), i, dtype);
      }
      for (size_t i = 0; i < c.queries.size(); ++i) {
        StoreFromFloat(q16.data(), i, dtype, c.queries[i]);
        c.queries[i] = LoadAsFloat(q16.data(), i, dtype);
      }
      const StreamKeys k32 = Keys(c.keys, c.kpos, c.d);
      const GroupQueries q32 = Queries(c.queries, c.qpos, c.group, c.d);
      StreamKeys k_half = k32;
      k_half.data = k16.data();
      k_half.dtype = dtype;
      GroupQueries q_half = q32;
      q_half.data = q16.data();
      q_half.dtype = dtype;

      Vec a(c.n), b(c.n);
      const SnapKVOptions o = Snap(5, Pooling::kAvg, GroupReduce::kMax);
      REQUIRE_OK(SnapKVScores(k32, q32, o, absl::MakeSpan(a)));
      REQUIRE_OK(SnapKVScores(k_half, q_half, o, absl::MakeSpan(b)));
      REQUIRE(a == b);
      // Mixed: 16-bit keys with f32 queries.
      REQUIRE_OK(SnapKVScores(k_half, q32, o, absl::MakeSpan(b)));
      REQUIRE(a == b);

      std::fill(a.begin(), a.end(), 0.0f);
      std::fill(b.begin(), b.end(), 0.0f);
      REQUIRE_OK(AccumulateAttention(k32, q32, GroupReduce::kMean, absl::MakeSpan(a)));
      REQUIRE_OK(AccumulateAttention(k_half, q_half, GroupReduce::kMean, absl::MakeSpan(b)));
      REQUIRE(a == b);

      REQUIRE_OK(KeyNormScores(k32, absl::MakeSpan(a)));
      REQUIRE_OK(KeyNormScores(k_half, absl::MakeSpan(b)));
      REQUIRE(a == b);

      const StreamKeys lk32[] = {k32}, lk16[] = {k_half};
      const GroupQueries lq32[] = {q32}, lq16[] = {q_half};
      REQUIRE_OK(TovaScores(lk32, lq32, absl::MakeSpan(a)));
      REQUIRE_OK(TovaScores(lk16, lq16, absl::MakeSpan(b)));
      REQUIRE(a == b);

      GroupQueries one32 = q32, one16 = q_half;
      one32.num_queries = one16.num_queries = 1;  // the data's first rows, read as [g][1][d]
      Vec ra(static_cast<size_t>(c.group) * c.n), rb(ra.size());
      REQUIRE_OK(LastQueryAttention(k32, one32, absl::MakeSpan(ra)));
      REQUIRE_OK(LastQueryAttention(k_half, one16, absl::MakeSpan(rb)));
      REQUIRE(ra == rb);
    }
  }
}

}  // namespace
}  // namespace headpage::policy::testing
