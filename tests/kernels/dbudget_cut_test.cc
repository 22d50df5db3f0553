// SPDX-License-Identifier: Apache-2.0
// ref::DBudgetCut: hand-computed cases, equality with policy::DBudgetKept on
// random layers (the layout of offsets and attention rows), Validate, and
// every error.
#include "kernels/dbudget_cut.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "absl/types/span.h"
#include "policy/budget.h"
#include "tests/kernels/dbudget_cut_case.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::DBudgetCutCase;
using testing::DBudgetCutCaseSpec;
using Ints = std::vector<int32_t>;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Arrays for a hand-written layer; every stream's positions are 0, 1, ...
struct HandLayer {
  int32_t num_seqs = 1;
  int32_t num_kv_heads = 1;
  int32_t group_size = 1;
  Ints offsets;
  std::vector<float> scores;
  Ints positions;
  std::vector<float> attention;  // [group][n] per stream, streams in order
  int32_t sinks = 0;
  int32_t recent = 0;

  DBudgetCutArgs Args(double threshold, bool by_position = false) const {
    DBudgetCutArgs args;
    args.num_seqs = num_seqs;
    args.num_kv_heads = num_kv_heads;
    args.group_size = group_size;
    args.score_offsets = offsets.data();
    args.num_tokens = offsets.back();
    args.scores = scores.data();
    args.positions = positions.data();
    args.sinks = sinks;
    args.recent = recent;
    args.attention = attention.data();
    args.threshold = threshold;
    args.by_position = by_position;
    return args;
  }
};

HandLayer MakeLayer(int32_t num_seqs, int32_t num_kv_heads, int32_t group_size,
                    const std::vector<std::vector<float>>& scores,
                    const std::vector<std::vector<float>>& attention) {
  HandLayer layer;
  layer.num_seqs = num_seqs;
  layer.num_kv_heads = num_kv_heads;
  layer.group_size = group_size;
  layer.offsets.push_back(0);
  for (size_t s = 0; s < scores.size(); ++s) {
    layer.offsets.push_back(layer.offsets.back() + static_cast<int32_t>(scores[s].size()));
    layer.scores.insert(layer.scores.end(), scores[s].begin(), scores[s].end());
    for (size_t j = 0; j < scores[s].size(); ++j)
      layer.positions.push_back(static_cast<int32_t>(j));
    layer.attention.insert(layer.attention.end(), attention[s].begin(), attention[s].end());
  }
  return layer;
}

Ints RunRef(const DBudgetCutArgs& args_in) {
  Ints kept(static_cast<size_t>(args_in.num_streams()), -1);
  DBudgetCutArgs args = args_in;
  args.kept = kept.data();
  REQUIRE_OK(ref::DBudgetCut(args));
  return kept;
}

TEST_CASE("ref::DBudgetCut: hand example, protection and the tie rule", "[kernels][dbudget]") {
  // slot:        0     1     2     3     4;  slot 0 a sink, slot 4 the window.
  // score:     0.9   0.5   0.1   0.5   0.9
  // attention: 0.3   0.6   0     0.8   0.3
  // Least important first: slot 2 (0.1), then the 0.5 tie higher slot first:
  // slot 3, then slot 1. base = sqrt(0.36 + 0.64) = 1; cutting 1 (slot 2,
  // zero attention) loses nothing, 2 leaves sqrt(0.36) (ratio 0.4), 3 all.
  // The other tie order (slot 1 before 3) would leave 0.8 at 2 (ratio 0.2).
  HandLayer layer =
      MakeLayer(1, 1, 1, {{0.9f, 0.5f, 0.1f, 0.5f, 0.9f}}, {{0.3f, 0.6f, 0.0f, 0.8f, 0.3f}});
  layer.sinks = 1;
  layer.recent = 1;
  REQUIRE(RunRef(layer.Args(0.0)) == Ints{5});   // threshold 0 keeps everything
  REQUIRE(RunRef(layer.Args(0.05)) == Ints{4});  // cut 1
  REQUIRE(RunRef(layer.Args(0.3)) == Ints{4});   // not 3: ties go higher slot first
  REQUIRE(RunRef(layer.Args(0.5)) == Ints{3});   // cut 2
  REQUIRE(RunRef(layer.Args(1.0)) == Ints{2});   // every candidate; the protected stay
  // Oldest first: slot 1 (0.6) goes first, leaving 0.8 (ratio 0.2) for k = 1 and 2.
  REQUIRE(RunRef(layer.Args(0.1, true)) == Ints{5});
  REQUIRE(RunRef(layer.Args(0.3, true)) == Ints{3});
}

