// SPDX-License-Identifier: Apache-2.0
// gpu::DecodeAttention against ref::DecodeAttention on the same random pools
// (ctest label `gpu`), split and unsplit, eagerly and replayed from a CUDA graph.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "kernels/decode_attention.h"
#include "kernels/table_checks_host.h"
#include "tests/kernels/captured_graph.h"
#include "tests/kernels/device_buffer.h"
#include "tests/kernels/paged_case.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::DeviceBuffer;
using testing::DevicePool;
using testing::PagedCase;
using testing::PagedCaseSpec;

// out: relative to each element plus its row's RMS, so an element that cancels
// to near zero is held to the row's scale, not its own.
double OutTolerance(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 1e-4;
    case DType::kF16: return 1e-3;
    case DType::kBF16: return 1e-2;
  }
  return 0;
}
constexpr float kLseTolerance = 1e-3f;

// One decode problem, on the host for ref:: and on the device for gpu::.
class Problem {
 public:
  Problem(const PagedCaseSpec& spec, int32_t group, int32_t kv_heads, uint64_t seed, float q_scale)
      : pool_(spec, seed),
        seqs_(static_cast<int32_t>(spec.lens.size()) / kv_heads),
        q_heads_(group * kv_heads),
        kv_heads_(kv_heads),
        q_(testing::RandomRows(Rows() * spec.head_dim, spec.dtype, q_scale, pool_.rng())),
        device_(pool_.view(), pool_.data(), pool_.positions(), pool_.scales()),
        d_q_(q_),
        d_indptr_(pool_.indptr()),
        d_page_ids_(pool_.page_ids().empty() ? std::vector<int32_t>{0} : pool_.page_ids()),
        d_lens_(pool_.lens()),
        d_out_(Rows() * spec.head_dim * SizeOf(spec.dtype)),
        d_lse_(Rows() * sizeof(float)) {}

  size_t Rows() const { return static_cast<size_t>(seqs_) * q_heads_; }
  void SetSmScale(float sm_scale) { sm_scale_ = sm_scale; }
  DType dtype() const { return pool_.spec().dtype; }
  int32_t head_dim() const { return pool_.spec().head_dim; }
  DeviceBuffer& d_lens() { return d_lens_; }
  std::vector<float> DownloadLse() const { return d_lse_.Download<float>(); }

  // Even splits, or the balanced division over `balanced_blocks` blocks.
  DecodeAttentionArgs DeviceArgs(int32_t num_splits, int32_t balanced_blocks = 0) {
    DecodeAttentionArgs args = Common(num_splits);
    args.balanced_blocks = balanced_blocks;
    args.cache = device_.view;
    args.q = d_q_.get();
    args.indptr = d_indptr_.get<int32_t>();
    args.page_ids = d_page_ids_.get<int32_t>();
    args.lens = d_lens_.get<int32_t>();
    args.out = d_out_.get();
    args.lse = d_lse_.get<float>();
    const size_t bytes = DecodeAttentionWorkspaceBytes(args);
    if (workspace_.bytes() < bytes) workspace_ = DeviceBuffer(bytes);
    workspace_.Poison();
    args.workspace = workspace_.get();
    args.workspace_bytes = workspace_.bytes();
    if (!new_keys_.empty()) {
      // Every run starts from the pool before the write (its last slots NaN).
      device_.data.Upload(before_data_);
      device_.positions.Upload(before_positions_);
      if (!before_scales_.empty()) device_.scales.Upload(before_scales_);
      args.new_tokens.keys = d_new_keys_.get();
      args.new_tokens.values = d_new_values_.get();
      args.new_tokens.positions = d_new_positions_.get<int32_t>();
    }
    return args;
  }

