// SPDX-License-Identifier: Apache-2.0
// File: sim/walkthrough/walkthrough.h
//
// The block-manager walk-through behind `headpage walkthrough`: one long
// sequence on a model's geometry goes through prefill, decode, Fork (with
// copy-on-write), head-wise eviction of every layer, ReleaseRetiredPages and
// Free, and the pool's state is recorded after every step.
//
// It is bookkeeping only: the PagePool has no Arena behind it, so no K/V bytes
// exist and the plans (slot mappings, page copies, the compaction plan) are built
// and counted, never executed. That is exactly the work the engine's scheduler
// thread does, so the times it reports are the host cost of each step. The
// pool's size (PagesForBudget) and the eviction's skewed split over heads
// (SkewedHeadWeights, ProportionalKeptCounts) are the workload simulator's.
#ifndef HEADPAGE_SIM_WALKTHROUGH_WALKTHROUGH_H_
#define HEADPAGE_SIM_WALKTHROUGH_WALKTHROUGH_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "blockmgr/block_manager.h"
#include "core/geometry.h"

namespace headpage {

struct WalkthroughOptions {
  CacheGeometry geometry = CacheGeometry::Llama3_8B();
  // Pool size: floor(pool_gib * 2^30 / page_memory_bytes) pages.
  double pool_gib = 16.0;
  int64_t prefill_tokens = 8192;
  int64_t decode_steps = 64;      // one token each, before the fork
  int64_t fork_decode_steps = 8;  // one token each on parent and child, after the fork
  // Eviction: every layer of the parent keeps about keep_fraction of its
  // tokens * kv_heads, split over the heads in proportion to skewed weights
  // (log-normal with sigma head_skew, seeded per layer), at least min_kept tokens
  // a stream (or all it has).
  double keep_fraction = 0.2;
  int32_t min_kept = 8;
  double head_skew = 1.0;
  uint64_t seed = 1;
};

// The pool after one step.
struct WalkthroughStep {
  std::string name;
  BlockManagerStats stats;
  double kv_gib = 0.0;     // pages in use * page_memory_bytes, in GiB
  double manager_us = 0.0;  // steady_clock time inside the step's BlockManager calls
  int64_t manager_calls = 0;
  std::string note;  // what the step planned (page copies, compaction rows, ...)
};

// Runs the walk-through, calling `on_step` after every step (the first one,
// "start", is the empty pool). After every step CheckInvariants() must hold:
// Internal naming the step otherwise. Any failed BlockManager call is returned
// with the step and the call in its message; a validation error for bad options.
[[nodiscard]] absl::Status RunWalkthrough(const WalkthroughOptions& options,
                                          const std::function<void(const WalkthroughStep&)>& on_step);

// The table: a header (two lines) and one row per step, without newlines at the end.
std::string WalkthroughTableHeader();
std::string FormatWalkthroughRow(const WalkthroughStep& step);

}  // namespace headpage

#endif  // HEADPAGE_SIM_WALKTHROUGH_WALKTHROUGH_H_
