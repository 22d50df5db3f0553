// SPDX-License-Identifier: Apache-2.0
// The group allocators (policy/collective.h, AdaKept with a Shard): members
// holding a share of the streams, threads of one process here, reach exactly
// the decision one caller holding every stream reaches, ties included, and
// agree on errors without anyone waiting for ever. Catch2's assertions are not
// thread-safe: each member writes its result, the test checks after the join.
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "policy/budget.h"
#include "policy/collective.h"
#include "policy/select.h"
#include "tests/policy/budget_test_util.h"
#include "tests/testing/catch.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/thread_group.h"

namespace headpage::policy {
namespace {

using headpage::testing::ThreadGroup;
using testing::Ints;
using testing::Kept;
using testing::RandomStreams;
using testing::Streams;
using testing::Vec;

// Which member holds stream i of n: contiguous blocks (one layer's KV heads
// split across ranks), or blocks of `heads` dealt out in turn (every layer's
// heads split across ranks, the streams listed layer by layer).
std::vector<int32_t> Owners(int32_t n, int32_t members, bool layered, int32_t heads) {
  std::vector<int32_t> owner(n);
  for (int32_t i = 0; i < n; ++i) {
    owner[i] = layered ? (i % heads) * members / heads
                       : static_cast<int32_t>(int64_t{i} * members / std::max(n, 1));
  }
  return owner;
}

TEST_CASE("SelectTopKAcross: every split of the segments gives SelectTopK's counts",
          "[policy][collective]") {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    const int32_t num_segments = 1 + static_cast<int32_t>(rng() % 12);
    const int32_t members = 1 + static_cast<int32_t>(rng() % 4);
    const int distinct = trial % 3 == 0 ? 3 : 1000;  // tie-heavy or not
    std::vector<Vec> values(num_segments);
    int64_t total = 0;
    for (auto& seg : values) {
      seg.resize(rng() % 40);
      for (float& v : seg) {
        v = static_cast<float>(static_cast<int>(rng() % distinct) - distinct / 3) / 7.0f;
      }
      total += static_cast<int64_t>(seg.size());
    }
    std::vector<absl::Span<const float>> all(values.begin(), values.end());
    const int64_t k = static_cast<int64_t>(rng() % (total + 3)) - 1;
    const internal::TopK single = internal::SelectTopK(all, k);
    const std::vector<int32_t> owner = Owners(num_segments, members, trial % 2 == 1, 3);
    ThreadGroup group(members);
    std::vector<absl::StatusOr<internal::TopK>> results(members);
    std::vector<std::vector<int32_t>> mine(members);
    for (int32_t s = 0; s < num_segments; ++s) mine[owner[s]].push_back(s);
    group.Run([&](int32_t r) {
      std::vector<absl::Span<const float>> segments;
      std::vector<int64_t> order;
      for (const int32_t s : mine[r]) {
        segments.push_back(all[s]);
        order.push_back(s);
      }
      const internal::TopKProblem problem{segments, order, k, total};
      auto tops = internal::SelectTopKAcross({&problem, 1}, num_segments, group.member(r));
      if (tops.ok()) {
        results[r] = (*tops)[0];
      } else {
        results[r] = tops.status();
      }
    });
    INFO("trial " << trial << " k " << k << " of " << total << ", " << members << " members");
    int64_t ties = 0;
    for (int32_t r = 0; r < members; ++r) {
      REQUIRE_OK(results[r]);
      for (size_t j = 0; j < mine[r].size(); ++j) {
        REQUIRE(results[r]->counts[j] == single.counts[mine[r][j]]);
      }
      ties += results[r]->ties_taken;
      if (k > 0 && k < total) REQUIRE(results[r]->threshold == single.threshold);
    }
    if (k > 0 && k < total) REQUIRE(ties == single.ties_taken);
  }
}

TEST_CASE("AdaKept in a group equals one AdaKept over every stream", "[policy][collective]") {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 400; ++trial) {
    const int32_t heads = 2 + static_cast<int32_t>(rng() % 7);
    const int32_t layers = trial % 2 == 0 ? 1 : 1 + static_cast<int32_t>(rng() % 3);
    const int32_t n = heads * layers;
    // Equal lengths within a layer as a prompt has, or anything (decode-time).
    const Streams s = RandomStreams(rng, n, 60, trial % 3 != 0, trial % 4 == 0 ? 4 : 500);
    const std::vector<StreamScores> views = s.views();
    AdaOptions options;
    options.alpha = (rng() % 5) / 4.0;
    options.floor = trial % 3 == 2 ? AdaFloor::kProtectTop : AdaFloor::kScaled;
    options.safe_counts_protected = trial % 6 == 5;
    int32_t max_protected = 0;
    for (const auto& v : views) max_protected = std::max(max_protected, v.NumProtected());
    const int32_t capacity = max_protected + 1 + static_cast<int32_t>(rng() % 40);
    const Ints single = Kept(AdaKept(views, capacity, options));
    for (int32_t members : {2, 3}) {
      if (members > heads) continue;
      const std::vector<int32_t> owner = Owners(n, members, true, heads);
      ThreadGroup group(members);
      std::vector<absl::StatusOr<std::vector<int32_t>>> results(members);
      std::vector<std::vector<int64_t>> orders(members);
      for (int32_t i = 0; i < n; ++i) orders[owner[i]].push_back(i);
      group.Run([&](int32_t r) {
        std::vector<StreamScores> local;
        for (const int64_t i : orders[r]) local.push_back(views[i]);
        results[r] = AdaKept(local, capacity, options, Shard{&group.member(r), orders[r], n});
      });
      INFO("trial " << trial << ", " << members << " members, capacity " << capacity);
      for (int32_t r = 0; r < members; ++r) {
        REQUIRE_OK(results[r]);
        for (size_t j = 0; j < orders[r].size(); ++j) {
          REQUIRE((*results[r])[j] == single[orders[r][j]]);
        }
      }
    }
  }
}

