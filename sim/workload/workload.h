// SPDX-License-Identifier: Apache-2.0
// File: sim/workload/workload.h
//
// The serving-workload simulator: a serving engine's KV memory over time,
// simulated with the real BlockManager on a pool of page ids (no K/V bytes, no
// kernels: Reserve writes no slot ids (ReserveWithoutSlots), compaction plans
// are dropped, and retired pages are released at once, as an engine does once
// the plans are enqueued).
//
// The scheduler is vLLM's, step by step:
//   1. arrivals join the back of the waiting queue;
//   2. decode: every running request, oldest first, reserves one token in
//      every stream (ReserveWithoutSlots). When the pool is short, the newest
//      running request is preempted by recompute (freed, and put back at the
//      front of the queue; when it is admitted again its prompt and the tokens
//      it had generated are prefilled again), until the reservation fits. The
//      pool-pressure policy first evicts instead (below);
//   3. admission, first come first served: the request at the head of the
//      queue is prefilled (Reserve of its whole prompt) when its pages leave the
//      pool's watermark free (PagePool::CanAllocate, vLLM's 1%), the batch has
//      fewer than max_batch requests, and the step's prefill tokens stay within
//      max_prefill_tokens (a longer prompt may go alone). Then its policy
//      compresses it (BlockManager::Evict of every layer, ReleaseRetiredPages);
//   4. requests that generated their last token are freed.
// A request of prompt P and output O holds P tokens in every stream after its
// prefill and one more after each of its O decode steps, so it ends with P + O
// (the engine would never write the KV of the last token; the simulator does,
// as the fragmentation figures of the research notes assume). A step lasts
// step_s of simulated time; when nothing runs or waits, time jumps to the next
// arrival. A request whose uncompressed P + O tokens would not fit in the pool
// below the watermark could never be served and is rejected (counted, never run).
//
// Policies (`--policy`), each applied once at admission, with its budget
// (tokens per KV head, window included, or a share of the prompt):
//   none           keep everything: the vLLM baseline;
//   uniform        every stream keeps the budget (SnapKV: window 32);
//   pyramid        PyramidKV's layer schedule (policy::PyramidCapacities, beta 20);
//   ada            Ada-KV (policy::AdaKept, alpha 0.2) over the head profile;
//   dbudget        DBudgetKV (policy::DBudgetKept, T = 0.05, window 8) over the
//                  profile; the budget is not used;
//   pool-pressure  nothing at admission; when a decode step would preempt, the
//                  global allocator (policy::GlobalKept) evicts the least
//                  important prompt tokens across all running requests
//                  instead, each stream down to its floor: the budget of its
//                  prompt (window included; generated tokens are never
//                  evicted), so at most what `uniform` would have evicted at
//                  admission. It frees what the step needs plus
//                  pressure_headroom of the pool. Only when the floors forbid
//                  enough does it preempt.
// With compress_every = N > 0, uniform, pyramid, ada and dbudget compress each
// running request again after every N generated tokens, as if the tokens it has
// seen (prompt and generated) were its prompt: each stream keeps at most what the
// policy gives that length (headpage.serving's decode-time compression).
// Ada and DBudgetKV need per-token scores: they run on the head profile's
// curves (sim/workload/head_profile.h), kResolution bins a stream, and their per-head
// result is scaled to the request's prompt (Ada: the shares of the layer's
// budget, handed out by largest remainder; DBudgetKV: the share of candidates
// cut). The pool-pressure eviction gives GlobalKept one element per page a
// stream can give back (its least important tokens, in groups that each empty
// one page, scored with the mass the profile gives them) plus one for the rest.
//
// Metrics. Slots are token places in pages: a page holds page_size.
//   fragmentation          allocated slots - used slots, over the pages streams
//                          hold. Every page of a block table is full but the
//                          last, so this is exactly the sum of each stream's
//                          tail waste (the empty slots of its last page).
//   final_fragmentation    token-weighted at completion: the sum over completed
//                          requests of their fragmentation just before their
//                          Free, over the sum of their allocated slots.
//   mean_fragmentation     token-weighted over time: the sum over steps of the
//                          pool's fragmentation over the sum of its allocated slots.
//   admitted_fragmentation the same as final, right after each admission
//                          (after compression): where head-wise budgets bite.
//   small_stream_waste     of the streams that compression left at most
//                          small_stream_tokens long: their tail waste over their
//                          allocated slots, right after admission.
//   utilization            used slots / the pool's slots.
// Deterministic: the same requests, profile and options give the same results.
#ifndef HEADPAGE_SIM_WORKLOAD_WORKLOAD_H_
#define HEADPAGE_SIM_WORKLOAD_WORKLOAD_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "eviction/engine.h"
#include "core/geometry.h"
#include "policy/head_classes.h"
#include "sim/workload/head_profile.h"
#include "sim/workload/workload_dist.h"