TEST_CASE("ref::DBudgetCut: one cut per sequence, over every q head of its kv heads",
          "[kernels][dbudget]") {
  // Sequence 0, two kv heads of group 2 (rows g0 then g1 per stream):
  //   stream 0 scores 3 1 2 -> order slots 1, 2, 0; rows [0.6 0 0.8], [1 0 0]
  //   stream 1 scores 1 2 3 -> order slots 0, 1, 2; rows [0 0.6 0.8], [0 0 1]
  //   kept sums (k = 0..3): 4, 4, 0.6 + 1 + 0.8 + 1 = 3.4, 0; ratios 0, 0, 0.15, 1.
  // Sequence 1: all attention on each stream's least important candidate, so
  //   cutting even one loses everything (ratio 1).
  const HandLayer layer = MakeLayer(
      2, 2, 2, {{3, 1, 2}, {1, 2, 3}, {1, 2, 3}, {1, 2, 3}},
      {{0.6f, 0, 0.8f, 1, 0, 0}, {0, 0.6f, 0.8f, 0, 0, 1}, {1, 0, 0, 1, 0, 0}, {1, 0, 0, 1, 0, 0}});
  REQUIRE(RunRef(layer.Args(0.1)) == Ints{2, 2, 3, 3});
  REQUIRE(RunRef(layer.Args(0.2)) == Ints{1, 1, 3, 3});
  REQUIRE(RunRef(layer.Args(1.0)) == Ints{0, 0, 0, 0});
}

TEST_CASE("ref::DBudgetCut: no attention on any candidate keeps everything", "[kernels][dbudget]") {
  HandLayer layer =
      MakeLayer(1, 2, 1, {{1, 2, 3, 4}, {4, 3, 2, 1}}, {{0.5f, 0, 0, 0.5f}, {1, 0, 0, 0}});
  layer.sinks = 1;
  layer.recent = 1;
  REQUIRE(RunRef(layer.Args(0.5)) == Ints{4, 4});
}

// ref:: against policy::DBudgetKept called on each sequence's own views.
Ints PolicyKept(const DBudgetCutCase& c, double threshold, bool by_position) {
  const DBudgetCutCaseSpec& spec = c.spec();
  Ints kept;
  for (int32_t seq = 0; seq < spec.num_seqs; ++seq) {
    std::vector<policy::StreamScores> streams;
    std::vector<absl::Span<const float>> rows;
    for (int32_t h = 0; h < spec.num_kv_heads; ++h) {
      const int32_t s = seq * spec.num_kv_heads + h;
      const size_t first = static_cast<size_t>(c.offsets()[s]),
                   n = static_cast<size_t>(c.length(s));
      streams.push_back({absl::MakeConstSpan(c.scores().data() + first, n),
                         absl::MakeConstSpan(c.positions().data() + first, n),
                         {spec.sinks, spec.recent}});
      rows.push_back(
          absl::MakeConstSpan(c.attention().data() + spec.group_size * first, spec.group_size * n));
    }
    const absl::StatusOr<Ints> seq_kept =
        policy::DBudgetKept(streams, rows, spec.group_size, threshold, by_position);
    REQUIRE_OK(seq_kept);
    kept.insert(kept.end(), seq_kept->begin(), seq_kept->end());
  }
  return kept;
}

