// SPDX-License-Identifier: Apache-2.0
#include "kernels/decode_attention.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "tests/kernels/paged_case.h"
#include "tests/testing/guarded_array.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::PagedCase;
using testing::PagedCaseSpec;

constexpr float kInf = std::numeric_limits<float>::infinity();

// A decode step over a PagedCase whose streams are seqs x kv_heads (seq-major),
// with random queries and host outputs.
struct Step {
  PagedCase pool;
  int32_t seqs, q_heads, kv_heads;
  std::vector<uint8_t> q, out;
  std::vector<float> lse;

  Step(const PagedCaseSpec& spec, int32_t q_heads_, int32_t kv_heads_, uint64_t seed,
       float q_scale = 1.0f)
      : pool(spec, seed),
        seqs(static_cast<int32_t>(spec.lens.size()) / kv_heads_),
        q_heads(q_heads_),
        kv_heads(kv_heads_) {
    const size_t rows = static_cast<size_t>(seqs) * q_heads;
    q = testing::RandomRows(rows * spec.head_dim, spec.dtype, q_scale, pool.rng());
    out.assign(rows * spec.head_dim * SizeOf(spec.dtype), 0xff);
    lse.assign(rows, std::nanf(""));
  }

  DecodeAttentionArgs Args() {
    DecodeAttentionArgs args;
    args.cache = pool.view();
    args.num_seqs = seqs;
    args.num_q_heads = q_heads;
    args.num_kv_heads = kv_heads;
    args.q = q.data();
    args.indptr = pool.indptr().data();
    args.page_ids = pool.page_ids().data();
    args.num_page_ids = static_cast<int32_t>(pool.page_ids().size());
    args.lens = pool.lens().data();
    args.sm_scale = 1.0f / std::sqrt(static_cast<float>(pool.spec().head_dim));
    args.out = out.data();
    args.lse = lse.data();
    return args;
  }
  float Out(size_t row, int32_t e) const {
    return LoadAsFloat(out.data(), row * pool.spec().head_dim + e, pool.spec().dtype);
  }
  float Query(size_t row, int32_t e) const {
    return LoadAsFloat(q.data(), row * pool.spec().head_dim + e, pool.spec().dtype);
  }
};

// Attention over the dense view, in double: the oracle of the oracle.
struct Dense {
  std::vector<double> out, lse;
};
Dense DenseAttention(Step& step, float sm_scale) {
  const int32_t head_dim = step.pool.spec().head_dim;
  const int32_t group = step.q_heads / step.kv_heads;
  Dense dense;
  for (int32_t s = 0; s < step.seqs; ++s) {
    for (int32_t qh = 0; qh < step.q_heads; ++qh) {
      const size_t row = static_cast<size_t>(s) * step.q_heads + qh;
      const size_t stream = static_cast<size_t>(s) * step.kv_heads + qh / group;
      const int32_t len = step.pool.lens()[stream];
      std::vector<double> scores(static_cast<size_t>(len));
      double max_score = -kInf;
      for (int32_t i = 0; i < len; ++i) {
        double dot = 0;
        for (int32_t e = 0; e < head_dim; ++e) {
          dot += double{step.Query(row, e)} * step.pool.Key(stream, i, e);
        }
        scores[i] = sm_scale * dot;
        max_score = std::max(max_score, scores[i]);
      }
      double sum = 0;
      for (double& score : scores) {
        score = std::exp(score - max_score);  // now the weight
        sum += score;
      }
      for (int32_t e = 0; e < head_dim; ++e) {
        double acc = 0;
        for (int32_t i = 0; i < len; ++i) acc += scores[i] * step.pool.Value(stream, i, e);
        dense.out.push_back(len > 0 ? acc / sum : 0.0);
      }
      dense.lse.push_back(len > 0 ? max_score + std::log(sum) : -kInf);
    }
  }
  return dense;
}