  // Gives the step new tokens (DecodeNewTokens): random rows of `scale` and
  // positions, after every non-empty stream's last slot became NaN (fp8: NaN
  // bytes and scales) and position -1, a slot that reserve gave and nothing
  // wrote yet: a pass that reads it before its block writes it spreads NaN.
  // Seq `skipped` (if any) has position -1, no new token: its slots stay as
  // they are, and a write to them fails the pool's comparison.
  void AddNewTokens(float scale, int32_t skipped = -1) {
    const size_t rows = static_cast<size_t>(seqs_) * kv_heads_;
    new_keys_ = testing::RandomRows(rows * head_dim(), dtype(), scale, pool_.rng());
    new_values_ = testing::RandomRows(rows * head_dim(), dtype(), scale, pool_.rng());
    new_positions_.clear();
    for (int32_t s = 0; s < seqs_; ++s) new_positions_.push_back(s == skipped ? -1 : 1000 + 3 * s);
    const PagedKV view = pool_.view();
    for (int32_t stream = 0; stream < pool_.num_streams(); ++stream) {
      const int32_t len = pool_.lens()[stream];
      if (len == 0 || stream / kv_heads_ == skipped) continue;
      const int64_t slot = pool_.Slot(stream, len - 1);
      if (view.fp8()) {
        const size_t bytes = static_cast<size_t>(head_dim());
        std::fill_n(pool_.data().begin() + view.KeyOffset(slot), bytes,
                    fp8_e4m3::FromFloat(NAN).bits);
        std::fill_n(pool_.data().begin() + view.ValueOffset(slot), bytes,
                    fp8_e4m3::FromFloat(NAN).bits);
        pool_.scales()[2 * slot] = pool_.scales()[2 * slot + 1] = NAN;
      } else {
        for (int32_t e = 0; e < head_dim(); ++e) {
          StoreFromFloat(pool_.data().data(), static_cast<size_t>(view.KeyOffset(slot) + e),
                         dtype(), NAN);
          StoreFromFloat(pool_.data().data(), static_cast<size_t>(view.ValueOffset(slot) + e),
                         dtype(), NAN);
        }
      }
      pool_.positions()[static_cast<size_t>(slot)] = -1;
    }
    before_data_ = pool_.data();
    before_positions_ = pool_.positions();
    before_scales_ = pool_.scales();
    d_new_keys_ = DeviceBuffer(new_keys_);
    d_new_values_ = DeviceBuffer(new_values_);
    d_new_positions_ = DeviceBuffer(new_positions_);
  }

  // ref:: on the host with stream lengths `lens` (the pool's by default).
  void RunRef(const std::vector<int32_t>& lens = {}) {
    REQUIRE_OK(RunRefOn(pool_.indptr(), pool_.page_ids(), lens.empty() ? pool_.lens() : lens));
  }

  // ref:: on the host over block tables of the caller's (its status).
  absl::Status RunRefOn(const std::vector<int32_t>& indptr, const std::vector<int32_t>& page_ids,
                        const std::vector<int32_t>& lens) {
    DecodeAttentionArgs args = Common(1);
    args.cache = pool_.view();
    args.q = q_.data();
    args.indptr = indptr.data();
    args.page_ids = page_ids.data();
    args.num_page_ids = static_cast<int32_t>(page_ids.size());
    args.lens = lens.data();
    ref_out_.assign(d_out_.bytes(), 0xff);
    ref_lse_.assign(Rows(), NAN);
    args.out = ref_out_.data();
    args.lse = ref_lse_.data();
    if (!new_keys_.empty()) {  // writes the host pool: it becomes what the device's must be
      args.new_tokens.keys = new_keys_.data();
      args.new_tokens.values = new_values_.data();
      args.new_tokens.positions = new_positions_.data();
    }
    return ref::DecodeAttention(args);
  }

  const PagedCase& pool() const { return pool_; }
  std::vector<uint8_t> DownloadOut() const { return d_out_.Download<uint8_t>(); }

  // The partials too: a merge that read them before the pass wrote them would
  // read NaNs rather than the last call's values.
  void PoisonWorkspace() { workspace_.Poison(); }