namespace headpage {

enum class WorkloadPolicy : uint8_t {
  kNone, kUniform, kPyramid, kAda, kDBudget, kPoolPressure,
  // Retrieval heads keep the prompt, streaming heads their sinks and recent
  // window (the registry's duoattention: 64 + 256); needs head_classes.
  kHeadClasses,
};

// "none", "uniform", "pyramid", "ada", "dbudget", "pool-pressure", "head-classes".
[[nodiscard]] absl::StatusOr<WorkloadPolicy> ParseWorkloadPolicy(absl::string_view name);
const char* WorkloadPolicyName(WorkloadPolicy policy);
// Every policy that needs no head-class profile, in the order above (what a
// sweep runs unless told; head-classes needs WorkloadOptions::head_classes).
std::vector<WorkloadPolicy> AllWorkloadPolicies();

struct WorkloadOptions {
  CacheGeometry geometry = CacheGeometry::Llama3_8B();  // its page_size is the page size
  int64_t pool_pages = 0;                               // > 0
  double watermark = 0.01;            // share of the pool admission keeps free (vLLM's)
  int32_t max_batch = 256;            // running requests at most (vLLM's max_num_seqs)
  int64_t max_prefill_tokens = 8192;  // prompt tokens admitted per step
  double step_s = 0.02;               // simulated time a step takes
  WorkloadPolicy policy = WorkloadPolicy::kNone;
  Budget budget = Budget::Fraction(0.2);
  // The observation window every stream keeps (SnapKV's recent tokens); -1
  // takes the policy's default (32; dbudget 8).
  int32_t window = -1;
  double pressure_headroom = 0.02;  // pool-pressure: share of the pool freed beyond the need
  int32_t compress_every = 0;       // generated tokens between decode-time compressions; 0: none
  int32_t small_stream_tokens = 64;
  // head-classes: the (layer, kv head) profile, tiled over the geometry as
  // trace profiles are (layer l takes row floor(l * rows / layers), kv head h
  // column h mod columns), and the share of heads that stream (-1: the
  // profile's own classes, score >= 0.5).
  std::shared_ptr<const policy::HeadClasses> head_classes;
  double head_sparsity = 0.5;
  // Prefix sharing: the share of requests (spread evenly over the arrivals)
  // whose prompts start with one common prefix of prefix_tokens tokens (a
  // system prompt; a shorter prompt is all prefix), and whether the block
  // manager's prefix cache serves it (blockmgr/block_manager.h). With a cache
  // hit and a compressing policy, the cached prefix stays whole and only the
  // rest of the prompt is compressed to the budget.
  double prefix_share = 0.0;
  int32_t prefix_tokens = 0;
  bool prefix_cache = false;
  // The serving engine's mode (b) instead: the common prefix is compressed once
  // by the policy and every request with it starts on a fork of that; the
  // request's own tokens are kept whole. Needs a compressing policy.
  bool compressed_prefix = false;
  bool record_steps = true;       // keep the per-step series
  bool check_invariants = false;  // BlockManager::CheckInvariants() after every step (tests)
};

// Pages that a budget of `gib` GiB holds: floor(gib * 2^30 / page_memory_bytes)
// (K/V and, for fp8 pages, their scales), the pool_pages of a memory budget
// (the command line's default: 16 GiB of KV).
// InvalidArgument for a bad geometry, a budget that is not a positive finite
// number, or one that holds no page.
[[nodiscard]] absl::StatusOr<int64_t> PagesForBudget(const CacheGeometry& geometry, double gib);

// One step: what it did, and the pool as its batch held it (before the
// requests it finished were freed).
struct WorkloadStep {
  int64_t step = 0;
  double time_s = 0;
  int32_t running = 0;  // requests in the step's batch: decoding, or admitted (prefill)
  int32_t waiting = 0;  // queued at the end of the step
  int32_t admitted = 0;
  int32_t completed = 0;
  int32_t preempted = 0;
  int64_t tokens = 0;          // decode tokens generated
  int64_t evicted_tokens = 0;  // by pool-pressure eviction, all streams
  int64_t pages_in_use = 0;
  int64_t allocated_slots = 0;
  int64_t used_slots = 0;
  int64_t fragmentation() const { return allocated_slots - used_slots; }
};

struct WorkloadSummary {
  std::string policy;
  int32_t page_size = 0;
  int64_t requests = 0;
  int64_t steps = 0;
  int32_t peak_batch = 0;
  double mean_batch = 0;  // running requests, mean over steps
  int64_t preemptions = 0;
  double tokens_per_step = 0;  // decode tokens generated / steps
  double mean_fragmentation = 0;
  double final_fragmentation = 0;
  int64_t completed = 0;
  int64_t rejected = 0;
  int64_t pool_pages = 0;
  double admitted_fragmentation = 0;
  double small_stream_share = 0;  // of all streams admitted
  double small_stream_waste = 0;
  double kept_fraction = 0;  // prompt tokens kept after compression / prompt tokens
  double mean_utilization = 0;
  double peak_utilization = 0;
  int64_t recomputed_tokens = 0;  // prefilled again after a preemption
  // Prefix caching: admissions that started from cached pages, the prompt
  // tokens those pages spared (the prefill the engine skips), and the pages the
  // cache held when the run ended.
  int64_t prefix_hits = 0;
  int64_t prefix_hit_tokens = 0;
  int64_t final_cached_pages = 0;
  int64_t pressure_rounds = 0;
  int64_t evicted_tokens = 0;
  double evicted_fraction = 0;  // evicted_tokens / prompt tokens admitted (all streams)
  double mean_queue_s = 0;  // arrival to first admission
  double p90_queue_s = 0;
  double simulated_s = 0;
  double wall_s = 0;
};

struct WorkloadResult {
  WorkloadSummary summary;
  std::vector<WorkloadStep> steps;  // when options.record_steps
};

// Runs `requests` (in arrival order) through a fresh pool. InvalidArgument for
// bad options (geometry, pool_pages < 1 or past the int32 slot ids, watermark
// outside [0, 1), max_batch < 1, max_prefill_tokens < 1, step_s <= 0, a bad
// budget, a window < -1, headroom outside [0, 1)), requests out of arrival order, or a profile
// of another geometry. Internal if a block-manager invariant breaks.
[[nodiscard]] absl::StatusOr<WorkloadResult> RunWorkload(
    const std::vector<WorkloadRequest>& requests, const HeadProfile& profile,
    const WorkloadOptions& options);

// Every page size x policy, with options as the template: the pool keeps the
// template's slots (pool_pages * its page size; pages = slots / page size), so
// every configuration has the same memory. Summaries in page-size-major order,
// the same for any thread count (0: all cores). `cancel` stops it between runs.
[[nodiscard]] absl::StatusOr<std::vector<WorkloadSummary>> RunWorkloadSweep(
    const std::vector<WorkloadRequest>& requests, const HeadProfile& profile,
    const WorkloadOptions& options, const std::vector<int32_t>& page_sizes,
    const std::vector<WorkloadPolicy>& policies, int32_t threads = 0,
    const std::atomic<bool>* cancel = nullptr);

// CSV: a header (policy,page_size,requests,steps,peak_batch,mean_batch,
// preemptions,tokens_per_step,mean_fragmentation,final_fragmentation, then the
// other fields), one line per summary.
std::string WorkloadSummaryCsv(const std::vector<WorkloadSummary>& rows);
// CSV of the per-step series, each line led by the policy and page size.
std::string WorkloadStepsCsv(const WorkloadSummary& summary,
                             const std::vector<WorkloadStep>& steps);

}  // namespace headpage

#endif  // HEADPAGE_SIM_WORKLOAD_WORKLOAD_H_
