// SPDX-License-Identifier: Apache-2.0
// Inputs and comparisons the scorer tests share (scores_test.cc,
// scores_dense_test.cc, scores_errors_test.cc).
#ifndef HEADPAGE_TESTS_POLICY_SCORES_TEST_UTIL_H_
#define HEADPAGE_TESTS_POLICY_SCORES_TEST_UTIL_H_

#include <cstdint>
#include <initializer_list>
#include <vector>

#include "policy/scores.h"
#include "tests/testing/status_matchers.h"

namespace headpage::policy::testing {

using Vec = std::vector<float>;

// The hand-computed examples use head_dim d = 4 (sqrt(d) = 2, exact) and
// queries scaled by 2 so that a logit q.k / 2 is exactly a chosen log:
//   QA = (2 ln2, 2 ln3, 0, 0):  Z -> 0, E1 -> ln2, E2 -> ln3, E12 -> ln6,
// i.e. exp(logit) weights Z:1, E1:2, E2:3, E12:6 (QB swaps E1's and E2's).
// A softmax over visible keys is then weight / (sum of visible weights).
inline constexpr float kLn2 = 0.693147180559945309f;
inline constexpr float kLn3 = 1.098612288668109691f;
inline const Vec kZ = {0, 0, 0, 0};
inline const Vec kE1 = {1, 0, 0, 0};
inline const Vec kE2 = {0, 1, 0, 0};
inline const Vec kE12 = {1, 1, 0, 0};
inline const Vec kQA = {2 * kLn2, 2 * kLn3, 0, 0};  // weights Z:1 E1:2 E2:3 E12:6
inline const Vec kQB = {2 * kLn3, 2 * kLn2, 0, 0};  // weights Z:1 E1:3 E2:2 E12:6

inline Vec Concat(std::initializer_list<Vec> parts) {
  Vec out;
  for (const Vec& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// Views over vectors the test owns (they must outlive the view).
inline StreamKeys Keys(const Vec& data, const std::vector<int32_t>& positions,
                       int32_t head_dim = 4) {
  StreamKeys k;
  k.data = data.data();
  k.positions = positions.data();
  k.num_tokens = static_cast<int32_t>(positions.size());
  k.head_dim = head_dim;
  k.dtype = DType::kF32;
  return k;
}

// `data` is [group_size][positions.size()][head_dim].
inline GroupQueries Queries(const Vec& data, const std::vector<int32_t>& positions,
                            int32_t group_size, int32_t head_dim = 4) {
  GroupQueries q;
  q.data = data.data();
  q.positions = positions.data();
  q.group_size = group_size;
  q.num_queries = static_cast<int32_t>(positions.size());
  q.head_dim = head_dim;
  q.dtype = DType::kF32;
  return q;
}

inline SnapKVOptions Snap(int32_t kernel_size, Pooling pooling,
                          GroupReduce reduce = GroupReduce::kMean) {
  SnapKVOptions o;
  o.kernel_size = kernel_size;
  o.pooling = pooling;
  o.reduce = reduce;
  return o;
}

// Element-wise comparison within 1e-6 relative (float softmax of exact logs).
inline void RequireNear(const Vec& actual, const Vec& expected, double rel = 1e-6) {
  REQUIRE(actual.size() == expected.size());
  for (size_t j = 0; j < actual.size(); ++j) {
    INFO("j = " << j << ": " << actual[j] << " vs " << expected[j]);
    REQUIRE(actual[j] == Approx(expected[j]).epsilon(rel).margin(1e-9));
  }
}

// Every value of `v` divided by `denom` (the examples' common denominators).
inline Vec Over(Vec v, double denom) {
  for (float& x : v) x = static_cast<float>(x / denom);
  return v;
}

}  // namespace headpage::policy::testing

#endif  // HEADPAGE_TESTS_POLICY_SCORES_TEST_UTIL_H_