  void PoisonOutputs() {
    d_out_.Poison();
    d_lse_.Poison();
  }

  // With new tokens: the device's pool is still what it was before the write.
  void RequirePoolUnwritten() const {
    REQUIRE(device_.data.Download<uint8_t>() == before_data_);
    REQUIRE(device_.positions.Download<int32_t>() == before_positions_);
  }

  // The device's out and lse against the last RunRef, and with new tokens its
  // pool's bytes, positions and scales against the host's after ref wrote them.
  void RequireMatchesRef() {
    if (!new_keys_.empty()) {
      REQUIRE(device_.data.Download<uint8_t>() == pool_.data());
      REQUIRE(device_.positions.Download<int32_t>() == pool_.positions());
      if (!pool_.scales().empty()) {
        const std::vector<float> scales = device_.scales.Download<float>();
        REQUIRE(std::memcmp(scales.data(), pool_.scales().data(), scales.size() * 4) == 0);
      }
    }
    const std::vector<uint8_t> out = d_out_.Download<uint8_t>();
    const std::vector<float> lse = d_lse_.Download<float>();
    // fp8 pages: the device rounds each weight times its V scale to f16.
    const double tolerance = pool_.spec().kv_dtype == KvDType::kFP8E4M3
                                 ? std::max(OutTolerance(dtype()), 2e-3)
                                 : OutTolerance(dtype());
    for (size_t row = 0; row < Rows(); ++row) {
      CAPTURE(row);
      if (std::isinf(ref_lse_[row])) {
        REQUIRE(lse[row] == ref_lse_[row]);
      } else {
        REQUIRE(std::abs(lse[row] - ref_lse_[row]) <= kLseTolerance);
      }
      double sum_squares = 0;
      for (int32_t e = 0; e < head_dim(); ++e) {
        const double want = LoadAsFloat(ref_out_.data(), row * head_dim() + e, dtype());
        sum_squares += want * want;
      }
      const double rms = std::sqrt(sum_squares / head_dim());
      for (int32_t e = 0; e < head_dim(); ++e) {
        const double want = LoadAsFloat(ref_out_.data(), row * head_dim() + e, dtype());
        const double got = LoadAsFloat(out.data(), row * head_dim() + e, dtype());
        CAPTURE(e, got, want, rms);
        REQUIRE(std::abs(got - want) <= tolerance * (std::abs(want) + rms));  // NaN fails
      }
    }
  }

  // Poisoned outputs, gpu::, synchronize, compare with the last RunRef.
  void RunGpuAndCompare(int32_t num_splits, int32_t balanced_blocks = 0) {
    CAPTURE(num_splits, balanced_blocks);
    PoisonOutputs();
    REQUIRE_OK(gpu::DecodeAttention(DeviceArgs(num_splits, balanced_blocks), nullptr));
    HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
    RequireMatchesRef();
  }

 private:
  DecodeAttentionArgs Common(int32_t num_splits) const {
    DecodeAttentionArgs args;
    args.num_seqs = seqs_;
    args.num_q_heads = q_heads_;
    args.num_kv_heads = kv_heads_;
    args.sm_scale = sm_scale_ > 0.0f ? sm_scale_
                                     : 1.0f / std::sqrt(static_cast<float>(pool_.spec().head_dim));
    args.num_splits = num_splits;
    args.num_page_ids = static_cast<int32_t>(pool_.page_ids().size());
    return args;
  }

  PagedCase pool_;
  int32_t seqs_, q_heads_, kv_heads_;
  float sm_scale_ = 0.0f;  // 0: 1 / sqrt(head_dim)
  std::vector<uint8_t> q_;
  DevicePool device_;
  DeviceBuffer d_q_, d_indptr_, d_page_ids_, d_lens_, d_out_, d_lse_, workspace_;
  // AddNewTokens': the rows and positions, and the pool before they are written.
  std::vector<uint8_t> new_keys_, new_values_;
  std::vector<int32_t> new_positions_;
  std::vector<uint8_t> before_data_;
  std::vector<int32_t> before_positions_;
  std::vector<float> before_scales_;
  DeviceBuffer d_new_keys_, d_new_values_, d_new_positions_;
  std::vector<uint8_t> ref_out_;
  std::vector<float> ref_lse_;
};