// ref's out within rounding of the output dtype (plus float accumulation) of
// the dense result; lse within 1e-4.
void RequireNearDense(Step& step, const Dense& dense) {
  const double rel = step.pool.spec().dtype == DType::kF32 ? 1e-5 : 8e-3;
  const int32_t head_dim = step.pool.spec().head_dim;
  for (size_t row = 0; row < dense.lse.size(); ++row) {
    CAPTURE(row);
    if (std::isinf(dense.lse[row])) {
      REQUIRE(step.lse[row] == -kInf);
    } else {
      REQUIRE(std::abs(step.lse[row] - dense.lse[row]) <= 1e-4 * (1 + std::abs(dense.lse[row])));
    }
    for (int32_t e = 0; e < head_dim; ++e) {
      const double want = dense.out[row * head_dim + e];
      REQUIRE(std::abs(step.Out(row, e) - want) <= rel * std::abs(want) + 1e-5);
    }
  }
}

TEST_CASE("DecodeAttention: one key gives its value, and lse its score", "[kernels]") {
  Step step({16, 64, DType::kF32, {1}}, 1, 1, 3);
  auto args = step.Args();
  REQUIRE_OK(ref::DecodeAttention(args));
  double dot = 0;
  for (int32_t e = 0; e < 64; ++e) {
    REQUIRE(step.Out(0, e) == step.pool.Value(0, 0, e));
    dot += double{step.Query(0, e)} * step.pool.Key(0, 0, e);
  }
  REQUIRE(step.lse[0] == Approx(args.sm_scale * dot).margin(1e-6));
}

TEST_CASE("DecodeAttention: two equal keys give the mean of their values, lse adds log 2",
          "[kernels]") {
  Step step({4, 64, DType::kF32, {2}}, 2, 1, 5);
  // Token 1's key becomes token 0's (they sit on one page of 4).
  auto* data = reinterpret_cast<float*>(step.pool.data().data());
  const PagedKV view = step.pool.view();
  for (int32_t e = 0; e < 64; ++e) {
    data[view.KeyOffset(step.pool.Slot(0, 1)) + e] = data[view.KeyOffset(step.pool.Slot(0, 0)) + e];
  }
  auto args = step.Args();
  REQUIRE_OK(ref::DecodeAttention(args));
  for (size_t row = 0; row < 2; ++row) {  // both query heads of the group
    double dot = 0;
    for (int32_t e = 0; e < 64; ++e) {
      const float mean = (step.pool.Value(0, 0, e) + step.pool.Value(0, 1, e)) / 2;
      REQUIRE(step.Out(row, e) == Approx(mean).margin(1e-6));
      dot += double{step.Query(row, e)} * step.pool.Key(0, 0, e);
    }
    REQUIRE(step.lse[row] == Approx(args.sm_scale * dot + std::log(2.0)).margin(1e-5));
  }
}

TEST_CASE("DecodeAttention: an empty stream gives zeros and lse -inf", "[kernels]") {
  // Seq 0: kv head 0 empty, kv head 1 of 5 tokens; two query heads each.
  Step step({16, 128, DType::kBF16, {0, 5}}, 4, 2, 7);
  REQUIRE_OK(ref::DecodeAttention(step.Args()));
  for (size_t row = 0; row < 2; ++row) {
    REQUIRE(step.lse[row] == -kInf);
    for (int32_t e = 0; e < 128; ++e) REQUIRE(step.Out(row, e) == 0.0f);
  }
  REQUIRE(std::isfinite(step.lse[2]));
  REQUIRE(std::isfinite(step.lse[3]));
}

TEST_CASE("DecodeAttention: ref equals dense attention for GQA groups 1 to 8", "[kernels]") {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int32_t group : {1, 2, 4, 8}) {
      for (int32_t page_size : {1, 7, 16}) {
        CAPTURE(DTypeName(dtype), group, page_size);
        // Two seqs x two kv heads: edge lengths and a longer stream.
        const std::vector<int32_t> lens = {page_size - 1, page_size + 1, 3 * page_size + 5, 200};
        Step step({page_size, 64, dtype, lens}, 2 * group, 2, 11 + group, 3.0f);
        auto args = step.Args();
        REQUIRE_OK(ref::DecodeAttention(args));
        RequireNearDense(step, DenseAttention(step, args.sm_scale));
      }
    }
  }
}

TEST_CASE("DecodeAttention: ref takes any head_dim, not only the GPU kernels' ones", "[kernels]") {
  // Models' head dims the GPU kernels are not compiled for (8, 80, 96) and one
  // they are (256): the host reference loops over any.
  for (int32_t head_dim : {8, 80, 96, 256}) {
    CAPTURE(head_dim);
    Step step({16, head_dim, DType::kBF16, {15, 17, 40, 3}}, 4, 2, 7, 3.0f);
    auto args = step.Args();
    REQUIRE_OK(ref::DecodeAttention(args));
    RequireNearDense(step, DenseAttention(step, args.sm_scale));
  }
}

