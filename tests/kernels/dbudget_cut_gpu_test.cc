// SPDX-License-Identifier: Apache-2.0
// gpu::DBudgetCut against ref::DBudgetCut on the same random layers (ctest
// label `gpu`). The GPU adds the squares and roots in another order than the
// CPU, so the two may disagree where a loss ratio lies within rounding of the
// threshold, and only there: the kept counts must be equal, except when the
// test's own dense ratio at the disputed cut is within 1e-9 of the threshold.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/dbudget_cut.h"
#include "tests/kernels/dbudget_cut_case.h"
#include "tests/kernels/device_buffer.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::DBudgetCutCase;
using testing::DBudgetCutCaseSpec;
using testing::DeviceBuffer;
using Ints = std::vector<int32_t>;

constexpr double kRatioSlack = 1e-9;

// The case's arrays on the device, with args over them (kept and the
// workspace poisoned, so that an unwritten count or an unwritten workspace
// entry read as a NaN cannot pass). `offsets` replaces the case's on the
// device (bad-contents tests); num_tokens stays the arrays' size.
struct DeviceCase {
  DeviceBuffer offsets, scores, positions, attention, kept, workspace;
  DBudgetCutArgs args;

  DeviceCase(const DBudgetCutCase& c, double threshold, bool by_position, const Ints& offsets_in)
      : offsets(offsets_in),
        scores(c.scores()),
        positions(c.positions()),
        attention(c.attention()),
        kept(sizeof(int32_t) * static_cast<size_t>(std::max(1, c.num_streams()))) {
    args = c.HostArgs();
    args.num_tokens = static_cast<int32_t>(c.scores().size());
    args.score_offsets = offsets.get<int32_t>();
    args.scores = scores.get<float>();
    args.positions = positions.get<int32_t>();
    args.attention = attention.get<float>();
    args.threshold = threshold;
    args.by_position = by_position;
    args.kept = kept.get<int32_t>();
    workspace = DeviceBuffer(std::max<size_t>(1, DBudgetCutWorkspaceBytes(args)));
    args.workspace = workspace.get();
    args.workspace_bytes = workspace.bytes();
    kept.Poison();
    workspace.Poison();
  }
  DeviceCase(const DBudgetCutCase& c, double threshold, bool by_position)
      : DeviceCase(c, threshold, by_position, c.offsets()) {}

  Ints Run(cudaStream_t stream = nullptr) {
    REQUIRE_OK(gpu::DBudgetCut(args, stream));
    HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
    Ints counts = kept.Download<int32_t>();
    counts.resize(static_cast<size_t>(args.num_streams()));
    return counts;
  }
};

Ints RunRef(const DBudgetCutCase& c, double threshold, bool by_position) {
  Ints kept(static_cast<size_t>(c.num_streams()), -1);
  DBudgetCutArgs args = c.HostArgs();
  args.threshold = threshold;
  args.by_position = by_position;
  args.kept = kept.data();
  REQUIRE_OK(ref::DBudgetCut(args));
  return kept;
}

// Sequence `seq`'s GPU counts against the reference's: each within its
// stream's [protected, length], the same cut for every stream, and equal to
// the reference's unless the ratio at the disputed cut (the larger of the two:
// one side found it admissible, the other not) is within kRatioSlack of the
// threshold.
void CheckSequence(const DBudgetCutCase& c, int32_t seq, const Ints& gpu, const Ints& ref,
                   double threshold, bool by_position) {
  const int32_t heads = c.spec().num_kv_heads;
  const int32_t first = seq * heads;
  const int32_t gpu_cut = c.length(first) - gpu[first];
  const int32_t ref_cut = c.length(first) - ref[first];
  for (int32_t s = first; s < first + heads; ++s) {
    INFO("sequence " << seq << " stream " << s << " of length " << c.length(s));
    REQUIRE(gpu[s] >= c.NumProtected(s));
    REQUIRE(gpu[s] <= c.length(s));
    REQUIRE(c.length(s) - gpu[s] == gpu_cut);
  }
  if (gpu_cut == ref_cut) return;
  const int32_t disputed = std::max(gpu_cut, ref_cut);
  const double ratio = c.Ratio(seq, disputed, by_position);
  INFO("sequence " << seq << ": gpu cut " << gpu_cut << ", ref cut " << ref_cut << ", ratio at "
                   << disputed << " is " << ratio << " against threshold " << threshold);
  REQUIRE(std::abs(ratio - threshold) <= kRatioSlack);
  WARN("sequence " << seq << ": cut " << gpu_cut << " vs " << ref_cut << " at ratio " << ratio
                   << ", within rounding of the threshold");
}

