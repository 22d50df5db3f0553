// SPDX-License-Identifier: Apache-2.0
// ref::Select against the CPU policy functions it must equal
// (policy::SelectKeepSet, policy::AdaKept), hand-computed cases, and every
// error.
#include "kernels/select.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "absl/types/span.h"
#include "policy/budget.h"
#include "policy/select.h"
#include "tests/kernels/select_case.h"
#include "tests/testing/status_matchers.h"

namespace headpage {
namespace {

using testing::SelectCase;
using testing::SelectCaseSpec;
using Ints = std::vector<int32_t>;
using KeepSets = std::vector<Ints>;

constexpr float kInf = std::numeric_limits<float>::infinity();

Ints Iota(int32_t n, int32_t first = 0) {
  Ints v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), first);
  return v;
}

// ref::Select into fresh outputs (every entry -1 first); the keep sets cut out
// of keep by kept_counts. Entries past a stream's count stay untouched.
KeepSets RunRef(const SelectCase& c, SelectArgs args) {
  Ints keep(static_cast<size_t>(c.size()), -1), counts(static_cast<size_t>(c.num_streams()), -1);
  args.keep = keep.data();
  args.kept_counts = counts.data();
  REQUIRE_OK(ref::Select(args));
  KeepSets sets;
  for (int32_t s = 0; s < c.num_streams(); ++s) {
    const int32_t first = c.offsets()[s];
    REQUIRE(counts[s] >= 0);
    REQUIRE(counts[s] <= c.length(s));
    sets.emplace_back(keep.begin() + first, keep.begin() + first + counts[s]);
    REQUIRE(std::all_of(keep.begin() + first + counts[s], keep.begin() + c.offsets()[s + 1],
                        [](int32_t v) { return v == -1; }));
  }
  return sets;
}

policy::StreamScores View(const SelectCase& c, int32_t s) {
  const size_t first = static_cast<size_t>(c.offsets()[s]);
  const size_t n = static_cast<size_t>(c.length(s));
  return {absl::MakeConstSpan(c.scores().data() + first, n),
          absl::MakeConstSpan(c.positions().data() + first, n),
          {c.spec().sinks, c.spec().recent}};
}

KeepSets PolicyKeepSets(const SelectCase& c, const Ints& kept) {
  KeepSets sets;
  for (int32_t s = 0; s < c.num_streams(); ++s) {
    Ints keep;
    REQUIRE_OK(policy::SelectKeepSet(View(c, s), kept[s], &keep));
    sets.push_back(keep);
  }
  return sets;
}

KeepSets PolicyAda(const SelectCase& c, int32_t capacity, double alpha, policy::AdaFloor floor) {
  const policy::AdaOptions options{alpha, floor == policy::AdaFloor::kScaled
                                              ? policy::AdaFloor::kScaled
                                              : policy::AdaFloor::kProtectTop};
  Ints kept;
  for (int32_t seq = 0; seq < c.spec().num_seqs; ++seq) {
    std::vector<policy::StreamScores> views;
    for (int32_t h = 0; h < c.spec().num_kv_heads; ++h) {
      views.push_back(View(c, seq * c.spec().num_kv_heads + h));
    }
    const absl::StatusOr<Ints> seq_kept = policy::AdaKept(views, capacity, options);
    REQUIRE_OK(seq_kept);
    kept.insert(kept.end(), seq_kept->begin(), seq_kept->end());
  }
  return PolicyKeepSets(c, kept);
}

SelectArgs TopBArgs(const SelectCase& c, const Ints& kept) {
  SelectArgs args = c.HostArgs();
  args.mode = SelectMode::kTopB;
  args.kept = kept.data();
  return args;
}

SelectArgs AdaArgs(const SelectCase& c, int32_t capacity, double alpha, policy::AdaFloor floor) {
  SelectArgs args = c.HostArgs();
  args.mode = SelectMode::kAda;
  args.capacity = capacity;
  args.alpha = alpha;
  args.floor = floor;
  return args;
}

// A case whose streams hold the given scores at positions 0, 1, ... (no lead).
SelectCase FixedCase(int32_t num_seqs, int32_t num_kv_heads,
                     const std::vector<std::vector<float>>& scores, int32_t sinks, int32_t recent) {
  SelectCaseSpec spec;
  spec.num_seqs = num_seqs;
  spec.num_kv_heads = num_kv_heads;
  for (const auto& v : scores) spec.lens.push_back(static_cast<int32_t>(v.size()));
  spec.sinks = sinks;
  spec.recent = recent;
  SelectCase c(spec, 1);
  for (size_t s = 0; s < scores.size(); ++s) {
    std::copy(scores[s].begin(), scores[s].end(), c.mutable_scores().begin() + c.offsets()[s]);
    std::iota(c.mutable_positions().begin() + c.offsets()[s],
              c.mutable_positions().begin() + c.offsets()[s + 1], 0);
  }
  return c;
}

