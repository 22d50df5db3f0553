// SPDX-License-Identifier: Apache-2.0
// Ada-KV's theorem as a property test (eviction-methods.md 2.1 and 8.2). Each
// head's attention row (normalized to sum 1) is used as its scores, nothing is
// protected, and the retained mass F_h is summed over the keep sets
// SelectKeepSet returns for the kept counts an allocator chose. The L1 bound is
// 2 C sum_h (1 - F_h) with C = 1.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <random>
#include <vector>

#include "policy/budget.h"
#include "policy/select.h"
#include "tests/testing/status_matchers.h"

namespace headpage::policy {
namespace {

constexpr int kHeads = 8;
constexpr int32_t kTokens = 1024;
// Multiples of 5, so that alpha B' is an integer for alpha = 0.2 and the
// floor drops nothing: only kScaled's rounding moves its total.
constexpr int32_t kBudgets[] = {5, 10, 20, 40, 80, 160, 320, 640};
// Sums of the same masses in different orders differ in the last bits.
constexpr double kEps = 1e-9;

struct Layer {
  std::vector<std::vector<float>> attention;  // [head][token], each row sums to 1
  std::vector<int32_t> positions;
  std::vector<StreamScores> streams;
  std::vector<std::vector<float>> sorted;  // each row descending
};

// Seeds alternate between two families: "random" heads are softmaxes of
// Gaussian logits with a per-head temperature (some flat, some sharp);
// "peaked" layers have 2 to 4 heads with a power-law concentration
// (a_j ~ rank^-s, s in [1.2, 2.5], ranks shuffled over the positions) among
// nearly flat heads, where reallocating budget matters most.
Layer MakeLayer(uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> gauss;
  const bool peaked = seed % 2 == 1;
  const int num_peaked = 2 + static_cast<int>(seed / 2 % 3);
  Layer layer;
  layer.attention.assign(kHeads, std::vector<float>(kTokens));
  for (int h = 0; h < kHeads; ++h) {
    std::vector<double> a(kTokens);
    if (peaked && h < num_peaked) {
      std::vector<int32_t> rank(kTokens);
      std::iota(rank.begin(), rank.end(), 1);
      std::shuffle(rank.begin(), rank.end(), rng);
      const double s = 1.2 + static_cast<double>(rng() % 131) / 100.0;
      for (int32_t j = 0; j < kTokens; ++j) a[j] = std::pow(rank[j], -s);
    } else {
      const double sigma = peaked ? 0.1 + static_cast<double>(rng() % 40) / 100.0
                                  : 0.5 + static_cast<double>(rng() % 250) / 100.0;
      for (int32_t j = 0; j < kTokens; ++j) a[j] = std::exp(sigma * gauss(rng));
    }
    const double sum = std::accumulate(a.begin(), a.end(), 0.0);
    for (int32_t j = 0; j < kTokens; ++j) layer.attention[h][j] = static_cast<float>(a[j] / sum);
  }
  layer.positions.resize(kTokens);
  std::iota(layer.positions.begin(), layer.positions.end(), 0);
  for (int h = 0; h < kHeads; ++h) {
    layer.streams.push_back({layer.attention[h], layer.positions, {}});
    layer.sorted.push_back(layer.attention[h]);
    std::sort(layer.sorted[h].begin(), layer.sorted[h].end(), std::greater<float>());
  }
  return layer;
}

// Retained mass per head of the keep sets SelectKeepSet picks for `kept`.
std::vector<double> Retained(const Layer& layer, const std::vector<int32_t>& kept) {
  std::vector<double> f(kHeads, 0.0);
  std::vector<int32_t> keep;
  for (int h = 0; h < kHeads; ++h) {
    REQUIRE_OK(SelectKeepSet(layer.streams[h], kept[h], &keep));
    for (const int32_t j : keep) f[h] += layer.attention[h][j];
  }
  return f;
}
double Total(const std::vector<double>& f) { return std::accumulate(f.begin(), f.end(), 0.0); }
double L1Bound(const std::vector<double>& f) { return 2.0 * (kHeads - Total(f)); }
int64_t Sum(const std::vector<int32_t>& v) { return std::accumulate(v.begin(), v.end(), int64_t{0}); }

// The most mass any allocation of `total` tokens can retain: the global top.
double BestMass(const Layer& layer, int64_t total) {
  std::vector<float> all;
  for (const auto& row : layer.attention) all.insert(all.end(), row.begin(), row.end());
  std::sort(all.begin(), all.end(), std::greater<float>());
  double m = 0;
  for (int64_t i = 0; i < total; ++i) m += all[i];
  return m;
}

std::vector<int32_t> Kept(const absl::StatusOr<std::vector<int32_t>>& r) {
  REQUIRE_OK(r);
  return *r;
}

TEST_CASE("Ada theorem: Ada(0) is the global top-k and retains at least uniform's mass",
          "[policy][budget]") {
  for (uint32_t seed = 0; seed < 100; ++seed) {
    const Layer layer = MakeLayer(seed);
    for (const int32_t b : kBudgets) {
      INFO("seed " << seed << " B " << b);
      const std::vector<int32_t> uniform = Kept(UniformKept(layer.streams, b));
      const std::vector<int32_t> ada0 = Kept(AdaKept(layer.streams, b, {0.0, AdaFloor::kScaled}));
      // Same total: c_h are integers and alpha = 0 leaves them unrounded.
      REQUIRE(Sum(ada0) == int64_t{kHeads} * b);
      const double f_uniform = Total(Retained(layer, uniform));
      const double f_ada0 = Total(Retained(layer, ada0));
      // Theorem 3: the hits of the global top-(H B') realize its mass, the most
      // any allocation of H B' tokens keeps, so uniform's in particular.
      REQUIRE(std::abs(f_ada0 - BestMass(layer, int64_t{kHeads} * b)) < kEps);
      REQUIRE(f_ada0 >= f_uniform - kEps);
    }
  }
}

TEST_CASE("Ada theorem: the L1 bound falls from uniform to Ada(0.2) to Ada(0)",
          "[policy][budget]") {
  // kScaled rounds B_h = round(0.8 c_h + 0.2 B') half to even, so Ada(0.2)'s
  // total T' differs from H B' by up to H/2 tokens (here about a quarter of the
  // cases are above, a quarter below). The comparison is made fair as follows:
  //
  //  * Ada(0.2) -> Ada(0): Theorem 3 applied at Ada(0.2)'s own total, i.e.
  //    L1(Ada 0.2) >= 2 (H - best mass of T' tokens). When T' <= H B' this
  //    implies L1(Ada 0.2) >= L1(Ada 0) and the direct comparison is asserted
  //    too. When T' > H B' the direct comparison is NOT a theorem, and it does
  //    fail: over seeds 0..499 x these budgets, in 195 of 4000 cases, every one
  //    with T' > H B' (e.g. seed 6, B' = 5, T' = H B' + 1: L1 uniform 11.9643,
  //    Ada(0.2) 11.7125, Ada(0) 11.7375): the extra token outweighs the better
  //    allocation.
  //  * uniform -> Ada(0.2): the guaranteed form is concavity. Each head's
  //    top-k mass F_h(k) is concave in k, so at x_h = 0.8 c_h + 0.2 B' (c_h the
  //    global top-k hits, Ada(0)'s counts) its linear interpolation satisfies
  //    F_h(x_h) >= 0.8 F_h(c_h) + 0.2 F_h(B'); rounding x_h down to B_h loses at
  //    most (x_h - B_h) times the next value a_h(floor(x_h) + 1). Hence
  //      F(Ada 0.2) >= 0.8 F(Ada 0) + 0.2 F(uniform) - sum_h loss_h.
  //    The direct L1(uniform) >= L1(Ada 0.2) is asserted as well: it is not
  //    guaranteed under rounding, but it held in all 4000 cases above.
  //  * The same chain with kProtectTop is exact: its total is H B' and it is
  //    the optimal allocation under the per-head floors, which uniform meets.
  int direct = 0;
  for (uint32_t seed = 0; seed < 100; ++seed) {
    const Layer layer = MakeLayer(seed);
    for (const int32_t b : kBudgets) {
      const std::vector<int32_t> uniform = Kept(UniformKept(layer.streams, b));
      const std::vector<int32_t> ada0 = Kept(AdaKept(layer.streams, b, {0.0, AdaFloor::kScaled}));
      const std::vector<int32_t> ada02 = Kept(AdaKept(layer.streams, b, {0.2, AdaFloor::kScaled}));
      const std::vector<int32_t> protect02 =
          Kept(AdaKept(layer.streams, b, {0.2, AdaFloor::kProtectTop}));
      const std::vector<double> f_uniform = Retained(layer, uniform);
      const std::vector<double> f_ada0 = Retained(layer, ada0);
      const std::vector<double> f_ada02 = Retained(layer, ada02);
      const std::vector<double> f_protect = Retained(layer, protect02);
      const int64_t hb = int64_t{kHeads} * b;
      const int64_t total02 = Sum(ada02);
      INFO("seed " << seed << " B " << b << " T' - H B' " << total02 - hb << " L1 uniform "
                   << L1Bound(f_uniform) << " Ada(0.2) " << L1Bound(f_ada02) << " Ada(0) "
                   << L1Bound(f_ada0));
      REQUIRE(std::abs(total02 - hb) <= kHeads / 2);

      // Ada(0.2) -> Ada(0).
      REQUIRE(L1Bound(f_ada02) >= 2.0 * (kHeads - BestMass(layer, total02)) - kEps);
      if (total02 <= hb) {
        REQUIRE(L1Bound(f_ada02) >= L1Bound(f_ada0) - kEps);
        ++direct;
      }

      // uniform -> Ada(0.2): concavity with the rounding loss.
      double loss = 0;
      for (int h = 0; h < kHeads; ++h) {
        const double x = 0.8 * ada0[h] + 0.2 * b;
        const int32_t below = static_cast<int32_t>(std::floor(x));
        if (ada02[h] < x && below < kTokens) loss += (x - ada02[h]) * layer.sorted[h][below];
      }
      REQUIRE(Total(f_ada02) >= 0.8 * Total(f_ada0) + 0.2 * Total(f_uniform) - loss - kEps);
      REQUIRE(L1Bound(f_uniform) >= L1Bound(f_ada02) - kEps);

      // kProtectTop: exact total, and the chain holds without exceptions.
      REQUIRE(Sum(protect02) == hb);
      REQUIRE(L1Bound(f_uniform) >= L1Bound(f_protect) - kEps);
      REQUIRE(L1Bound(f_protect) >= L1Bound(f_ada0) - kEps);
    }
  }
  REQUIRE(direct > 400);  // the direct comparison ran on most cases
}

}  // namespace
}  // namespace headpage::policy