// Streams of the edge lengths (two kv heads per seq, so three seqs), against
// ref with one split, a few, and more splits than any stream has pages.
void CheckEdgeLengths(DType dtype, int32_t head_dim, int32_t page_size, int32_t group,
                      KvDType kv_dtype = KvDType::kAuto) {
  CAPTURE(DTypeName(dtype), KvDTypeName(kv_dtype), head_dim, page_size, group);
  PagedCaseSpec spec{page_size, head_dim, dtype, testing::EdgeLengths(page_size)};
  spec.kv_dtype = kv_dtype;
  Problem problem(spec, group, 2,
                  static_cast<uint64_t>(head_dim * 1000 + page_size * 10 + group), 2.0f);
  problem.RunRef();
  for (int32_t splits : {1, 3, 40}) problem.RunGpuAndCompare(splits);
  // Short streams: one block reads them all, each piece a whole stream.
  for (int32_t blocks : {1, 7}) problem.RunGpuAndCompare(1, blocks);
}

// The balanced division where streams span blocks: a block's run ends inside
// one stream and another's starts there, so the merge combines pieces; an
// empty stream and one of a single unit between them; more blocks launched
// than have work.
void CheckBalanced(DType dtype, int32_t head_dim, int32_t page_size, int32_t group,
                   KvDType kv_dtype = KvDType::kAuto) {
  CAPTURE(DTypeName(dtype), KvDTypeName(kv_dtype), head_dim, page_size, group);
  PagedCaseSpec spec{page_size, head_dim, dtype, {700, 300, 0, 64, 2000, 513}};
  spec.kv_dtype = kv_dtype;
  Problem problem(spec, group, 2,
                  static_cast<uint64_t>(head_dim * 1000 + page_size * 10 + group + 7), 2.0f);
  problem.RunRef();
  for (int32_t blocks : {2, 5, 9, 264}) problem.RunGpuAndCompare(1, blocks);
}

// DecodeNewTokens: the edge lengths and the balanced batch's, whose last
// tokens fall at every place of a page and of a split, under both divisions.
void CheckNewTokens(DType dtype, int32_t head_dim, int32_t page_size, int32_t group,
                    KvDType kv_dtype = KvDType::kAuto) {
  CAPTURE(DTypeName(dtype), KvDTypeName(kv_dtype), head_dim, page_size, group);
  std::vector<int32_t> lens = testing::EdgeLengths(page_size);
  for (int32_t len : {700, 300, 0, 64, 2000, 513}) lens.push_back(len);
  PagedCaseSpec spec{page_size, head_dim, dtype, lens};
  spec.kv_dtype = kv_dtype;
  Problem problem(spec, group, 2,
                  static_cast<uint64_t>(head_dim * 1000 + page_size * 10 + group + 11), 2.0f);
  problem.AddNewTokens(3.0f, /*skipped=*/1);
  problem.RunRef();
  for (int32_t splits : {1, 3, 40}) problem.RunGpuAndCompare(splits);
  for (int32_t blocks : {1, 5, 264}) problem.RunGpuAndCompare(1, blocks);
}

TEST_CASE("gpu::DecodeAttention writes the step's new tokens before it reads them as ref does",
          "[kernels][gpu]") {
  for (const testing::PageKind& kind : testing::kEveryPageKind) {
    for (int32_t head_dim : {64, 128, 256}) {
      for (int32_t page_size : {1, 16, 33}) {
        for (int32_t group : {1, 4}) CheckNewTokens(kind.dtype, head_dim, page_size, group,
                                                    kind.kv_dtype);
      }
    }
  }
}

