// SPDX-License-Identifier: Apache-2.0
// File: sim/workload/simulation.h
//
// One run of the workload simulator: the scheduler that sim/workload/workload.h
// describes, on a pool of page ids and the real BlockManager. RunWorkload
// validates the options and builds the pool and the manager; Simulation runs
// the steps. Internal to the workload simulator.
#ifndef HEADPAGE_SIM_WORKLOAD_SIMULATION_H_
#define HEADPAGE_SIM_WORKLOAD_SIMULATION_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "allocator/page_pool.h"
#include "blockmgr/block_manager.h"
#include "policy/config.h"
#include "sim/workload/compressor.h"
#include "sim/workload/head_profile.h"
#include "sim/workload/workload.h"
#include "sim/workload/workload_dist.h"

namespace headpage {
namespace workload_internal {

// a / b, or 0 when b is not positive: a ratio of tallies that may all be 0.
inline double Ratio(double a, double b) { return b > 0 ? a / b : 0.0; }

// One run: the pool, the manager, the queues and the running tallies (the
// scheduler of sim/workload/workload.h, step by step). Thread-compatible.
class Simulation {
 public:
  // REQUIRES: `requests` (in arrival order), `profile` and `options` were
  // validated and outlive the Simulation; `manager` manages `pool`.
  Simulation(const std::vector<WorkloadRequest>& requests, const HeadProfile& profile,
             const WorkloadOptions& options, const PolicyConfig& config,
             std::unique_ptr<PagePool> pool, BlockManager manager);

  // Runs every request to completion (or rejection) and summarizes the run.
  // Internal if a block-manager invariant breaks (options.check_invariants) or
  // the run does not end; block-manager errors pass through.
  [[nodiscard]] absl::StatusOr<WorkloadResult> Run();

 private:
  struct Running {
    size_t request;
    SeqId seq;
    bool finished = false;
    int64_t frozen = 0;  // leading tokens on cached pages, never compressed
    bool on_compressed_prefix = false;  // started on a fork of the compressed prefix
  };

  absl::Status Decode(WorkloadStep* step);
  absl::Status Admit(double now, WorkloadStep* step);
  absl::Status Complete(WorkloadStep* step);
  absl::Status Preempt(size_t index, WorkloadStep* step);
  // Decode-time compression: `r`'s streams down to what the policy keeps of the
  // tokens it has seen.
  absl::Status CompressSeen(const Running& r);
  // Pool-pressure: evicts until `pages_to_free` pages are back or the floors
  // stop it; returns the pages freed.
  absl::StatusOr<int64_t> RelievePressure(int64_t pages_to_free, WorkloadStep* step);
  int64_t PromptPages(int64_t tokens) const { return streams_ * PagesFor(tokens, page_size_); }
  // Request q's first `tokens` token ids, for the prefix cache: the common
  // prefix's ids are its positions + 1; every other token of q has the id -(q + 1),
  // so no two requests share a block past the common prefix.
  const std::vector<int32_t>& TokenIds(size_t q, int64_t tokens);
  // The kept counts of a stream compressed with its first `frozen` tokens
  // whole: those, plus the policy's share of the `prompt` - frozen after them.
  absl::Status KeptAfterFrozen(int64_t prompt, int64_t frozen);
  // Options::compressed_prefix: the common prefix of `tokens` tokens,
  // compressed, in a sequence of its own (made on first use); 0 when the pool
  // cannot hold it now.
  absl::StatusOr<SeqId> CompressedPrefix(int64_t tokens);
  // Admits request q on a fork of the compressed prefix; false (nothing
  // changed) when the pool cannot take it now.
  absl::StatusOr<bool> AdmitOnCompressedPrefix(size_t q, int64_t tokens, double now,
                                               WorkloadStep* step);
  // An admitted request joins the running ones: the tallies of its streams
  // (kept tokens, tail waste, small streams) and of its prompt, `prefilled`
  // tokens counted as recomputed after a preemption. `whole`: its generated
  // tokens were compressed with the prompt.
  absl::Status RecordAdmission(const Running& running, int64_t tokens, bool whole,
                               int64_t prefilled, double now, WorkloadStep* step);

  const std::vector<WorkloadRequest>& requests_;
  const HeadProfile& profile_;
  const WorkloadOptions& o_;
  const int32_t window_;
  std::unique_ptr<PagePool> pool_;
  BlockManager manager_;
  Compressor compressor_;
  const int32_t streams_;
  const int32_t page_size_;

  std::deque<size_t> waiting_;
  std::vector<Running> running_;
  std::vector<int32_t> generated_;     // [request] decode tokens so far
  std::vector<int32_t> admitted_at_;   // [request] generated_ at its last admission
  std::vector<double> first_admit_s_;  // [request], -1: never admitted
  PageCopies copies_;                  // never any: the simulator does not fork
  CompactionPlan plan_;
  std::vector<int32_t> kept_;
  std::vector<int32_t> layer_kept_;
  std::vector<int32_t> shared_prefix_;  // [request] tokens of the common prefix it starts with
  std::vector<int32_t> token_ids_;      // TokenIds()' buffer
  SeqId compressed_prefix_ = 0;         // CompressedPrefix()'s, 0 until made

  WorkloadSummary sum_;
  // Tallies for the ratios of the summary.
  double completed_alloc_ = 0, completed_waste_ = 0;
  double admitted_alloc_ = 0, admitted_waste_ = 0, small_alloc_ = 0, small_waste_ = 0;
  int64_t admitted_streams_ = 0, small_streams_ = 0;
  double prompt_tokens_ = 0, prompt_kept_ = 0;
};

}  // namespace workload_internal
}  // namespace headpage

#endif  // HEADPAGE_SIM_WORKLOAD_SIMULATION_H_
