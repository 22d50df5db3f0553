// SPDX-License-Identifier: Apache-2.0
// EvictionEngine in a tensor-parallel group (JoinGroup): members holding a
// slice of every layer's KV heads, threads of one process here, keep exactly
// what one engine over every head keeps, stream by stream and token by token,
// and fail together.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "eviction/engine.h"
#include "tests/eviction/group_member.h"
#include "tests/testing/catch.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/thread_group.h"

namespace headpage {
namespace {

using headpage::testing::ThreadGroup;
using testing::Member;
using testing::Named;
using testing::Prompt;

const testing::GroupShape kShape;
const int32_t kLayers = kShape.layers, kHeads = kShape.heads;

TEST_CASE("EvictionEngine in a group keeps what one engine over every head keeps",
          "[eviction][group]") {
  PolicyConfig across = Named("ada-snapkv");  // Ada's top-k over every layer's heads
  across.allocator = PolicyConfig::Allocator::kAdaAcrossLayers;
  across.name = "ada-snapkv across layers";
  const std::vector<PolicyConfig> policies = {
      Named("ada-snapkv"), Named("ada-pyramid"), Named("uniform-snapkv"), Named("pyramid"),
      Named("critical-ada-snapkv"), Named("h2o"), Named("streamingllm"), Named("knorm"), across};
  int trial = 0;
  for (const PolicyConfig& config : policies) {
    for (const int32_t members : {2, 4}) {
      for (const double fraction : {0.2, 0.35}) {
        const Prompt prompt(kShape, 400 + 37 * (trial % 3), 70, 100 + trial);
        ++trial;
        const bool projection = config.needs_output_projection();
        Member whole(kShape, 0, kHeads, 2000);
        const SeqId whole_seq = whole.Prefill(prompt);
        std::vector<LayerQueries> whole_queries = whole.Queries(prompt, projection);
        auto single = whole.engine().Compress(whole_seq, config, Budget::Fraction(fraction),
                                              whole_queries);
        INFO(config.name << ", " << members << " members, budget " << fraction);
        REQUIRE_OK(single);

        ThreadGroup group(members);
        const int32_t heads = kHeads / members;
        std::vector<std::unique_ptr<Member>> parts;
        std::vector<SeqId> seqs;
        std::vector<std::vector<LayerQueries>> queries;
        for (int32_t r = 0; r < members; ++r) {
          parts.push_back(std::make_unique<Member>(kShape, r * heads, heads, 2000));
          REQUIRE_OK(parts[r]->engine().JoinGroup(&group.member(r)));
          seqs.push_back(parts[r]->Prefill(prompt));
          queries.push_back(parts[r]->Queries(prompt, projection));
        }
        std::vector<absl::StatusOr<CompressResult>> results(members);
        group.Run([&](int32_t r) {
          results[r] = parts[r]->engine().Compress(seqs[r], config, Budget::Fraction(fraction),
                                                   queries[r]);
        });
        int64_t after = 0;
        for (int32_t r = 0; r < members; ++r) {
          REQUIRE_OK(results[r]);
          after += results[r]->tokens_after;
          for (int32_t layer = 0; layer < kLayers; ++layer) {
            for (int32_t h = 0; h < heads; ++h) {
              const int32_t global = r * heads + h;
              REQUIRE(results[r]->kept[layer * heads + h] == single->kept[layer * kHeads + global]);
              REQUIRE(parts[r]->Positions(seqs[r], layer, h) ==
                      whole.Positions(whole_seq, layer, global));
            }
          }
        }
        REQUIRE(after == single->tokens_after);
        REQUIRE(single->tokens_after < single->tokens_before);
      }
    }
  }
}

TEST_CASE("EvictionEngine in a group: compressing again after head-wise eviction keeps what one "
          "engine keeps",
          "[eviction][group]") {
  // After a head-wise compression the members' longest streams differ. A later
  // compression (decode-time) sizes the budget, and PyramidKV's schedule, by the
  // longest stream over every head, as one engine does.
  int trial = 0;
  for (const char* name : {"ada-pyramid", "pyramid", "ada-snapkv"}) {
    const PolicyConfig first = Named("ada-snapkv"), second = Named(name);
    const Prompt prompt(kShape, 420, 70, 60 + trial++);
    Member whole(kShape, 0, kHeads, 3000);
    const SeqId whole_seq = whole.Prefill(prompt);
    std::vector<LayerQueries> whole_queries = whole.Queries(prompt, false);
    REQUIRE_OK(whole.engine().Compress(whole_seq, first, Budget::Fraction(0.3), whole_queries));
    whole.Append(whole_seq, 50, 77);
    auto single = whole.engine().Compress(whole_seq, second, Budget::Fraction(0.5), whole_queries);
    INFO(name);
    REQUIRE_OK(single);

    ThreadGroup group(2);
    const int32_t heads = kHeads / 2;
    std::vector<std::unique_ptr<Member>> parts;
    std::vector<SeqId> seqs;
    std::vector<std::vector<LayerQueries>> queries;
    for (int32_t r = 0; r < 2; ++r) {
      parts.push_back(std::make_unique<Member>(kShape, r * heads, heads, 3000));
      REQUIRE_OK(parts[r]->engine().JoinGroup(&group.member(r)));
      seqs.push_back(parts[r]->Prefill(prompt));
      queries.push_back(parts[r]->Queries(prompt, false));
    }
    std::vector<absl::StatusOr<CompressResult>> results(2);
    group.Run([&](int32_t r) {
      results[r] = parts[r]->engine().Compress(seqs[r], first, Budget::Fraction(0.3), queries[r]);
    });
    for (int32_t r = 0; r < 2; ++r) {
      REQUIRE_OK(results[r]);
      parts[r]->Append(seqs[r], 50, 77);  // on this thread: Catch's assertions
    }
    group.Run([&](int32_t r) {
      results[r] = parts[r]->engine().Compress(seqs[r], second, Budget::Fraction(0.5), queries[r]);
    });
    for (int32_t r = 0; r < 2; ++r) {
      REQUIRE_OK(results[r]);
      for (int32_t layer = 0; layer < kLayers; ++layer) {
        for (int32_t h = 0; h < heads; ++h) {
          REQUIRE(results[r]->kept[layer * heads + h] ==
                  single->kept[layer * kHeads + r * heads + h]);
          REQUIRE(parts[r]->Positions(seqs[r], layer, h) ==
                  whole.Positions(whole_seq, layer, r * heads + h));
        }
      }
    }
  }
}

TEST_CASE("EvictionEngine in a group: a member's refused call fails every member, none waits",
          "[eviction][group]") {
  const Prompt prompt(kShape, 120, 16, 5);
  ThreadGroup group(2);
  std::vector<std::unique_ptr<Member>> parts;
  std::vector<SeqId> seqs;
  for (int32_t r = 0; r < 2; ++r) {
    parts.push_back(std::make_unique<Member>(kShape, r * 2, 2, 1000));
    REQUIRE_OK(parts[r]->engine().JoinGroup(&group.member(r)));
    seqs.push_back(parts[r]->Prefill(prompt));
  }
  std::vector<std::vector<LayerQueries>> queries = {parts[0]->Queries(prompt, false),
                                                    parts[1]->Queries(prompt, false)};
  std::vector<absl::StatusOr<CompressResult>> results(2);
  const PolicyConfig ada = Named("ada-snapkv"), tova = Named("tova");
  // Member 1 names a sequence it does not have.
  group.Run([&](int32_t r) {
    results[r] = parts[r]->engine().Compress(r == 1 ? seqs[r] + 99 : seqs[r], ada,
                                             Budget::Fraction(0.5), queries[r]);
  });
  REQUIRE_ERROR(results[1], absl::StatusCode::kNotFound, "");
  REQUIRE_ERROR(results[0], absl::StatusCode::kAborted, "1 other member");
  // A policy that reads across a layer's heads is refused on every member.
  group.Run([&](int32_t r) {
    results[r] = parts[r]->engine().Compress(seqs[r], tova, Budget::Fraction(0.5), queries[r]);
  });
  for (int32_t r = 0; r < 2; ++r) {
    REQUIRE_ERROR(results[r], absl::StatusCode::kUnimplemented, "across a layer's kv heads");
  }
  // Nothing changed: the same call on both now compresses.
  group.Run([&](int32_t r) {
    results[r] = parts[r]->engine().Compress(seqs[r], ada, Budget::Fraction(0.5), queries[r]);
  });
  REQUIRE_OK(results[0]);
  REQUIRE_OK(results[1]);
  REQUIRE(results[0]->tokens_before == 2 * kLayers * 120);
  REQUIRE_ERROR(parts[0]->engine().JoinGroup(nullptr), absl::StatusCode::kInvalidArgument, "null");
}

TEST_CASE("EvictionEngine in a group: the pool budget frees what one engine over every head "
          "frees",
          "[eviction][group]") {
  for (const int32_t members : {2, 4}) {
    for (const int64_t target : {int64_t{1}, int64_t{9}, int64_t{40}, int64_t{100000}}) {
      // Three requests compressed (their scores kept per token), then the budget.
      const std::vector<Prompt> prompts = {Prompt(kShape, 200, 70, 1),
                                           Prompt(kShape, 260, 70, 2),
                                           Prompt(kShape, 230, 70, 3)};
      Member whole(kShape, 0, kHeads, 3000);
      std::vector<SeqId> whole_seqs;
      for (const Prompt& p : prompts) {
        whole_seqs.push_back(whole.Prefill(p));
        auto q = whole.Queries(p, false);
        REQUIRE_OK(whole.engine().Compress(whole_seqs.back(), Named("uniform-snapkv"),
                                           Budget::Fraction(0.6), q));
      }
      auto single = whole.engine().EnforcePoolBudget(target, 8, 4);
      INFO(members << " members, " << target << " pages to free");
      REQUIRE_OK(single);

      ThreadGroup group(members);
      const int32_t heads = kHeads / members;
      std::vector<std::unique_ptr<Member>> parts;
      std::vector<std::vector<SeqId>> seqs(members);
      std::vector<absl::StatusOr<int64_t>> freed(members);
      for (int32_t r = 0; r < members; ++r) {
        parts.push_back(std::make_unique<Member>(kShape, r * heads, heads, 3000));
        REQUIRE_OK(parts[r]->engine().JoinGroup(&group.member(r)));
      }
      // Catch's assertions (in Prefill, Queries, Named) stay on this thread.
      std::vector<std::vector<std::vector<LayerQueries>>> queries(members);
      for (int32_t r = 0; r < members; ++r) {
        for (const Prompt& p : prompts) {
          seqs[r].push_back(parts[r]->Prefill(p));
          queries[r].push_back(parts[r]->Queries(p, false));
        }
      }
      const PolicyConfig uniform = Named("uniform-snapkv");
      group.Run([&](int32_t r) {
        for (size_t s = 0; s < prompts.size(); ++s) {
          auto compressed = parts[r]->engine().Compress(seqs[r][s], uniform,
                                                        Budget::Fraction(0.6), queries[r][s]);
          if (!compressed.ok()) {
            freed[r] = compressed.status();
            return;
          }
        }
        freed[r] = parts[r]->engine().EnforcePoolBudget(target, 8, 4);
      });
      int64_t total = 0;
      for (int32_t r = 0; r < members; ++r) {
        REQUIRE_OK(freed[r]);
        total += *freed[r];
        for (size_t s = 0; s < prompts.size(); ++s) {
          for (int32_t layer = 0; layer < kLayers; ++layer) {
            for (int32_t h = 0; h < heads; ++h) {
              REQUIRE(parts[r]->Positions(seqs[r][s], layer, h) ==
                      whole.Positions(whole_seqs[s], layer, r * heads + h));
            }
          }
        }
      }
      REQUIRE(total == *single);
      REQUIRE(*single >= std::min<int64_t>(target, 1));
    }
  }
}

}  // namespace
}  // namespace headpage