// A decode step's new tokens (DecodeNewTokens): two seqs of two kv heads, one
// stream empty, one of a single token, one ending on a page boundary.
struct NewTokenStep {
  Step step{{16, 64, DType::kF32, {3, 0, 16, 1}}, 4, 2, 23, 2.0f};
  std::vector<uint8_t> keys, values;
  std::vector<int32_t> positions = {500, 900};

  NewTokenStep() {
    keys = testing::RandomRows(4 * 64, DType::kF32, 3.0f, step.pool.rng());
    values = testing::RandomRows(4 * 64, DType::kF32, 3.0f, step.pool.rng());
  }
  DecodeAttentionArgs Args() {
    DecodeAttentionArgs args = step.Args();
    args.new_tokens.keys = keys.data();
    args.new_tokens.values = values.data();
    args.new_tokens.positions = positions.data();
    return args;
  }
  float NewElement(const std::vector<uint8_t>& rows, int32_t stream, int32_t e) const {
    return LoadAsFloat(rows.data(), static_cast<size_t>(stream) * 64 + e, DType::kF32);
  }
};

TEST_CASE("DecodeAttention: new tokens go to each stream's last slot, then are attended",
          "[kernels]") {
  NewTokenStep t;
  const std::vector<uint8_t> data_before = t.step.pool.data();
  auto args = t.Args();
  REQUIRE_OK(ref::DecodeAttention(args));
  int64_t written_bytes = 0;
  for (int32_t stream = 0; stream < 4; ++stream) {
    const int32_t len = t.step.pool.lens()[stream];
    if (len == 0) continue;
    CAPTURE(stream);
    for (int32_t e = 0; e < 64; ++e) {
      REQUIRE(t.step.pool.Key(stream, len - 1, e) == t.NewElement(t.keys, stream, e));
      REQUIRE(t.step.pool.Value(stream, len - 1, e) == t.NewElement(t.values, stream, e));
    }
    REQUIRE(t.step.pool.Position(stream, len - 1) == t.positions[stream / 2]);
    written_bytes += 2 * 64 * 4;
  }
  // Nothing else changed: the bytes that differ are the written rows' at most.
  int64_t changed = 0;
  for (size_t i = 0; i < data_before.size(); ++i) {
    changed += data_before[i] != t.step.pool.data()[i];
  }
  REQUIRE(changed > 0);
  REQUIRE(changed <= written_bytes);
  // The outputs attend to the pool as written (the dense oracle reads it now).
  RequireNearDense(t.step, DenseAttention(t.step, args.sm_scale));
}

TEST_CASE("DecodeAttention: a seq whose new position is negative has no new token",
          "[kernels]") {
  NewTokenStep t;
  t.positions = {500, -1};  // seq 1 (streams 2 and 3) reserved nothing
  const std::vector<uint8_t> data_before = t.step.pool.data();
  std::vector<float> before(64);
  for (int32_t e = 0; e < 64; ++e) before[e] = t.step.pool.Key(2, 15, e);
  REQUIRE_OK(ref::DecodeAttention(t.Args()));
  for (int32_t e = 0; e < 64; ++e) {
    REQUIRE(t.step.pool.Key(2, 15, e) == before[e]);
    REQUIRE(t.step.pool.Key(0, 2, e) == t.NewElement(t.keys, 0, e));  // seq 0 still written
  }
  REQUIRE(t.step.pool.Position(0, 2) == 500);
  int64_t changed = 0;
  for (size_t i = 0; i < data_before.size(); ++i) {
    changed += data_before[i] != t.step.pool.data()[i];
  }
  REQUIRE(changed <= 2 * 64 * 4);  // stream 0's rows only (stream 1 is empty)
}

