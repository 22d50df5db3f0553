// SPDX-License-Identifier: Apache-2.0
// gpu::WindowScores against ref::WindowScores on the same random pools (ctest
// label `gpu`).
//
// Tolerance: ref:: is the policy's float scorer (policy::SnapKVScores, within
// 1e-6 relative of a double re-implementation: tests/policy/scores_dense_test.cc),
// gpu:: computes in float on the same inputs, so the two differ by rounding
// only: f32 keys go through float FMAs (1e-5 relative, the float bound); f16/bf16 products are exact in the
// tensor cores' float accumulators, which add in another order and round
// differently, and exp2 is the hardware approximation (2^-22 relative), so
// 1e-4 relative, two orders of magnitude inside the dtype bounds
// (bf16 1e-2, f16 1e-3). Every case prints its worst relative error.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/window_scores.h"
#include "tests/kernels/captured_graph.h"
#include "tests/kernels/device_buffer.h"
#include "tests/kernels/window_scores_case.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::DeviceBuffer;
using testing::DevicePool;
using testing::PagedCaseSpec;
using testing::WindowScoresCase;
using testing::WindowScoresShape;

struct Options {
  policy::Pooling pooling = policy::Pooling::kMax;
  policy::GroupReduce reduce = policy::GroupReduce::kMean;
  int32_t kernel_size = 7;
};

// The case's arrays on the device, with poisoned scores and workspace.
struct DeviceCase {
  DevicePool pool;
  DeviceBuffer queries, query_positions, indptr, page_ids, lens, score_offsets, scores, workspace;
  WindowScoresArgs args;

  DeviceCase(WindowScoresCase& c, const Options& options)
      : pool(c.pool().view(), c.pool().data(), c.pool().positions(), c.pool().scales()),
        queries(c.queries()),
        query_positions(c.query_positions()),
        indptr(c.pool().indptr()),
        page_ids(c.pool().page_ids()),
        lens(c.pool().lens()),
        score_offsets(c.score_offsets()),
        scores(static_cast<size_t>(c.num_scores()) * sizeof(float)) {
    args = c.HostArgs();
    args.pooling = options.pooling;
    args.reduce = options.reduce;
    args.kernel_size = options.kernel_size;
    workspace = DeviceBuffer(WindowScoresWorkspaceBytes(args));
    scores.Poison();
    workspace.Poison();
    args.cache = pool.view;
    args.queries = queries.get();
    args.query_positions = query_positions.get<int32_t>();
    args.indptr = indptr.get<int32_t>();
    args.page_ids = page_ids.get<int32_t>();
    args.lens = lens.get<int32_t>();
    args.score_offsets = score_offsets.get<int32_t>();
    args.scores = scores.get<float>();
    args.workspace = workspace.get();
    args.workspace_bytes = workspace.bytes();
  }
};

std::vector<float> RunRef(WindowScoresCase& c, const Options& options) {
  WindowScoresArgs args = c.HostArgs();
  args.pooling = options.pooling;
  args.reduce = options.reduce;
  args.kernel_size = options.kernel_size;
  std::vector<float> scores(static_cast<size_t>(c.num_scores()), -1.0f);
  args.scores = scores.data();
  REQUIRE_OK(ref::WindowScores(args));
  return scores;
}

// Whether WindowScoresBackend::kWarpgroupMma runs here.
bool WarpgroupMmaHere() {
  const absl::StatusOr<bool> runs = gpu::WindowScoresWarpgroupMmaRuns();
  REQUIRE_OK(runs.status());
  return *runs;
}

// Every backend that computes `dtype`'s logits here: the warp MMA (FMAs for
// f32), and the warpgroup MMA for 16-bit keys where it runs.
std::vector<WindowScoresBackend> BackendsFor(DType dtype) {
  std::vector<WindowScoresBackend> backends = {WindowScoresBackend::kWarpMma};
  if (dtype != DType::kF32 && WarpgroupMmaHere()) {
    backends.push_back(WindowScoresBackend::kWarpgroupMma);
  }
  return backends;
}

