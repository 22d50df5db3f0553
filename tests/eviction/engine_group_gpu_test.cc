// SPDX-License-Identifier: Apache-2.0
// EvictionEngine in a tensor-parallel group on device pools (ctest label
// `gpu`): members holding a slice of every layer's kv heads, threads of one
// process sharing one GPU here, each with its own CudaArena, keep exactly what
// one engine over every head keeps on a CudaArena, for Ada-KV's layer-wide
// budget (agreed on the host from the GPU's scores) and for the pool-wide
// budget, and fail together. The several-GPU run is tests/python/
// test_serving_tp.py's.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "allocator/arena.h"
#include "eviction/engine.h"
#include "tests/eviction/group_member.h"
#include "tests/kernels/device_buffer.h"
#include "tests/testing/catch.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/thread_group.h"

namespace headpage {
namespace {

using testing::DeviceMirror;
using testing::GroupShape;
using testing::Member;
using testing::Named;
using testing::Prompt;
using testing::ThreadGroup;

// head_dim and page sizes the GPU kernels take.
const GroupShape kShape{/*layers=*/2, /*heads=*/4, /*group=*/2, /*dim=*/64, /*page=*/16,
                        /*hidden=*/24};

// A member's device pool: a CudaArena that a byte copy of its host pool fills.
struct DeviceArena {
  std::unique_ptr<CudaArena> arena;
  DeviceMirror pool;

  DeviceArena(int32_t heads, int64_t pages) {
    auto created = CudaArena::Create(Member::Geometry(kShape, heads), pages);
    REQUIRE_OK(created);
    arena = std::make_unique<CudaArena>(std::move(created).value());
    const PagedKV view = arena->view();
    pool.view = view;
    // Slot by slot: the rest of a page may hold tokens the device compacted.
    pool.mirror = [view](const HostArena& host, const std::vector<int32_t>& slots) {
      const PagedKV& from = host.view();
      const size_t row = static_cast<size_t>(view.head_dim) * sizeof(float);
      const auto* src = static_cast<const float*>(from.data);
      auto* dst = static_cast<float*>(view.data);
      HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
      for (const int32_t slot : slots) {
        for (const int64_t at : {view.KeyOffset(slot), view.ValueOffset(slot)}) {
          HEADPAGE_CUDA_OK(cudaMemcpy(dst + at, src + at, row, cudaMemcpyHostToDevice));
        }
        HEADPAGE_CUDA_OK(cudaMemcpy(view.positions + slot, from.positions + slot,
                                    sizeof(int32_t), cudaMemcpyHostToDevice));
      }
    };
    pool.positions = [view]() {
      std::vector<int32_t> positions(static_cast<size_t>(view.num_slots()));
      HEADPAGE_CUDA_OK(cudaDeviceSynchronize());
      HEADPAGE_CUDA_OK(cudaMemcpy(positions.data(), view.positions,
                                  sizeof(int32_t) * positions.size(), cudaMemcpyDeviceToHost));
      return positions;
    };
  }
};

// `members` engines over the heads of kShape, on device pools of `pages`.
struct DeviceGroup {
  ThreadGroup group;
  std::vector<std::unique_ptr<DeviceArena>> arenas;
  std::vector<std::unique_ptr<Member>> parts;