TEST_CASE("DecodeAttention: bad new tokens or a bad table write nothing", "[kernels]") {
  NewTokenStep t;
  const std::vector<uint8_t> data_before = t.step.pool.data();
  const std::vector<int32_t> positions_before = t.step.pool.positions();
  auto args = t.Args();
  args.new_tokens.positions = nullptr;
  REQUIRE_ERROR(ref::DecodeAttention(args), absl::StatusCode::kInvalidArgument, "positions");
  args = t.Args();
  args.new_tokens.values = t.values.data() + 4;  // not 16-byte aligned
  REQUIRE_ERROR(ref::DecodeAttention(args), absl::StatusCode::kInvalidArgument, "aligned");
  args = t.Args();
  std::vector<int32_t> page_ids = t.step.pool.page_ids();
  page_ids.back() = t.step.pool.num_pages();  // outside the pool
  args.page_ids = page_ids.data();
  REQUIRE_ERROR(ref::DecodeAttention(args), absl::StatusCode::kOutOfRange, "page");
  REQUIRE(t.step.pool.data() == data_before);
  REQUIRE(t.step.pool.positions() == positions_before);
}

TEST_CASE("DecodeAttention: the same result whatever the page ids", "[kernels]") {
  Step step({16, 128, DType::kBF16, {33, 0, 100, 16, 17, 1}}, 6, 3, 13);
  REQUIRE_OK(ref::DecodeAttention(step.Args()));
  const std::vector<uint8_t> out = step.out;
  const std::vector<float> lse = step.lse;
  step.pool.RelabelPages(99);
  REQUIRE_OK(ref::DecodeAttention(step.Args()));
  REQUIRE(step.out == out);
  REQUIRE(std::memcmp(step.lse.data(), lse.data(), lse.size() * sizeof(float)) == 0);
}

TEST_CASE("DecodeAttention: ref ignores num_splits but checks the workspace", "[kernels]") {
  Step step({16, 64, DType::kF16, {40, 3}}, 2, 2, 17);
  REQUIRE_OK(ref::DecodeAttention(step.Args()));
  const std::vector<uint8_t> out = step.out;
  auto args = step.Args();
  args.num_splits = 5;
  REQUIRE_ERROR(ref::DecodeAttention(args), absl::StatusCode::kInvalidArgument, "workspace");
  std::vector<float> workspace(DecodeAttentionWorkspaceBytes(1, 2, 64, 5) / sizeof(float), -1.0f);
  args.workspace = workspace.data();
  args.workspace_bytes = workspace.size() * sizeof(float);
  REQUIRE_OK(ref::DecodeAttention(args));
  REQUIRE(step.out == out);
  args.lse = nullptr;  // lse is optional
  REQUIRE_OK(ref::DecodeAttention(args));
  REQUIRE(step.out == out);
}