TEST_CASE("ref::Select kTopB: hand example, protected slots and ties to the lower slot",
          "[kernels][select]") {
  // slot:      0    1    2    3    4    5;  slot 0 a sink, slot 5 the window.
  // score:   0.5  0.9  0.1  0.9  0.3  0.7
  const std::vector<float> scores = {0.5f, 0.9f, 0.1f, 0.9f, 0.3f, 0.7f};
  const SelectCase c = FixedCase(5, 1, {scores, scores, scores, scores, scores}, 1, 1);
  const Ints kept = {2, 3, 4, 5, 6};
  const KeepSets sets = RunRef(c, TopBArgs(c, kept));
  REQUIRE(sets[0] == Ints{0, 5});
  REQUIRE(sets[1] == Ints{0, 1, 5});        // 0.9 at slots 1 and 3: the lower slot
  REQUIRE(sets[2] == Ints{0, 1, 3, 5});
  REQUIRE(sets[3] == Ints{0, 1, 3, 4, 5});  // then 0.3 before 0.1
  REQUIRE(sets[4] == Iota(6));
  REQUIRE(sets == PolicyKeepSets(c, kept));
}

TEST_CASE("ref::Select kTopB: sinks are positions, -0 ties +0, infinities at the ends",
          "[kernels][select]") {
  SelectCase c = FixedCase(2, 1, {{0.0f, 0.0f, 5.0f, 1.0f, 2.0f}, {0.0f, -kInf, -0.0f, kInf, 0.0f, -1.0f}},
                           4, 0);
  // Stream 0: positions 0, 2, 7, 9, 12, sinks 4 protect slots 0 and 1.
  // Stream 1: positions 10.., no sink.
  const Ints positions = {0, 2, 7, 9, 12, 10, 11, 12, 13, 14, 15};
  c.mutable_positions() = positions;
  const KeepSets three = RunRef(c, TopBArgs(c, {3, 3}));
  REQUIRE(three[0] == Ints{0, 1, 2});
  REQUIRE(three[1] == Ints{0, 2, 3});  // +inf, then the zeros in slot order
  const KeepSets four = RunRef(c, TopBArgs(c, {4, 4}));
  REQUIRE(four[0] == Ints{0, 1, 2, 4});
  REQUIRE(four[1] == Ints{0, 2, 3, 4});
  REQUIRE(RunRef(c, TopBArgs(c, {2, 0})) == KeepSets{{0, 1}, {}});
  REQUIRE(RunRef(c, TopBArgs(c, {5, 6})) == KeepSets{Iota(5), Iota(6)});
}

// Ada-KV's hand example (tests/policy/budget_test.cc): two streams
// of 10 candidates; the global top 8 takes stream 0's five >= 0.75 and
// stream 1's three >= 0.6, c = (5, 3).
const std::vector<float> kAdaA = {0.95f, 0.9f, 0.85f, 0.8f, 0.75f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f};
const std::vector<float> kAdaB = {0.7f, 0.65f, 0.6f, 0.05f, 0.05f, 0.05f, 0.05f, 0.05f, 0.05f, 0.05f};

TEST_CASE("ref::Select kAda kScaled: hand example with round-half-even", "[kernels][select]") {
  const SelectCase c = FixedCase(1, 2, {kAdaA, kAdaB}, 0, 0);
  // alpha 0.5, capacity 4: B' = 4, floor 2; B = round(4.5) = 4, round(3.5) = 4.
  REQUIRE(RunRef(c, AdaArgs(c, 4, 0.5, policy::AdaFloor::kScaled)) ==
          KeepSets{{0, 1, 2, 3}, {0, 1, 2, 3}});
  // alpha 0: B_h = c_h.
  REQUIRE(RunRef(c, AdaArgs(c, 4, 0.0, policy::AdaFloor::kScaled)) ==
          KeepSets{{0, 1, 2, 3, 4}, {0, 1, 2}});
  // alpha 0.2, capacity 5: K = 10, c = (7, 3): B = round(6.6) = 7, round(3.4) = 3.
  REQUIRE(RunRef(c, AdaArgs(c, 5, 0.2, policy::AdaFloor::kScaled)) ==
          KeepSets{Iota(7), {0, 1, 2}});
  // capacity 10 covers every candidate: nothing competes, nothing is evicted.
  REQUIRE(RunRef(c, AdaArgs(c, 10, 0.2, policy::AdaFloor::kScaled)) == KeepSets{Iota(10), Iota(10)});
}