const char* BackendName(WindowScoresBackend backend) {
  return backend == WindowScoresBackend::kWarpgroupMma ? "wgmma" : "mma.sync";
}

// gpu:: on `c` with `backend` equals ref:: within the dtype's tolerance;
// returns the worst relative error (over scores above 1e-6).
double CheckAgainstRef(WindowScoresCase& c, const Options& options,
                       WindowScoresBackend backend) {
  CAPTURE(BackendName(backend));
  DeviceCase device(c, options);
  device.args.backend = backend;
  REQUIRE_OK(gpu::WindowScores(device.args, nullptr));
  HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
  const std::vector<float> actual = device.scores.Download<float>();
  const std::vector<float> expected = RunRef(c, options);
  const double tolerance = c.pool().spec().dtype == DType::kF32 ? 1e-5 : 1e-4;
  double worst = 0.0;
  for (size_t j = 0; j < expected.size(); ++j) {
    INFO("score " << j << " of " << expected.size() << ": gpu " << actual[j] << ", ref "
                  << expected[j]);
    REQUIRE(actual[j] == Approx(expected[j]).epsilon(tolerance).margin(1e-9));
    if (expected[j] > 1e-6) {
      worst = std::max<double>(worst, std::abs(actual[j] - expected[j]) / expected[j]);
    }
  }
  return worst;
}

// Small enough for compute-sanitizer, yet every path: several splits (the
// 600-key stream: chunks of 256 keys) and their merge, partial tiles, empty
// streams, windows longer than the stream, row groups of padded heads (W = 33:
// 48-row heads, two per group, the fourth warp idle, four row groups), one
// 16-row tile per head (W = 1), the f32 FMA path, both reductions, every pooling,
// kernels within and beyond the pooling tile's halo.
TEST_CASE("gpu::WindowScores equals ref:: on small cases",
          "[kernels][gpu][sanitize][window_scores]") {
  struct Shape {
    DType dtype;
    int32_t head_dim;
    WindowScoresShape shape;
    Options options;
  };
  const std::vector<Shape> shapes = {
      {DType::kBF16, 128, {2, 8, 2, 32}, {policy::Pooling::kMax, policy::GroupReduce::kMean, 7}},
      {DType::kBF16, 128, {2, 8, 2, 32}, {policy::Pooling::kAvg, policy::GroupReduce::kMax, 5}},
      {DType::kF16, 64, {2, 16, 2, 33}, {policy::Pooling::kAvg, policy::GroupReduce::kMean, 7}},
      {DType::kF16, 64, {2, 16, 2, 33}, {policy::Pooling::kMax, policy::GroupReduce::kMax, 3}},
      {DType::kF32, 64, {2, 4, 2, 1}, {policy::Pooling::kNone, policy::GroupReduce::kMax, 7}},
      {DType::kBF16, 256, {2, 4, 2, 16}, {policy::Pooling::kMax, policy::GroupReduce::kMean, 7}},
      // Kernels wider than the pooling tile's halo take the global-memory path.
      {DType::kBF16, 64, {2, 8, 2, 32}, {policy::Pooling::kAvg, policy::GroupReduce::kMean, 301}},
      {DType::kF16, 64, {2, 8, 2, 32}, {policy::Pooling::kMax, policy::GroupReduce::kMax, 131}},
  };
  uint64_t seed = 11;
  for (const Shape& s : shapes) {
    CAPTURE(DTypeName(s.dtype), s.head_dim, s.shape.num_q_heads, s.shape.window,
            static_cast<int>(s.options.pooling), static_cast<int>(s.options.reduce));
    WindowScoresCase c(PagedCaseSpec{16, s.head_dim, s.dtype, {0, 1, 15, 600}}, s.shape, seed++);
    for (WindowScoresBackend backend : BackendsFor(s.dtype)) {
      const double worst = CheckAgainstRef(c, s.options, backend);
      WARN(DTypeName(s.dtype) << " d=" << s.head_dim << " W=" << s.shape.window << " "
                              << BackendName(backend) << ": worst relative error " << worst);
    }
  }
}