TEST_CASE("AdaKept in a group over a batch of layers equals one AdaKept per layer",
          "[policy][collective]") {
  std::mt19937 rng(31);
  for (int trial = 0; trial < 150; ++trial) {
    const int32_t heads = 2 + static_cast<int32_t>(rng() % 5);
    const int32_t layers = 1 + static_cast<int32_t>(rng() % 5);
    std::vector<Streams> streams;
    std::vector<int32_t> capacities;
    std::vector<Ints> single;
    AdaOptions options;
    options.alpha = (rng() % 5) / 4.0;
    options.floor = trial % 2 ? AdaFloor::kProtectTop : AdaFloor::kScaled;
    for (int32_t l = 0; l < layers; ++l) {
      streams.push_back(RandomStreams(rng, heads, 50, true, trial % 3 == 0 ? 3 : 400));
      int32_t protect = 0;
      for (const auto& v : streams.back().views()) protect = std::max(protect, v.NumProtected());
      // Some layers keep everything (their k is 0 or all): the batch mixes them.
      capacities.push_back(protect + 1 + static_cast<int32_t>(rng() % 60));
      single.push_back(Kept(AdaKept(streams.back().views(), capacities.back(), options)));
    }
    const int32_t members = 2;
    const std::vector<int32_t> owner = Owners(heads, members, false, heads);
    std::vector<std::vector<int64_t>> orders(members);
    for (int32_t h = 0; h < heads; ++h) orders[owner[h]].push_back(h);
    ThreadGroup group(members);
    std::vector<absl::StatusOr<std::vector<std::vector<int32_t>>>> results(members);
    group.Run([&](int32_t r) {
      std::vector<std::vector<StreamScores>> local(layers);
      std::vector<AdaAllocation> allocations;
      for (int32_t l = 0; l < layers; ++l) {
        const std::vector<StreamScores> views = streams[l].views();
        for (const int64_t h : orders[r]) local[l].push_back(views[h]);
        allocations.push_back({local[l], capacities[l]});
      }
      results[r] = AdaKept(allocations, options, Shard{&group.member(r), orders[r], heads});
    });
    INFO("trial " << trial << ": " << layers << " layers of " << heads << " heads");
    for (int32_t r = 0; r < members; ++r) {
      REQUIRE_OK(results[r]);
      for (int32_t l = 0; l < layers; ++l) {
        for (size_t j = 0; j < orders[r].size(); ++j) {
          REQUIRE((*results[r])[l][j] == single[l][orders[r][j]]);
        }
      }
    }
    REQUIRE(group.rounds() <= 7);
  }
}