TEST_CASE("ref::Select kAda kProtectTop: hand example", "[kernels][select]") {
  const SelectCase c = FixedCase(1, 2, {kAdaA, kAdaB}, 0, 0);
  // alpha 0.5, capacity 4: each stream's top 2 is in, the other 4 are
  // stream 0's 0.85, 0.8, 0.75 and stream 1's 0.6: kept (5, 3).
  REQUIRE(RunRef(c, AdaArgs(c, 4, 0.5, policy::AdaFloor::kProtectTop)) ==
          KeepSets{{0, 1, 2, 3, 4}, {0, 1, 2}});
}

TEST_CASE("ref::Select kAda: ties between streams go to the lower stream, then slot",
          "[kernels][select]") {
  const SelectCase c = FixedCase(1, 2, {std::vector<float>(10, 1.0f), std::vector<float>(10, 1.0f)},
                                 0, 0);
  for (const policy::AdaFloor floor : {policy::AdaFloor::kScaled, policy::AdaFloor::kProtectTop}) {
    REQUIRE(RunRef(c, AdaArgs(c, 4, 0.0, floor)) == KeepSets{Iota(8), {}});
  }
  // Floors of 2 each (alpha 0.5): kProtectTop gives stream 1 its 2, the
  // remaining 4 go to stream 0.
  REQUIRE(RunRef(c, AdaArgs(c, 4, 0.5, policy::AdaFloor::kProtectTop)) ==
          KeepSets{Iota(6), {0, 1}});
}

TEST_CASE("ref::Select kAda: one competition per sequence, covered streams keep all",
          "[kernels][select]") {
  // Two sequences of the hand example plus a short third head (3 tokens,
  // covered by capacity 4).
  const std::vector<float> low = {0.0f, 0.0f, 0.0f};
  const SelectCase c = FixedCase(2, 3, {kAdaA, kAdaB, low, kAdaB, kAdaA, low}, 0, 0);
  const KeepSets sets = RunRef(c, AdaArgs(c, 4, 0.0, policy::AdaFloor::kScaled));
  REQUIRE(sets == KeepSets{Iota(5), {0, 1, 2}, Iota(3), {0, 1, 2}, Iota(5), Iota(3)});
}

TEST_CASE("ref::Select equals policy::SelectKeepSet and policy::AdaKept on random layers",
          "[kernels][select]") {
  std::mt19937_64 rng(5);
  for (int iter = 0; iter < 400; ++iter) {
    SelectCaseSpec spec;
    spec.num_seqs = 1 + static_cast<int32_t>(rng() % 3);
    spec.num_kv_heads = 1 + static_cast<int32_t>(rng() % 5);
    const bool equal_lengths = iter % 3 == 0;
    const int32_t common = static_cast<int32_t>(rng() % 300);
    for (int32_t s = 0; s < spec.num_seqs * spec.num_kv_heads; ++s) {
      spec.lens.push_back(equal_lengths ? common : static_cast<int32_t>(rng() % 300));
    }
    const int32_t distinct_choices[] = {0, 1, 2, 3, 7};
    spec.distinct = distinct_choices[iter % 5];
    spec.sinks = static_cast<int32_t>(rng() % 6);
    const int32_t recent_choices[] = {0, 1, 8, -3, 400};
    spec.recent = recent_choices[rng() % 5];
    spec.lead = static_cast<int32_t>(rng() % 3);
    SelectCase c(spec, rng());
    INFO("iter " << iter << " distinct " << spec.distinct << " sinks " << spec.sinks << " recent "
                 << spec.recent);

    const Ints kept = c.RandomKept();
    REQUIRE(RunRef(c, TopBArgs(c, kept)) == PolicyKeepSets(c, kept));

    int32_t max_protected = 1;
    for (int32_t s = 0; s < c.num_streams(); ++s) {
      max_protected = std::max(max_protected, c.NumProtected(s));
    }
    const int32_t capacity = max_protected + static_cast<int32_t>(rng() % 200);
    const double alpha_choices[] = {0.0, 0.2, 0.5, 1.0, static_cast<double>(rng() % 101) / 100.0};
    const double alpha = alpha_choices[iter % 5];
    for (const policy::AdaFloor floor : {policy::AdaFloor::kScaled, policy::AdaFloor::kProtectTop}) {
      INFO("capacity " << capacity << " alpha " << alpha << " floor " << static_cast<int>(floor));
      REQUIRE(RunRef(c, AdaArgs(c, capacity, alpha, floor)) == PolicyAda(c, capacity, alpha, floor));
    }
  }
}