// accumulate adds into what the scores held (H2O's chunks of prompt queries):
// the GPU's sum equals ref::'s fresh scores plus the old values.
TEST_CASE("gpu::WindowScores with accumulate adds into the scores",
          "[kernels][gpu][sanitize][window_scores]") {
  const Options options{policy::Pooling::kNone, policy::GroupReduce::kMean, 1};
  WindowScoresCase c(PagedCaseSpec{16, 128, DType::kBF16, {0, 1, 15, 600}}, {2, 8, 2, 32}, 5);
  DeviceCase device(c, options);
  std::vector<float> before(static_cast<size_t>(c.num_scores()));
  for (size_t j = 0; j < before.size(); ++j) before[j] = 0.125f * static_cast<float>(j % 9);
  HEADPAGE_CUDA_OK(cudaMemcpy(device.scores.get(), before.data(), before.size() * sizeof(float),
                              cudaMemcpyHostToDevice));
  device.args.accumulate = true;
  REQUIRE_OK(gpu::WindowScores(device.args, nullptr));
  HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
  const std::vector<float> actual = device.scores.Download<float>();
  const std::vector<float> fresh = RunRef(c, options);
  for (size_t j = 0; j < before.size(); ++j) {
    INFO("score " << j);
    REQUIRE(actual[j] == Approx(before[j] + fresh[j]).epsilon(1e-4).margin(1e-7));
  }
}

TEST_CASE("gpu::WindowScores equals ref:: across dtypes, head_dims, pages and options",
          "[kernels][gpu][window_scores]") {
  const std::vector<WindowScoresShape> shapes = {
      {3, 8, 2, 32}, {2, 8, 8, 7}, {2, 16, 2, 48}, {2, 4, 4, 128}, {2, 16, 2, 64}};
  uint64_t seed = 100;
  double worst[3] = {0, 0, 0};
  int which = 0;
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (int32_t head_dim : {64, 128, 256}) {
      for (int32_t page_size : {16, 7, 48, 8}) {
        const WindowScoresShape& shape = shapes[which++ % shapes.size()];
        std::vector<int32_t> lens;
        const int32_t streams = shape.num_seqs * shape.num_kv_heads;
        for (int32_t i = 0; i < streams; ++i) {
          lens.push_back(testing::EdgeLengths(page_size)[i % 6] + (i / 6) * 300);
        }
        WindowScoresCase c(PagedCaseSpec{page_size, head_dim, dtype, lens}, shape, seed++);
        for (policy::Pooling pooling : {policy::Pooling::kNone, policy::Pooling::kAvg, policy::Pooling::kMax}) {
          for (policy::GroupReduce reduce : {policy::GroupReduce::kMean, policy::GroupReduce::kMax}) {
            CAPTURE(DTypeName(dtype), head_dim, page_size, shape.num_q_heads, shape.num_kv_heads,
                    shape.window, static_cast<int>(pooling), static_cast<int>(reduce));
            for (WindowScoresBackend backend : BackendsFor(dtype)) {
              const double w = CheckAgainstRef(c, {pooling, reduce, 5}, backend);
              double& slot = worst[static_cast<int>(dtype)];
              slot = std::max(slot, w);
            }
          }
        }
      }
    }
  }
  WARN("worst relative error: f32 " << worst[0] << ", f16 " << worst[1] << ", bf16 " << worst[2]);
}

// The long stream: 32K keys (128 chunks' worth of splits at this
// batch), SnapKV's defaults, beside short streams and an empty one.
TEST_CASE("gpu::WindowScores equals ref:: on a 32K stream", "[kernels][gpu][window_scores]") {
  WindowScoresCase c(PagedCaseSpec{16, 128, DType::kBF16, {32768, 5, 0, 3000}},
                     WindowScoresShape{2, 8, 2, 32}, 7);
  for (policy::Pooling pooling : {policy::Pooling::kAvg, policy::Pooling::kMax}) {
    for (WindowScoresBackend backend : BackendsFor(DType::kBF16)) {
      const double worst = CheckAgainstRef(c, {pooling, policy::GroupReduce::kMean, 7}, backend);
      WARN("32K stream, pooling " << static_cast<int>(pooling) << " " << BackendName(backend)
                                  << ": worst relative error " << worst);
    }
  }
}