TEST_CASE("gpu::DecodeAttention writes new tokens: the sanitizer's subset",
          "[kernels][gpu][sanitize]") {
  CheckNewTokens(DType::kBF16, 128, 16, 4);
  CheckNewTokens(DType::kF32, 64, 7, 2);
  CheckNewTokens(DType::kBF16, 128, 16, 4, KvDType::kFP8E4M3);
}

TEST_CASE("gpu::DecodeAttention equals ref: every dtype, head_dim, page size and group",
          "[kernels][gpu]") {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int32_t head_dim : {64, 128, 256}) {
      for (int32_t page_size : {1, 16, 33}) {
        for (int32_t group : {1, 2, 4, 8}) {
          CheckEdgeLengths(dtype, head_dim, page_size, group);
          CheckBalanced(dtype, head_dim, page_size, group);
        }
      }
    }
  }
}

// Every kernel path (each tile shape: 16-bit at head_dim 64/128/256, f32 at 256
// with its two-stage pipeline; split and merge) at sizes the sanitizers finish.
TEST_CASE("gpu::DecodeAttention equals ref: the sanitizer's subset", "[kernels][gpu][sanitize]") {
  CheckEdgeLengths(DType::kBF16, 128, 16, 4);
  CheckEdgeLengths(DType::kF16, 64, 1, 8);
  CheckEdgeLengths(DType::kBF16, 256, 7, 3);
  CheckEdgeLengths(DType::kF32, 256, 16, 1);
  CheckBalanced(DType::kBF16, 128, 16, 4);
  CheckBalanced(DType::kF32, 64, 7, 2);
  // A few hundred tokens, so that the pipeline wraps around its stages.
  Problem problem({16, 128, DType::kBF16, {700, 300, 0, 513}}, 4, 2, 5, 3.0f);
  problem.RunRef();
  for (int32_t splits : {1, 2, 7}) problem.RunGpuAndCompare(splits);
}

TEST_CASE("gpu::DecodeAttention equals ref on fp8 pages: every model dtype, head_dim, page size "
          "and group",
          "[kernels][gpu][fp8]") {
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    for (int32_t head_dim : {64, 128, 256}) {
      for (int32_t page_size : {1, 16, 33}) {
        for (int32_t group : {1, 2, 4, 8}) {
          CheckEdgeLengths(dtype, head_dim, page_size, group, KvDType::kFP8E4M3);
          CheckBalanced(dtype, head_dim, page_size, group, KvDType::kFP8E4M3);
        }
      }
    }
  }
}

TEST_CASE("gpu::DecodeAttention on fp8 pages: the sanitizer's subset",
          "[kernels][gpu][sanitize][fp8]") {
  CheckEdgeLengths(DType::kBF16, 128, 16, 4, KvDType::kFP8E4M3);
  CheckEdgeLengths(DType::kF16, 64, 1, 8, KvDType::kFP8E4M3);
  CheckEdgeLengths(DType::kBF16, 256, 7, 3, KvDType::kFP8E4M3);
  CheckBalanced(DType::kBF16, 128, 16, 4, KvDType::kFP8E4M3);
  PagedCaseSpec spec{16, 128, DType::kBF16, {700, 300, 0, 513}};
  spec.kv_dtype = KvDType::kFP8E4M3;
  Problem problem(spec, 4, 2, 5, 3.0f);
  problem.RunRef();
  for (int32_t splits : {1, 2, 7}) problem.RunGpuAndCompare(splits);
}

// Queries far outside f16's range (bf16 reaches 3e38): the fp8 pass scales
// each head's query by a power of two before rounding it to f16.
TEST_CASE("gpu::DecodeAttention on fp8 pages takes bf16 queries of any magnitude",
          "[kernels][gpu][fp8]") {
  for (float q_scale : {1e-6f, 1e6f}) {
    CAPTURE(q_scale);
    PagedCaseSpec spec{16, 128, DType::kBF16, {40, 7, 129, 1}};
    spec.kv_dtype = KvDType::kFP8E4M3;
    // sm_scale compensates, so the softmax stays well-conditioned.
    Problem problem(spec, 4, 2, 31, q_scale);
    problem.SetSmScale(1.0f / (q_scale * std::sqrt(128.0f)));
    problem.RunRef();
    problem.RunGpuAndCompare(1);
  }
}