TEST_CASE("Select: every Validate() error", "[kernels][select]") {
  const SelectCase c = FixedCase(1, 2, {kAdaA, kAdaB}, 0, 0);
  Ints kept = {4, 4}, keep(20), counts(2);
  auto valid = [&] {
    SelectArgs args = TopBArgs(c, kept);
    args.keep = keep.data();
    args.kept_counts = counts.data();
    return args;
  };
  REQUIRE_OK(Validate(valid()));
  using absl::StatusCode;
  SelectArgs args = valid();
  args.num_seqs = -1;
  REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "num_seqs -1");
  args = valid();
  args.num_kv_heads = 0;
  REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "num_kv_heads 0");
  args = valid();
  args.num_seqs = 1 << 16;
  args.num_kv_heads = 1 << 15;
  REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "overflow int32");
  args = valid();
  args.kept = nullptr;
  REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "kept, which is null");
  args = valid();
  args.mode = static_cast<SelectMode>(9);
  REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "unknown mode 9");
  for (const int32_t ctas : {-1, 9}) {
    args = valid();
    args.ctas_per_group = ctas;
    REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "ctas_per_group");
  }
  for (int field = 0; field < 5; ++field) {
    args = valid();
    if (field == 0) args.score_offsets = nullptr;
    if (field == 1) args.scores = nullptr;
    if (field == 2) args.positions = nullptr;
    if (field == 3) args.keep = nullptr;
    if (field == 4) args.kept_counts = nullptr;
    REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "is null");
  }
  // No streams: nothing to point at.
  SelectArgs empty;
  empty.num_kv_heads = 8;
  REQUIRE_OK(Validate(empty));
  REQUIRE_OK(ref::Select(empty));

  auto ada = [&] {
    SelectArgs a = AdaArgs(c, 4, 0.5, policy::AdaFloor::kScaled);
    a.keep = keep.data();
    a.kept_counts = counts.data();
    return a;
  };
  REQUIRE_OK(Validate(ada()));
  args = ada();
  args.capacity = 0;
  REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "capacity must be positive");
  for (const double alpha : {-0.1, 1.5, std::nan("")}) {
    args = ada();
    args.alpha = alpha;
    REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "alpha must be in [0, 1]");
  }
  args = ada();
  args.floor = static_cast<policy::AdaFloor>(7);
  REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "unknown Ada floor 7");
  args = ada();
  args.num_kv_heads = kSelectMaxAdaHeads + 1;
  args.num_seqs = 0;
  REQUIRE_ERROR(Validate(args), StatusCode::kInvalidArgument, "above kAda's limit");
  args = ada();
  args.floor = policy::AdaFloor::kProtectTop;
  REQUIRE_OK(Validate(args));
}

TEST_CASE("ref::Select: bad array contents are errors and write nothing", "[kernels][select]") {
  SelectCase c = FixedCase(1, 2, {kAdaA, kAdaB}, 1, 2);  // 3 protected per stream
  std::vector<int32_t> offsets = c.offsets();
  std::vector<int32_t> positions = c.positions();
  std::vector<float> scores = c.scores();
  Ints kept = {5, 5}, keep(20, -1), counts(2, -1);
  auto args = [&] {
    SelectArgs a = TopBArgs(c, kept);
    a.score_offsets = offsets.data();
    a.positions = positions.data();
    a.scores = scores.data();
    a.keep = keep.data();
    a.kept_counts = counts.data();
    return a;
  };
  REQUIRE_OK(ref::Select(args()));
  std::fill(keep.begin(), keep.end(), -1);
  std::fill(counts.begin(), counts.end(), -1);
  using absl::StatusCode;

  offsets = {0, 12, 10};
  REQUIRE_ERROR(ref::Select(args()), StatusCode::kInvalidArgument, "not non-decreasing");
  offsets = {-1, 10, 20};
  REQUIRE_ERROR(ref::Select(args()), StatusCode::kInvalidArgument, "not non-decreasing");
  offsets = c.offsets();

  std::swap(positions[12], positions[13]);
  REQUIRE_ERROR(ref::Select(args()), StatusCode::kInvalidArgument,
                "stream 1: positions are not strictly ascending at slot 3");
  positions = c.positions();

  scores[11] = std::nanf("");
  REQUIRE_ERROR(ref::Select(args()), StatusCode::kInvalidArgument, "stream 1: NaN score at slot 1");
  scores = c.scores();

  kept = {5, 2};
  REQUIRE_ERROR(ref::Select(args()), StatusCode::kInvalidArgument,
                "stream 1: kept 2 outside [protected 3, num_tokens 10]");
  kept = {11, 5};
  REQUIRE_ERROR(ref::Select(args()), StatusCode::kInvalidArgument, "kept 11 outside");
  kept = {5, 5};

  SelectArgs ada = args();
  ada.mode = SelectMode::kAda;
  ada.capacity = 2;
  REQUIRE_ERROR(ref::Select(ada), StatusCode::kInvalidArgument,
                "capacity 2 is smaller than stream 0's 3 protected tokens");

  REQUIRE(std::all_of(keep.begin(), keep.end(), [](int32_t v) { return v == -1; }));
  REQUIRE(counts == Ints{-1, -1});
}

}  // namespace
}  // namespace headpage