// The two tensor-core paths against each other: the same products in float
// accumulators, so the same scores to float rounding (measured: equal).
TEST_CASE("gpu::WindowScores: the warpgroup MMA agrees with the warp MMA",
          "[kernels][gpu][window_scores]") {
  if (!WarpgroupMmaHere()) {
    WARN("the warpgroup MMA does not run here: nothing to compare");
    return;
  }
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    for (int32_t head_dim : {64, 128, 256}) {
      CAPTURE(DTypeName(dtype), head_dim);
      WindowScoresCase c(PagedCaseSpec{16, head_dim, dtype, {4100, 33, 0, 1000, 7, 2048}},
                         WindowScoresShape{3, 16, 2, 24}, 41 + head_dim);
      std::vector<float> scores[2];
      int i = 0;
      for (WindowScoresBackend backend :
           {WindowScoresBackend::kWarpMma, WindowScoresBackend::kWarpgroupMma}) {
        DeviceCase device(c, Options{policy::Pooling::kMax, policy::GroupReduce::kMax, 5});
        device.args.backend = backend;
        REQUIRE_OK(gpu::WindowScores(device.args, nullptr));
        HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
        scores[i++] = device.scores.Download<float>();
      }
      double worst = 0.0;
      for (size_t j = 0; j < scores[0].size(); ++j) {
        INFO("score " << j);
        REQUIRE(scores[1][j] == Approx(scores[0][j]).epsilon(1e-6).margin(1e-12));
        if (scores[0][j] > 0) {
          worst = std::max<double>(worst, std::abs(scores[1][j] - scores[0][j]) / scores[0][j]);
        }
      }
      WARN(DTypeName(dtype) << " d=" << head_dim << ": wgmma against mma.sync, worst relative "
                            << "difference " << worst);
    }
  }
}

// A build with 90 among its architectures runs the warpgroup MMA on compute
// capability 9.0 (the CMake wiring), and no build runs it elsewhere.
TEST_CASE("gpu::WindowScoresWarpgroupMmaRuns says where the warpgroup MMA runs",
          "[kernels][gpu][window_scores]") {
  cudaDeviceProp prop;
  int device = 0;
  HEADPAGE_CUDA_OK(cudaGetDevice(&device));
  HEADPAGE_CUDA_OK(cudaGetDeviceProperties(&prop, device));
#if HEADPAGE_HAVE_WGMMA
  const bool built = true;
#else
  const bool built = false;
#endif
  CAPTURE(prop.major, prop.minor, built);
  REQUIRE(WarpgroupMmaHere() == (built && prop.major == 9 && prop.minor == 0));
}

// fp8 pages: the keys are dequantized and rounded to the model dtype on
// their way into shared memory, as ref:: reads them.
TEST_CASE("gpu::WindowScores equals ref:: on fp8 pages", "[kernels][gpu][window_scores][fp8]") {
  uint64_t seed = 300;
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    for (int32_t head_dim : {64, 128, 256}) {
      for (int32_t page_size : {16, 7, 48, 8}) {
        std::vector<int32_t> lens;
        for (int32_t i = 0; i < 4; ++i) {
          lens.push_back(testing::EdgeLengths(page_size)[(i + head_dim) % 6] + i * 300);
        }
        PagedCaseSpec spec{page_size, head_dim, dtype, lens};
        spec.kv_dtype = KvDType::kFP8E4M3;
        WindowScoresCase c(spec, WindowScoresShape{2, 8, 2, 32}, seed++);
        CAPTURE(DTypeName(dtype), head_dim, page_size);
        for (WindowScoresBackend backend : BackendsFor(dtype)) {
          const double worst =
              CheckAgainstRef(c, {policy::Pooling::kAvg, policy::GroupReduce::kMean, 5}, backend);
          WARN("fp8 pages, " << DTypeName(dtype) << " d=" << head_dim << " "
                             << BackendName(backend) << ": worst relative error " << worst);
        }
      }
    }
  }
}