void CheckAgainstRef(const DBudgetCutCase& c, double threshold, bool by_position) {
  DeviceCase device(c, threshold, by_position);
  const Ints gpu = device.Run();
  const Ints ref = RunRef(c, threshold, by_position);
  for (int32_t seq = 0; seq < c.spec().num_seqs; ++seq) {
    CheckSequence(c, seq, gpu, ref, threshold, by_position);
  }
}

// Layers of several sequences whose candidate counts sit around the warp
// (32) and tile (128) boundaries, each of group size 1, 2, 4 or 8, with sinks
// and recent windows, ties, zero-attention candidates; every threshold, by
// score and by position.
void CheckEdgeLayers(int iterations, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const Ints edges = {0, 1, 15, 16, 17, 31, 32, 33, 127, 128, 129, 300, 2100};
  for (int iter = 0; iter < iterations; ++iter) {
    DBudgetCutCaseSpec spec;
    spec.num_seqs = 1 + static_cast<int32_t>(rng() % 4);
    spec.num_kv_heads = 1 << (rng() % 3);
    spec.group_size = 1 << (iter % 4);
    for (int32_t seq = 0; seq < spec.num_seqs; ++seq) {
      spec.candidates.push_back(edges[rng() % edges.size()]);
    }
    spec.sinks = static_cast<int32_t>(rng() % 5);
    spec.recent = static_cast<int32_t>(rng() % 9) - 1;
    const int32_t distinct_choices[] = {0, 3, 1, 0};
    spec.distinct = distinct_choices[iter % 4];
    const double zero_choices[] = {0.0, 0.2, 0.9};
    spec.zero_fraction = zero_choices[iter % 3];
    spec.lead = iter % 2;
    const DBudgetCutCase c(spec, rng());
    for (const double threshold : {0.0, 0.01, 0.05, 0.5}) {
      for (const bool by_position : {false, true}) {
        INFO("iter " << iter << " seqs " << spec.num_seqs << " heads " << spec.num_kv_heads
                     << " group " << spec.group_size << " threshold " << threshold
                     << " by_position " << by_position);
        CheckAgainstRef(c, threshold, by_position);
      }
    }
  }
}

// Small enough for compute-sanitizer (memcheck, racecheck), yet every kernel.
TEST_CASE("gpu::DBudgetCut equals ref::DBudgetCut on small layers",
          "[kernels][gpu][dbudget][sanitize]") {
  CheckEdgeLayers(4, 3);
}

TEST_CASE("gpu::DBudgetCut equals ref::DBudgetCut on the edge lengths, more cases",
          "[kernels][gpu][dbudget]") {
  CheckEdgeLayers(40, 11);
}

// Long streams: the mean-sized row cache holds the shorter sequence's rows
// whole, the 32K rows and the 70K rows (beyond any cache) are gathered from
// global memory, and a warp walks several tiles.
TEST_CASE("gpu::DBudgetCut equals ref::DBudgetCut on long streams", "[kernels][gpu][dbudget]") {
  std::mt19937_64 rng(29);
  for (const std::vector<int32_t>& candidates :
       {std::vector<int32_t>{32768 - 36, 5000}, std::vector<int32_t>{70000}}) {
    DBudgetCutCaseSpec spec;
    spec.num_seqs = static_cast<int32_t>(candidates.size());
    spec.num_kv_heads = candidates.size() == 1 ? 2 : 8;
    spec.group_size = candidates.size() == 1 ? 2 : 4;
    spec.candidates = candidates;
    spec.sinks = 4;
    spec.recent = 32;
    spec.zero_fraction = 0.05;
    const DBudgetCutCase c(spec, rng());
    for (const double threshold : {0.01, 0.05, 0.5}) {
      for (const bool by_position : {false, true}) {
        INFO("candidates " << candidates[0] << " threshold " << threshold << " by_position "
                           << by_position);
        CheckAgainstRef(c, threshold, by_position);
      }
    }
  }
}

// Deterministic (fixed summation order, no atomics), and capturable: a CUDA
// graph of the launches gives the same counts as a direct call.
TEST_CASE("gpu::DBudgetCut: deterministic and CUDA-graph capturable", "[kernels][gpu][dbudget]") {
  DBudgetCutCaseSpec spec;
  spec.num_seqs = 3;
  spec.num_kv_heads = 4;
  spec.group_size = 4;
  spec.candidates = {3000, 129, 4100};
  spec.sinks = 4;
  spec.recent = 16;
  spec.distinct = 5;
  const DBudgetCutCase c(spec, 41);
  for (const bool by_position : {false, true}) {
    DeviceCase device(c, 0.05, by_position);
    const Ints direct = device.Run();
    REQUIRE(device.Run() == direct);

    cudaStream_t stream;
    HEADPAGE_CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    device.kept.Poison();
    cudaGraph_t graph;
    HEADPAGE_CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    REQUIRE_OK(gpu::DBudgetCut(device.args, stream));
    HEADPAGE_CUDA_OK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec;
    HEADPAGE_CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
    HEADPAGE_CUDA_OK(cudaGraphLaunch(exec, stream));
    HEADPAGE_CUDA_OK(cudaStreamSynchronize(stream));
    Ints graphed = device.kept.Download<int32_t>();
    graphed.resize(direct.size());
    REQUIRE(graphed == direct);
    HEADPAGE_CUDA_OK(cudaGraphExecDestroy(exec));
    HEADPAGE_CUDA_OK(cudaGraphDestroy(graph));
    HEADPAGE_CUDA_OK(cudaStreamDestroy(stream));
  }
}

