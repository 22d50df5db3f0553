// SPDX-License-Identifier: Apache-2.0
// Streams and checks the budget allocator tests share (budget_test.cc,
// budget_dbudget_test.cc, budget_global_test.cc).
#ifndef HEADPAGE_TESTS_POLICY_BUDGET_TEST_UTIL_H_
#define HEADPAGE_TESTS_POLICY_BUDGET_TEST_UTIL_H_

#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "policy/stream_scores.h"
#include "tests/testing/status_matchers.h"

namespace headpage::policy::testing {

using Vec = std::vector<float>;
using Ints = std::vector<int32_t>;

inline constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
inline constexpr float kInf = std::numeric_limits<float>::infinity();

// Owns the arrays behind a set of StreamScores (positions 0..n-1 unless given).
class Streams {
 public:
  void Add(Vec scores, Protection protection = {}) {
    Ints positions(scores.size());
    std::iota(positions.begin(), positions.end(), 0);
    Add(std::move(scores), std::move(positions), protection);
  }
  void Add(Vec scores, Ints positions, Protection protection) {
    scores_.push_back(std::move(scores));
    positions_.push_back(std::move(positions));
    protections_.push_back(protection);
  }
  std::vector<StreamScores> views() const {
    std::vector<StreamScores> v;
    for (size_t i = 0; i < scores_.size(); ++i) v.push_back({scores_[i], positions_[i], protections_[i]});
    return v;
  }
  const Vec& scores(size_t i) const { return scores_[i]; }

 private:
  std::vector<Vec> scores_;
  std::vector<Ints> positions_;
  std::vector<Protection> protections_;
};

inline Ints Kept(const absl::StatusOr<Ints>& r) {
  REQUIRE_OK(r);
  return *r;
}

inline int64_t Sum(const Ints& v) { return std::accumulate(v.begin(), v.end(), int64_t{0}); }

// Random streams: lengths, protection and (tie-heavy when asked) scores.
inline Streams RandomStreams(std::mt19937& rng, int num_streams, int32_t max_len,
                             bool equal_lengths, int distinct) {
  Streams s;
  const int32_t common = 1 + static_cast<int32_t>(rng() % max_len);
  const Protection protection{static_cast<int32_t>(rng() % 5), static_cast<int32_t>(rng() % 9)};
  for (int h = 0; h < num_streams; ++h) {
    const int32_t n = equal_lengths ? common : static_cast<int32_t>(rng() % (max_len + 1));
    Vec scores(n);
    for (auto& v : scores) v = static_cast<float>(rng() % distinct) / static_cast<float>(distinct);
    s.Add(std::move(scores), protection);
  }
  return s;
}

}  // namespace headpage::policy::testing

#endif  // HEADPAGE_TESTS_POLICY_BUDGET_TEST_UTIL_H_