TEST_CASE("DecodeAttention: Validate names every bad argument", "[kernels]") {
  Step step({16, 128, DType::kBF16, {20, 5}}, 4, 2, 19);
  const auto good = step.Args();
  REQUIRE_OK(Validate(good));
  using absl::StatusCode;
  auto args = good;
  args.cache.data = nullptr;
  REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "cache data");
  args = good;
  args.cache.head_dim = 96;
  REQUIRE_OK(Validate(args));  // the GPU entry refuses it (decode_attention_gpu_test.cc)
  args.cache.head_dim = 0;
  REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "head_dim 0 is outside [1, 1024]");
  args = good;
  args.num_seqs = -1;
  REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "num_seqs -1");
  args = good;
  args.num_kv_heads = 0;
  REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "num_kv_heads 0");
  args = good;
  args.num_q_heads = 3;
  REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "not a multiple");
  args = good;
  args.num_q_heads = 18;
  REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "GQA group 9 exceeds 8");
  for (int32_t splits : {0, kDecodeMaxSplits + 1}) {
    args = good;
    args.num_splits = splits;
    REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "num_splits");
  }
  args = good;
  args.num_seqs = 1 << 20;
  args.num_kv_heads = 2;
  args.num_q_heads = 2;
  args.num_splits = kDecodeMaxSplits;
  REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "int32 block range");
  for (int32_t blocks : {-1, kDecodeMaxSplits + 1}) {
    args = good;
    args.balanced_blocks = blocks;
    REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "balanced_blocks");
  }
  args = good;
  args.num_splits = 3;
  args.balanced_blocks = 4;
  REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "two divisions of the work");
  args = good;
  args.sm_scale = std::nanf("");
  REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "sm_scale");
  for (int i = 0; i < 5; ++i) {
    args = good;
    if (i == 0) args.q = nullptr;
    if (i == 1) args.indptr = nullptr;
    if (i == 2) args.page_ids = nullptr;
    if (i == 3) args.lens = nullptr;
    if (i == 4) args.out = nullptr;
    REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "is null");
  }
  args = good;
  args.q = static_cast<const char*>(args.q) + 2;
  REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "q is not 16-byte aligned");
  args = good;
  args.num_splits = 3;
  const size_t needed = DecodeAttentionWorkspaceBytes(1, 4, 128, 3);
  std::vector<float> workspace(needed / sizeof(float) + 4);
  args.workspace = workspace.data();
  args.workspace_bytes = needed - 4;
  REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "is below the");
  args.workspace_bytes = needed;
  REQUIRE_OK(Validate(args));
  args.workspace = workspace.data() + 1;
  REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "workspace is not 16-byte aligned");
  // The balanced division's workspace: a partial per piece and query head.
  args = good;
  args.balanced_blocks = 6;
  const size_t balanced = DecodeAttentionBalancedWorkspaceBytes(1, 4, 2, 128, 6);
  REQUIRE(DecodeAttentionWorkspaceBytes(args) == balanced);
  std::vector<float> balanced_workspace(balanced / sizeof(float));
  args.workspace = balanced_workspace.data();
  args.workspace_bytes = balanced - 4;
  REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "6 balanced blocks need");
  args.workspace_bytes = balanced;
  REQUIRE_OK(Validate(args));
  // No sequences: nothing is read, so null arrays are fine.
  args = DecodeAttentionArgs{};
  args.cache = good.cache;
  args.num_q_heads = args.num_kv_heads = 1;
  args.sm_scale = 1;
  REQUIRE_OK(Validate(args));
  REQUIRE_OK(ref::DecodeAttention(args));
}

TEST_CASE("DecodeAttention: ref rejects block tables outside the cache", "[kernels]") {
  Step step({16, 64, DType::kF32, {20, 5}}, 2, 2, 23);
  std::vector<int32_t> page_ids = step.pool.page_ids();
  std::vector<int32_t> lens = step.pool.lens();
  auto args = step.Args();
  args.page_ids = page_ids.data();
  args.num_page_ids = static_cast<int32_t>(page_ids.size());
  args.lens = lens.data();
  page_ids[1] = step.pool.num_pages();
  REQUIRE_ERROR(ref::DecodeAttention(args), absl::StatusCode::kOutOfRange,
                "stream 0: page 1 of its table is outside the pool's");
  page_ids[1] = -1;
  REQUIRE_ERROR(ref::DecodeAttention(args), absl::StatusCode::kOutOfRange, "page 1 of its table");
  page_ids = step.pool.page_ids();
  lens[1] = 17;  // one page holds 16
  REQUIRE_ERROR(ref::DecodeAttention(args), absl::StatusCode::kOutOfRange,
                "stream 1: lens[1] tokens need more pages than indptr[1]..indptr[2] gives");
  lens[1] = -1;
  REQUIRE_ERROR(ref::DecodeAttention(args), absl::StatusCode::kOutOfRange,
                "stream 1: lens[1] is negative");
  lens = step.pool.lens();
  // page_ids shorter than indptr says: the Args carry its length, and the
  // check stops there instead of reading past the array.
  args.num_page_ids -= 1;
  REQUIRE_ERROR(ref::DecodeAttention(args), absl::StatusCode::kOutOfRange,
                "stream 1: indptr[2] is past the end of page_ids");
  args.num_page_ids += 1;
  std::vector<int32_t> indptr = step.pool.indptr();
  args.indptr = indptr.data();
  indptr[0] = 1;
  REQUIRE_ERROR(ref::DecodeAttention(args), absl::StatusCode::kOutOfRange, "indptr[0] is not 0");
  indptr = step.pool.indptr();
  indptr[2] = indptr[1] - 1;
  REQUIRE_ERROR(ref::DecodeAttention(args), absl::StatusCode::kOutOfRange,
                "stream 1: indptr[2] is below indptr[1]");
  REQUIRE(std::isnan(step.lse[0]));  // nothing written
}