TEST_CASE("gpu::DBudgetCut: bad device contents give well-formed output",
          "[kernels][gpu][dbudget][sanitize]") {
  DBudgetCutCaseSpec spec;
  spec.num_seqs = 3;
  spec.num_kv_heads = 2;
  spec.group_size = 2;
  spec.candidates = {40, 40, 40};
  spec.sinks = 2;
  spec.recent = 3;
  DBudgetCutCase c(spec, 9);
  const Ints ref = RunRef(c, 0.5, false);

  // Sequence 1's first stream takes its sibling's first slot: one more
  // candidate on one side, one fewer slot on the other, so their candidates
  // differ (the reference's error) and the sequence keeps everything; the
  // other sequences are untouched.
  Ints offsets = c.offsets();
  offsets[3] += 1;
  {
    DeviceCase device(c, 0.5, false, offsets);
    const Ints gpu = device.Run();
    REQUIRE(gpu[2] == offsets[3] - offsets[2]);
    REQUIRE(gpu[3] == offsets[4] - offsets[3]);
    CheckSequence(c, 0, gpu, ref, 0.5, false);
    CheckSequence(c, 2, gpu, ref, 0.5, false);
  }
  // Offsets past num_tokens are clamped to it, decreasing ones give empty
  // streams; every count stays within its clamped stream.
  offsets = c.offsets();
  offsets[5] = offsets[6] + 7;
  offsets[6] = offsets[6] + 100;
  offsets[2] = offsets[1] - 5;
  {
    DeviceCase device(c, 0.5, false, offsets);
    const Ints gpu = device.Run();
    const int32_t total = static_cast<int32_t>(c.scores().size());
    for (int32_t s = 0; s < c.num_streams(); ++s) {
      const int32_t lo = std::clamp(offsets[s], 0, total);
      const int32_t len = std::clamp(offsets[s + 1], lo, total) - lo;
      INFO("stream " << s << " keeps " << gpu[s] << " of " << len);
      REQUIRE(gpu[s] >= 0);
      REQUIRE(gpu[s] <= len);
    }
  }
  // NaN scores (the reference rejects them) and NaN attention: some cut.
  c.mutable_scores()[5] = std::nanf("");
  c.mutable_scores()[50] = -std::nanf("");
  c.mutable_attention()[7] = std::nanf("");
  {
    DeviceCase device(c, 0.5, false);
    const Ints gpu = device.Run();
    for (int32_t s = 0; s < c.num_streams(); ++s) {
      REQUIRE(gpu[s] >= c.NumProtected(s));
      REQUIRE(gpu[s] <= c.length(s));
    }
  }
}

TEST_CASE("gpu::DBudgetCut: no streams launches nothing, bad arguments are errors",
          "[kernels][gpu][dbudget][sanitize]") {
  DBudgetCutArgs empty;
  empty.num_kv_heads = 8;
  REQUIRE_OK(gpu::DBudgetCut(empty, nullptr));

  DBudgetCutCaseSpec spec;
  spec.num_seqs = 1;
  spec.num_kv_heads = 2;
  spec.candidates = {20};
  const DBudgetCutCase c(spec, 2);
  DeviceCase device(c, 0.05, false);
  DBudgetCutArgs args = device.args;
  args.workspace_bytes = DBudgetCutWorkspaceBytes(args) - 1;
  REQUIRE_ERROR(gpu::DBudgetCut(args, nullptr), absl::StatusCode::kInvalidArgument, "needs");
  args = device.args;
  args.workspace = nullptr;
  REQUIRE_ERROR(gpu::DBudgetCut(args, nullptr), absl::StatusCode::kInvalidArgument, "null");
  args = device.args;
  args.workspace = static_cast<char*>(args.workspace) + 4;
  REQUIRE_ERROR(gpu::DBudgetCut(args, nullptr), absl::StatusCode::kInvalidArgument, "aligned");
  args = device.args;
  args.threshold = -1.0;
  REQUIRE_ERROR(gpu::DBudgetCut(args, nullptr), absl::StatusCode::kInvalidArgument, "threshold");
  // Nothing was launched: the counts are still the poison.
  HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
  for (const int32_t k : device.kept.Download<int32_t>()) REQUIRE(k == -1);
}

}  // namespace
}  // namespace headpage