TEST_CASE("AdaKept in a group: seven all-reduces, and a member with no competing stream still "
          "takes part",
          "[policy][collective]") {
  Streams s;
  s.Add(Vec{0.9f, 0.8f, 0.1f, 0.1f});  // member 0: competes at capacity 2
  s.Add(Vec{0.5f, 0.4f});              // member 1: covered at capacity 2, keeps both
  s.Add(Vec{0.7f, 0.6f, 0.5f, 0.2f});  // member 1: competes
  const std::vector<StreamScores> views = s.views();
  AdaOptions options;
  options.alpha = 0.0;
  const Ints single = Kept(AdaKept(views, 2, options));
  REQUIRE(single == Ints{2, 2, 2});
  ThreadGroup group(2);
  std::vector<absl::StatusOr<std::vector<int32_t>>> results(2);
  const std::vector<int64_t> order0 = {0}, order1 = {1, 2};
  group.Run([&](int32_t r) {
    const std::vector<StreamScores> local =
        r == 0 ? std::vector<StreamScores>{views[0]}
               : std::vector<StreamScores>{views[1], views[2]};
    results[r] = AdaKept(local, 2, options, Shard{&group.member(r), r == 0 ? order0 : order1, 3});
  });
  REQUIRE(Kept(results[0]) == Ints{2});
  REQUIRE(Kept(results[1]) == Ints{2, 2});
  REQUIRE(group.rounds() == 7);
}

TEST_CASE("AdaKept in a group: a member's refused streams fail every member, none waits",
          "[policy][collective]") {
  Streams good, bad;
  good.Add(Vec{0.9f, 0.8f, 0.1f, 0.1f});
  bad.Add(Vec{0.9f, testing::kNaN, 0.1f, 0.1f});
  const std::vector<StreamScores> good_views = good.views(), bad_views = bad.views();
  for (int32_t failing = 0; failing < 3; ++failing) {
    ThreadGroup group(3);
    std::vector<absl::StatusOr<std::vector<int32_t>>> results(3);
    group.Run([&](int32_t r) {
      const std::vector<int64_t> order = {r};
      results[r] = AdaKept(r == failing ? bad_views : good_views, 2, AdaOptions(),
                           Shard{&group.member(r), order, 3});
    });
    for (int32_t r = 0; r < 3; ++r) {
      if (r == failing) {
        REQUIRE_ERROR(results[r], absl::StatusCode::kInvalidArgument, "NaN score");
      } else {
        REQUIRE_ERROR(results[r], absl::StatusCode::kAborted, "1 other member of the group");
      }
    }
    REQUIRE(group.rounds() == 1);
  }
  // A shard's order that does not ascend is refused the same way.
  ThreadGroup group(2);
  std::vector<absl::StatusOr<std::vector<int32_t>>> results(2);
  group.Run([&](int32_t r) {
    const std::vector<int64_t> order = r == 0 ? std::vector<int64_t>{1, 0}
                                              : std::vector<int64_t>{2};
    const std::vector<StreamScores> local =
        r == 0 ? std::vector<StreamScores>{good_views[0], good_views[0]} : good_views;
    results[r] = AdaKept(local, 2, AdaOptions(), Shard{&group.member(r), order, 3});
  });
  REQUIRE_ERROR(results[0], absl::StatusCode::kInvalidArgument, "must ascend strictly");
  REQUIRE_ERROR(results[1], absl::StatusCode::kAborted, "other member");
}

TEST_CASE("Agree: the sums when every member is fine, the failure otherwise",
          "[policy][collective]") {
  ThreadGroup group(3);
  std::vector<absl::StatusOr<std::array<int64_t, 2>>> results(3);
  group.Run([&](int32_t r) {
    const absl::Status local =
        r == 2 ? absl::ResourceExhaustedError("pool") : absl::OkStatus();
    results[r] = Agree(group.member(r), local, {r, 10 * r}, "Compress");
  });
  REQUIRE_ERROR(results[0], absl::StatusCode::kAborted, "Compress: 1 other member");
  REQUIRE_ERROR(results[2], absl::StatusCode::kResourceExhausted, "pool");
  group.Run([&](int32_t r) {
    results[r] = Agree(group.member(r), absl::OkStatus(), {r, 10 * r}, "Compress");
  });
  for (int32_t r = 0; r < 3; ++r) {
    REQUIRE_OK(results[r]);
    REQUIRE((*results[r])[0] == 3);
    REQUIRE((*results[r])[1] == 30);
  }
}