TEST_CASE("DecodeAttention: a table past the end of its array is refused before any read",
          "[kernels]") {
  // The case: indptr [0, 2] over a one-entry page_ids. The array sits
  // at the end of a mapping (GuardedInts), so a read past it would fault.
  Step step({16, 64, DType::kF32, {20}}, 1, 1, 29);
  testing::GuardedInts page_ids({step.pool.page_ids()[0]});
  const std::vector<int32_t> indptr = {0, 2};
  auto args = step.Args();
  args.indptr = indptr.data();
  args.page_ids = page_ids.data();
  args.num_page_ids = 1;
  REQUIRE_ERROR(ref::DecodeAttention(args), absl::StatusCode::kOutOfRange,
                "stream 0: indptr[1] is past the end of page_ids (1 entries)");
  // A one-entry table that claims a 1000-page stream.
  std::vector<int32_t> lens = {16 * 1000};
  args.lens = lens.data();
  const std::vector<int32_t> one_page = {0, 1};
  args.indptr = one_page.data();
  REQUIRE_ERROR(ref::DecodeAttention(args), absl::StatusCode::kOutOfRange,
                "lens[0] tokens need more pages");
  REQUIRE(std::isnan(step.lse[0]));
}

TEST_CASE("DecodeAttention: the split heuristic and the workspace size", "[kernels]") {
  REQUIRE(DecodeAttentionWorkspaceBytes(8, 32, 128, 1) == 0);
  REQUIRE(DecodeAttentionWorkspaceBytes(8, 32, 128, 4) == size_t{8} * 32 * 4 * 129 * sizeof(float));
  REQUIRE(DecodeAttentionSplits(0, 64, 132) == 1);
  REQUIRE(DecodeAttentionSplits(100, 64, 132) == 1);      // too short to split
  REQUIRE(DecodeAttentionSplits(32768, 4096, 132) == 1);  // enough streams already
  const int32_t long_few = DecodeAttentionSplits(131072, 8, 132);
  const int32_t long_many = DecodeAttentionSplits(32768, 64, 132);
  REQUIRE(long_few > long_many);
  REQUIRE(long_many > 1);
  REQUIRE(8 * long_few >= 4 * 132);  // a few waves of blocks
  REQUIRE(DecodeAttentionSplits(int64_t{1} << 40, 1, 100000) == kDecodeMaxSplits);
  // Whole waves: three of the 16-bit pass's two blocks per SM, one of fp8's four.
  REQUIRE(DecodeAttentionSplits(32768, 64, 132) == 6 * 132 / 64);
  REQUIRE(DecodeAttentionSplits(32768, 64, 132, 4) == 4 * 132 / 64);
  REQUIRE(DecodeAttentionSplits(32768, 64, 132, 1) == 6 * 132 / 64);
  REQUIRE(DecodeAttentionSplits(8192, 128, 132) == 6);  // a serving graph's 16 rows
  // Fewer waves rather than splits under 512 tokens: 1x32K takes one wave.
  REQUIRE(DecodeAttentionSplits(32768, 8, 132) == 2 * 132 / 8);
  REQUIRE(DecodeAttentionSplits(131072, 8, 132) == 6 * 132 / 8);
  // Where one wave would cut under 512 tokens, it is filled down to 256.
  REQUIRE(DecodeAttentionSplits(8192, 8, 132) == 32);
  REQUIRE(DecodeAttentionSplits(4096, 8, 132) == 16);
  REQUIRE(DecodeAttentionSplits(32768, 8, 132, 4) == 4 * 132 / 8);  // fp8: one wave
  // Streams of about one length take one wave; lengths further apart, or an
  // unknown shortest, as many as before.
  REQUIRE(DecodeAttentionSplits(131072, 8, 132, 2, 131072) == 2 * 132 / 8);
  REQUIRE(DecodeAttentionSplits(32768, 64, 132, 2, 32768 - 4096) == 2 * 132 / 64);
  REQUIRE(DecodeAttentionSplits(32768, 64, 132, 2, 32768 - 4097) == 6 * 132 / 64);
  REQUIRE(DecodeAttentionSplits(131072, 8, 132, 2, 0) == 6 * 132 / 8);
  REQUIRE(DecodeAttentionSplits(8192, 8, 132, 2, 8192) == 32);  // one wave already
  REQUIRE(DecodeAttentionSplits(32768, 4096, 132, 2, 32768) == 1);
  // A shortest past the longest, or so large that 8x it would overflow, is
  // not taken for even lengths.
  REQUIRE(DecodeAttentionSplits(32768, 64, 132, 2, 32769) == 6 * 132 / 64);
  const int64_t huge = int64_t{1} << 61;
  REQUIRE(DecodeAttentionSplits(huge, 8, 132, 2, huge) == 2 * 132 / 8);
  REQUIRE(DecodeAttentionSplits(huge, 8, 132, 2, huge / 2) == 6 * 132 / 8);
}