// Deterministic (no atomics), and capturable: a CUDA graph of the four
// launches gives the same bits as a direct call.
TEST_CASE("gpu::WindowScores: deterministic and CUDA-graph capturable",
          "[kernels][gpu][window_scores]") {
  WindowScoresCase c(PagedCaseSpec{16, 128, DType::kBF16, {2000, 700, 1, 64}},
                     WindowScoresShape{2, 16, 2, 32}, 21);
  for (WindowScoresBackend backend : BackendsFor(DType::kBF16)) {
    CAPTURE(BackendName(backend));
    DeviceCase device(c, Options{});
    device.args.backend = backend;
    REQUIRE_OK(gpu::WindowScores(device.args, nullptr));
    HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
    const std::vector<float> direct = device.scores.Download<float>();
    REQUIRE_OK(gpu::WindowScores(device.args, nullptr));
    HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
    REQUIRE(device.scores.Download<float>() == direct);

    device.scores.Poison();
    testing::CapturedGraph graph(
        [&](cudaStream_t stream) { return gpu::WindowScores(device.args, stream); });
    REQUIRE_OK(graph.captured());
    graph.ReplayAndWait();
    REQUIRE(device.scores.Download<float>() == direct);
  }
}

TEST_CASE("gpu::WindowScores: bad arguments and a short workspace are errors",
          "[kernels][gpu][sanitize][window_scores]") {
  WindowScoresCase c(PagedCaseSpec{16, 128, DType::kBF16, {40, 3}}, WindowScoresShape{1, 4, 2, 8},
                     5);
  DeviceCase device(c, Options{});
  WindowScoresArgs args = device.args;
  args.workspace_bytes -= 1;
  REQUIRE_ERROR(gpu::WindowScores(args, nullptr), absl::StatusCode::kInvalidArgument, "needs");
  args = device.args;
  args.cache.head_dim = 96;
  REQUIRE_ERROR(gpu::WindowScores(args, nullptr), absl::StatusCode::kUnimplemented, "head_dim 96");
  args = device.args;
  args.window = 0;
  REQUIRE_ERROR(gpu::WindowScores(args, nullptr), absl::StatusCode::kInvalidArgument, "window 0");
  args = device.args;
  args.backend = static_cast<WindowScoresBackend>(7);
  REQUIRE_ERROR(gpu::WindowScores(args, nullptr), absl::StatusCode::kInvalidArgument,
                "unknown backend value 7");
  args = device.args;
  args.backend = WindowScoresBackend::kWarpgroupMma;
  if (!WarpgroupMmaHere()) {
    REQUIRE_ERROR(gpu::WindowScores(args, nullptr), absl::StatusCode::kFailedPrecondition,
                  "sm_90a");
    args.max_len = 0;  // refused even with nothing to do
    REQUIRE_ERROR(gpu::WindowScores(args, nullptr), absl::StatusCode::kFailedPrecondition,
                  "sm_90a");
  }
  {
    WindowScoresCase f32(PagedCaseSpec{16, 64, DType::kF32, {40, 3}},
                         WindowScoresShape{1, 4, 2, 8}, 6);
    DeviceCase f32_device(f32, Options{});
    f32_device.args.backend = WindowScoresBackend::kWarpgroupMma;
    REQUIRE_ERROR(gpu::WindowScores(f32_device.args, nullptr),
                  absl::StatusCode::kInvalidArgument, "not f32");
  }
  // Nothing to do: no workspace needed, nothing launched, nothing written.
  args = device.args;
  args.max_len = 0;
  args.workspace = nullptr;
  args.workspace_bytes = 0;
  REQUIRE_OK(gpu::WindowScores(args, nullptr));
  HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
  for (float s : device.scores.Download<float>()) REQUIRE(std::isnan(s));
}

}  // namespace
}  // namespace headpage