// Small values (a V scale of amax / 448 far below 1) under a sharp softmax:
// the weights that enter P V in f16 are normalized by the largest V scale
// seen, so the many small ones keep their bits instead of going subnormal.
TEST_CASE("gpu::DecodeAttention on fp8 pages keeps small weights of small values",
          "[kernels][gpu][fp8]") {
  for (float value_scale : {0.02f, 1e-4f}) {
    CAPTURE(value_scale);
    PagedCaseSpec spec{16, 128, DType::kBF16, {32768, 3000, 17, 1}};
    spec.kv_dtype = KvDType::kFP8E4M3;
    spec.value_scale = value_scale;
    // Scores of RMS ~ 2 whatever the values' scale.
    Problem problem(spec, 4, 2, 13, 6.0f / value_scale);
    problem.RunRef();
    for (int32_t splits : {1, 8}) problem.RunGpuAndCompare(splits);
  }
}

TEST_CASE("gpu::DecodeAttention equals ref on a 32K-token stream", "[kernels][gpu]") {
  for (KvDType kv_dtype : {KvDType::kAuto, KvDType::kFP8E4M3}) {
    for (DType dtype : {DType::kBF16, DType::kF16}) {
      CAPTURE(DTypeName(dtype), KvDTypeName(kv_dtype));
      PagedCaseSpec spec{16, 128, dtype, {32768, 5000, 17, 0}};
      spec.kv_dtype = kv_dtype;
      Problem problem(spec, 4, 2, 7, 2.0f);
      problem.RunRef();
      const int32_t heuristic = DecodeAttentionSplits(32768, 4, 132);
      for (int32_t splits : {1, heuristic, 300}) problem.RunGpuAndCompare(splits);
      for (int32_t blocks : {264, kDecodeMaxSplits}) problem.RunGpuAndCompare(1, blocks);
    }
  }
}

TEST_CASE("DecodeAttentionResidentBlocks is what CUDA's occupancy calculator says",
          "[kernels][gpu]") {
  for (const testing::PageKind& kind : testing::kEveryPageKind) {
    for (int32_t head_dim : {64, 128, 256}) {
      CAPTURE(DTypeName(kind.dtype), KvDTypeName(kind.kv_dtype), head_dim);
      DecodeAttentionArgs args;
      args.cache.dtype = kind.dtype;
      args.cache.kv_dtype = kind.kv_dtype;
      args.cache.head_dim = head_dim;
      args.balanced_blocks = 1;
      int blocks_per_sm = 0;
      REQUIRE(gpu::internal::DecodeAttentionResidentBlocks(args, &blocks_per_sm).ok());
      REQUIRE(DecodeAttentionResidentBlocks(args.cache) == blocks_per_sm);
    }
  }
}

TEST_CASE("gpu::DecodeAttention replays from a CUDA graph, reading new lengths on the device",
          "[kernels][gpu][sanitize]") {
  const std::vector<int32_t> lens = {3000, 0, 17, 1290, 64, 1};
  // Even splits, and the balanced division, whose pieces follow the lengths.
  for (const auto& [splits, blocks] : {std::pair{4, 0}, std::pair{1, 6}}) {
    CAPTURE(splits, blocks);
    Problem problem({16, 128, DType::kBF16, lens}, 4, 2, 9, 2.0f);
    // DeviceArgs poisons the workspace, synchronously.
    const DecodeAttentionArgs args = problem.DeviceArgs(splits, blocks);
    testing::CapturedGraph graph(
        [&](cudaStream_t stream) { return gpu::DecodeAttention(args, stream); });
    REQUIRE_OK(graph.captured());

    // Replays: the captured lengths, then every stream shorter (a head-wise
    // eviction), then longer again, each written into the device array the graph reads.
    std::vector<int32_t> shorter = lens;
    for (int32_t& len : shorter) len = len / 3;
    for (const std::vector<int32_t>& now : {lens, shorter, lens}) {
      problem.d_lens().Upload(now);
      problem.PoisonOutputs();
      problem.PoisonWorkspace();
      HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
      graph.ReplayAndWait();
      problem.RunRef(now);
      problem.RequireMatchesRef();
    }
  }
}