TEST_CASE("DecodeAttention: ref on fp8 pages equals dense attention over the dequantized pages",
          "[kernels][fp8]") {
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    for (int32_t page_size : {1, 16, 33}) {
      CAPTURE(DTypeName(dtype), page_size);
      const std::vector<int32_t> lens = {page_size - 1, page_size + 1, 3 * page_size + 5, 200};
      PagedCaseSpec spec{page_size, 64, dtype, lens};
      spec.kv_dtype = KvDType::kFP8E4M3;
      Step step(spec, 8, 2, 17, 3.0f);
      auto args = step.Args();
      REQUIRE_OK(ref::DecodeAttention(args));
      RequireNearDense(step, DenseAttention(step, args.sm_scale));
    }
  }
}

// The error fp8 pages add, against the same K/V kept in bf16 (PagedCase draws
// the same values for either kv_dtype): what docs/performance.md states as the
// fp8 tolerance. Per query row, the L2 distance relative to the bf16 output's
// norm; per element, relative to the element plus the row's RMS.
TEST_CASE("DecodeAttention: fp8 pages stay within the stated tolerance of the bf16 oracle",
          "[kernels][fp8]") {
  // e4m3 keeps 3 mantissa bits: an element is off by up to 1/16 of itself
  // (about 3.6% RMS), and a sharper softmax (larger queries) averages that
  // over fewer tokens and turns score errors into weight errors.
  struct Bound {
    float q_scale;  // queries uniform in [-q_scale, q_scale]: scores of RMS ~ q_scale / 3
    double row, element, lse;
  };
  for (const Bound& bound : {Bound{1.0f, 0.035, 0.09, 0.03}, Bound{4.0f, 0.09, 0.16, 0.08}}) {
    const float q_scale = bound.q_scale;
    const double kRowTolerance = bound.row, kElementTolerance = bound.element,
                 kLseTolerance = bound.lse;
    CAPTURE(q_scale);
    const std::vector<int32_t> lens = {1, 17, 300, 2000};
    PagedCaseSpec spec{16, 128, DType::kBF16, lens};
    Step bf16(spec, 8, 2, 23, q_scale);
    spec.kv_dtype = KvDType::kFP8E4M3;
    Step fp8(spec, 8, 2, 23, q_scale);
    REQUIRE(bf16.q == fp8.q);
    REQUIRE_OK(ref::DecodeAttention(bf16.Args()));
    REQUIRE_OK(ref::DecodeAttention(fp8.Args()));
    double worst_row = 0, worst_element = 0, worst_lse = 0;
    for (size_t row = 0; row < bf16.lse.size(); ++row) {
      double norm = 0, dist = 0;
      for (int32_t e = 0; e < 128; ++e) {
        norm += std::pow(bf16.Out(row, e), 2);
        dist += std::pow(fp8.Out(row, e) - bf16.Out(row, e), 2);
      }
      const double rms = std::sqrt(norm / 128);
      worst_row = std::max(worst_row, std::sqrt(dist / norm));
      for (int32_t e = 0; e < 128; ++e) {
        const double want = bf16.Out(row, e);
        worst_element =
            std::max(worst_element, std::abs(fp8.Out(row, e) - want) / (std::abs(want) + rms));
      }
      worst_lse = std::max(worst_lse, static_cast<double>(std::abs(fp8.lse[row] - bf16.lse[row])));
    }
    WARN("fp8 against bf16: worst row L2 " << worst_row << ", worst element " << worst_element
                                           << ", worst lse " << worst_lse);
    REQUIRE(worst_lse <= kLseTolerance);
    REQUIRE(worst_row <= kRowTolerance);
    REQUIRE(worst_element <= kElementTolerance);
  }
}

}  // namespace
}  // namespace headpage