  DeviceGroup(int32_t members, int64_t pages) : group(members) {
    const int32_t heads = kShape.heads / members;
    for (int32_t r = 0; r < members; ++r) {
      arenas.push_back(std::make_unique<DeviceArena>(heads, pages));
      parts.push_back(std::make_unique<Member>(kShape, r * heads, heads, pages, &arenas[r]->pool));
      REQUIRE_OK(parts[r]->engine().JoinGroup(&group.member(r)));
    }
  }
};

TEST_CASE("CUDA executor in a group keeps what one engine over every head keeps",
          "[eviction][gpu][group]") {
  const char* const policies[] = {"ada-snapkv", "ada-pyramid", "uniform-snapkv", "knorm"};
  int trial = 0;
  for (const char* name : policies) {
    for (const int32_t members : {2, 4}) {
      const PolicyConfig config = Named(name);
      const Prompt prompt(kShape, 300 + 37 * (trial % 3), 32, 200 + trial);
      ++trial;
      DeviceArena whole_arena(kShape.heads, 2000);
      Member whole(kShape, 0, kShape.heads, 2000, &whole_arena.pool);
      const SeqId whole_seq = whole.Prefill(prompt);
      std::vector<LayerQueries> whole_queries = whole.Queries(prompt, false);
      auto single =
          whole.engine().Compress(whole_seq, config, Budget::Fraction(0.3), whole_queries);
      INFO(name << ", " << members << " members");
      REQUIRE_OK(single);
      REQUIRE(single->tokens_after < single->tokens_before);

      DeviceGroup group(members, 2000);
      const int32_t heads = kShape.heads / members;
      std::vector<SeqId> seqs;
      std::vector<std::vector<LayerQueries>> queries;
      for (int32_t r = 0; r < members; ++r) {
        seqs.push_back(group.parts[r]->Prefill(prompt));
        queries.push_back(group.parts[r]->Queries(prompt, false));
      }
      std::vector<absl::StatusOr<CompressResult>> results(members);
      group.group.Run([&](int32_t r) {
        results[r] = group.parts[r]->engine().Compress(seqs[r], config, Budget::Fraction(0.3),
                                                       queries[r]);
      });
      for (int32_t r = 0; r < members; ++r) {
        REQUIRE_OK(results[r]);
        for (int32_t layer = 0; layer < kShape.layers; ++layer) {
          for (int32_t h = 0; h < heads; ++h) {
            const int32_t global = r * heads + h;
            REQUIRE(results[r]->kept[layer * heads + h] ==
                    single->kept[layer * kShape.heads + global]);
            REQUIRE(group.parts[r]->Positions(seqs[r], layer, h) ==
                    whole.Positions(whole_seq, layer, global));
          }
        }
      }
    }
  }
}

TEST_CASE("CUDA executor in a group: the pool budget frees what one engine over every head "
          "frees",
          "[eviction][gpu][group]") {
  for (const int32_t members : {2, 4}) {
    for (const int64_t target : {int64_t{1}, int64_t{9}, int64_t{100000}}) {
      const std::vector<Prompt> prompts = {Prompt(kShape, 200, 32, 1),
                                           Prompt(kShape, 260, 32, 2),
                                           Prompt(kShape, 230, 32, 3)};
      const PolicyConfig ada = Named("ada-snapkv");
      DeviceArena whole_arena(kShape.heads, 3000);
      Member whole(kShape, 0, kShape.heads, 3000, &whole_arena.pool);
      std::vector<SeqId> whole_seqs;
      for (size_t s = 0; s < prompts.size(); ++s) {
        whole_seqs.push_back(whole.Prefill(prompts[s]));
        auto q = whole.Queries(prompts[s], false);
        REQUIRE_OK(whole.engine().Compress(whole_seqs.back(), ada, Budget::Fraction(0.6), q));
        // Decode steps since: unscored tokens, which the budget keeps.
        whole.Append(whole_seqs.back(), 7 + static_cast<int32_t>(s), 40 + s);
      }
      auto single = whole.engine().EnforcePoolBudget(target, 8, 4);
      INFO(members << " members, " << target << " pages to free");
      REQUIRE_OK(single);

      DeviceGroup group(members, 3000);
      const int32_t heads = kShape.heads / members;
      std::vector<std::vector<SeqId>> seqs(members);
      std::vector<std::vector<std::vector<LayerQueries>>> queries(members);
      for (int32_t r = 0; r < members; ++r) {
        for (const Prompt& p : prompts) {
          seqs[r].push_back(group.parts[r]->Prefill(p));
          queries[r].push_back(group.parts[r]->Queries(p, false));
        }
      }
      std::vector<absl::StatusOr<int64_t>> freed(members);
      std::vector<absl::Status> compressed(members);
      group.group.Run([&](int32_t r) {
        for (size_t s = 0; s < prompts.size() && compressed[r].ok(); ++s) {
          compressed[r] = group.parts[r]->engine()
                              .Compress(seqs[r][s], ada, Budget::Fraction(0.6), queries[r][s])
                              .status();
        }
      });
      // Catch's assertions stay on this thread: the appends between the calls.
      for (int32_t r = 0; r < members; ++r) {
        REQUIRE_OK(compressed[r]);
        for (size_t s = 0; s < prompts.size(); ++s) {
          group.parts[r]->Append(seqs[r][s], 7 + static_cast<int32_t>(s), 40 + s);
        }
      }
      group.group.Run([&](int32_t r) {
        freed[r] = group.parts[r]->engine().EnforcePoolBudget(target, 8, 4);
      });
      int64_t total = 0;
      for (int32_t r = 0; r < members; ++r) {
        REQUIRE_OK(freed[r]);
        total += *freed[r];
        for (size_t s = 0; s < prompts.size(); ++s) {
          for (int32_t layer = 0; layer < kShape.layers; ++layer) {
            for (int32_t h = 0; h < heads; ++h) {
              REQUIRE(group.parts[r]->Positions(seqs[r][s], layer, h) ==
                      whole.Positions(whole_seqs[s], layer, r * heads + h));
            }
          }
        }
      }
      REQUIRE(total == *single);
      REQUIRE(*single >= 1);
    }
  }
}

TEST_CASE("CUDA executor in a group: a member's failure fails every member, none waits",
          "[eviction][gpu][group]") {
  const Prompt prompt(kShape, 120, 16, 5);
  DeviceGroup group(2, 1000);
  std::vector<SeqId> seqs;
  std::vector<std::vector<LayerQueries>> queries;
  for (int32_t r = 0; r < 2; ++r) {
    seqs.push_back(group.parts[r]->Prefill(prompt));
    queries.push_back(group.parts[r]->Queries(prompt, false));
  }
  std::vector<absl::StatusOr<CompressResult>> results(2);
  const PolicyConfig ada = Named("ada-snapkv");
  // Member 1 names a sequence it does not have.
  group.group.Run([&](int32_t r) {
    results[r] = group.parts[r]->engine().Compress(r == 1 ? seqs[r] + 99 : seqs[r], ada,
                                                   Budget::Fraction(0.5), queries[r]);
  });
  REQUIRE_ERROR(results[1], absl::StatusCode::kNotFound, "");
  REQUIRE_ERROR(results[0], absl::StatusCode::kAborted, "1 other member");
  // Member 1 fails in the executor, before its agreement (the GPU scores at most
  // 128 window queries), while member 0 waits in the agreement: both return.
  // The same 200 tokens on both (the same seed), queried by 16 and 129 rows.
  const Prompt narrow(kShape, 200, 16, 6), wide(kShape, 200, 129, 6);
  std::vector<SeqId> longer = {group.parts[0]->Prefill(narrow), group.parts[1]->Prefill(wide)};
  const std::vector<std::vector<LayerQueries>> mixed = {group.parts[0]->Queries(narrow, false),
                                                        group.parts[1]->Queries(wide, false)};
  group.group.Run([&](int32_t r) {
    results[r] = group.parts[r]->engine().Compress(longer[r], ada, Budget::Fraction(0.5),
                                                   mixed[r]);
  });
  REQUIRE_ERROR(results[1], absl::StatusCode::kInvalidArgument, "at most 128");
  REQUIRE_ERROR(results[0], absl::StatusCode::kAborted, "1 other member");
  // Nothing changed: the same call on both now compresses.
  group.group.Run([&](int32_t r) {
    results[r] = group.parts[r]->engine().Compress(seqs[r], ada, Budget::Fraction(0.5), queries[r]);
  });
  REQUIRE_OK(results[0]);
  REQUIRE_OK(results[1]);
  REQUIRE(results[0]->tokens_after < results[0]->tokens_before);
}

}  // namespace
}  // namespace headpage