TEST_CASE("ref::DBudgetCut equals policy::DBudgetKept on random layers", "[kernels][dbudget]") {
  std::mt19937_64 rng(5);
  for (int iter = 0; iter < 40; ++iter) {
    DBudgetCutCaseSpec spec;
    spec.num_seqs = 1 + static_cast<int32_t>(rng() % 3);
    spec.num_kv_heads = 1 + static_cast<int32_t>(rng() % 3);
    spec.group_size = 1 << (rng() % 4);
    for (int32_t seq = 0; seq < spec.num_seqs; ++seq) {
      const int32_t lens[] = {0, 1, 15, 16, 17, 31, 32, 33, 200};
      spec.candidates.push_back(lens[rng() % 9]);
    }
    spec.sinks = static_cast<int32_t>(rng() % 4);
    spec.recent = static_cast<int32_t>(rng() % 5) - 1;
    spec.distinct = iter % 3 == 0 ? 3 : 0;
    spec.zero_fraction = iter % 2 == 0 ? 0.3 : 0.0;
    spec.lead = iter % 2;
    const DBudgetCutCase c(spec, rng());
    for (const double threshold : {0.0, 0.01, 0.05, 0.5}) {
      for (const bool by_position : {false, true}) {
        INFO("iter " << iter << " threshold " << threshold << " by_position " << by_position);
        DBudgetCutArgs args = c.HostArgs();
        args.threshold = threshold;
        args.by_position = by_position;
        const Ints kept = RunRef(args);
        REQUIRE(kept == PolicyKept(c, threshold, by_position));
        for (int32_t s = 0; s < c.num_streams(); ++s) {
          REQUIRE(kept[s] >= c.NumProtected(s));
          REQUIRE(kept[s] <= c.length(s));
        }
      }
    }
  }
}

TEST_CASE("DBudgetCut Validate: counts, threshold and pointers", "[kernels][dbudget]") {
  const HandLayer layer = MakeLayer(1, 1, 1, {{1, 2}}, {{0.5f, 0.5f}});
  Ints kept(1);
  auto args_with = [&](auto change) {
    DBudgetCutArgs args = layer.Args(0.05);
    args.kept = kept.data();
    change(args);
    return args;
  };
  REQUIRE_OK(Validate(args_with([](DBudgetCutArgs&) {})));
  using absl::StatusCode;
  REQUIRE_ERROR(Validate(args_with([](DBudgetCutArgs& a) { a.num_kv_heads = 0; })),
                StatusCode::kInvalidArgument, "num_kv_heads");
  REQUIRE_ERROR(Validate(args_with([](DBudgetCutArgs& a) { a.num_seqs = -1; })),
                StatusCode::kInvalidArgument, "num_seqs");
  REQUIRE_ERROR(Validate(args_with([](DBudgetCutArgs& a) { a.group_size = 0; })),
                StatusCode::kInvalidArgument, "group_size");
  REQUIRE_ERROR(Validate(args_with([](DBudgetCutArgs& a) {
                  a.num_seqs = 1 << 20;
                  a.num_kv_heads = 64;
                  a.group_size = 64;
                })),
                StatusCode::kInvalidArgument, "overflow");
  REQUIRE_ERROR(Validate(args_with([](DBudgetCutArgs& a) { a.num_tokens = -1; })),
                StatusCode::kInvalidArgument, "num_tokens");
  REQUIRE_ERROR(Validate(args_with([](DBudgetCutArgs& a) { a.threshold = -0.1; })),
                StatusCode::kInvalidArgument, "threshold");
  REQUIRE_ERROR(Validate(args_with([](DBudgetCutArgs& a) { a.threshold = kNaN; })),
                StatusCode::kInvalidArgument, "threshold");
  REQUIRE_ERROR(Validate(args_with([](DBudgetCutArgs& a) { a.kept = nullptr; })),
                StatusCode::kInvalidArgument, "null");
  REQUIRE_ERROR(Validate(args_with([](DBudgetCutArgs& a) { a.score_offsets = nullptr; })),
                StatusCode::kInvalidArgument, "null");
  REQUIRE_ERROR(Validate(args_with([](DBudgetCutArgs& a) { a.attention = nullptr; })),
                StatusCode::kInvalidArgument, "null");
  // No sequences: nothing is read, and nothing needs to be there.
  DBudgetCutArgs empty;
  empty.num_kv_heads = 8;
  REQUIRE_OK(Validate(empty));
  REQUIRE_OK(ref::DBudgetCut(empty));
  REQUIRE(DBudgetCutWorkspaceBytes(empty) == 0);
}