TEST_CASE("GlobalKept in a group equals one GlobalKept over every stream",
          "[policy][collective]") {
  std::mt19937 rng(23);
  for (int trial = 0; trial < 500; ++trial) {
    const int32_t n = 2 + static_cast<int32_t>(rng() % 14);
    // Few distinct scores over equal lengths make equal shares across streams,
    // where the higher stream's tokens go first.
    const int distinct = trial % 3 == 0 ? 2 : trial % 3 == 1 ? 6 : 1000;
    const Streams s = RandomStreams(rng, n, 50, trial % 2 == 0, distinct);
    const std::vector<StreamScores> views = s.views();
    std::vector<int32_t> floors(n);
    for (auto& f : floors) f = static_cast<int32_t>(rng() % 12);
    const int32_t page_size = 1 + static_cast<int32_t>(rng() % 8);
    int64_t pages = 0;
    for (const auto& v : views) pages += (v.num_tokens() + page_size - 1) / page_size;
    const int64_t target = static_cast<int64_t>(rng() % (pages + 2));
    const Ints single = Kept(GlobalKept(views, floors, page_size, target));
    const int32_t members = 1 + static_cast<int32_t>(rng() % std::min(n, 4));
    const std::vector<int32_t> owner = Owners(n, members, trial % 2 == 1, 2);
    std::vector<std::vector<int64_t>> orders(members);
    for (int32_t i = 0; i < n; ++i) orders[owner[i]].push_back(i);
    ThreadGroup group(members);
    std::vector<absl::StatusOr<std::vector<int32_t>>> results(members);
    group.Run([&](int32_t r) {
      std::vector<StreamScores> local;
      std::vector<int32_t> local_floors;
      for (const int64_t i : orders[r]) {
        local.push_back(views[i]);
        local_floors.push_back(floors[i]);
      }
      results[r] = GlobalKept(local, local_floors, page_size, target,
                              Shard{&group.member(r), orders[r], n});
    });
    INFO("trial " << trial << ": " << n << " streams, " << members << " members, page "
                  << page_size << ", target " << target << " of " << pages);
    for (int32_t r = 0; r < members; ++r) {
      REQUIRE_OK(results[r]);
      for (size_t j = 0; j < orders[r].size(); ++j) {
        REQUIRE((*results[r])[j] == single[orders[r][j]]);
      }
    }
  }
}

TEST_CASE("GlobalKept in a group: a member's refused input fails every member",
          "[policy][collective]") {
  Streams good, bad;
  good.Add(Vec{0.9f, 0.8f, 0.1f, 0.1f});
  bad.Add(Vec{0.9f, -1.0f, 0.1f, 0.1f});  // not attention mass
  const std::vector<StreamScores> good_views = good.views(), bad_views = bad.views();
  ThreadGroup group(2);
  std::vector<absl::StatusOr<std::vector<int32_t>>> results(2);
  const Ints floors = {0};
  group.Run([&](int32_t r) {
    const std::vector<int64_t> order = {r};
    results[r] = GlobalKept(r == 1 ? bad_views : good_views, floors, 1, 2,
                            Shard{&group.member(r), order, 2});
  });
  REQUIRE_ERROR(results[1], absl::StatusCode::kInvalidArgument, "finite and >= 0");
  REQUIRE_ERROR(results[0], absl::StatusCode::kAborted, "1 other member");
  REQUIRE(group.rounds() == 1);
}

TEST_CASE("GlobalKept in a group: members asking for different pages all refuse, none waits",
          "[policy][collective]") {
  // 2 + 1 + 3 = 3 x 2: a check of the sum alone would let the first member on.
  Streams s;
  s.Add(Vec{0.9f, 0.8f, 0.1f, 0.1f});
  const std::vector<StreamScores> views = s.views();
  const Ints floors = {0};
  ThreadGroup group(3);
  std::vector<absl::StatusOr<std::vector<int32_t>>> results(3);
  group.Run([&](int32_t r) {
    const std::vector<int64_t> order = {r};
    const int64_t asked[] = {2, 1, 3};
    results[r] = GlobalKept(views, floors, 1, asked[r], Shard{&group.member(r), order, 3});
  });
  for (int32_t r = 0; r < 3; ++r) {
    REQUIRE_ERROR(results[r], absl::StatusCode::kInvalidArgument,
                  "pages_to_free differs between the members of the group: 2, 1, 3");
  }
  REQUIRE(GlobalKept(views, floors, 1, 1, Shard{nullptr, {}, 1}).status().code() ==
          absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace headpage::policy