TEST_CASE("gpu::DecodeAttention: no seqs launches nothing, bad arguments are errors",
          "[kernels][gpu][sanitize]") {
  Problem problem({16, 128, DType::kBF16, {40, 3}}, 2, 2, 11, 1.0f);
  DecodeAttentionArgs args = problem.DeviceArgs(1);
  const DecodeAttentionArgs good = args;
  args.num_seqs = 0;
  REQUIRE_OK(gpu::DecodeAttention(args, nullptr));
  args = good;
  args.lens = nullptr;
  REQUIRE_ERROR(gpu::DecodeAttention(args, nullptr), absl::StatusCode::kInvalidArgument, "null");
  args = good;
  args.cache.head_dim = 96;
  REQUIRE_ERROR(gpu::DecodeAttention(args, nullptr), absl::StatusCode::kUnimplemented,
                "head_dim 96");
  args = good;
  args.num_splits = 2;  // without a workspace
  args.workspace = nullptr;
  REQUIRE_ERROR(gpu::DecodeAttention(args, nullptr), absl::StatusCode::kInvalidArgument,
                "workspace");
  args = good;
  args.balanced_blocks = 4;  // without a workspace
  args.workspace = nullptr;
  REQUIRE_ERROR(gpu::DecodeAttention(args, nullptr), absl::StatusCode::kInvalidArgument,
                "4 balanced blocks need");
  // A page id outside the cache reads as zeros instead of faulting.
  DeviceBuffer bad_ids(std::vector<int32_t>{1 << 30, -5, 1 << 30, 1 << 30});
  args = good;
  args.page_ids = bad_ids.get<int32_t>();
  problem.PoisonOutputs();
  REQUIRE_OK(gpu::DecodeAttention(args, nullptr));
  HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
  for (float lse : problem.DownloadLse()) REQUIRE(std::isfinite(lse));
}