TEST_CASE("DBudgetCutWorkspaceBytes: sized by the host-side counts", "[kernels][dbudget]") {
  DBudgetCutArgs args;
  args.num_seqs = 8;
  args.num_kv_heads = 8;
  args.group_size = 4;
  args.num_tokens = 64 * 32768;
  const size_t by_score = DBudgetCutWorkspaceBytes(args);
  // The sort's four buffers and the gathered rows dominate.
  REQUIRE(by_score >= static_cast<size_t>(args.num_tokens) * (16 + 4 * 4));
  REQUIRE(by_score < static_cast<size_t>(args.num_tokens) * (16 + 4 * 4) * 3 / 2);
  args.by_position = true;  // nothing sorted or gathered
  REQUIRE(DBudgetCutWorkspaceBytes(args) < by_score / 4);
  const DBudgetCutLayout layout = PlanDBudgetCut(args);
  REQUIRE(layout.kept_sums % 256 == 0);
  REQUIRE(layout.bytes % 256 == 0);
}

TEST_CASE("ref::DBudgetCut: bad contents are errors and write nothing", "[kernels][dbudget]") {
  DBudgetCutCaseSpec spec;
  spec.num_seqs = 2;
  spec.num_kv_heads = 2;
  spec.group_size = 2;
  spec.candidates = {6, 9};
  spec.sinks = 2;
  spec.recent = 2;
  using absl::StatusCode;
  auto run = [](const DBudgetCutCase& c) {
    Ints kept(static_cast<size_t>(c.num_streams()), -1);
    DBudgetCutArgs args = c.HostArgs();
    args.kept = kept.data();
    const absl::Status status = ref::DBudgetCut(args);
    for (const int32_t k : kept) REQUIRE(k == -1);
    return status;
  };
  {
    DBudgetCutCase c(spec, 1);
    c.mutable_offsets()[2] = c.mutable_offsets()[1] - 1;  // decreasing
    REQUIRE_ERROR(run(c), StatusCode::kOutOfRange, "score_offsets[1..2]");
  }
  {
    DBudgetCutCase c(spec, 1);
    c.mutable_offsets().back() += 1;  // past num_tokens
    DBudgetCutArgs args = c.HostArgs();
    Ints kept(4, -1);
    args.kept = kept.data();
    args.num_tokens -= 1;
    REQUIRE_ERROR(ref::DBudgetCut(args), StatusCode::kOutOfRange, "num_tokens");
  }
  {
    // Sequence 1's second stream loses its last slot: one of its candidates
    // moves into the recent window, leaving it one fewer than its sibling.
    DBudgetCutCase c(spec, 1);
    c.mutable_offsets().back() -= 1;
    DBudgetCutArgs args = c.HostArgs();
    Ints kept(4, -1);
    args.kept = kept.data();
    REQUIRE_ERROR(ref::DBudgetCut(args), StatusCode::kInvalidArgument,
                  "sequence 1: DBudgetKept: streams must have equally many candidates");
  }
  {
    DBudgetCutCase c(spec, 1);
    c.mutable_attention()[static_cast<size_t>(2 * c.offsets()[1] + 3)] = std::nanf("");
    REQUIRE_ERROR(run(c), StatusCode::kInvalidArgument, "sequence 0: DBudgetKept: attention[1]");
  }
  {
    DBudgetCutCase c(spec, 1);
    c.mutable_scores()[static_cast<size_t>(c.offsets()[3])] = std::nanf("");
    REQUIRE_ERROR(run(c), StatusCode::kInvalidArgument, "NaN score");
  }
}

}  // namespace
}  // namespace headpage