TEST_CASE("gpu::DecodeAttention checks its tables on the device as ref does, writing nothing",
          "[kernels][gpu][sanitize]") {
  // Two seqs of two kv heads; lens 40, 3, 17, 0 at 16 tokens a page: indptr 0 3 4 6 6.
  // With new tokens: a fault writes nothing to the pool either.
  Problem problem({16, 128, DType::kBF16, {40, 3, 17, 0}}, 2, 2, 13, 1.0f);
  problem.AddNewTokens(2.0f);
  DeviceBuffer fault(sizeof(uint64_t));
  // Good tables, checked: no fault, and the results of an unchecked run.
  problem.RunRef();
  problem.PoisonOutputs();
  DecodeAttentionArgs checked = problem.DeviceArgs(3);
  checked.fault = fault.get<uint64_t>();
  REQUIRE_OK(gpu::DecodeAttention(checked, nullptr));
  REQUIRE(gpu::ReadTableFault(checked.fault, nullptr).value().ok());
  problem.RequireMatchesRef();

  struct Tables {
    std::vector<int32_t> indptr, page_ids, lens;
  };
  const PagedCase& c = problem.pool();
  const Tables good{c.indptr(), c.page_ids(), c.lens()};
  std::vector<Tables> bad(9, good);
  bad[0].indptr[0] = 1;                        // indptr must start at 0
  bad[1].indptr[2] = bad[1].indptr[1] - 1;     // stream 1's pages end before they begin
  bad[2].page_ids.pop_back();                  // indptr ends past the (shorter) array
  bad[3].lens[3] = -1;
  bad[4].lens[1] = 17;                         // one page holds 16
  bad[5].page_ids[4] = c.num_pages();          // stream 2's first page
  bad[6].page_ids[1] = -1;                     // two faults: the lowest stream's is reported
  bad[6].lens[2] = 40;
  bad[7].lens[0] = 16 * 1000;                  // a 3-page stream claiming 1000 pages
  bad[8].indptr[1] = -5;  // stream 0 runs backwards; stream 1, checked apart on the
                          // device, starts before page_ids and must not be read there
  for (size_t i = 0; i < bad.size(); ++i) {
    CAPTURE(i);
    const Tables& t = bad[i];
    const absl::Status want = problem.RunRefOn(t.indptr, t.page_ids, t.lens);
    REQUIRE(want.code() == absl::StatusCode::kOutOfRange);
    DeviceBuffer indptr(t.indptr), page_ids(t.page_ids), lens(t.lens);
    for (const auto& [splits, blocks] : {std::pair{1, 0}, std::pair{3, 0}, std::pair{1, 5}}) {
      CAPTURE(splits, blocks);
      DecodeAttentionArgs args = problem.DeviceArgs(splits, blocks);
      args.indptr = indptr.get<int32_t>();
      args.page_ids = page_ids.get<int32_t>();
      args.num_page_ids = static_cast<int32_t>(t.page_ids.size());
      args.lens = lens.get<int32_t>();
      args.fault = fault.get<uint64_t>();
      problem.PoisonOutputs();
      const std::vector<uint8_t> before = problem.DownloadOut();
      REQUIRE_OK(gpu::DecodeAttention(args, nullptr));
      const absl::StatusOr<TableFault> found = gpu::ReadTableFault(args.fault, nullptr);
      REQUIRE_OK(found.status());
      const absl::Status got = TableFaultStatus(args, *found);
      CAPTURE(want.message(), got.message());
      REQUIRE(got == want);
      REQUIRE(problem.DownloadOut() == before);  // nothing written
      for (float lse : problem.DownloadLse()) REQUIRE(std::isnan(lse));
      problem.RequirePoolUnwritten();
    }
  }
}

TEST_CASE("gpu::DecodeAttention's device check finds the first bad page of long streams",
          "[kernels][gpu][sanitize]") {
  // Enough pages per stream that several warps check each one.
  Problem problem({16, 128, DType::kBF16, {32768, 100, 20000, 0}}, 2, 2, 19, 1.0f);
  const PagedCase& c = problem.pool();
  std::vector<int32_t> page_ids = c.page_ids();
  page_ids[c.indptr()[2] + 1900] = -3;   // stream 2
  page_ids[c.indptr()[0] + 1999] = c.num_pages();
  page_ids[c.indptr()[0] + 1500] = c.num_pages() + 7;  // the first one
  const absl::Status want = problem.RunRefOn(c.indptr(), page_ids, c.lens());
  REQUIRE(absl::StrContains(want.message(), "stream 0: page 1500 of its table"));
  DeviceBuffer d_page_ids(page_ids), fault(sizeof(uint64_t));
  DecodeAttentionArgs args = problem.DeviceArgs(DecodeAttentionSplits(32768, 4, 132));
  args.page_ids = d_page_ids.get<int32_t>();
  args.fault = fault.get<uint64_t>();
  problem.PoisonOutputs();
  REQUIRE_OK(gpu::DecodeAttention(args, nullptr));
  const absl::StatusOr<TableFault> found = gpu::ReadTableFault(args.fault, nullptr);
  REQUIRE_OK(found.status());
  REQUIRE(found->row == 0);
  REQUIRE(found->entry == 1500);
  REQUIRE(TableFaultStatus(args, *found) == want);
  for (float lse : problem.DownloadLse()) REQUIRE(std::isnan(lse));
}

}  // namespace
}  // namespace headpage
